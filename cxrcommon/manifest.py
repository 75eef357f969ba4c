"""The dataset folder format: image manifests (CSV or JSONL tables, one row per image) and a built
dataset's ``images.jsonl``, read and written in one place.

Training (``vqgan``), ``llmcxr report``, ``evaluate``, the token cache and the instruction build
all accept the same files: the same image-path column names, relative paths resolved the same
way, and one error, naming the file and line, for a line that cannot be read.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cxrcommon.files import atomic_write_text

logger = logging.getLogger(__name__)

IMAGE_PATH_COLUMNS = ("image", "path", "image_path", "filename", "file")
"""Columns naming an image file, in order of preference: a row's first non-empty one wins.
``path`` is the column of ``images.jsonl``, ``filename`` that of the ``labels.csv`` tables under
``shared/data``."""

MANIFEST_NAMES = ("labels.csv", "manifest.jsonl", "manifest.csv")
"""Manifest file names looked for when a source is given as a folder, in order of preference."""

IMAGES_FILE = "images.jsonl"
"""A built dataset's image list (layout in docs/architecture.md)."""

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv", ".csv.gz")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file (and the line, where known)."""


def manifest_kind(path: str | Path) -> str | None:
    """``"jsonl"`` or ``"csv"`` by the file name's suffix; None for anything else."""
    name = Path(path).name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def read_rows(
    path: str | Path,
    *,
    on_bad_line: Callable[[str], None] | None = None,
    encoding_errors: str = "strict",
) -> Iterator[dict[str, Any]]:
    """Rows of a CSV (``.csv``, ``.csv.gz``) or JSONL (``.jsonl``, ``.ndjson``) file as dicts.

    A JSONL line that is not JSON, or not a JSON object, raises `ManifestError` naming the file
    and line; with ``on_bad_line`` it is logged, skipped and ``on_bad_line(reason)`` is called
    instead. A CSV that cannot be parsed (not UTF-8, a field over csv's 128 KiB limit) raises
    `ManifestError`; ``encoding_errors="replace"`` reads undecodable bytes as U+FFFD instead.
    """
    for _, row in _numbered_rows(Path(path), on_bad_line, encoding_errors):
        yield row


def _numbered_rows(
    path: Path, on_bad_line: Callable[[str], None] | None = None, encoding_errors: str = "strict"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of `read_rows`."""
    kind = manifest_kind(path)
    if kind is None:
        raise ManifestError(f"{path}: unsupported manifest type (use .csv or .jsonl)")
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with (
        opener(path, "rb") as raw,
        io.TextIOWrapper(raw, encoding="utf-8-sig", errors=encoding_errors, newline="") as text,
    ):
        if kind == "csv":
            yield from _csv_rows(path, text)
        else:
            yield from _jsonl_rows(path, text, on_bad_line)


def _csv_rows(path: Path, text: io.TextIOWrapper) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text)
    try:
        for row in reader:
            yield reader.line_num, row
    except (csv.Error, UnicodeDecodeError) as err:
        raise ManifestError(
            f"{path}: not a readable CSV table near line {reader.line_num + 1} ({err})"
        ) from err


def _jsonl_rows(
    path: Path, text: io.TextIOWrapper, on_bad_line: Callable[[str], None] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        for number, line in enumerate(text, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                reason = None if isinstance(row, dict) else "JSON line is not an object"
            except json.JSONDecodeError:
                reason = "malformed JSON line"
            if reason is None:
                yield number, row
            elif on_bad_line is None:
                raise ManifestError(f"{path}, line {number}: {reason}")
            else:
                logger.warning("%s, line %d: %s, skipped", path, number, reason)
                on_bad_line(reason)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err})") from err


def image_value(row: Mapping[str, Any]) -> str:
    """The row's image path as written: its first non-empty `IMAGE_PATH_COLUMNS` value, or ""."""
    for column in IMAGE_PATH_COLUMNS:
        value = row.get(column)
        if value not in (None, "") and str(value).strip():
            return str(value).strip()
    return ""


def resolve_image_path(folder: str | Path, value: str | Path) -> Path:
    """``value`` as a path: absolute as given, else relative to the manifest's ``folder`` (or to
    its ``images/`` subfolder when only that one holds the file: the ``shared/data`` layout)."""
    path = Path(value)
    if path.is_absolute():
        return path
    direct = Path(folder) / path
    nested = Path(folder) / "images" / path
    return nested if not direct.exists() and nested.exists() else direct


@dataclass(frozen=True)
class ManifestImage:
    """One manifest row that names an image: the resolved path and the whole row."""

    path: Path
    row: dict[str, Any]


def read_image_manifest(manifest: str | Path) -> list[ManifestImage]:
    """The rows of a CSV/JSONL manifest that name an image, with resolved paths (rows whose path
    is empty are left out). `ManifestError` when the file has no rows, no image path column (one
    of `IMAGE_PATH_COLUMNS`), or a line that cannot be read."""
    manifest = Path(manifest)
    rows = list(read_rows(manifest))
    if not rows:
        raise ManifestError(f"{manifest}: manifest has no rows")
    if not any(column in row for row in rows for column in IMAGE_PATH_COLUMNS):
        raise ManifestError(
            f"{manifest}: no image path column (expected one of {', '.join(IMAGE_PATH_COLUMNS)})"
        )
    images = []
    for row in rows:
        value = image_value(row)
        if value:
            images.append(ManifestImage(resolve_image_path(manifest.parent, value), row))
    return images


def find_manifest(source: str | Path) -> Path:
    """The manifest of a source given as the file itself or as a folder holding one of
    `MANIFEST_NAMES`."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no {' or '.join(MANIFEST_NAMES)} in this folder")
    raise FileNotFoundError(f"labelled source not found: {path}")


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as a JSONL file, one object a line, atomically."""
    return atomic_write_text(path, "".join(json.dumps(dict(row)) + "\n" for row in rows))


# ----------------------------------------------------------------------------- images.jsonl
@dataclass(frozen=True)
class ListedImage:
    """One line of a built dataset's ``images.jsonl``. ``path`` is as written: absolute, relative
    to the dataset folder, or empty when the image is not available; ``split`` is empty when the
    image belongs to none."""

    image_id: str
    path: str = ""
    patient_id: str = ""
    view: str = ""
    split: str = ""

    def file(self, dataset_dir: str | Path) -> Path | None:
        """The image's path resolved against ``dataset_dir``; None when it has none."""
        if not self.path:
            return None
        path = Path(self.path)
        return path if path.is_absolute() else Path(dataset_dir) / path

    def to_dict(self) -> dict[str, str]:
        """The JSON object of this line (``split`` only when set)."""
        row = asdict(self)
        if not self.split:
            del row["split"]
        return row


def read_image_list(dataset_dir: str | Path) -> list[ListedImage]:
    """The entries of ``<dataset_dir>/images.jsonl`` in file order. FileNotFoundError when it is
    missing; `ManifestError` naming the line for a line that is not a JSON object with an
    ``image_id``; keys other than `ListedImage`'s fields are ignored."""
    listing = Path(dataset_dir) / IMAGES_FILE
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found: not a built instruction dataset folder")
    entries = []
    for number, row in _numbered_rows(listing):
        if not row.get("image_id"):
            raise ManifestError(f"{listing}, line {number}: no image_id")
        values = {f.name: row.get(f.name) for f in fields(ListedImage)}
        entries.append(ListedImage(**{k: "" if v is None else str(v) for k, v in values.items()}))
    return entries


def write_image_list(dataset_dir: str | Path, entries: Iterable[ListedImage]) -> Path:
    """Write ``<dataset_dir>/images.jsonl`` atomically, one entry a line in the given order."""
    return write_jsonl(Path(dataset_dir) / IMAGES_FILE, (e.to_dict() for e in entries))
