"""Pure metric functions for the evaluation protocols (numpy / scikit-learn / scipy / torchmetrics).

Label conventions (shared by every protocol, and written into ``metrics.json``):

- A report's labels come from ``instructions.label_report``: 1 positive, 0 negative, -1 uncertain,
  class absent = not mentioned.
- For F1 a class counts as positive only when its label is 1; uncertain (-1) counts as negative
  by default (``uncertain_as_positive=True`` makes it positive); unmentioned counts as negative.
- AUROC needs a score. With several sampled reports per image the score of a class is the
  fraction of samples that label it positive; with a single report it is the binary label itself
  (AUROC then equals balanced accuracy, as in LLM-CXR's label-based evaluation).
- AUROC of a class whose ground truth has only one value is undefined: NaN, excluded from the
  macro and weighted means, and counted in ``n_undefined``.
- F1 of a class with no positives in truth or prediction is 0 (scikit-learn ``zero_division=0``,
  the convention the published macro F1 figures follow).
- Headline macro AUROC / F1 average only the classes with at least ``MIN_POSITIVES`` positives in
  the truth: on a small test split a class with one or two positives swings the mean by chance.
  The LLM-CXR-style macro over every class is kept as ``macro_all``; micro averages are
  dominated by the most frequent class ("No Finding") and are reported as a footnote only.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import linalg
from sklearn.metrics import f1_score, roc_auc_score

if TYPE_CHECKING:
    import torch

LABEL_CONVENTIONS = {
    "positive": "label 1 (from instructions.label_report)",
    "uncertain": "label -1 counts as negative unless uncertain_as_positive is set",
    "unmentioned": "a class the labeler does not mention counts as negative",
    "auroc_score": (
        "fraction of sampled reports that label the class positive when samples_per_image > 1, "
        "else the binary label itself (AUROC = balanced accuracy)"
    ),
    "auroc_undefined": (
        "NaN when the truth has one value only; excluded from macro/weighted, counted"
    ),
    "f1_zero_division": "F1 is 0 for a class with no positives in truth and prediction",
    "headline_macro": (
        "macro AUROC / F1 over the classes with >= min_positives positives in the truth; "
        "macro_all averages every class (AUROC: every defined class)"
    ),
    "micro": "footnote only: dominated by the most frequent class; a constant report scores high",
}

MIN_POSITIVES = 5
"""Classes with fewer positives than this are left out of the headline macro averages."""


def binarize_labels(
    labels: Sequence[Mapping[str, int]],
    classes: Sequence[str],
    *,
    uncertain_as_positive: bool = False,
) -> np.ndarray:
    """Label dicts -> binary matrix [N, C] under the conventions above."""
    positive = {1, -1} if uncertain_as_positive else {1}
    out = np.zeros((len(labels), len(classes)), dtype=np.int64)
    for i, row in enumerate(labels):
        for j, name in enumerate(classes):
            out[i, j] = int(row.get(name) in positive)
    return out


def auroc_or_nan(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC of one binary problem; NaN when ``y_true`` holds a single value."""
    y_true = np.asarray(y_true).ravel()
    if np.unique(y_true).size < 2:
        return math.nan
    return float(roc_auc_score(y_true, np.asarray(y_score, dtype=np.float64).ravel()))


def headline_columns(y_true: np.ndarray, min_positives: int = MIN_POSITIVES) -> list[int]:
    """Indices of the classes with at least ``min_positives`` positives in ``y_true`` [N, C]."""
    support = np.asarray(y_true).sum(axis=0)
    return [j for j in range(support.shape[0]) if support[j] >= min_positives]


def classification_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    *,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:
    """Per-label, micro, macro and support-weighted AUROC and F1 over ``classes``.

    ``y_true`` and ``y_pred`` are binary [N, C]; ``y_score`` is [N, C] (probabilities or labels).
    ``macro`` averages the headline classes (>= ``min_positives`` positives), ``macro_all``
    every class.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if not (y_true.shape == y_pred.shape == y_score.shape) or y_true.ndim != 2:
        raise ValueError(
            f"classification_metrics needs equal [N, C] arrays, got {y_true.shape}, "
            f"{y_score.shape}, {y_pred.shape}"
        )
    if y_true.shape[1] != len(classes):
        raise ValueError(f"got {y_true.shape[1]} columns for {len(classes)} classes")
    support = y_true.sum(axis=0)
    aurocs = np.array([auroc_or_nan(y_true[:, j], y_score[:, j]) for j in range(len(classes))])
    f1s = f1_score(y_true, y_pred, average=None, zero_division=0, labels=list(range(len(classes))))
    defined = ~np.isnan(aurocs)
    weights = support[defined]
    headline = headline_columns(y_true, min_positives)
    per_label = {
        name: {"auroc": float(aurocs[j]), "f1": float(f1s[j]), "support": int(support[j])}
        for j, name in enumerate(classes)
    }
    return {
        "n_items": int(y_true.shape[0]),
        "per_label": per_label,
        "min_positives": min_positives,
        "headline_classes": [classes[j] for j in headline],
        "auroc": {
            "micro": auroc_or_nan(y_true, y_score),
            "macro": _nan_mean(aurocs[headline]),
            "macro_all": _nan_mean(aurocs),
            "weighted": (
                float((aurocs[defined] * weights).sum() / weights.sum())
                if weights.sum() > 0
                else math.nan
            ),
            "n_undefined": int((~defined).sum()),
        },
        "f1": {
            "micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "macro": float(f1s[headline].mean()) if headline else math.nan,
            "macro_all": float(f1s.mean()) if len(classes) else math.nan,
            "weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        },
    }


def _nan_mean(values: np.ndarray) -> float:
    """Mean of the defined (non-NaN) values; NaN when there are none."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if (~np.isnan(values)).any() else math.nan


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n_items: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over items resampled with
    replacement.

    Resamples where the statistic is undefined (NaN) are dropped; (NaN, NaN) when none is left.
    """
    if n_items < 1 or n_boot < 1:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n_items, n_items)) for _ in range(n_boot)])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (Heusel et al. 2017).

    ``d = |mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr(sqrt(C_a C_b))``. Only the trace of the matrix
    square root is needed, so scipy's slow ``sqrtm`` is avoided: ``tr(sqrt(C_a C_b))`` is the sum
    of the square roots of the eigenvalues of ``C_a C_b``. With fewer samples than dimensions
    these are the squared singular values of ``X_a X_b^T / sqrt((n_a-1)(n_b-1))`` (centred
    features), an ``n_a x n_b`` problem; otherwise of the symmetric ``sqrt(C_a) C_b sqrt(C_a)``.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"frechet_distance needs [N, D] arrays of equal D, got {a.shape}, {b.shape}"
        )
    if min(len(a), len(b)) < 2:
        raise ValueError("frechet_distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    xa, xb = (a - mu_a) / math.sqrt(len(a) - 1), (b - mu_b) / math.sqrt(len(b) - 1)
    trace_a, trace_b = float((xa**2).sum()), float((xb**2).sum())
    if min(len(a), len(b)) <= a.shape[1]:
        trace_sqrt = float(linalg.svdvals(xa @ xb.T).sum())
    else:
        eig_a, vec_a = linalg.eigh(xa.T @ xa)
        sqrt_a = (vec_a * np.sqrt(np.clip(eig_a, 0, None))) @ vec_a.T
        product_eigs = linalg.eigvalsh(sqrt_a @ (xb.T @ xb) @ sqrt_a)
        trace_sqrt = float(np.sqrt(np.clip(product_eigs, 0, None)).sum())
    diff = mu_a - mu_b
    return float(diff @ diff + trace_a + trace_b - 2.0 * trace_sqrt)


def ssim(image_a: np.ndarray, image_b: np.ndarray) -> float:
    """SSIM of two float images [H, W] in [0, 1]: torchmetrics' Gaussian-window SSIM (11 x 11,
    sigma 1.5, Wang et al. 2004), the same one `benchmarks/tokenizer.py` reports."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _as_batch(image_a), _as_batch(image_b)
    return float(structural_similarity_index_measure(a, b, data_range=1.0))


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB of a float image [H, W] in [0, 1] against its reference (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_as_batch(image), _as_batch(reference), data_range=1.0))


def _as_batch(image: np.ndarray) -> torch.Tensor:
    """[H, W] float image -> float32 tensor [1, 1, H, W] (float64 convolutions are ~14x slower
    on a CPU, and SSIM of [0, 1] images needs no more than float32)."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]


SSIM_SIGMA = 1.5
"""Gaussian window of torchmetrics' SSIM (its default; 11 taps, Wang et al. 2004)."""
SSIM_K1, SSIM_K2 = 0.01, 0.03


def nearest_ssim(
    queries: Sequence[np.ndarray], references: Sequence[np.ndarray], *, leave_one_out: bool = False
) -> np.ndarray:
    """For each query image [H, W], the largest SSIM (`ssim`) to any reference image: how close
    it comes to *some* real chest X-ray, in pixels, where the classifier-feature realism metrics
    judge features. ``leave_one_out`` (queries are the references) skips each image's own
    index, giving the reference level of a real image against the other real ones.

    The same SSIM as torchmetrics' (reflect padding, 11 x 11 Gaussian window, variances clamped
    at 0, the whole map averaged; equal to float32 rounding, <= 2e-5), computed here rather than
    by calling it once per query: torchmetrics filters five maps of every (query, reference) pair
    with a 2-D convolution, while the references' means and variances do not depend on the query,
    and the Gaussian window is separable, so filtering is two matrix products. The image task of
    320 reports spent over 15 minutes of 2 CPU cores in this step with torchmetrics."""
    import torch

    refs = _stack(references)
    height, width = refs.shape[-2:]
    rows, cols = _ssim_filter_matrix(height), _ssim_filter_matrix(width)
    pad = (_ssim_window().numel() - 1) // 2

    def padded(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")[:, 0]

    def smooth(images: torch.Tensor) -> torch.Tensor:
        return rows @ images @ cols.T

    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    with torch.no_grad():
        refs_p = padded(refs)
        mu_r = smooth(refs_p)
        mu_r2 = mu_r * mu_r
        var_r = torch.clamp(smooth(refs_p * refs_p) - mu_r2, min=0.0)
        out = np.full(len(queries), -math.inf)
        for i, query in enumerate(queries):
            q = padded(_as_batch(query))
            mu_q = smooth(q)
            mu_q2 = mu_q * mu_q
            var_q = torch.clamp(smooth(q * q) - mu_q2, min=0.0)
            for start in range(0, len(refs_p), SSIM_REFERENCE_CHUNK):
                end = start + SSIM_REFERENCE_CHUNK
                mu_qr = mu_r[start:end] * mu_q
                cov2 = smooth(refs_p[start:end] * q).sub_(mu_qr).mul_(2).add_(c2)
                numerator = mu_qr.mul_(2).add_(c1).mul_(cov2)
                denominator = (mu_r2[start:end] + (mu_q2 + c1)).mul_(var_r[start:end] + var_q + c2)
                values = numerator.div_(denominator).flatten(1).mean(1)
                if leave_one_out and start <= i < end:
                    values[i - start] = -math.inf
                out[i] = max(out[i], float(values.max()))
    return out


SSIM_REFERENCE_CHUNK = 16
"""References compared with a query at a time in `nearest_ssim`: 16 maps of 128 x 128 float32
(1 MiB each temporary) stay in cache, where all 561 references of the test split at once streamed
~37 MiB per temporary through memory; 4.5x faster per query on the 2-core EPYC, same values."""


SSIM_SIGMA = 1.5
"""Gaussian window of torchmetrics' SSIM (its default: 11 taps; Wang et al. 2004)."""
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _ssim_window() -> torch.Tensor:
    """torchmetrics' 1-D Gaussian SSIM window (its 2-D window is this one's outer product)."""
    import torch

    size = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1
    dist = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=torch.float32)
    gauss = torch.exp(-((dist / SSIM_SIGMA) ** 2) / 2)
    return gauss / gauss.sum()


def _ssim_filter_matrix(size: int) -> torch.Tensor:
    """[size, size + 10]: row i holds the window at columns i..i+10, so ``M @ x`` filters a
    reflect-padded axis of length size + 10 without further padding (a banded matrix product is
    ~7x faster than a 1-channel convolution on the CPU)."""
    import torch

    window = _ssim_window()
    out = torch.zeros(size, size + window.numel() - 1)
    for i in range(size):
        out[i, i : i + window.numel()] = window
    return out


def tile_shuffle(image: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` [H, W] cut into ``grid`` x ``grid`` tiles put back in a random order: the same
    pixels, intensity histogram and local texture, no anatomy. The evaluation's negative control:
    a realism measure that rates these near real images cannot see chest layout. Rows and columns
    beyond a multiple of ``grid`` stay in place."""
    image = np.asarray(image)
    th, tw = image.shape[0] // grid, image.shape[1] // grid
    if th == 0 or tw == 0:
        raise ValueError(f"a {image.shape} image has no {grid} x {grid} tiles")
    cells = [divmod(k, grid) for k in range(grid * grid)]
    tiles = [image[r * th : (r + 1) * th, c * tw : (c + 1) * tw] for r, c in cells]
    out = image.copy()
    for (r, c), src in zip(cells, rng.permutation(len(tiles)), strict=True):
        out[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tiles[src]
    return out


def lowpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` [H, W] blurred with a Gaussian of ``sigma`` pixels (kernel 6 sigma + 1, odd,
    reflect padding; torchvision's `gaussian_blur`)."""
    import torch
    from torchvision.transforms.functional import gaussian_blur

    size = int(6 * sigma) | 1
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return gaussian_blur(tensor, kernel_size=[size, size], sigma=[sigma, sigma])[0].numpy()


def gradient_energy(image: np.ndarray) -> float:
    """Mean gradient magnitude of ``image`` [H, W] (central differences, `np.gradient`): its
    sharpness. A blurred image has less; SSIM to other images rewards blur, so the evaluation
    reports this beside it."""
    gy, gx = np.gradient(np.asarray(image, dtype=np.float64))
    return float(np.sqrt(gx**2 + gy**2).mean())


def _stack(images: Sequence[np.ndarray]) -> torch.Tensor:
    import torch

    return torch.cat([_as_batch(image) for image in images])


def mean_pairwise_ssim(images: Sequence[np.ndarray]) -> float:
    """Mean SSIM over all pairs of images generated for one prompt (lower = more diverse)."""
    pairs = [
        ssim(images[i], images[j]) for i in range(len(images)) for j in range(i + 1, len(images))
    ]
    return float(np.mean(pairs)) if pairs else math.nan


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(denom, 1e-12)


_WORD = re.compile(r"[a-z0-9]+")


def answer_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens of an answer (punctuation and case ignored)."""
    return _WORD.findall(text.lower())


_STANDALONE_YES_NO = re.compile(r"^\s*(yes|no)\s*(?:[.,;:!]|$)", re.IGNORECASE)


def yes_no(answer: str, *, strict: bool = False) -> str | None:
    """'yes' / 'no' when the answer starts with that word, else None.

    ``strict`` needs the word to stand alone ("No." / "Yes, ..."), so that a sentence such as
    "No acute cardiopulmonary abnormality." is not read as a yes/no answer (used for references).
    """
    if strict:
        match = _STANDALONE_YES_NO.match(answer)
        return match.group(1).lower() if match else None
    tokens = answer_tokens(answer)
    return tokens[0] if tokens and tokens[0] in ("yes", "no") else None


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token-overlap F1 between two answers."""
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def headline_intervals(
    y_true: np.ndarray,
    y_score: np.ndarray,
    y_pred: np.ndarray,
    *,
    min_positives: int = MIN_POSITIVES,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Bootstrap 95 % intervals (items resampled) of micro/macro AUROC and F1.

    The macro averages keep the headline classes of the full set (>= ``min_positives``
    positives) in every resample, so the interval is of the same statistic.
    """
    y_true, y_score, y_pred = (np.asarray(a) for a in (y_true, y_score, y_pred))
    headline = headline_columns(y_true, min_positives)

    def macro_auroc(idx: np.ndarray) -> float:
        return _macro_auroc(y_true[idx], y_score[idx], headline)

    def macro_f1(idx: np.ndarray) -> float:
        if not headline:
            return math.nan
        return float(
            f1_score(
                y_true[idx][:, headline], y_pred[idx][:, headline], average="macro", zero_division=0
            )
        )

    statistics = {
        "auroc_micro": lambda idx: auroc_or_nan(y_true[idx], y_score[idx]),
        "auroc_macro": macro_auroc,
        "f1_micro": lambda idx: float(
            f1_score(y_true[idx], y_pred[idx], average="micro", zero_division=0)
        ),
        "f1_macro": macro_f1,
    }
    return {
        name: bootstrap_ci(stat, len(y_true), n_boot=n_boot, seed=seed)
        for name, stat in statistics.items()
    }


def _macro_auroc(y_true: np.ndarray, y_score: np.ndarray, columns: Sequence[int]) -> float:
    """Mean AUROC over `columns` (NaN columns skipped)."""
    return _nan_mean(np.array([auroc_or_nan(y_true[:, j], y_score[:, j]) for j in columns]))


def paired_macro_auroc_difference(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    min_positives: int = MIN_POSITIVES,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Headline macro AUROC of two readers of the same items, and a bootstrap 95 % interval of
    a - b with the items resampled once for both: the noise of which films were drawn is shared,
    so a difference too small to part two separate intervals can still show."""
    y_true, score_a, score_b = (np.asarray(x) for x in (y_true, score_a, score_b))
    headline = headline_columns(y_true, min_positives)

    def difference(idx: np.ndarray) -> float:
        return _macro_auroc(y_true[idx], score_a[idx], headline) - _macro_auroc(
            y_true[idx], score_b[idx], headline
        )

    return {
        "headline_classes": len(headline),
        "auroc_macro_a": _macro_auroc(y_true, score_a, headline),
        "auroc_macro_b": _macro_auroc(y_true, score_b, headline),
        "difference": difference(np.arange(len(y_true))),
        "difference_ci95": bootstrap_ci(difference, len(y_true), n_boot=n_boot, seed=seed),
    }


def mean_interval(
    values: Sequence[float], *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95 % interval of the mean of per-item values."""
    arr = np.asarray(values, dtype=np.float64)
    return bootstrap_ci(lambda idx: float(arr[idx].mean()), len(arr), n_boot=n_boot, seed=seed)


def mean_difference_interval(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95 % interval of ``mean(a) - mean(b)``, each sample resampled on its own (two
    independent sets of items, such as drawings and real films)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0 or n_boot < 1:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    diffs = [
        a[rng.integers(0, a.size, a.size)].mean() - b[rng.integers(0, b.size, b.size)].mean()
        for _ in range(n_boot)
    ]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return (float(low), float(high))


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall of generated samples (Kynkäänniemi et al., NeurIPS 2019).

    Each set's manifold is the union of balls around its samples, the radius of each being the
    distance to its ``k``-th nearest neighbour in the same set (itself excluded). Precision is the
    fraction of generated samples inside the real manifold (realism); recall the fraction of real
    samples inside the generated manifold (coverage). Written here because neither torchmetrics
    nor any other installed library implements it; distances are Euclidean, as in the paper.
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"knn_precision_recall needs [N, D] arrays of equal D, got {real.shape}, {fake.shape}"
        )
    if min(len(real), len(fake)) <= k:
        return {"precision": math.nan, "recall": math.nan}
    return {"precision": _fraction_inside(real, fake, k), "recall": _fraction_inside(fake, real, k)}


def _fraction_inside(manifold: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Fraction of ``queries`` within the k-NN radius of at least one sample of ``manifold``."""
    radii = np.sort(_pairwise_distances(manifold, manifold), axis=1)[:, k]  # column 0: itself
    inside = (_pairwise_distances(queries, manifold) <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a**2).sum(axis=1)[:, None] + (b**2).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """KID: the unbiased estimate of squared MMD with the cubic polynomial kernel
    ``k(x, y) = (x.y / d + 1)^3`` (Bińkowski et al., ICLR 2018), on any features [N, D].

    Unbiased at every sample size, unlike FID. The kernel is torchmetrics' ``poly_kernel``; the
    estimator is written out because torchmetrics' (``maximum_mean_discrepancy``) assumes both
    sets have the same size and its ``KernelInceptionDistance`` averages random equal-size
    subsets, while here every generated image (several per report) is compared with every real
    one:
    ``sum_{i!=j} k(x_i, x_j) / m(m-1) + sum_{i!=j} k(y_i, y_j) / n(n-1) - 2 sum k(x_i, y_j) / mn``.
    """
    import torch
    from torchmetrics.image.kid import poly_kernel

    x = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"kernel_inception_distance needs [N, D] arrays of equal D, got {x.shape}, {y.shape}"
        )
    m, n = len(x), len(y)
    if min(m, n) < 2:
        return math.nan
    k_xx, k_yy, k_xy = poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())
