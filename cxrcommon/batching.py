"""Batching a sequence: the one chunker the pipeline, the CLI and the evaluation use."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[tuple[int, Sequence[T]]]:
    """``(start index, items[start : start + size])`` pairs covering ``items`` in order; a
    ``size`` below 1 is a ValueError (a batch size from a user)."""
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield start, items[start : start + size]
