"""MIMIC-CXR reports (``mimic-cxr-reports``: ``files/pXX/pSUBJECT/sSTUDY.txt``) joined with
MIMIC-CXR-JPG tables.

Optional tables: the metadata CSV (``dicom_id, subject_id, study_id, ViewPosition, StudyDate,
StudyTime``), the official split CSV (``dicom_id, study_id, subject_id, split``) and the CheXpert
label CSV (``subject_id, study_id`` + the 14 classes). Access to MIMIC-CXR needs PhysioNet
credentials; nothing here downloads it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from instructions.corpora.csvfiles import iter_csv_rows
from instructions.labeler import CHEXPERT_CLASSES
from instructions.reports import ImageRef, ReadStats, Report, parse_sections

logger = logging.getLogger(__name__)

SOURCE = "mimic"
_SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "valid": "val", "test": "test"}


def _study_time(date: str, time: str) -> str:
    if not date.strip():
        return ""
    seconds = int(float(time)) if time.strip() else 0
    return f"{int(float(date)):08d}{seconds:06d}"


def _read_images(
    metadata_csv: Path, images_root: Path | None
) -> tuple[dict[str, list[ImageRef]], dict[str, str]]:
    images: dict[str, list[ImageRef]] = defaultdict(list)
    times: dict[str, str] = {}
    required = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
    for row in iter_csv_rows(metadata_csv, required):
        subject, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
        path = ""
        if images_root is not None:
            path = str(
                images_root
                / "files"
                / f"p{subject[:2]}"
                / f"p{subject}"
                / f"s{study}"
                / f"{dicom}.jpg"
            )
        images[study].append(
            ImageRef(image_id=dicom, path=path, view=row["ViewPosition"].strip().upper())
        )
        stamp = _study_time(row["StudyDate"], row["StudyTime"])
        if stamp and (study not in times or stamp < times[study]):
            times[study] = stamp
    return images, times


def _read_splits(split_csv: Path) -> dict[str, str]:
    splits: dict[str, str] = {}
    for row in iter_csv_rows(split_csv, ("study_id", "split")):
        name = _SPLIT_NAMES.get(row["split"].strip().lower())
        if name is None:
            raise ValueError(
                f"{split_csv}: unknown split {row['split']!r} for study {row['study_id']}"
            )
        splits[row["study_id"]] = name
    return splits


def _read_chexpert(chexpert_csv: Path) -> dict[str, dict[str, int]]:
    labels: dict[str, dict[str, int]] = {}
    for row in iter_csv_rows(chexpert_csv, ("study_id", *CHEXPERT_CLASSES)):
        values: dict[str, int] = {}
        for name in CHEXPERT_CLASSES:
            cell = row[name].strip()
            if cell and not math.isnan(float(cell)):
                values[name] = int(float(cell))
        labels[row["study_id"]] = values
    return labels


def read_mimic(
    reports_dir: str | Path,
    metadata_csv: str | Path | None = None,
    split_csv: str | Path | None = None,
    chexpert_csv: str | Path | None = None,
    images_root: str | Path | None = None,
    stats: ReadStats | None = None,
    limit: int | None = None,
) -> Iterator[Report]:
    """Yield MIMIC-CXR studies found under ``reports_dir`` (sorted by path), with images when tables
    are given.

    Files that are not UTF-8 or have no text are counted in ``stats`` and skipped.
    """
    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir():
        raise FileNotFoundError(f"MIMIC-CXR reports folder not found: {reports_dir}")
    stats = stats if stats is not None else ReadStats()
    images, times = (
        _read_images(Path(metadata_csv), Path(images_root) if images_root else None)
        if metadata_csv
        else ({}, {})
    )
    splits = _read_splits(Path(split_csv)) if split_csv else {}
    chexpert = _read_chexpert(Path(chexpert_csv)) if chexpert_csv else {}
    files = sorted(p for p in reports_dir.rglob("s*.txt") if p.parent.name.startswith("p"))
    if limit is not None:
        files = files[:limit]
    for path in tqdm(files, desc="MIMIC-CXR reports", unit="report", leave=False):
        study, subject = path.stem[1:], path.parent.name[1:]
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            logger.warning("skipping %s: not UTF-8", path)
            stats.skip("not UTF-8")
            continue
        if not text.strip():
            stats.skip("empty file")
            continue
        stats.read += 1
        yield Report(
            report_id=study,
            patient_id=subject,
            source=SOURCE,
            sections=parse_sections(text),
            images=images.get(study, []),
            study_time=times.get(study, ""),
            split=splits.get(study, ""),
            reference_labels=chexpert.get(study),
        )
