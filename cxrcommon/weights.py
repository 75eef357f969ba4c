"""Comparing the tensor shapes a saved config describes with those a weights file holds.

Loaders check this before they build a network from a user's config: the config is the file's own
word, and a config that asks for layers its weights do not hold would otherwise have them
allocated first (`vqgan.tokenizer`, `llmcxr.model_folder`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def shape_mismatch(
    expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]
) -> str | None:
    """None when both name the same tensors with the same shapes; else how many differ and the
    first of them (by name), e.g. ``"3 tensors differ (a.weight: config [4, 2], weights [2, 2])"``.
    A tensor present on one side only shows as ``[]`` on the other."""
    names = expected.keys() | found.keys()
    differ = sorted(n for n in names if _shape(expected.get(n)) != _shape(found.get(n)))
    if not differ:
        return None
    name = differ[0]
    count = f"{len(differ)} tensors differ" if len(differ) > 1 else "1 tensor differs"
    return (
        f"{count} ({name}: config {_shape(expected.get(name)) or []}, "
        f"weights {_shape(found.get(name)) or []})"
    )


def _shape(shape: Sequence[int] | None) -> list[int] | None:
    return None if shape is None else [int(n) for n in shape]
