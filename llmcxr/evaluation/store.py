"""Append-only JSONL of finished evaluation items, so an interrupted run resumes where it
stopped."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from cxrcommon.batching import chunks
from cxrcommon.files import atomic_write_text

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class ResultStore:
    """Rows keyed by ``row["key"]`` in ``path``; a key present here is never computed again.

    Each row is written as one line and flushed to disk before the next item starts. A line cut
    short by a crash is dropped on the next open (and the file rewritten without it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text()
        lines = text.splitlines()
        complete = text.endswith("\n")
        dropped = 0
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if i == len(lines) - 1 and not complete:
                dropped += 1  # a last line without its newline may be a half-written row
                continue
            self.rows[row["key"]] = row
        if dropped:
            logger.warning(
                "%s: dropped %d incomplete line(s) from an interrupted run", self.path, dropped
            )
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows.values()))

    def done(self, key: str) -> bool:
        """True when the item ``key`` has a stored result."""
        return key in self.rows

    def add(self, row: dict[str, Any]) -> None:
        """Append a finished item (must carry ``key``) and flush it to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows[row["key"]] = row

    def select(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        """Stored rows for ``keys`` in that order (keys without a result are skipped)."""
        return [self.rows[k] for k in keys if k in self.rows]


def map_chunk(
    generate: Callable[[Sequence[T]], Sequence[R]], chunk: Sequence[T]
) -> list[tuple[T, R | None, str | None]]:
    """Run ``generate`` on a whole chunk; when the model rejects it (a ``ValueError`` such as an
    over-long prompt), retry item by item so one bad record costs only itself.

    Returns ``(item, result, error)`` triples; ``error`` is the rejection message or None.
    """
    try:
        return [(item, result, None) for item, result in zip(chunk, generate(chunk), strict=True)]
    except ValueError as batch_error:
        if len(chunk) == 1:
            logger.warning("item skipped: %s", batch_error)
            return [(chunk[0], None, str(batch_error))]
    out: list[tuple[T, R | None, str | None]] = []
    for item in chunk:
        out += map_chunk(generate, [item])
    return out


def run_pending(
    store: ResultStore,
    items: Sequence[T],
    *,
    key: Callable[[T], str],
    generate: Callable[[Sequence[T], int], Sequence[R]],
    make_row: Callable[[T, R], dict[str, Any]],
    batch_size: int,
    desc: str,
) -> list[dict[str, Any]]:
    """Compute the items that have no stored result, in batches, and return all rows in order.

    ``generate(batch, start)`` returns one result per item (``start`` is the batch's position,
    used to derive seeds); ``make_row(item, result)`` turns it into the stored row (its ``key`` is
    set here). Items the model rejects are stored as ``{"key", "error"}`` rows.
    """
    todo = [item for item in items if not store.done(key(item))]
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="item") as bar:
        for start, chunk in chunks(todo, batch_size):
            for item, result, error in map_chunk(
                lambda part, start=start: generate(part, start), chunk
            ):
                row = {"error": error} if error else make_row(item, result)
                store.add({"key": key(item), **row})
            bar.update(len(chunk))
    return store.select(key(item) for item in items)
