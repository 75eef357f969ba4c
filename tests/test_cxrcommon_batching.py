"""cxrcommon.batching.chunks: the one chunker (pipeline, report CLI, evaluation)."""

from __future__ import annotations

import pytest

from cxrcommon.batching import chunks


def test_chunks_cover_the_items_in_order_with_their_start() -> None:
    assert list(chunks("abcdefg", 3)) == [(0, "abc"), (3, "def"), (6, "g")]
    assert list(chunks([1, 2], 5)) == [(0, [1, 2])]
    assert list(chunks([], 2)) == []


@pytest.mark.parametrize("size", [0, -1])
def test_a_batch_size_below_one_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(chunks([1, 2, 3], size))
