"""Opening CSV files that may be gzip-compressed, with a clear error when a column is missing."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path


def iter_csv_rows(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[dict[str, str]]:
    """Rows of a ``.csv`` or ``.csv.gz`` file as dicts; raises if a ``required`` column is absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with (
        opener(path, "rb") as raw,
        io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="") as handle,
    ):
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        yield from reader
