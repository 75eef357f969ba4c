"""vqgan.data: discovery, manifests, patient-wise split, skipping unreadable files, batches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_cxr
from PIL import Image

from vqgan.data import (
    CXRDataModule,
    CXRImageDataset,
    ImageRecord,
    drop_held_out,
    load_records,
    split_by_patient,
)


def _write_pngs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:08d}_{i % 3:03d}.png"
        Image.fromarray((synthetic_cxr(48, i) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_fixtures_folder_batches(fixtures_dir: Path) -> None:
    dm = CXRDataModule(str(fixtures_dir), image_size=32, batch_size=2, val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.train_records) == len(list(fixtures_dir.glob("*.[pjd][npc]*")))
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "path"}
    assert batch["image"].shape == (2, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert all(isinstance(p, str) for p in batch["path"])
    assert dm.val_dataloader() == []


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_split_keeps_patients_apart(tmp_path: Path, kind: str) -> None:
    paths = _write_pngs(tmp_path / "images", 12)
    rows = [{"image": f"images/{p.name}", "patient_id": f"P{i // 3}"} for i, p in enumerate(paths)]
    manifest = tmp_path / f"manifest.{kind}"
    if kind == "csv":
        manifest.write_text(
            "image,patient_id\n" + "".join(f"{r['image']},{r['patient_id']}\n" for r in rows)
        )
    else:
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = CXRDataModule(str(manifest), image_size=32, batch_size=2, val_fraction=0.25, seed=3)
    dm.setup("fit")
    train = {r.patient_id for r in dm.train_records}
    val = {r.patient_id for r in dm.val_records}
    assert train and val and not train & val
    assert len(dm.train_records) + len(dm.val_records) == 12
    assert all(len([r for r in dm.val_records if r.patient_id == p]) == 3 for p in val)
    assert next(iter(dm.val_dataloader()))["image"].shape == (2, 1, 32, 32)


def test_split_is_seeded_and_by_file_without_ids() -> None:
    records = [ImageRecord(f"/x/{i}.png") for i in range(20)]
    first = split_by_patient(records, 0.2, seed=1)
    assert first == split_by_patient(records, 0.2, seed=1)
    assert len(first[1]) == 4 and not {r.path for r in first[0]} & {r.path for r in first[1]}
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(records, 1.0, seed=1)


def test_patient_pattern_for_folders(tmp_path: Path) -> None:
    _write_pngs(tmp_path, 6)
    records = load_records(tmp_path, patient_id_pattern=r"^(\d+)_")
    assert [r.patient_id for r in records] == [f"{i:08d}" for i in range(6)]


def test_corrupt_files_skipped_with_count(tmp_path: Path, caplog) -> None:
    _write_pngs(tmp_path, 4)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    dm = CXRDataModule(str(tmp_path), image_size=32, batch_size=2, val_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="vqgan.data"):
        dm.setup("fit")
    assert dm.skipped == [str(tmp_path / "broken.png")]
    assert len(dm.train_records) == 4
    assert "broken.png" in caplog.text and "skipped 1 of 5" in caplog.text


def test_decode_failure_falls_through_to_next_image(tmp_path: Path, caplog) -> None:
    good = _write_pngs(tmp_path, 2)
    data = (synthetic_cxr(64, 9) * 255).astype(np.uint8)
    Image.fromarray(data).save(tmp_path / "cut.jpg", quality=90)
    blob = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(blob[: len(blob) // 3])  # header fine, pixels truncated
    records = [ImageRecord(str(tmp_path / "cut.jpg"))] + [ImageRecord(str(p)) for p in good]
    dataset = CXRImageDataset(records, image_size=32)
    with caplog.at_level(logging.WARNING, logger="vqgan.data"):
        item = dataset[0]
    assert item["path"] == str(good[0]) and dataset.failed == {0}
    assert "cut.jpg" in caplog.text


def test_augmentation_keeps_range_and_shape(tmp_path: Path) -> None:
    _write_pngs(tmp_path, 4)
    dm = CXRDataModule(str(tmp_path), image_size=32, batch_size=4, val_fraction=0.0, augment=True)
    dm.setup("fit")
    plain = CXRImageDataset(dm.train_records, 32)[0]["image"]
    augmented = dm.train_dataloader().dataset[0]["image"]
    assert augmented.shape == plain.shape == (1, 32, 32)
    assert 0.0 <= float(augmented.min()) and float(augmented.max()) <= 1.0


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such"):
        CXRDataModule(str(tmp_path / "no_such")).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        CXRDataModule(str(tmp_path / "empty")).setup("fit")
    bad = tmp_path / "m.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="no image path column"):
        CXRDataModule(str(bad)).setup("fit")


def test_held_out_manifest_drops_its_test_images_and_their_patients(tmp_path: Path) -> None:
    paths = {name: tmp_path / f"{name}.png" for name in ("a1", "a2", "b1", "c1")}
    for path in paths.values():
        Image.fromarray((synthetic_cxr(32) * 255).astype(np.uint8)).save(path)
    records = [
        ImageRecord(str(paths["a1"]), "pa"),
        ImageRecord(str(paths["a2"]), "pa"),  # same patient as a held-out image
        ImageRecord(str(paths["b1"]), "pb"),
        ImageRecord(str(paths["c1"]), None),  # held out by path
    ]
    manifest = tmp_path / "images.jsonl"
    manifest.write_text(
        "".join(
            json.dumps(row) + "\n"
            for row in (
                {"path": str(paths["a1"]), "patient_id": "pa", "split": "test"},
                {"path": str(paths["b1"]), "patient_id": "pb", "split": "train"},
                {"path": str(paths["c1"]), "split": "test"},
            )
        )
    )
    kept, dropped = drop_held_out(records, manifest)
    assert [Path(r.path).name for r in kept] == ["b1.png"] and dropped == 3
    assert drop_held_out(records, None) == (records, 0)

    no_split = tmp_path / "held_out.csv"
    no_split.write_text(f"path,patient_id\n{paths['b1']},pb\n")  # no split column: every row
    kept, _ = drop_held_out(records, no_split)
    assert {Path(r.path).name for r in kept} == {"a1.png", "a2.png", "c1.png"}

    module = CXRDataModule(str(manifest), image_size=32, val_fraction=0.0, held_out=str(manifest))
    module.setup("fit")
    assert [Path(r.path).name for r in module.train_records] == ["b1.png"]
    with pytest.raises(FileNotFoundError, match="held_out manifest not found"):
        drop_held_out(records, tmp_path / "missing.jsonl")
