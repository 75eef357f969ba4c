"""Near-duplicate grouping: the perceptual hash, the all-pairs search, pseudo-patients in the paired
build (a group is never split) and the test-vs-train leak listing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from instructions.near_duplicates import (
    MAX_DISTANCE,
    assign_patients,
    cross_split_duplicates,
    group_labels,
    hamming,
    main,
    near_pairs,
    perceptual_hash,
)
from instructions.paired import pair_labelled_images
from instructions.reports import Report
from instructions.splits import SplitConfig


def _field(seed: int, size: int = 144) -> np.ndarray:
    """A smooth random grey image (structure at about a tenth of its width), values 20..220."""
    a = gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 10)
    return (a - a.min()) / (a.max() - a.min()) * 200 + 20


def _crop(field: np.ndarray, dy: int = 0, dx: int = 0, gain: float = 1.0, offset: float = 0.0):
    """A 128 px view of ``field`` shifted by (dy, dx) pixels with a brightness change."""
    view = field[8 + dy : 136 + dy, 8 + dx : 136 + dx] * gain + offset
    return Image.fromarray(np.clip(view, 0, 255).astype(np.uint8))


def test_shifted_brightened_copy_is_near_and_another_image_is_not() -> None:
    field = _field(0)
    base = perceptual_hash(_crop(field))
    copy = perceptual_hash(_crop(field, dy=2, dx=-1, gain=1.1, offset=15))
    other = perceptual_hash(_crop(_field(1)))
    distance = hamming(np.stack([base]), np.stack([copy, other]))[0]
    assert base.shape == (4,) and base.dtype == np.uint64
    assert distance[0] <= MAX_DISTANCE < distance[1]
    assert distance[1] > 2 * MAX_DISTANCE  # unrelated images are far, not borderline


def test_hamming_counts_bits() -> None:
    a = np.array([[0, 0, 0, 0]], dtype=np.uint64)
    b = np.array([[1, 3, 0, 2**63 + 7]], dtype=np.uint64)
    assert hamming(a, b).tolist() == [[1 + 2 + 0 + 4]]


def test_near_pairs_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(40, 4), dtype=np.int64).astype(np.uint64)
    hashes[20:] = hashes[:20]
    hashes[20:, 0] ^= np.uint64(0b1011)  # each of 20..39 is 3 bits from a twin
    hashes[39] = hashes[0]
    expected: dict[tuple[int, int], int] = {}
    for i in range(40):
        for j in range(i + 1, 40):
            d = sum(int(x ^ y).bit_count() for x, y in zip(hashes[i], hashes[j], strict=True))
            if d <= 3:
                expected[(i, j)] = d
    assert near_pairs(hashes, 3) == expected
    assert len(expected) == 21
    across = near_pairs(hashes[:20], 3, targets=hashes[20:])
    assert across == {(i, i): 3 for i in range(19)} | {(0, 19): 0}


def test_groups_are_connected_components() -> None:
    assert group_labels(6, [(1, 2), (2, 4), (3, 5)]) == [0, 1, 1, 3, 1, 3]


def test_assign_patients_keeps_ids_and_joins_images_without_one() -> None:
    hashes = np.zeros((6, 4), dtype=np.uint64)
    hashes[4:] = np.uint64(2**64 - 1)  # far from the others
    names = ["set:b", "set:a", "nih:x1", "nih:y1", "set:c", "set:d"]
    own = ["", "", "nih:x", "nih:y", "", ""]
    patients = assign_patients(names, own, hashes, max_distance=0)
    # the id-bearing films keep their ids even though they are identical; the id-less copies take
    # the smallest id of their group; c and d form their own group under the smaller name
    assert patients == ["nih:x", "nih:x", "nih:x", "nih:y", "set:c", "set:c"]
    assert assign_patients(names[4:5], own[4:5], hashes[4:5]) == ["set:c"]


def _normal_report(i: int) -> Report:
    return Report(
        report_id=f"CXR{i}",
        patient_id=f"CXR{i}",
        source="openi",
        sections={
            "FINDINGS": "The heart is normal in size. The lungs are clear. No pleural effusion.",
            "IMPRESSION": "No acute cardiopulmonary abnormality.",
        },
    )


def test_paired_build_never_splits_a_near_duplicate_group(tmp_path: Path) -> None:
    folder = tmp_path / "covidlike"
    (folder / "images").mkdir(parents=True)
    rows = ["filename,labels"]
    views = {f"g{g}_{k}.png": (g, k) for g in range(12) for k in range(3)}
    for name, (g, k) in views.items():
        _crop(_field(g), dy=k, dx=-k, gain=1 + 0.05 * k, offset=5 * k).save(
            folder / "images" / name
        )
        rows.append(f"{name},Normal")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    split = SplitConfig(0.3, 0.3)
    reports = [_normal_report(i) for i in range(60)]
    studies, summary = pair_labelled_images([folder], split=split, openi_reports=reports)
    assert len(studies) == len(views)
    patient_of = {s.images[0].image_id.split("/")[1]: s.patient_id for s in studies}
    for g in range(12):
        group = {patient_of[f"g{g}_{k}.png"] for k in range(3)}
        assert group == {f"covidlike:g{g}_0"}  # one pseudo-patient, named by its smallest image
    assert len({split.assign(p) for p in patient_of.values()}) == 3  # the groups do spread
    assert summary["near_duplicates"] == {
        "max_distance": MAX_DISTANCE,
        "images_without_patient_id_in_groups": 36,
    }
    off, _ = pair_labelled_images(
        [folder], split=split, openi_reports=reports, near_duplicate_distance=None
    )
    assert len({s.patient_id for s in off}) == 36


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A dataset folder whose test split holds a near-copy of a train image and an unrelated one."""
    images = tmp_path / "images"
    images.mkdir()
    listing = []
    for name, image, split in (
        ("a.png", _crop(_field(0)), "train"),
        ("b.png", _crop(_field(1)), "val"),
        ("a_copy.png", _crop(_field(0), dy=1, offset=10), "test"),
        ("c.png", _crop(_field(2)), "test"),
    ):
        image.save(images / name)
        listing.append({"image_id": f"set/{name}", "path": str(images / name), "split": split})
    (tmp_path / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in listing))
    return tmp_path


def test_cross_split_duplicates_lists_test_images_seen_in_training(
    built: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (leak,) = cross_split_duplicates(built)
    assert leak["image_id"] == "set/a_copy.png" and leak["near_image_id"] == "set/a.png"
    assert leak["near_split"] == "train" and 0 <= int(leak["distance"]) <= MAX_DISTANCE
    out = built / "leaks.json"
    assert main([str(built), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == [leak]
    assert "set/a_copy.png\tset/a.png" in capsys.readouterr().out
