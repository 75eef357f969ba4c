"""The CPU side after the window: returned files -> model folder, tokenizer, classifier, logs.

    python -m llmcxr.gpu_kit unpack RETURNED --bundle gpu_bundle --out runs/gpu/<name> \
        [--install-default]

``RETURNED`` is the folder the device tool put ``$OUT``'s files in. The model comes back without
its image tokenizer (the one the bundle's token cache was made with; ``plan.json`` names it), so
it is put back here and its fingerprint checked. ``--install-default`` then replaces
``llmcxr/default_model/`` when the folder meets the shipping limits.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from llmcxr.gpu_kit.limits import MIB
from llmcxr.gpu_kit.outbox import collect

PROJECT = Path(__file__).resolve().parents[2]
SHIP_FILE_BYTES = 16 * MIB
SHIP_TOTAL_BYTES = 60 * MIB


@dataclass
class Unpacked:
    """What came back and where it now lies."""

    out: Path
    model: Path | None = None
    model_stage: str | None = None
    folders: dict[str, Path] = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def _extract(archive: Path, target: Path) -> Path:
    """Extract a returned ``NAME.tar.gz`` (one top folder) into `target`; returns that folder."""
    with tarfile.open(archive) as tar:
        top = {Path(m.name).parts[0] for m in tar.getmembers()}
        if len(top) != 1:
            raise ValueError(f"{archive}: expected one top-level folder, found {sorted(top)}")
        folder = target / top.pop()
        if folder.exists():
            shutil.rmtree(folder)
        tar.extractall(target, filter="data")
    return folder


def ship_problems(folder: Path) -> list[str]:
    """Why `folder` cannot replace the shipped default model (empty when it can)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    problems = [
        f"{p.relative_to(folder)} is {p.stat().st_size / MIB:.1f} MiB (each file < 16 MiB)"
        for p in files
        if p.stat().st_size >= SHIP_FILE_BYTES
    ]
    total = sum(p.stat().st_size for p in files)
    if total >= SHIP_TOTAL_BYTES:
        problems.append(f"the folder is {total / MIB:.1f} MiB (all < 60 MiB)")
    return problems


def restore_image_tokenizer(model: Path, source: Path) -> None:
    """Put the image tokenizer back into a returned model folder (unless it came back with it),
    checking its fingerprint."""
    from vqgan import CXRTokenizer

    if (model / "image_tokenizer" / "config.json").is_file():
        return
    manifest = json.loads((model / "llmcxr.json").read_text())
    fingerprint = CXRTokenizer.from_pretrained(source).fingerprint
    wanted = manifest.get("image_tokenizer_fingerprint")
    if wanted and wanted != fingerprint:
        raise ValueError(
            f"{source} has fingerprint {fingerprint}, the returned model {model} wants {wanted}"
        )
    shutil.copytree(source, model / "image_tokenizer", dirs_exist_ok=True)


def unpack(
    returned: Path, bundle: Path, out: Path, install_default: bool = False, project: Path = PROJECT
) -> Unpacked:
    """Join, extract and complete what a window returned; optionally ship the model."""
    plan = json.loads((bundle / "plan.json").read_text())
    result = Unpacked(out)
    files = collect(returned, out / "returned")
    for name, archive in sorted(files.items()):
        if archive.name.endswith(".tar.gz"):
            result.folders[name] = _extract(archive, out)
    if "logs" in result.folders:
        report = result.folders["logs"] / "report.json"
        result.report = json.loads(report.read_text()) if report.is_file() else {}
    continued = "llm_continue" in result.report.get("phases", {})
    for name, stage in (
        ("model", "continued" if continued else "stage2"),
        ("stage1_model", "stage1"),
    ):
        if name in result.folders:
            result.model, result.model_stage = result.folders[name], stage
            break
    if result.model is not None:
        restore_image_tokenizer(result.model, Path(plan["image_tokenizer_source"]))
        if install_default:
            problems = ship_problems(result.model)
            if problems:
                raise ValueError(f"{result.model} cannot ship: " + "; ".join(problems))
            target = project / "llmcxr" / "default_model"
            shutil.rmtree(target)
            shutil.copytree(result.model, target)
    shutil.rmtree(out / "returned")
    return result
