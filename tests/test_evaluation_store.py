"""The resumable result store and the batch loop that isolates rejected items."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from llmcxr.evaluation.store import ResultStore, map_chunk, run_pending


def _double(items: Sequence[int], start: int = 0) -> list[int]:
    if 13 in items:
        raise ValueError("prompt is too long: 13")
    return [2 * i for i in items]


def test_map_chunk_isolates_the_rejected_item() -> None:
    out = map_chunk(_double, [1, 13, 2])
    assert out == [(1, 2, None), (13, None, "prompt is too long: 13"), (2, 4, None)]
    with pytest.raises(RuntimeError):
        map_chunk(lambda part: (_ for _ in ()).throw(RuntimeError("not a bad input")), [1])


def test_run_pending_skips_stored_items_and_records_errors(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "rows.jsonl")
    seen: list[int] = []

    def generate(part: Sequence[int], start: int) -> list[int]:
        seen.extend(part)
        return _double(part)

    kw = {
        "key": str,
        "generate": generate,
        "make_row": lambda i, r: {"value": r},
        "batch_size": 2,
        "desc": "t",
    }
    rows = run_pending(store, [1, 2, 13], **kw)
    assert rows == [
        {"key": "1", "value": 2},
        {"key": "2", "value": 4},
        {"key": "13", "error": "prompt is too long: 13"},
    ]
    seen.clear()
    again = run_pending(ResultStore(tmp_path / "rows.jsonl"), [1, 2, 13, 4], **kw)
    assert seen == [4]  # only the new item is computed; stored ones (errors included) are not
    assert again[-1] == {"key": "4", "value": 8}


def test_store_drops_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    ResultStore(path).add({"key": "a", "value": 1})
    with path.open("a") as handle:
        handle.write('{"key": "b", "val')
    store = ResultStore(path)
    assert list(store.rows) == ["a"]
    assert path.read_text() == '{"key": "a", "value": 1}\n'


def test_limit_subset_is_seeded_ordered_and_nested() -> None:
    from llmcxr.evaluation.runner import subset

    items = list(range(100))
    small, large = subset(items, 10, seed=0), subset(items, 30, seed=0)
    assert len(small) == 10 and small == sorted(small)
    assert small != items[:10]  # not simply the head of a possibly sorted split
    assert set(small) <= set(large)
    assert subset(items, 10, seed=0) == small and subset(items, 10, seed=1) != small
    assert subset(items, None, seed=0) == items and subset(items, 500, seed=0) == items


def test_written_results_follow_the_umask(tmp_path) -> None:
    import os
    import stat

    from cxrcommon.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
