"""CSV tables of the report corpora (``.csv`` or ``.csv.gz``), read through the one manifest
reader (`cxrcommon.manifest.read_rows`), with a clear error when a column is missing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cxrcommon.manifest import read_rows


def iter_csv_rows(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[dict[str, str]]:
    """Rows of a ``.csv`` or ``.csv.gz`` file as dicts (undecodable bytes read as U+FFFD);
    raises if a ``required`` column is absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    rows = read_rows(path, encoding_errors="replace")
    first = next(rows, None)
    if first is None:
        return
    missing = [c for c in required if c not in first]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    yield first
    yield from rows
