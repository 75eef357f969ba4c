"""A generic corpus: a CSV or JSONL file with one row per image (image path + report text).

Columns: an image path (any of `cxrcommon.manifest.IMAGE_PATH_COLUMNS`), ``report`` (or
``text``); optional ``image_id``, ``patient_id``, ``study_id``, ``view``, ``study_date``,
``split``. Rows sharing a ``study_id`` (or, without one, the same report text and patient) form
one study. Relative image paths resolve against the file's folder (`cxrcommon.manifest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from cxrcommon.manifest import image_value, read_rows, resolve_image_path
from instructions.reports import ImageRef, ReadStats, Report, parse_sections

_TEXT_KEYS = ("report", "text")
_SPLITS = {"train": "train", "val": "val", "validate": "val", "valid": "val", "test": "test"}


def _first(row: dict[str, object], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return str(value)
    return ""


def read_table(
    path: str | Path, source: str = "csv", stats: ReadStats | None = None
) -> Iterator[Report]:
    """Yield one ``Report`` per study of a CSV/JSONL table; rows without report text are counted and
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report table not found: {path}")
    stats = stats if stats is not None else ReadStats()
    studies: dict[str, Report] = {}
    rows = read_rows(path, on_bad_line=stats.skip, encoding_errors="replace")
    for number, row in enumerate(rows):
        text = _first(row, _TEXT_KEYS)
        if not text.strip():
            stats.skip("no report text")
            continue
        image = image_value(row)
        image_id = _first(row, ("image_id",)) or (Path(image).stem if image else "")
        patient = _first(row, ("patient_id", "subject_id")) or image_id or f"row{number}"
        study = _first(row, ("study_id",)) or f"{patient}|{hash_text(text)}"
        report = studies.get(study)
        if report is None:
            sections = parse_sections(text)
            if not ({"FINDINGS", "IMPRESSION"} & set(sections)) and "PREAMBLE" in sections:
                sections["FINDINGS"] = sections.pop(
                    "PREAMBLE"
                )  # an unsectioned report is all findings
            split = _SPLITS.get(_first(row, ("split",)).lower(), "")
            date = "".join(ch for ch in _first(row, ("study_date", "StudyDate")) if ch.isdigit())
            report = Report(study, patient, source, sections, study_time=date, split=split)
            studies[study] = report
            stats.read += 1
        if image:
            # Absolute, so images.jsonl stays valid wherever the dataset folder is read from.
            resolved = resolve_image_path(path.parent, image).resolve()
            report.images.append(
                ImageRef(image_id, str(resolved), _first(row, ("view", "ViewPosition")).upper())
            )
    yield from studies.values()


def hash_text(text: str) -> str:
    """A short stable hash of a text (used to group rows of one study)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
