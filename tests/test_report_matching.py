"""benchmarks/report_reactivity.py --score matching: pairs of different pools, gaps, summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("report_reactivity")


def test_pairs_join_records_of_different_pools(bench) -> None:
    pools = ["a", "a", "b", "c", "a"]
    pairs = bench.matching_pairs(pools, limit=10, seed=3)
    assert sorted(i for i, _ in pairs) == [0, 1, 2, 3, 4]
    assert all(pools[i] != pools[j] for i, j in pairs)
    assert len(bench.matching_pairs(pools, limit=2, seed=3)) == 2
    assert bench.matching_pairs(pools, limit=10, seed=3) == pairs  # seeded
    assert bench.matching_pairs(["a", "a"], limit=10, seed=0) == []


class _FakeLLM:
    """Log-probability of any report after a film: a fixed number per film path."""

    def __init__(self, logp: dict[str, float]) -> None:
        self.logp = logp

    def score_responses(self, images: list[str], responses: list[str]) -> torch.Tensor:
        assert len(responses) == 1
        return torch.tensor([[self.logp[path]] for path in images])


def test_gaps_and_summary_by_hand(bench) -> None:
    rows = [("i0", "p0", "r0", "a"), ("i1", "p1", "r1", "b"), ("i2", "p2", "r2", "c")]
    llm = _FakeLLM({"p0": -10.0, "p1": -12.0, "p2": -9.0})
    gaps = bench.matching_gaps(llm, rows, [(0, 1), (1, 2), (2, 0)])
    assert gaps.tolist() == [2.0, -3.0, 1.0]
    summary = bench.matching_summary(gaps, n_boot=200, seed=0)
    assert summary["mean_gap_nats"] == 0.0
    assert summary["own_film_likelier"] == pytest.approx(2 / 3, abs=1e-4)
    low, high = summary["own_film_likelier_ci95"]
    assert 0.0 <= low <= 2 / 3 <= high <= 1.0
    assert summary["records"] == 3 and np.isfinite(summary["mean_gap_ci95"]).all()
