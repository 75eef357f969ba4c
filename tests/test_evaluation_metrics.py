"""Evaluation metric functions against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcxr.evaluation import labelling, metrics, nih_task, nlg, reference_readers
from llmcxr.evaluation.report_task import label_matched_references

CLASSES = ["A", "B", "C"]
# A: ordinary class; B: no positives (AUROC undefined); C: all-equal scores.
Y_TRUE = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1], [0, 0, 1]])
Y_SCORE = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.4, 0.5, 0.5], [0.6, 0.7, 0.5]])
Y_PRED = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 1]])


def test_classification_metrics_match_hand_computed_values() -> None:
    out = metrics.classification_metrics(Y_TRUE, Y_SCORE, Y_PRED, CLASSES, min_positives=1)
    per = out["per_label"]
    assert per["A"]["auroc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered
    assert math.isnan(per["B"]["auroc"])
    assert per["C"]["auroc"] == pytest.approx(0.5)  # all-equal scores
    assert out["auroc"]["macro"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["auroc"]["macro_all"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["auroc"]["n_undefined"] == 1
    assert out["auroc"]["weighted"] == pytest.approx((0.75 * 2 + 0.5 * 3) / 5)
    # micro: 5 positives, 7 negatives; 22 of 35 pairs ordered (ties count half).
    assert out["auroc"]["micro"] == pytest.approx(22 / 35)
    assert per["A"]["f1"] == pytest.approx(0.5)
    assert per["B"]["f1"] == 0.0
    assert per["C"]["f1"] == pytest.approx(6 / 7)
    assert out["f1"]["macro_all"] == pytest.approx((0.5 + 0 + 6 / 7) / 3)
    assert out["f1"]["micro"] == pytest.approx(8 / 11)
    assert out["f1"]["weighted"] == pytest.approx((0.5 * 2 + 6 / 7 * 3) / 5)
    assert [per[c]["support"] for c in CLASSES] == [2, 0, 3]


def test_headline_macro_averages_classes_with_enough_positives() -> None:
    # Supports are A 2, B 0, C 3: with min_positives 3 only C counts, with 2 A and C.
    only_c = metrics.classification_metrics(Y_TRUE, Y_SCORE, Y_PRED, CLASSES, min_positives=3)
    assert only_c["headline_classes"] == ["C"]
    assert only_c["auroc"]["macro"] == pytest.approx(0.5)
    assert only_c["f1"]["macro"] == pytest.approx(6 / 7)
    assert only_c["f1"]["macro_all"] == pytest.approx((0.5 + 0 + 6 / 7) / 3)
    two = metrics.classification_metrics(Y_TRUE, Y_SCORE, Y_PRED, CLASSES, min_positives=2)
    assert two["headline_classes"] == ["A", "C"]
    assert two["f1"]["macro"] == pytest.approx((0.5 + 6 / 7) / 2)
    assert two["auroc"]["macro"] == pytest.approx((0.75 + 0.5) / 2)
    none = metrics.classification_metrics(Y_TRUE, Y_SCORE, Y_PRED, CLASSES)  # default 5
    assert none["headline_classes"] == [] and math.isnan(none["f1"]["macro"])
    # The intervals keep the full set's headline classes: F1 of C alone, constant here.
    ci = metrics.headline_intervals(Y_TRUE, Y_SCORE, Y_PRED, min_positives=3, n_boot=50)
    assert ci["f1_macro"][0] <= 6 / 7 <= ci["f1_macro"][1]


def test_knn_precision_recall_hand_computed() -> None:
    real = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])  # 1-NN radii 1, 1, 2
    fake = np.array([[0.5, 0.0], [10.0, 0.0]])  # 1-NN radii 9.5, 9.5
    out = metrics.knn_precision_recall(real, fake, k=1)
    assert out["precision"] == pytest.approx(0.5)  # (0.5, 0) lies in a real ball, (10, 0) in none
    assert out["recall"] == pytest.approx(1.0)  # every real point is within 9.5 of (0.5, 0)
    # k = 2: real radii 3, 2, 3; fake radii need a third sample: too few, undefined.
    assert math.isnan(metrics.knn_precision_recall(real, fake, k=2)["precision"])
    grid = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # 2-NN radii 2, 1, 1, 2
    same = metrics.knn_precision_recall(grid, grid + [0.0, 1.5], k=2)
    assert same == {"precision": 1.0, "recall": 1.0}  # shifted by 1.5 <= the radius 2 at the ends
    assert metrics.knn_precision_recall(grid, grid + [0.0, 2.5], k=2)["precision"] == 0.0


def test_kernel_inception_distance_hand_computed() -> None:
    # D = 1: k(x, y) = (x y + 1)^3. Within real {0, 1}: k(0, 1) = 1; within fake {0, 2}: 1;
    # across: k(0,0) = k(0,2) = k(1,0) = 1, k(1,2) = 27, mean 7.5. KID = 1 + 1 - 2 * 7.5.
    assert metrics.kernel_inception_distance(
        np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    ) == (pytest.approx(-13.0))
    # Unequal sizes, fake {0, 1, 2}: within (1 + 1 + 27) / 3; across (1+1+1 + 1+8+27) / 6 = 6.5.
    kid = metrics.kernel_inception_distance(
        np.array([[0.0], [1.0]]), np.array([[0.0], [1.0], [2.0]])
    )
    assert kid == pytest.approx(1 + 29 / 3 - 13)
    # Unbiased: near 0 for two large samples of one distribution, far for different ones.
    rng = np.random.default_rng(0)
    same = metrics.kernel_inception_distance(rng.normal(size=(300, 4)), rng.normal(size=(200, 4)))
    shifted = metrics.kernel_inception_distance(
        rng.normal(size=(300, 4)), rng.normal(1.0, size=(200, 4))
    )
    assert abs(same) < 0.05 < shifted
    assert math.isnan(metrics.kernel_inception_distance(np.zeros((1, 4)), np.zeros((3, 4))))


def test_no_finding_baseline_hand_computed() -> None:
    classes = ["Atelectasis", "No Finding"]
    truth = np.array([[1, 0], [0, 1], [0, 1], [1, 1]])
    out = nih_task.constant_label_metrics(
        truth, classes, ["No Finding"], min_positives=2, n_boot=20
    )
    # "No Finding" said for all 4: TP 3, FP 1 -> F1 6/7; Atelectasis never said -> F1 0.
    assert out["per_label"]["No Finding"]["f1"] == pytest.approx(6 / 7)
    assert out["per_label"]["Atelectasis"]["f1"] == 0.0
    assert out["f1"]["micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # TP 3, FP 1, FN 2
    assert out["f1"]["macro"] == pytest.approx(3 / 7)
    assert out["auroc"]["macro"] == pytest.approx(0.5)  # a constant score ranks nothing


def test_nih_labels_map_to_eleven_chexpert_classes() -> None:
    classes = labelling.nih_classes()
    assert len(classes) == 11 and {"Lung Opacity", "Lung Lesion", "Pleural Other"} <= set(classes)
    truth = labelling.nih_label_matrix(
        [["Effusion"], ["Mass", "Nodule"], ["Emphysema"], ["Infiltration"]], classes
    )
    col = classes.index
    assert truth.sum(axis=1).tolist() == [1, 1, 0, 1]
    assert (
        truth[0, col("Pleural Effusion")]
        == truth[1, col("Lung Lesion")]
        == truth[3, col("Lung Opacity")]
        == 1
    )


def test_nih_records_cover_every_nih_image_of_the_split(tmp_path) -> None:
    from evaluation_fixtures import make_tiny_dataset

    from llmcxr.evaluation.data import EvalSplit

    split = EvalSplit(make_tiny_dataset(tmp_path / "data", n_test=2))
    records = nih_task.nih_records(split)
    assert [r.id for r in records] == ["test-4-r", "test-5-r", "image:nih_chestxray14/img6.png"]
    findings = nih_task.read_findings(nih_task.labels_csv_for(records, None))
    assert findings["img6.png"] == ["Cardiomegaly", "Edema"] and findings["img4.png"] == [
        "Effusion"
    ]


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


def test_mean_difference_interval_resamples_each_set_on_its_own() -> None:
    # Constant sets: every resample's difference is 0.7 - 0.5 exactly, whatever the sizes.
    low, high = metrics.mean_difference_interval([0.7] * 3, [0.5] * 5, n_boot=50)
    assert low == pytest.approx(0.2) and high == pytest.approx(0.2)
    # b has no spread, so the interval is a's mean interval shifted by b's mean.
    a = np.random.default_rng(2).normal(1.0, 1.0, size=300)
    diff = metrics.mean_difference_interval(a, [0.25] * 4, n_boot=400, seed=1)
    assert diff[0] < a.mean() - 0.25 < diff[1]
    assert 0.15 < diff[1] - diff[0] < 0.3  # ~ 2 x 1.96 x 1 / sqrt(300) = 0.23
    assert diff == metrics.mean_difference_interval(a, [0.25] * 4, n_boot=400, seed=1)
    assert all(math.isnan(v) for v in metrics.mean_difference_interval([], [1.0]))


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
        ((a.mean(0) - b.mean(0)) ** 2).sum()
        + np.trace(cov_a)
        + np.trace(cov_b)
        - 2 * np.trace(np.real(linalg.sqrtm(cov_a @ cov_b)))
    )
    assert metrics.frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)


def test_ssim_is_the_gaussian_window_definition_the_tokenizer_benchmark_uses() -> None:
    # Flat images: no variance, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = 0.01^2.
    a, b = np.full((32, 32), 0.2), np.full((32, 32), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1)
    assert metrics.ssim(a, b) == pytest.approx(expected, abs=2e-4)  # float32 convolutions
    # A textured pair: the value benchmarks/tokenizer.py computes with torchmetrics' defaults.
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.image import structural_similarity_index_measure

    rng = np.random.default_rng(1)
    x = rng.random((48, 48))
    y = np.clip(x + 0.1 * rng.standard_normal((48, 48)), 0, 1)
    batch = [torch.tensor(v, dtype=torch.float32)[None, None] for v in (y, x)]
    expected = float(structural_similarity_index_measure(*batch, data_range=1.0))
    assert metrics.ssim(x, y) == pytest.approx(expected, abs=1e-5)


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


def test_nlg_scores_against_every_reference() -> None:
    # "a b c" against ["a b", "a b c d"]: every n-gram is in the second reference; the closest
    # reference lengths (2 and 4) tie and nltk takes the shorter, so no brevity penalty.
    multi = nlg.bleu(["a b c"], [["a b", "a b c d"]])
    assert multi["bleu_1"] == pytest.approx(1.0) and multi["bleu_2"] == pytest.approx(1.0)
    assert nlg.bleu(["a b c"], ["a b"])["bleu_1"] == pytest.approx(2 / 3)  # one reference: 2 of 3
    assert nlg.rouge_l(["a b c"], [["x y z", "a x c"]]) == [pytest.approx(2 / 3)]  # the best one
    # CIDEr-D averages over references: a perfect and a disjoint one give half the perfect score.
    _, perfect = nlg.cider_d(["w x y z", "p q r s"], [["w x y z"], ["p q r s"]])
    _, half = nlg.cider_d(["w x y z", "p q r s"], [["w x y z", "k l m n"], ["p q r s", "k l m n"]])
    assert perfect == pytest.approx([10.0, 10.0])
    assert half[0] == pytest.approx(perfect[0] / 2, rel=0.3)


def test_label_matched_references() -> None:
    pool = ["Normal chest.", "Moderate right pleural effusion.", "Cardiomegaly.", "Normal chest."]
    refs = label_matched_references(
        ["No acute cardiopulmonary process.", "Small left pleural effusion."],
        pool,
        ["No Finding", "Pleural Effusion", "Cardiomegaly"],
        section="full",
        uncertain_as_positive=False,
    )
    assert refs == [
        ["No acute cardiopulmonary process.", "Normal chest."],
        ["Small left pleural effusion.", "Moderate right pleural effusion."],
    ]


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
    report = (
        "FINDINGS: The heart is enlarged.\nIMPRESSION: Pleural effusion. May represent pneumonia."
    )
    assert labelling.impression_section(report) == "Pleural effusion. May represent pneumonia."
    full = labelling.label_matrix([report], classes)
    assert full.tolist() == [[1, 0, 1]]  # uncertain pneumonia counts as negative by default
    impression = labelling.label_matrix(
        [report], classes, section="impression", uncertain_as_positive=True
    )
    assert impression.tolist() == [[1, 1, 0]]
    assert labelling.label_matrix(["No pleural effusion."], classes).tolist() == [[0, 0, 0]]


def test_nearest_ssim_takes_the_closest_reference() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random((32, 32)), rng.random((32, 32))
    flat = np.full((32, 32), 0.5)
    # a query equal to one reference scores 1 (the best), whatever the others are
    assert metrics.nearest_ssim([a, b], [flat, b, a]) == pytest.approx([1.0, 1.0])
    got = metrics.nearest_ssim([a], [flat, b])[0]
    # float32 sums in another order than torchmetrics': equal to ~1e-7
    assert got == pytest.approx(max(metrics.ssim(a, flat), metrics.ssim(a, b)), abs=2e-6)
    # leave one out: each image against the others only
    loo = metrics.nearest_ssim([a, b, flat], [a, b, flat], leave_one_out=True)
    assert loo[0] == pytest.approx(max(metrics.ssim(a, b), metrics.ssim(a, flat)), abs=2e-6)
    assert (loo < 1.0).all()


def test_nearest_ssim_equals_torchmetrics_on_each_pair() -> None:
    # the separable, cross-term-only computation must give torchmetrics' SSIM for every pair:
    # smooth and noisy images, a dark and a bright one, a non-square shape
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:40, 0:28] / 40.0
    images = [
        rng.random((40, 28)),
        np.clip(0.5 + 0.4 * np.sin(6 * x) * np.cos(4 * y), 0, 1),
        np.clip(0.1 * rng.random((40, 28)), 0, 1),
        np.clip(0.9 - 0.3 * y + 0.05 * rng.standard_normal((40, 28)), 0, 1),
    ]
    for k in range(len(images)):
        queries, refs = [images[k]], images[:k] + images[k + 1 :]
        want = max(metrics.ssim(images[k], r) for r in refs)
        assert metrics.nearest_ssim(queries, refs)[0] == pytest.approx(want, abs=2e-6)


def test_tile_shuffle_moves_whole_tiles_and_keeps_the_pixels() -> None:
    image = np.arange(36, dtype=np.float32).reshape(6, 6)  # 2 x 2 grid: tiles of 3 x 3
    out = metrics.tile_shuffle(image, 2, np.random.default_rng(3))  # permutation [3, 2, 1, 0]
    cells = [(r, c) for r in range(2) for c in range(2)]
    tiles = {(r, c): image[r * 3 : r * 3 + 3, c * 3 : c * 3 + 3] for r, c in cells}
    placed = [out[r * 3 : r * 3 + 3, c * 3 : c * 3 + 3] for r, c in cells]
    # every output tile is exactly one input tile, each used once
    sources = [next(k for k, t in tiles.items() if np.array_equal(t, p)) for p in placed]
    assert sorted(sources) == sorted(tiles)
    assert sorted(out.ravel().tolist()) == image.ravel().tolist()
    # by hand: output tile 0 (top left) is input tile 3 (bottom right), tile 1 is tile 2
    np.testing.assert_array_equal(out[:3, :3], image[3:, 3:])
    np.testing.assert_array_equal(out[:3, 3:], image[3:, :3])
    np.testing.assert_array_equal(image, np.arange(36).reshape(6, 6))  # input untouched


def test_tile_shuffle_keeps_the_remainder_rows_and_rejects_tiny_images() -> None:
    image = np.arange(35, dtype=np.float32).reshape(7, 5)  # grid 2: tiles 3 x 2, row 6 / col 4 stay
    out = metrics.tile_shuffle(image, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(out[6], image[6])
    np.testing.assert_array_equal(out[:, 4], image[:, 4])
    with pytest.raises(ValueError, match="no 4 x 4 tiles"):
        metrics.tile_shuffle(np.zeros((3, 3)), 4, np.random.default_rng(0))


def test_gradient_energy_of_a_ramp_is_its_slope() -> None:
    ramp = np.tile(np.arange(8, dtype=np.float64) * 0.1, (5, 1))  # +0.1 per column, flat rows
    assert metrics.gradient_energy(ramp) == pytest.approx(0.1)
    assert metrics.gradient_energy(np.full((4, 4), 0.3)) == 0.0


def test_lowpass_keeps_flat_images_and_removes_sharpness() -> None:
    flat = np.full((16, 16), 0.4, dtype=np.float32)
    np.testing.assert_allclose(metrics.lowpass(flat, 2.0), flat, atol=1e-6)
    checker = (np.indices((16, 16)).sum(axis=0) % 2).astype(np.float32)  # sharpest pattern
    smooth = metrics.lowpass(checker, 2.0)
    assert smooth.shape == checker.shape
    assert metrics.gradient_energy(smooth) < 0.05 * metrics.gradient_energy(checker)
    assert smooth.mean() == pytest.approx(checker.mean(), abs=0.02)  # the blur keeps the mean


def test_classifier_reader_scores_hand_computed() -> None:
    classes = ["Lung Lesion", "No Finding", "Pleural Effusion", "Pneumothorax"]
    probs = np.array([[0.2, 0.7, 0.1, 0.3], [0.9, 0.1, 0.4, 0.8]])
    # Lung Lesion = max(Mass, Nodule); Pneumothorax unknown -> 0; No Finding from its own label.
    with_nf = reference_readers.classifier_reader_scores(
        probs, ["Mass", "Nodule", "Effusion", "No Finding"], classes
    )
    assert with_nf.tolist() == [[0.7, 0.3, 0.1, 0.0], [0.9, 0.8, 0.4, 0.0]]
    # Without a "No Finding" label: one minus the largest finding probability.
    without = reference_readers.classifier_reader_scores(
        probs[:, :3], ["Mass", "Nodule", "Effusion"], classes
    )
    assert without[:, 1] == pytest.approx([1 - 0.7, 1 - 0.9])


def test_nih_summary_scores_the_classifier_reference_readers() -> None:
    from types import SimpleNamespace

    labels = ["Effusion", "Mass", "No Finding"]
    findings = {"a.png": ["Effusion"], "b.png": ["No Finding"], "c.png": ["Mass"]}
    right = {"a.png": [0.9, 0.1, 0.1], "b.png": [0.1, 0.1, 0.9], "c.png": [0.1, 0.9, 0.1]}
    reference = [
        {"image_id": f"nih_chestxray14/{name}", "real_probs": p, "recon_probs": [0.1, 0.1, 0.9]}
        for name, p in right.items()
    ]
    rows = [
        {"image_id": f"nih_chestxray14/{name}", "generated": ["No acute disease."]}
        for name in findings
    ]
    config = SimpleNamespace(
        split="test",
        report_section="impression",
        uncertain_as_positive=False,
        min_positives=1,
        bootstrap=10,
        seed=0,
    )
    ctx = SimpleNamespace(config=config, classifier=SimpleNamespace(labels=labels))
    out = nih_task.summarize(ctx, rows, findings, reference)
    # The real-film reader names exactly the truth: micro F1 1. The reconstruction reader says
    # "No Finding" for all three: TP 1, FP 2, FN 2 -> 2 / (2 + 2 + 2).
    assert out["classifier_real"]["f1"]["micro"] == pytest.approx(1.0)
    assert out["classifier_reconstruction"]["f1"]["micro"] == pytest.approx(2 / 6)
    assert out["classifier_reconstruction"]["f1"]["micro"] == pytest.approx(
        out["baseline_no_finding"]["f1"]["micro"]
    )
    assert "classifier_real" not in nih_task.summarize(ctx, rows, findings)


def test_paired_macro_auroc_difference_by_hand() -> None:
    truth = np.array([[1], [1], [0], [0]])
    perfect = np.array([[0.9], [0.8], [0.1], [0.2]])
    # positives score 0 and 1, negatives 0 and 1: AUROC (0.5 + 0 + 1 + 0.5) / 4 = 0.5
    blind = np.array([[0.0], [1.0], [0.0], [1.0]])
    out = metrics.paired_macro_auroc_difference(
        truth, perfect, blind, min_positives=2, n_boot=200, seed=0
    )
    assert (out["auroc_macro_a"], out["auroc_macro_b"]) == (1.0, 0.5)
    assert out["difference"] == pytest.approx(0.5) and out["headline_classes"] == 1
    low, high = out["difference_ci95"]
    assert -0.5 <= low <= 0.5 <= high <= 1.0
    same = metrics.paired_macro_auroc_difference(
        truth, blind, blind, min_positives=2, n_boot=200, seed=0
    )
    assert same["difference"] == 0.0 and same["difference_ci95"] == (0.0, 0.0)


def test_nearest_ssim_across_reference_chunks() -> None:
    """More references than one chunk: the best one found in a later chunk wins, and leave one
    out skips each image's own index whichever chunk it falls in."""
    rng = np.random.default_rng(4)
    n = 2 * metrics.SSIM_REFERENCE_CHUNK + 5
    refs = [rng.random((24, 24)) for _ in range(n)]
    query = np.clip(refs[-1] + 0.05 * rng.standard_normal((24, 24)), 0, 1)
    want = max(metrics.ssim(query, r) for r in refs)
    assert metrics.nearest_ssim([query], refs)[0] == pytest.approx(want, abs=2e-6)
    loo = metrics.nearest_ssim(refs, refs, leave_one_out=True)
    for i in (0, metrics.SSIM_REFERENCE_CHUNK, n - 1):
        others = max(metrics.ssim(refs[i], r) for j, r in enumerate(refs) if j != i)
        assert loo[i] == pytest.approx(others, abs=2e-6)
