"""benchmarks/drawing_likelihood.py: the mismatched report comes from another label pool."""

from __future__ import annotations

import pytest
from benchmark_modules import load_benchmark

from llmcxr.evaluation.data import EvalRecord

bench = load_benchmark("drawing_likelihood")


def _record(i: int, pool: str) -> EvalRecord:
    return EvalRecord(f"r{i}", "report_to_cxr", "Draw.", f"report {i}", "", f"img{i}", None, pool)


def test_other_pool_is_the_next_record_of_a_different_pool_cyclically() -> None:
    records = [_record(0, "a"), _record(1, "a"), _record(2, "b"), _record(3, "a")]
    assert [bench.other_pool(records, i).id for i in range(4)] == ["r2", "r2", "r3", "r2"]


def test_one_pool_has_nothing_to_contrast() -> None:
    with pytest.raises(ValueError, match="same report pool"):
        bench.other_pool([_record(0, "a"), _record(1, "a")], 0)
