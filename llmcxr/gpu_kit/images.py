"""Pack labelled CXRs small for the GPU window's image lane (classifier, tokenizer, token cache).

Every image is written once, as a ``size`` px square grayscale JPEG under ``files/``, named by a
hash of its source path. Each labelled source gets a ``<source>/labels.csv`` (its rows minus the
held-out test split, paths rewritten) for the classifier; ``tokenizer_images.jsonl`` lists the
same training images for the tokenizer; ``llm_dataset/images.jsonl`` maps every image of the LLM
instruction build (test split included: the token cache covers it) to its packed file.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageOps

from cxrcommon.manifest import (
    IMAGE_PATH_COLUMNS,
    find_manifest,
    read_image_list,
    write_image_list,
    write_jsonl,
)


@dataclass(frozen=True)
class PackedImages:
    """What `pack_images` wrote."""

    images: int
    bytes: int
    sources: list[str]
    llm_images: int


def _packed_name(path: str) -> str:
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16] + ".jpg"


def _write_image(src: Path, target: Path, size: int, quality: int) -> bool:
    if target.is_file():
        return True
    try:
        with Image.open(src) as image:
            gray = ImageOps.fit(image.convert("L"), (size, size), Image.Resampling.LANCZOS)
    except OSError:
        return False
    gray.save(target, "JPEG", quality=quality, optimize=True)
    return True


def pack_images(
    sources: Sequence[Path],
    out: Path,
    held_out: Path | None,
    llm_images: Path | None,
    size: int = 128,
    quality: int = 80,
    limit_per_source: int | None = None,
) -> PackedImages:
    """Pack `sources` (labelled folders or manifests) and the LLM build's `llm_images` listing into
    `out`; rows in `held_out`'s test split are left out of the training manifests."""
    from vqgan.data import drop_held_out, read_manifest

    files = out / "files"
    files.mkdir(parents=True, exist_ok=True)
    names, training = [], []
    for source in sources:
        manifest = find_manifest(source)
        name = source.name if source.is_dir() else source.parent.name
        records, _ = drop_held_out(read_manifest(manifest), held_out)
        rows = []
        for record in records[:limit_per_source]:
            packed = _packed_name(record.path)
            if not _write_image(Path(record.path), files / packed, size, quality):
                continue
            rows.append(
                {
                    **record.fields,
                    "path": f"../files/{packed}",
                    "patient_id": record.patient_id or "",
                }
            )
            training.append(
                {
                    "path": f"files/{packed}",
                    "patient_id": f"{name}:{record.patient_id}" if record.patient_id else "",
                }
            )
        if not rows:
            continue
        columns = [
            "path",
            "patient_id",
            *[c for c in rows[0] if c not in ("patient_id", *IMAGE_PATH_COLUMNS)],
        ]
        (out / name).mkdir(exist_ok=True)
        with (out / name / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        names.append(name)
    write_jsonl(out / "tokenizer_images.jsonl", training)
    (out / "sources.json").write_text(json.dumps(names))
    listed = _pack_llm_listing(llm_images, out, size, quality) if llm_images else 0
    written = list(files.iterdir())
    return PackedImages(len(written), sum(p.stat().st_size for p in written), names, listed)


def _pack_llm_listing(listing: Path, out: Path, size: int, quality: int) -> int:
    """``llm_dataset/images.jsonl``: the build's image ids with packed (relative) paths."""
    target = out / "llm_dataset"
    target.mkdir(exist_ok=True)
    rows = []
    for entry in read_image_list(listing.parent):
        path = entry.file(listing.parent)
        if path is None:
            continue
        packed = _packed_name(str(path))
        if _write_image(path, out / "files" / packed, size, quality):
            rows.append(replace(entry, path=f"../files/{packed}"))
    write_image_list(target, rows)
    return len(rows)
