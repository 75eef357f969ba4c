"""benchmarks/report_reactivity.py --histogram-swap: partners, the swap, intensity statistics and
the paired change, checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_modules import load_benchmark

from llmcxr.evaluation.metrics import auroc_or_nan


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("report_reactivity")


def test_partners_share_the_source_and_have_the_other_status(bench) -> None:
    source = ["nih", "nih", "nih", "covid", "covid", "peds"]
    abnormal = [1, 0, 0, 1, 0, 1]
    partners = bench.swap_partners(source, abnormal, seed=1)
    assert partners[0] in (1, 2) and partners[1] == 0 and partners[2] == 0
    assert partners[3] == 4 and partners[4] == 3
    assert partners[5] == -1  # its source has no normal film
    assert bench.swap_partners(source, abnormal, seed=1) == partners  # seeded


def test_intensity_features_by_hand(bench) -> None:
    image = np.array([[0.0, 0.25], [0.5, 1.0]])
    features = bench.intensity_features(image)
    # mean 0.4375; std sqrt(mean of squared deviations); linear-interpolated percentiles
    expected_std = np.sqrt(((image - 0.4375) ** 2).mean())
    np.testing.assert_allclose(
        features, [0.4375, expected_std, 0.0375, 0.1875, 0.375, 0.625, 0.925]
    )


def test_intensity_alone_finds_a_histogram_shortcut_and_not_a_missing_one(bench) -> None:
    rng = np.random.default_rng(0)
    abnormal = np.array([1, 0] * 20)
    shifted = np.stack(
        [bench.intensity_features(rng.random((8, 8)) * 0.5 + 0.3 * a) for a in abnormal]
    )
    assert auroc_or_nan(abnormal, bench.intensity_predictions(shifted, abnormal, 0)) > 0.95
    alike = np.stack([bench.intensity_features(rng.random((8, 8))) for _ in abnormal])
    assert auroc_or_nan(abnormal, bench.intensity_predictions(alike, abnormal, 0)) < 0.8
    assert np.isnan(bench.intensity_predictions(alike[:3], np.array([1, 1, 1]), 0)).all()


def test_swap_change_by_hand(bench) -> None:
    abnormal = np.array([1, 1, 0, 0])
    before = np.array([2.0, 1.0, -1.0, -2.0])  # AUROC 1
    after = np.array([-1.0, 0.0, 1.0, 0.5])  # AUROC 0: the reading reverses
    change = bench.swap_change(abnormal, before, after, n_boot=200, seed=0)
    assert change["auroc_change"] == -1.0
    assert change["score_shift_abnormal"] == pytest.approx(((-3.0) + (-1.0)) / 2)
    assert change["score_shift_normal"] == pytest.approx((2.0 + 2.5) / 2)
    low, high = change["auroc_change_ci95"]
    assert low <= -1.0 <= high <= 0.0
    same = bench.swap_change(abnormal, before, before + 0.1, n_boot=200, seed=0)
    assert same["auroc_change"] == 0.0 and same["auroc_change_ci95"] == [0.0, 0.0]


def _run(original: list[float], swapped: list[float], partners: dict[str, str]) -> dict:
    ids = sorted(partners)
    return {
        "per_image": {i: {"report": o, "question": -o} for i, o in zip(ids, original)},
        "histogram_swap": {
            "partners": partners,
            "per_image_swapped": {i: {"report": s, "question": -s} for i, s in zip(ids, swapped)},
        },
    }


def test_paired_comparison_by_hand(bench) -> None:
    partners = {"x/a1": "x/n1", "x/a2": "x/n2", "x/n1": "x/a1", "x/n2": "x/a2"}
    labels = {"x/a1": True, "x/a2": True, "x/n1": False, "x/n2": False}
    # sorted ids: a1, a2, n1, n2. a reads the pattern (AUROC 1 before and after the swap);
    # b reads the histogram (AUROC 1 before, 0 after).
    a = _run([2.0, 1.0, -1.0, -2.0], [1.5, 1.0, -1.0, -1.5], partners)
    b = _run([2.0, 1.0, -1.0, -2.0], [-2.0, -1.0, 1.0, 2.0], partners)
    out = bench.paired_swap_comparison(a, b, labels, n_boot=200, seed=0)
    assert out["films"] == 4
    report = out["report_references"]["pooled"]
    assert report["original_a_minus_b"]["value"] == 0.0
    assert report["swapped_a_minus_b"]["value"] == 1.0
    assert report["swap_change_a_minus_b"]["value"] == 1.0  # 0 - (-1)
    question = out["normal_question"]["x"]  # the question's scores are the negatives: AUROC 0
    assert question["swapped_a_minus_b"]["value"] == -1.0
    # a film whose partner differs between the runs is left out
    b["histogram_swap"]["partners"] = {**partners, "x/a1": "x/n2"}
    assert bench.paired_swap_comparison(a, b, labels, n_boot=50, seed=0)["films"] == 3
    with pytest.raises(ValueError, match="share no film"):
        bench.paired_swap_comparison(a, _run([0.0] * 4, [0.0] * 4, {}), labels, 50, 0)
