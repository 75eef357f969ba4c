"""Near-duplicate images by perceptual hash: pseudo-patients for sets without patient ids, and leak
checks.

The COVID-19 Radiography set has no patient ids, so one film (re-exported, cropped or annotated by
two of its sub-sources) or a close follow-up film could land on both sides of a patient-level split.
Images whose 256-bit DCT perceptual hashes differ in at most ``max_distance`` bits are joined into
one group (connected components), and a group is split as one patient.

The hash is written here with numpy and PIL (about 15 lines) rather than taken from ``imagehash``,
which needs PyWavelets, a compiled dependency, for hashes we do not use. It is 256 bits (16x16 DCT
frequencies), not the usual 64: on chest X-rays the 8x8 lowest frequencies are mostly the shared
anatomy, and unrelated films came within 2-4 bits of each other (measured on covid_radiography_224).

Pairs are found by exact all-pairs comparison in numpy blocks (one popcount per 64-bit word per
pair; seconds for 7,000 images), not a BK-tree or band index: at the useful threshold (40 of 256
bits) CXR hashes are so alike that a pigeonhole band index left 22M of the 27M pairs as candidates
and a BK-tree prunes as little, so neither saves work over vectorised comparison. No Python loop
runs per pair.

    python -m instructions near-duplicates DATASET_DIR [--max-distance N] [--out leaks.json]

lists the test images of a built dataset folder that have a near-duplicate in train or val.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxrcommon.manifest import read_image_list

MAX_DISTANCE = 40
"""Default Hamming threshold (bits of 256), chosen on covid_radiography_224
(instructions/README.md)."""
_SIDE, _LOW = 64, 16
_WORDS = _LOW * _LOW // 64
_BLOCK = 512
_BYTE_POPCOUNT = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def _dct_rows(n: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of the DCT-II matrix of size ``n`` (scale is irrelevant to the
    hash)."""
    k = np.arange(rows)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT = _dct_rows(_SIDE, _LOW)


def perceptual_hash(image: Image.Image | str | Path) -> np.ndarray:
    """256-bit pHash as 4 uint64 words: grayscale 64x64, the 16x16 lowest DCT frequencies, each bit
    "above their median". Insensitive to brightness and contrast, resizing, JPEG noise, small
    shifts.
    """
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            return perceptual_hash(opened)
    pixels = np.asarray(
        image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS), dtype=np.float64
    )
    low = _DCT @ pixels @ _DCT.T
    return np.packbits(low > np.median(low)).view(np.uint64)


def hash_files(paths: Sequence[str | Path], desc: str = "hashing images") -> np.ndarray:
    """The perceptual hash of each file: a ``[len(paths), 4]`` uint64 array."""
    hashes = [perceptual_hash(p) for p in tqdm(paths, desc=desc, unit="image", leave=False)]
    return np.array(hashes, dtype=np.uint64).reshape(len(hashes), _WORDS)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (``np.bitwise_count`` from numpy 2, a byte table before it)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return _BYTE_POPCOUNT[words[..., None].view(np.uint8)].sum(axis=-1, dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` Hamming distances between two arrays of hashes (``[n, 4]`` uint64)."""
    distance = np.zeros((len(a), len(b)), dtype=np.uint16)
    for word in range(a.shape[1]):
        distance += _popcount(a[:, None, word] ^ b[None, :, word])
    return distance


def near_pairs(
    hashes: np.ndarray, max_distance: int = MAX_DISTANCE, targets: np.ndarray | None = None
) -> dict[tuple[int, int], int]:
    """``(i, j) -> distance`` for every pair i < j of ``hashes`` within ``max_distance`` bits.

    With ``targets``, every (index into ``hashes``, index into ``targets``) pair within the
    distance.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    other = hashes if targets is None else np.asarray(targets, dtype=np.uint64)
    pairs: dict[tuple[int, int], int] = {}
    for start in range(0, len(hashes), _BLOCK):
        first = start if targets is None else 0  # only the upper triangle against itself
        distances = hamming(hashes[start : start + _BLOCK], other[first:])
        for r, c in zip(*np.nonzero(distances <= max_distance), strict=True):
            i, j = start + int(r), first + int(c)
            if targets is not None or i < j:
                pairs[(i, j)] = int(distances[r, c])
    return pairs


def group_labels(count: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Connected components of ``count`` items under ``pairs``: each item's smallest member
    index."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(count)]


def assign_patients(
    names: Sequence[str],
    patients: Sequence[str],
    hashes: np.ndarray,
    max_distance: int = MAX_DISTANCE,
) -> list[str]:
    """The patient of each image: its own id when ``patients`` gives one, else a pseudo-patient.

    Images without an id are joined with every near-duplicate (connected components); two images
    that both have ids are never joined, their ids are trusted. A group takes the smallest patient
    id among its members with one (the COVID-19 Radiography normals include NIH films), else the
    smallest of its ``names``, so a lone image keeps its own name and its split does not change.
    """
    pairs = [
        (i, j) for i, j in near_pairs(hashes, max_distance) if not (patients[i] and patients[j])
    ]
    labels = group_labels(len(names), pairs)
    chosen: dict[int, tuple[bool, str]] = {}
    for name, patient, label in zip(names, patients, labels, strict=True):
        candidate = (not patient, patient or name)  # an id beats a name, then the smallest
        chosen[label] = min(chosen.get(label, candidate), candidate)
    return [patient or chosen[label][1] for patient, label in zip(patients, labels, strict=True)]


def cross_split_duplicates(
    dataset_dir: str | Path, max_distance: int = MAX_DISTANCE
) -> list[dict[str, object]]:
    """Test images of a built dataset (``images.jsonl``) with a near-duplicate in train or val.

    One row per such test image: its id and path and its nearest train/val image with the distance,
    so an evaluation on an older split can leave these images out.
    """
    listed = [(e, e.file(dataset_dir)) for e in read_image_list(dataset_dir)]
    rows = [(entry, str(path)) for entry, path in listed if path is not None and path.is_file()]
    test = [(e, path) for e, path in rows if e.split == "test"]
    seen = [(e, path) for e, path in rows if e.split in ("train", "val")]
    if not test or not seen:
        return []
    hashes = hash_files([path for _, path in test + seen])
    pairs = near_pairs(hashes[: len(test)], max_distance, targets=hashes[len(test) :])
    nearest: dict[int, tuple[int, int]] = {}
    for (i, j), distance in pairs.items():
        if i not in nearest or (distance, j) < nearest[i]:
            nearest[i] = (distance, j)
    return [
        {
            "image_id": test[i][0].image_id,
            "path": test[i][1],
            "near_image_id": seen[j][0].image_id,
            "near_split": seen[j][0].split,
            "distance": distance,
        }
        for i, (distance, j) in sorted(nearest.items())
    ]


def main(argv: list[str] | None = None) -> int:
    """CLI: print (or write as JSON) the test images with a near-duplicate in train/val."""
    parser = argparse.ArgumentParser(
        prog="python -m instructions near-duplicates",
        description=(
            "List test images of a built dataset folder that have a near-duplicate in train or val."
        ),
    )
    parser.add_argument("dataset", type=Path, help="built dataset folder (holds images.jsonl)")
    parser.add_argument("--max-distance", type=int, default=MAX_DISTANCE, help="Hamming bits")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    leaks = cross_split_duplicates(args.dataset, args.max_distance)
    for row in leaks:
        print(
            f"{row['image_id']}\t{row['near_image_id']} ({row['near_split']}, d={row['distance']})"
        )
    print(f"{len(leaks)} test images with a near-duplicate in train/val", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(leaks, indent=2) + "\n", encoding="utf-8")
    return 0
