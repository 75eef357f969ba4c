"""Labelled chest X-rays from several sources, as multi-label targets with a "known" mask.

Each source is a ``labels.csv`` (or any CSV/JSONL manifest, or a folder holding one) whose
``labels`` (or ``finding``) column lists findings separated by ``|`` or ``,``. Sources annotate
different findings (the COVID-19 sets say nothing about nodules), so every target comes with a
mask: a label is *known* for a row when the row is positive for it, when its source annotates
that label at all (it appears in the source), or when the row is "No Finding" (a normal film is
negative for every finding). Unknown labels are left out of the loss (masked BCE) and of AUROC.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from cxrcommon.manifest import find_manifest
from vqgan.data import (
    CXRImageDataset,
    ImageRecord,
    drop_held_out,
    drop_unreadable,
    light_augmentation,
    make_loader,
    read_manifest,
    split_by_patient,
)

logger = logging.getLogger(__name__)

NO_FINDING = "No Finding"
DEFAULT_LABELS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "COVID-19",
    NO_FINDING,
]
"""NIH ChestX-ray14's 14 findings, COVID-19, and No Finding."""

DEFAULT_LABEL_MAP = {"normal": NO_FINDING}
"""Raw label -> label, for raw names that do not match a label after normalisation."""

IGNORED_RAW_LABELS = frozenset({"", "unknown", "todo"})
LABEL_COLUMNS = ("labels", "finding")
_SUFFIX = re.compile(r"\s*[(;].*$")  # "PNEUMONIA (viral)" -> "PNEUMONIA"
_PATIENT_IN_TEXT = re.compile(r"patient_id=([^;\s]+)")


@dataclass(frozen=True)
class LabelledRecord:
    """An image record with its target vector and known-mask (same order as the label set)."""

    record: ImageRecord
    target: tuple[float, ...]
    known: tuple[float, ...]


class LabelEncoder:
    """Maps raw label strings of one source to the configured label set (see module docstring)."""

    def __init__(self, labels: Sequence[str], label_map: dict[str, str] | None = None) -> None:
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be a non-empty list without repeats, got {list(labels)}")
        self.labels = list(labels)
        self._by_name = {name.lower(): name for name in self.labels}
        mapping = DEFAULT_LABEL_MAP if label_map is None else label_map
        self._map = {raw.lower(): label for raw, label in mapping.items()}
        unknown = sorted(set(self._map.values()) - set(self.labels))
        if unknown:
            raise ValueError(f"label_map targets {unknown} are not in labels {self.labels}")
        self.unmatched: set[str] = set()

    def match(self, raw: str) -> str | None:
        """The label for one raw name, or ``None`` (ignored or unknown; unknown names
        remembered)."""
        key = raw.strip().lower()
        if key in IGNORED_RAW_LABELS:
            return None
        for candidate in (key, _SUFFIX.sub("", key)):
            if candidate in self._map:
                return self._map[candidate]
            if candidate in self._by_name:
                return self._by_name[candidate]
        self.unmatched.add(raw.strip())
        return None

    def encode_source(self, records: Sequence[ImageRecord], source: str) -> list[LabelledRecord]:
        """Targets and masks for every record of one source; rows with no usable label are
        dropped."""
        positives: list[set[str]] = []
        for record in records:
            column = next((c for c in LABEL_COLUMNS if c in record.fields), None)
            raw = record.fields.get(column, "") if column else ""
            matched = {self.match(part) for part in re.split(r"[|,]", raw)}
            positives.append(matched - {None})
        annotated = set().union(*positives) if positives else set()
        encoded = []
        for record, found in zip(records, positives, strict=True):
            if not found:
                continue
            normal = found == {NO_FINDING}
            target = tuple(float(name in found) for name in self.labels)
            known = tuple(
                float(normal or name in annotated or name in found) for name in self.labels
            )
            encoded.append(LabelledRecord(record, target, known))
        dropped = len(records) - len(encoded)
        if dropped:
            logger.info(
                "%s: %d of %d rows have no label in the label set", source, dropped, len(records)
            )
        return encoded


def with_patient_ids(records: Sequence[ImageRecord], source: str) -> list[ImageRecord]:
    """Fill missing patient ids from ``patient_id=...`` in a ``text`` column; prefix ids with the
    source so equal ids of different data sets are different patients."""
    out = []
    for record in records:
        patient = record.patient_id
        if patient is None:
            match = _PATIENT_IN_TEXT.search(record.fields.get("text", ""))
            patient = match.group(1) if match else None
        out.append(
            ImageRecord(record.path, f"{source}:{patient}" if patient else None, record.fields)
        )
    return out


def deduplicate(records: Sequence[LabelledRecord]) -> list[LabelledRecord]:
    """Drop byte-identical images (the COVID-19 sets overlap), keeping the first occurrence."""
    seen: set[str] = set()
    kept = []
    for item in records:
        try:
            digest = hashlib.sha1(Path(item.record.path).read_bytes()).hexdigest()
        except OSError:
            digest = item.record.path  # unreadable: let the readability check report it
        if digest not in seen:
            seen.add(digest)
            kept.append(item)
    if len(kept) < len(records):
        logger.info("dropped %d duplicate images across sources", len(records) - len(kept))
    return kept


class _Targets:
    """Per-path target and mask lookup for :class:`CXRImageDataset` (picklable for workers)."""

    def __init__(self, items: Sequence[LabelledRecord]) -> None:
        self.by_path = {item.record.path: (item.target, item.known) for item in items}

    def __call__(self, record: ImageRecord) -> dict[str, torch.Tensor]:
        target, known = self.by_path[record.path]
        return {"target": torch.tensor(target), "mask": torch.tensor(known)}


class LabelledCXRDataModule(L.LightningDataModule):
    """Multi-label CXR classification data from one or more labelled sources.

    Batches: ``{"image": [B, 1, S, S] in [0, 1], "path": list[str], "target": [B, L],
    "mask": [B, L]}`` with 1 in ``mask`` where the label is known. Split by patient where known.

    Args:
        sources: ``labels.csv``/manifest files, or folders holding one (e.g.
            ``../shared/data/nih_chestxray14``).
        labels: the label set (model outputs); default NIH's 14 findings, COVID-19, No Finding.
        label_map: raw label -> label for names that do not match a label case-insensitively
            (after dropping a `` (...)`` or ``;...`` suffix); default maps "Normal" to No Finding.
        image_size: side of the centre crop (the classifier sees 224 px either way).
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        val_fraction: share of patients (files where unknown) held out for validation.
        seed: split, subset and training-order seed.
        augment: light affine and brightness/contrast jitter on training images (no flip).
        limit: random subset of this many labelled images (quick runs).
        dedup: drop byte-identical images across sources before splitting.
        check_files: drop files whose header does not parse (fast; no decoding).
        held_out: manifest of test images/patients never to train or validate on (its ``test``
            rows when it has a ``split`` column), e.g. an instruction build's ``images.jsonl``.
    """

    def __init__(
        self,
        sources: list[str],
        labels: list[str] | None = None,
        label_map: dict[str, str] | None = None,
        image_size: int = 224,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = True,
        limit: int | None = None,
        dedup: bool = True,
        check_files: bool = True,
        held_out: str | None = None,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("sources must name at least one labelled data set")
        # `labels` stays out of the hparams: the model's `labels` are linked from the resolved
        # set, and Lightning refuses to log the two when they differ (None vs the default list).
        self.save_hyperparameters(ignore=["labels"])
        self.encoder = LabelEncoder(labels or DEFAULT_LABELS, label_map)
        self.train_items: list[LabelledRecord] = []
        self.val_items: list[LabelledRecord] = []
        self.skipped: list[str] = []

    @property
    def label_names(self) -> list[str]:
        """The label set, in output order (linked to the model's ``labels``)."""
        return self.encoder.labels

    def setup(self, stage: str | None = None) -> None:
        """Read and encode every source, drop duplicates and unreadable files, split by patient."""
        if self.train_items:
            return
        hp = self.hparams
        items: list[LabelledRecord] = []
        for source in hp.sources:
            manifest = find_manifest(source)
            name = manifest.parent.name
            records, n_held_out = drop_held_out(
                with_patient_ids(read_manifest(manifest), name), hp.held_out
            )
            if n_held_out:
                logger.info("%s: %d held-out test images left out", name, n_held_out)
            items.extend(self.encoder.encode_source(records, name))
        if self.encoder.unmatched:
            logger.warning(
                "raw labels not in the label set (ignored): %s", sorted(self.encoder.unmatched)
            )
        if hp.dedup:
            items = deduplicate(items)
        if hp.limit is not None and hp.limit < len(items):
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(hp.seed))
            items = [items[i] for i in order[: hp.limit].tolist()]
        if hp.check_files:
            kept, self.skipped = drop_unreadable([item.record for item in items])
            keep = {r.path for r in kept}
            items = [item for item in items if item.record.path in keep]
        if not items:
            raise ValueError(f"no labelled, readable images in {hp.sources}")
        by_path = {item.record.path: item for item in items}
        train, val = split_by_patient([item.record for item in items], hp.val_fraction, hp.seed)
        self.train_items = [by_path[r.path] for r in train]
        self.val_items = [by_path[r.path] for r in val]
        logger.info(
            "labelled data: %d train / %d val images", len(self.train_items), len(self.val_items)
        )

    def train_dataloader(self) -> DataLoader:
        transform = light_augmentation() if self.hparams.augment else None
        return self._loader(self.train_items, transform, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Held-out images, or an empty list (Lightning then skips validation)."""
        return self._loader(self.val_items, None, shuffle=False) if self.val_items else []

    def _loader(self, items: Sequence[LabelledRecord], transform, shuffle: bool) -> DataLoader:
        dataset = CXRImageDataset(
            [item.record for item in items],
            self.hparams.image_size,
            transform,
            extra=_Targets(items),
        )
        hp = self.hparams
        return make_loader(dataset, hp.batch_size, hp.num_workers, shuffle, hp.seed, owner=self)
