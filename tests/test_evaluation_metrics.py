"""Evaluation metric functions against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcxr.evaluation import labelling, metrics, nlg

CLASSES = ["A", "B", "C"]
# A: ordinary class; B: no positives (AUROC undefined); C: all-equal scores.
Y_TRUE = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1], [0, 0, 1]])
Y_SCORE = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.4, 0.5, 0.5], [0.6, 0.7, 0.5]])
Y_PRED = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 1]])


def test_classification_metrics_match_hand_computed_values() -> None:
    out = metrics.classification_metrics(Y_TRUE, Y_SCORE, Y_PRED, CLASSES)
    per = out["per_label"]
    assert per["A"]["auroc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered
    assert math.isnan(per["B"]["auroc"])
    assert per["C"]["auroc"] == pytest.approx(0.5)  # all-equal scores
    assert out["auroc"]["macro"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["auroc"]["n_undefined"] == 1
    assert out["auroc"]["weighted"] == pytest.approx((0.75 * 2 + 0.5 * 3) / 5)
    # micro: 5 positives, 7 negatives; 22 of 35 pairs ordered (ties count half).
    assert out["auroc"]["micro"] == pytest.approx(22 / 35)
    assert per["A"]["f1"] == pytest.approx(0.5)
    assert per["B"]["f1"] == 0.0
    assert per["C"]["f1"] == pytest.approx(6 / 7)
    assert out["f1"]["macro"] == pytest.approx((0.5 + 0 + 6 / 7) / 3)
    assert out["f1"]["micro"] == pytest.approx(8 / 11)
    assert out["f1"]["weighted"] == pytest.approx((0.5 * 2 + 6 / 7 * 3) / 5)
    assert [per[c]["support"] for c in CLASSES] == [2, 0, 3]


def test_classification_metrics_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="equal"):
        metrics.classification_metrics(Y_TRUE, Y_SCORE[:2], Y_PRED, CLASSES)


def test_binarize_labels_uncertain_and_unmentioned() -> None:
    rows = [{"A": 1, "C": -1}, {"B": 0}]
    assert metrics.binarize_labels(rows, CLASSES).tolist() == [[1, 0, 0], [0, 0, 0]]
    assert metrics.binarize_labels(rows, CLASSES, uncertain_as_positive=True).tolist() == [
        [1, 0, 1],
        [0, 0, 0],
    ]


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    values = np.random.default_rng(1).normal(size=200)
    stat = lambda idx: float(values[idx].mean())
    low, high = metrics.bootstrap_ci(stat, len(values), n_boot=200, seed=3)
    assert low < values.mean() < high
    assert (low, high) == metrics.bootstrap_ci(stat, len(values), n_boot=200, seed=3)
    const = metrics.bootstrap_ci(lambda idx: 2.0, 10, n_boot=20)
    assert const == (2.0, 2.0)
    assert all(math.isnan(v) for v in metrics.bootstrap_ci(lambda idx: math.nan, 5, n_boot=5))


def test_frechet_distance_known_gaussians() -> None:
    a = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])  # mean 0, cov diag(2/3, 2/3)
    b = 2 * a + np.array([3.0, 4.0])  # mean (3, 4), cov diag(8/3, 8/3)
    # |mu|^2 + sum (sqrt(2/3) - sqrt(8/3))^2 = 25 + 4/3
    assert metrics.frechet_distance(a, b) == pytest.approx(25 + 4 / 3, rel=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(a[:1], b)


@pytest.mark.parametrize("n_a,n_b", [(40, 30), (5, 4)])  # more and fewer samples than dimensions
def test_frechet_distance_matches_scipy_sqrtm(n_a: int, n_b: int) -> None:
    from scipy import linalg

    rng = np.random.default_rng(n_a)
    a = rng.normal(size=(n_a, 8))
    b = rng.normal(size=(n_b, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 1.0
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = (
        ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
        - 2 * np.trace(np.real(linalg.sqrtm(cov_a @ cov_b)))
    )
    assert metrics.frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)


def test_image_similarity_metrics() -> None:
    zeros = np.zeros((32, 32))
    assert metrics.psnr(zeros, zeros + 0.1) == pytest.approx(20.0)
    img = np.random.default_rng(0).random((32, 32))
    assert metrics.mean_pairwise_ssim([img, img, img]) == pytest.approx(1.0)
    assert metrics.mean_pairwise_ssim([img, 1 - img]) < 0
    assert math.isnan(metrics.mean_pairwise_ssim([img]))
    cos = metrics.cosine_similarity(np.array([[1.0, 0], [1, 1]]), np.array([[2.0, 0], [1, -1]]))
    assert cos.tolist() == pytest.approx([1.0, 0.0])


def test_answer_metrics() -> None:
    assert metrics.yes_no("Yes, there is an effusion.") == "yes"
    assert metrics.yes_no("no.") == "no"
    assert metrics.yes_no("Possibly") is None
    assert metrics.yes_no("No acute cardiopulmonary abnormality.") == "no"
    assert metrics.yes_no("No acute cardiopulmonary abnormality.", strict=True) is None
    assert metrics.yes_no("No. There is no pneumothorax.", strict=True) == "no"
    assert metrics.yes_no("yes", strict=True) == "yes"


def test_vqa_scoring_counts_and_confusion() -> None:
    from llmcxr.evaluation.vqa_task import score_answers

    refs = ["Yes.", "No. Heart normal.", "No.", "No acute abnormality.", "Left pleural effusion."]
    answers = ["yes, small", "Yes", "maybe", "No acute disease.", "pleural effusion"]
    out = score_answers(refs, answers, n_boot=10)
    assert out["n_yes_no"] == 3 and out["n_open"] == 2
    assert out["yes_no_accuracy"] == pytest.approx(1 / 3)
    assert out["confusion"]["counts"] == [[1, 0, 0], [1, 0, 1]]  # rows yes/no; cols yes/no/other
    assert out["open_token_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics.token_f1("small left effusion", "Left pleural effusion.") == pytest.approx(2 / 3)
    assert metrics.token_f1("heart", "lungs") == 0.0


def test_bleu_hand_computed() -> None:
    short = nlg.bleu(["a b c"], ["a b c d e"])
    assert short["bleu_1"] == pytest.approx(math.exp(1 - 5 / 3))  # brevity penalty only
    assert short["bleu_4"] == pytest.approx(0.0, abs=1e-12)  # no 4-gram in the hypothesis
    repeated = nlg.bleu(["the cat the cat"], ["The cat sat."])
    assert repeated["bleu_1"] == pytest.approx(0.5)  # clipped unigram precision 2/4
    assert repeated["bleu_2"] == pytest.approx(math.sqrt(0.5 * 1 / 3))


def test_rouge_l_and_cider_d_hand_computed() -> None:
    assert nlg.rouge_l(["a b c"], ["a x c"])[0] == pytest.approx(2 / 3)
    # doc 1 shares one of two unigrams (cosine 1/2) and no bigram; doc 2 matches orders 1-2.
    mean, per_item = nlg.cider_d(["a b", "d e"], ["a c", "d e"])
    assert per_item == pytest.approx([1.25, 5.0])
    assert mean == pytest.approx(3.125)
    mean, _ = nlg.cider_d(["w x y z", "p q r s"], ["w x y z", "p q r s"])
    assert mean == pytest.approx(10.0)
    with pytest.raises(ValueError, match="references"):
        nlg.nlg_metrics(["a"], [])


def test_label_matrix_uses_the_labeler_and_the_impression_section() -> None:
    classes = ["Pleural Effusion", "Pneumonia", "Cardiomegaly"]
    report = "FINDINGS: The heart is enlarged.\nIMPRESSION: Pleural effusion. May represent pneumonia."
    assert labelling.impression_section(report) == "Pleural effusion. May represent pneumonia."
    full = labelling.label_matrix([report], classes)
    assert full.tolist() == [[1, 0, 1]]  # uncertain pneumonia counts as negative by default
    impression = labelling.label_matrix([report], classes, section="impression", uncertain_as_positive=True)
    assert impression.tolist() == [[1, 1, 0]]
    assert labelling.label_matrix(["No pleural effusion."], classes).tolist() == [[0, 0, 0]]
