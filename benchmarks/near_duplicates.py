"""Near-duplicate groups of labelled image folders at several Hamming thresholds (choosing
MAX_DISTANCE).

For each threshold: pairs, groups of two or more images and their largest size (chaining into one
giant group would mean unrelated films join), pairs across folders, and, for folders with patient
ids, near pairs of the same patient and of different patients (the latter are false groupings).
With ``--dataset``, also how many images of a built dataset change split under pseudo-patients and
how many of its test images have a near-duplicate in train/val. ``--pairs-png`` saves side-by-side
pairs by distance band, to look at.

    .venv/bin/python benchmarks/near_duplicates.py \\
        --labelled ../shared/data/covid_radiography_224 \\
        --labelled ../shared/data/nih_chestxray14 \\
        [--dataset runs/default_model/data] [--pairs-png /tmp/pairs]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from cxrcommon.files import atomic_write_text
from cxrcommon.manifest import read_image_list
from instructions.corpora.csvfiles import iter_csv_rows
from instructions.near_duplicates import (
    MAX_DISTANCE,
    assign_patients,
    cross_split_duplicates,
    group_labels,
    hash_files,
    near_pairs,
)
from instructions.splits import SplitConfig

THRESHOLDS = (8, 16, 24, 32, 36, 40, 44, 48, 52, 56)


def _images(folders: list[Path]) -> tuple[list[str], list[Path], list[str]]:
    """Keys ``folder:stem`` (the paired build's patient id of an image without one), paths,
    patient ids."""
    keys, paths, patients = [], [], []
    for folder in folders:
        for row in iter_csv_rows(folder / "labels.csv", ("filename", "labels")):
            path = folder / "images" / row["filename"]
            if path.is_file():
                keys.append(f"{folder.name}:{Path(row['filename']).stem}")
                paths.append(path)
                patients.append(row.get("patient_id") or "")
    return keys, paths, patients


def _threshold_rows(
    keys: list[str], patients: list[str], pairs: dict[tuple[int, int], int]
) -> list[dict[str, int]]:
    rows = []
    for threshold in THRESHOLDS:
        kept = [p for p, d in pairs.items() if d <= threshold]
        sizes = Counter(Counter(group_labels(len(keys), kept)).values())
        with_ids = [(i, j) for i, j in kept if patients[i] and patients[j]]
        rows.append(
            {
                "max_distance": threshold,
                "pairs": len(kept),
                "groups_of_2_or_more": sum(n for size, n in sizes.items() if size > 1),
                "images_in_groups": sum(size * n for size, n in sizes.items() if size > 1),
                "largest_group": max(sizes),
                "pairs_across_folders": sum(
                    keys[i].split(":")[0] != keys[j].split(":")[0] for i, j in kept
                ),
                "pairs_same_patient_id": sum(patients[i] == patients[j] for i, j in with_ids),
                "pairs_different_patient_id": sum(patients[i] != patients[j] for i, j in with_ids),
            }
        )
    return rows


def _split_moves(dataset: Path, keys: list[str], hashes: np.ndarray, patients: list[str]) -> dict:
    """Images of a built dataset whose split changes under pseudo-patients (as the paired build
    does)."""
    listing = read_image_list(dataset)
    split_of = {e.image_id.replace("/", ":").rsplit(".", 1)[0]: e.split for e in listing}
    own = [f"{k.split(':')[0]}:{p}" if p else "" for k, p in zip(keys, patients, strict=True)]
    config = SplitConfig()
    new_split = [config.assign(p) for p in assign_patients(keys, own, hashes)]
    moved = Counter(
        f"{split_of[k]}->{new}"
        for k, new in zip(keys, new_split, strict=True)
        if k in split_of and new != split_of[k]
    )
    crossing = [
        (keys[i], keys[j])
        for i, j in near_pairs(hashes, MAX_DISTANCE)
        if new_split[i] != new_split[j]
    ]
    leaks = cross_split_duplicates(dataset)
    return {
        "dataset": str(dataset),
        "images_changing_split": dict(sorted(moved.items())),
        "test_images_with_near_duplicate_in_train_val": len(leaks),
        "near_pairs_across_splits_with_pseudo_patients": len(crossing),
        "crossing_examples": crossing[:10],
        "of_test_images": sum(e.split == "test" for e in listing),
        "examples": leaks[:10],
    }


def _save_pairs_png(
    out: Path, paths: list[Path], pairs: dict[tuple[int, int], int], seed: int = 0
) -> None:
    """One PNG per distance band: up to 8 random pairs side by side (128 px each)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for low, high in ((0, 16), (16, 32), (32, 41), (41, 49), (49, 57)):
        band = sorted(p for p, d in pairs.items() if low <= d < high)
        chosen = rng.sample(band, min(8, len(band)))
        canvas = Image.new("L", (2 * 128 + 8, max(1, len(chosen)) * 132), 255)
        for row, (i, j) in enumerate(chosen):
            for col, k in enumerate((i, j)):
                with Image.open(paths[k]) as image:
                    canvas.paste(image.convert("L").resize((128, 128)), (col * 136, row * 132))
        canvas.save(out / f"pairs_d{low}-{high - 1}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=Path, action="append", required=True)
    parser.add_argument("--dataset", type=Path, default=None, help="built paired dataset folder")
    parser.add_argument("--pairs-png", type=Path, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "near_duplicates.json"
    )
    args = parser.parse_args(argv)

    keys, paths, patients = _images(args.labelled)
    start = time.perf_counter()
    hashes = hash_files(paths)
    hash_s = time.perf_counter() - start
    start = time.perf_counter()
    pairs = near_pairs(hashes, max(THRESHOLDS))
    pair_s = time.perf_counter() - start
    result: dict[str, object] = {
        "folders": [f.name for f in args.labelled],
        "images": len(keys),
        "images_without_patient_id": sum(not p for p in patients),
        "default_max_distance": MAX_DISTANCE,
        "hash": "256-bit DCT pHash (instructions.near_duplicates.perceptual_hash)",
        "by_threshold": _threshold_rows(keys, patients, pairs),
        "seconds": {"hashing": round(hash_s, 1), "all_pairs": round(pair_s, 1)},
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    if args.dataset:
        result["dataset_check"] = _split_moves(args.dataset, keys, hashes, patients)
    if args.pairs_png:
        _save_pairs_png(args.pairs_png, paths, pairs)
    print(json.dumps(result, indent=2))
    atomic_write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
