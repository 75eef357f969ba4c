"""Chest X-ray image data for tokenizer training: file discovery, manifests, patient-wise split.

A data source is either a folder (searched recursively for PNG/JPEG/DICOM) or a manifest
(CSV or JSONL) with one row per image. Unreadable files never stop a run: a cheap header check
at setup drops the obviously broken ones, and a file that still fails to decode while training
is logged by path and replaced by the next readable one.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrcommon.manifest import read_image_manifest
from cxrcommon.resumable import EpochSampler, ResumableLoader, lightning_trained_batches
from vqgan.image_io import IMAGE_SUFFIXES, CXRReadError, is_dicom, load_cxr_tensor

logger = logging.getLogger(__name__)

PATIENT_COLUMN = "patient_id"


@dataclass(frozen=True)
class ImageRecord:
    """One image file, its patient (when known) and any extra manifest columns."""

    path: str
    patient_id: str | None = None
    fields: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def find_images(folder: str | Path, patient_id_pattern: str | None = None) -> list[ImageRecord]:
    """All PNG/JPEG/DICOM files below ``folder``, sorted; patient id from ``patient_id_pattern``
    (a regex whose first group, searched in the file name, is the id), else unknown."""
    folder = Path(folder)
    pattern = re.compile(patient_id_pattern) if patient_id_pattern else None
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        match = pattern.search(path.name) if pattern else None
        records.append(ImageRecord(str(path), match.group(1) if match else None))
    return records


def read_manifest(manifest: str | Path) -> list[ImageRecord]:
    """Rows of a CSV or JSONL manifest that name an image, as records (the format and the
    accepted path columns are those of `cxrcommon.manifest.read_image_manifest`)."""
    records = []
    for image in read_image_manifest(manifest):
        patient = image.row.get(PATIENT_COLUMN)
        patient = None if patient in (None, "") else str(patient)
        fields = {k: "" if v is None else str(v) for k, v in image.row.items()}
        records.append(ImageRecord(str(image.path), patient, fields))
    return records


def held_out_keys(manifest: str | Path) -> tuple[set[str], set[str]]:
    """Resolved paths and patient ids that a training run must never see.

    ``manifest`` is a CSV/JSONL manifest, e.g. the ``images.jsonl`` of an instruction build: when it
    has a ``split`` column, only its ``test`` rows count; otherwise every row does. Sharing one such
    file keeps the classifier, the tokenizer and the LLM off the same test patients.
    """
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise FileNotFoundError(f"held_out manifest not found: {manifest}")
    records = read_manifest(manifest)
    if any("split" in r.fields for r in records):
        records = [r for r in records if r.fields.get("split") == "test"]
    paths = {str(Path(r.path).resolve()) for r in records}
    patients = {r.patient_id for r in records if r.patient_id}
    return paths, patients


def drop_held_out(
    records: Sequence[ImageRecord], manifest: str | Path | None
) -> tuple[list[ImageRecord], int]:
    """``records`` without the images and patients of :func:`held_out_keys`; returns the count
    dropped."""
    if manifest is None:
        return list(records), 0
    paths, patients = held_out_keys(manifest)
    kept = [
        r
        for r in records
        if r.patient_id not in patients and str(Path(r.path).resolve()) not in paths
    ]
    return kept, len(records) - len(kept)


def load_records(
    data: str | Path, patient_id_pattern: str | None = None, limit: int | None = None, seed: int = 0
) -> list[ImageRecord]:
    """Records from a folder or manifest; ``limit`` keeps a seeded random subset."""
    data = Path(data).expanduser()
    if data.is_dir():
        records = find_images(data, patient_id_pattern)
    elif data.is_file():
        records = read_manifest(data)
    else:
        raise FileNotFoundError(
            f"data not found: {data} (give a folder of images or a .csv/.jsonl manifest)"
        )
    if limit is not None and limit < len(records):
        records = random.Random(seed).sample(records, limit)
    if not records:
        raise ValueError(f"{data}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return records


def header_ok(path: str | Path) -> str | None:
    """Cheap check (no pixel decode): ``None`` when the file looks readable, else the reason."""
    path = Path(path)
    if not path.is_file():
        return "file not found"
    try:
        if is_dicom(path):
            import pydicom

            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "Rows" not in dataset:
                return "DICOM without image attributes"
        else:
            from PIL import Image

            with Image.open(path) as image:
                image.verify()  # structure and checksums, without decoding pixels
    except Exception as err:  # noqa: BLE001 - any parser error means unreadable here
        return f"unreadable ({type(err).__name__}: {err})"
    return None


def drop_unreadable(records: Sequence[ImageRecord]) -> tuple[list[ImageRecord], list[str]]:
    """Split ``records`` into those passing :func:`header_ok` and the skipped paths (logged)."""
    kept, skipped = [], []
    for record in tqdm(records, desc="checking image files", unit="file", leave=False):
        reason = header_ok(record.path)
        if reason is None:
            kept.append(record)
        else:
            logger.warning("skipping %s: %s", record.path, reason)
            skipped.append(record.path)
    if skipped:
        logger.warning("skipped %d of %d image files (unreadable)", len(skipped), len(records))
    return kept, skipped


def split_by_patient(
    records: Sequence[ImageRecord], val_fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Seeded train/val split with every patient on one side; files without a patient id are
    their own group. ``val_fraction`` is the share of groups held out."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = [r.patient_id if r.patient_id is not None else f"file:{r.path}" for r in records]
    if val_fraction == 0.0 or len(set(groups)) < 2:
        return list(records), []
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(records)), groups=groups))
    # Seeded order, not manifest order: a manifest sorted by class would otherwise make a
    # truncated validation pass (limit_val_batches) see a single class.
    val_idx = np.random.default_rng(seed).permutation(val_idx)
    return [records[i] for i in sorted(train_idx)], [records[i] for i in val_idx]


class CXRImageDataset(Dataset):
    """Images as ``{"image": [1, S, S] in [0, 1], "path": str}`` plus ``extra(record)`` entries.

    A file that fails to decode is logged by path and the next readable one is returned instead,
    so one bad file never crashes a run (its index is remembered and not retried).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        extra: Callable[[ImageRecord], dict] | None = None,
    ) -> None:
        if not records:
            raise ValueError("CXRImageDataset needs at least one record")
        self.records = list(records)
        self.image_size = image_size
        self.transform = transform
        self.extra = extra
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.records)):
            candidate = (index + offset) % len(self.records)
            if candidate in self.failed:
                continue
            record = self.records[candidate]
            try:
                image = load_cxr_tensor(record.path, self.image_size)
            except CXRReadError as err:
                self.failed.add(candidate)
                logger.warning(
                    "skipping unreadable image (%d so far in this process): %s",
                    len(self.failed),
                    err,
                )
                continue
            if self.transform is not None:
                image = self.transform(image).clamp_(0.0, 1.0)
            item = {"image": image, "path": record.path}
            if self.extra is not None:
                item.update(self.extra(record))
            return item
        raise RuntimeError(f"none of the {len(self.records)} images could be read")


def light_augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    """Small affine jitter plus brightness/contrast, no flip (see :class:`CXRDataModule`)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomAffine(degrees=5, translate=(0.03, 0.03), scale=(0.95, 1.05)),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
        ]
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int = 0,
    owner: L.LightningDataModule | None = None,
) -> DataLoader:
    """The DataLoader both datamodules use. Training loaders (``shuffle``) drop a ragged last
    batch, and their order is fixed by (``seed``, epoch) so that a run stopped mid-epoch resumes
    with the batches it had not trained (`cxrcommon.resumable`; ``owner``'s trainer counts them).
    """
    common: dict = {
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
    if not shuffle:
        return DataLoader(dataset, batch_size=batch_size, **common)
    return ResumableLoader(
        dataset,
        sampler=EpochSampler(len(dataset), seed=seed),
        trained_batches=lightning_trained_batches(owner),
        batch_size=batch_size,
        drop_last=len(dataset) > batch_size,
        **common,
    )


class CXRDataModule(L.LightningDataModule):
    """Chest X-rays from a folder or a CSV/JSONL manifest, for tokenizer training.

    Batches are ``{"image": FloatTensor[B, 1, S, S] in [0, 1], "path": list[str]}``. Images are
    read as one channel, the shorter side resized to ``image_size`` and centre-cropped.
    Augmentation (train only) is a small rotation/shift/scale and brightness/contrast jitter;
    there is deliberately no horizontal flip: laterality matters in a chest X-ray (heart on the
    left, situs inversus, side markers), and a flipped film is a different, rare anatomy.

    Args:
        data: folder searched recursively for png/jpg/jpeg/dcm, or a .csv/.jsonl manifest whose
            ``image``/``path``/``filename`` column is relative to the manifest (optional
            ``patient_id`` column).
        image_size: side of the square crop fed to the model.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        val_fraction: share of patients (or files, when no patient id is known) held out.
        seed: seed of the split, of ``limit``'s subset and of the training order.
        augment: apply the light augmentation to training images.
        limit: use a random subset of this many images (quick runs).
        patient_id_pattern: for folders, a regex whose first group in the file name is the
            patient id (e.g. ``^(\\d+)_`` for NIH ChestX-ray14 names).
        check_files: drop files whose header does not parse at setup (fast; no decoding).
        held_out: manifest of test images/patients never to train or validate on (its ``test``
            rows when it has a ``split`` column), e.g. an instruction build's ``images.jsonl``.
    """

    def __init__(
        self,
        data: str,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        seed: int = 0,
        augment: bool = True,
        limit: int | None = None,
        patient_id_pattern: str | None = None,
        check_files: bool = True,
        held_out: str | None = None,
    ) -> None:
        super().__init__()
        if image_size < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError("image_size and batch_size must be positive, num_workers >= 0")
        self.save_hyperparameters()
        self.train_records: list[ImageRecord] = []
        self.val_records: list[ImageRecord] = []
        self.skipped: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        """Find the images, drop unreadable ones, and split by patient (idempotent)."""
        if self.train_records:
            return
        hp = self.hparams
        records = load_records(hp.data, hp.patient_id_pattern, hp.limit, hp.seed)
        records, n_held_out = drop_held_out(records, hp.held_out)
        if n_held_out:
            logger.info("%s: %d held-out test images left out", hp.data, n_held_out)
        if not records:
            raise ValueError(f"{hp.data}: every image is in the held-out set {hp.held_out}")
        if hp.check_files:
            records, self.skipped = drop_unreadable(records)
            if not records:
                raise ValueError(f"{hp.data}: none of the images is readable")
        self.train_records, self.val_records = split_by_patient(records, hp.val_fraction, hp.seed)
        logger.info(
            "%s: %d train / %d val images (%d skipped)",
            hp.data,
            len(self.train_records),
            len(self.val_records),
            len(self.skipped),
        )

    def train_dataloader(self) -> DataLoader:
        transform = light_augmentation() if self.hparams.augment else None
        dataset = CXRImageDataset(self.train_records, self.hparams.image_size, transform)
        hp = self.hparams
        return make_loader(dataset, hp.batch_size, hp.num_workers, True, hp.seed, owner=self)

    def val_dataloader(self) -> DataLoader | list:
        """The held-out images, or an empty list (Lightning then skips validation)."""
        if not self.val_records:
            return []
        dataset = CXRImageDataset(self.val_records, self.hparams.image_size)
        return make_loader(
            dataset, self.hparams.batch_size, self.hparams.num_workers, shuffle=False
        )
