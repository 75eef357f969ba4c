"""The whole kit on this CPU with tiny budgets: pack -> device commands -> unpack -> CLI.

The "machine" is a plain copy of what a device command sends (the files git would carry, no
``.git``) in a scratch folder; each planned command gets only its own carried send folder, runs
the same shell wrapper with ``$OUT`` set, and the returned files pass the same count and size
checks. The unpacked model then has to answer ``llmcxr report`` and ``llmcxr generate-image``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmcxr.gpu_kit.driver import run_group
from llmcxr.gpu_kit.limits import DeviceLimits
from llmcxr.gpu_kit.pack import PROJECT, film_histogram_seeds, pack
from llmcxr.gpu_kit.unpack import unpack

TINY_REPORTS = "configs/llmcxr/tiny_reports.csv"
FIXTURES = "tests/fixtures"
TOKENIZER_CONFIG = "configs/vqgan/gpu_dryrun.yaml"
CONTINUE_CONFIG = "configs/llmcxr/gpu_dryrun_continue.yaml"
SEED_MODEL_CONFIG = "configs/llmcxr/gpu_dryrun_stage1.yaml"
DRY_RUN_PARTS = 3
DRY_RUN_BUDGET = 1800
"""The driver's deadline: tiny phases end by their step counts long before it on a quiet CPU."""
SLOW_CPU_TIMEOUT = 2400
"""Seconds a simulated command may take: a busy 2-core machine is far slower than the GPU one."""


@dataclass
class DryRun:
    """What the dry run produced."""

    plan: dict
    returned: list[Path]
    model: Path
    report: dict
    report_text: str
    image: Path


def returned_problems(out: Path, limits: DeviceLimits) -> list[str]:
    """How the files under `out` break the device tool's return rules (empty when none)."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{len(files)} files (at most {limits.files_back})"] * (
        len(files) > limits.files_back
    )
    for path in files:
        rel = path.relative_to(out)
        if path.stat().st_size > limits.file_back_bytes:
            problems.append(f"{rel} is over {limits.file_back_bytes} bytes")
        if len(rel.parts) > 3 or not all(
            part.replace(".", "").replace("_", "").replace("-", "").isalnum() for part in rel.parts
        ):
            problems.append(f"{rel}: too deep or an odd name")
    return problems


def tiny_inputs(work: Path) -> tuple[Path, Path]:
    """A tiny instruction dataset with its token cache, and the random tokenizer it used."""
    import torch
    import yaml

    from instructions.cli import main as build_instructions
    from llmcxr.token_cache import build_token_cache
    from vqgan import CXRTokenizer, VQGANConfig

    dataset, tokenizer = work / "data", work / "image_tokenizer"
    if not (dataset / "stage1").is_dir():
        argv = ["--source", "csv", "--table", str(PROJECT / TINY_REPORTS), "--out", str(dataset)]
        if build_instructions(argv) != 0:
            raise RuntimeError(f"building {dataset} failed")
    if not tokenizer.is_dir():
        # the dry run's tokenizer phase fine-tunes this one: one config for both
        settings = yaml.safe_load((PROJECT / TOKENIZER_CONFIG).read_text())["model"]["config"]
        config = VQGANConfig(**settings)
        # fp16 like the shipped tokenizer, so the returned fp16 model carries the same bytes
        CXRTokenizer(config).save_pretrained(tokenizer, dtype=torch.float16)
    build_token_cache(dataset, tokenizer, accelerator="cpu", devices=1, progress=False)
    # the film-histogram caches the continue config reads (gpu_continue.yaml's mirror)
    for seed in film_histogram_seeds(PROJECT / CONTINUE_CONFIG):
        build_token_cache(
            dataset, tokenizer, accelerator="cpu", devices=1, progress=False, histogram_seed=seed
        )
    return dataset, tokenizer


def tiny_labelled_source(work: Path, project: Path) -> Path:
    """A labelled source of fixture copies (the originals are the tiny build's test images,
    which packing rightly leaves out of classifier and tokenizer training)."""
    source = work / "labelled"
    (source / "images").mkdir(parents=True, exist_ok=True)
    rows = ["filename,labels,patient_id"]
    for index, (name, label) in enumerate(
        [("00000001_000.png", "Cardiomegaly"), ("00027426_000.png", "No Finding")] * 2
    ):
        copy = f"copy{index}_{name}"
        shutil.copyfile(project / FIXTURES / name, source / "images" / copy)
        rows.append(f"{copy},{label},c{index}")
    (source / "labels.csv").write_text("\n".join(rows) + "\n")
    return source


def tiny_trained_model(work: Path, dataset: Path, tokenizer: Path, project: Path) -> Path:
    """A tiny LoRA model folder trained for a few steps on the tiny data (the stage-1 dry-run
    config, run here), for a dry run that continues a model folder as the shipped one is."""
    root = work / "seed_model"
    model = root / "model"
    if not (model / "llmcxr.json").is_file():
        command = [
            sys.executable,
            "-m",
            "llmcxr.train",
            "fit",
            "-c",
            str(project / SEED_MODEL_CONFIG),
            f"--model.image_tokenizer={tokenizer}",
            f"--data.dataset_dir={dataset}",
            f"--trainer.default_root_dir={root}",
        ]
        done = subprocess.run(command, check=False, cwd=work, capture_output=True, text=True)
        if done.returncode != 0 or not (model / "llmcxr.json").is_file():
            raise RuntimeError(
                f"training the tiny model to continue failed:\n{done.stderr[-3000:]}"
            )
    return model


def copy_checkout(project: Path, target: Path) -> Path:
    """Copy what a device command sends (tracked and untracked-not-ignored files) to `target`."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=project,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = project / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def dry_run(
    work: Path,
    project: Path = PROJECT,
    limits: DeviceLimits | None = None,
    wheels: Path | None = None,
    machine_python: str | None = None,
    llm_only: bool = False,
    continue_model: bool = False,
) -> DryRun:
    """Run the whole path in `work` and check what each step leaves; raises on any failure.

    `wheels` are carried and installed as on the GPU machine; `machine_python` runs the device
    commands (e.g. a venv with the GPU machine's package versions, which lacks those wheels);
    `llm_only` packs no labelled images, as a window that trains only the LLM does;
    `continue_model` packs a tiny trained model folder for the LLM lane to continue
    (`pack --continue-from`).
    """
    limits = limits or DeviceLimits()
    work = work.resolve()
    dataset, tokenizer = tiny_inputs(work)
    seed = tiny_trained_model(work, dataset, tokenizer, project) if continue_model else None
    bundle = work / "bundle" / "gpu_bundle"
    plan = pack(
        dataset,
        bundle,
        profile="dryrun",
        project=project,
        image_tokenizer=tokenizer,
        images=[] if llm_only else [tiny_labelled_source(work, project)],
        image_size=64,
        limits=limits,
        min_parts=DRY_RUN_PARTS,
        wheels=wheels,
        budget=DRY_RUN_BUDGET,
        continue_from=seed,
    )
    machine = work / "machine" / "project"
    if machine.exists():
        shutil.rmtree(machine)
    copy_checkout(project, machine)
    out = work / "out"
    env = {**os.environ, "PYTHON": machine_python or sys.executable, "PYTHONPATH": ""}
    for index, command in enumerate(plan["commands"], start=1):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for carried in command["carry"]:
            relative = Path(carried).relative_to(plan["bundle"])
            shutil.copytree(bundle / relative, machine / carried)
        log = work / f"command-{index}.log"
        with log.open("w") as sink:
            code = run_group(
                ["bash", "-c", command["command"]],
                max(command["timeout_s"], SLOW_CPU_TIMEOUT),
                cwd=machine,
                env={**env, "OUT": str(out)},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        if code != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"`{command['command']}` failed ({log}):\n{tail}")
    problems = returned_problems(out, limits)
    if problems:
        raise RuntimeError(f"{out}: " + "; ".join(problems))
    returned = sorted(p for p in out.rglob("*") if p.is_file())
    unpacked = unpack(out, bundle, work / "unpacked", project=project)
    if unpacked.model is None:
        raise RuntimeError(
            f"{out}: no model came back; report: {json.dumps(unpacked.report)[:2000]}"
        )
    cli = [sys.executable, "-m", "llmcxr"]
    fixture = project / FIXTURES / "00000001_000.png"
    report = subprocess.run(
        [
            *cli,
            "report",
            str(fixture),
            "--model",
            str(unpacked.model),
            "--seed",
            "0",
            "--max-new-tokens",
            "16",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    image = work / "drawn.png"
    subprocess.run(
        [
            *cli,
            "generate-image",
            "Left pleural effusion.",
            "--model",
            str(unpacked.model),
            "--seed",
            "0",
            "-o",
            str(image),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return DryRun(plan, returned, unpacked.model, unpacked.report, report.stdout, image)
