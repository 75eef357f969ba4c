"""Reference readers for the CXR -> report tasks: the evaluation's classifier read as a report
reader, on the real film (what supervised training on the same data reads from it) and on the
film's reconstruction by the model's tokenizer (what survives the image tokens the LLM reads).

A report reader is not expected to beat the classifier on the real film; where that reader is near
chance (the NIH test films of the paired build), the labels cannot show a reading gain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmcxr.evaluation.classifier import ImageClassifier, chexpert_columns
from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.image_task import read_real, reconstruct
from llmcxr.evaluation.labelling import NO_FINDING, nih_classes
from llmcxr.evaluation.metrics import classification_metrics, headline_intervals
from llmcxr.evaluation.store import run_pending

STORE = "classifier_reference"
READERS = {
    "classifier_real": "real_probs",
    "classifier_reconstruction": "recon_probs",
}
"""Reference reader -> the field of its stored classifier outputs."""


def classify_films(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Classifier outputs of each record's film and of its reconstruction by the model's
    tokenizer, both at the tokenizer's size. One store for every task: a film two tasks read is
    classified once, and a resumed run neither classifies again nor loads the model."""

    def classify(part: Sequence[EvalRecord], start: int) -> list[tuple[list, list]]:
        tokenizer = ctx.model.image_tokenizer
        real = [read_real(record, tokenizer.image_size) for record in part]
        probs, _ = ctx.classifier(real + list(reconstruct(tokenizer, real)[0]))
        n = len(part)
        return [(probs[i].tolist(), probs[n + i].tolist()) for i in range(n)]

    return run_pending(
        ctx.store(STORE),
        [r for r in records if r.image_path is not None],
        key=lambda r: r.id,
        generate=classify,
        make_row=lambda r, out: {
            "image_id": r.image_id,
            "real_probs": out[0],
            "recon_probs": out[1],
        },
        batch_size=ctx.config.batch_size,
        desc="classifier reference",
    )


def classifier_reader_scores(
    probs: np.ndarray, labels: Sequence[str], classes: Sequence[str]
) -> np.ndarray:
    """``[N, len(classes)]`` scores of a classifier read as a report reader: each class's
    probability (:meth:`ImageClassifier.class_scores`; 0.5 is the calibrated operating point),
    0 for a class the classifier does not know, and for "No Finding" without its own label, one
    minus the largest finding probability (no finding is positive when no finding is)."""
    probs = np.asarray(probs, dtype=np.float64)
    columns = chexpert_columns(labels, classes)
    known = ImageClassifier.class_scores(probs, columns) if columns else np.zeros((len(probs), 0))
    out = np.zeros((len(probs), len(classes)))
    for k, name in enumerate(columns):
        out[:, list(classes).index(name)] = known[:, k]
    if NO_FINDING in classes and NO_FINDING not in columns:
        finding_cols = [k for k, name in enumerate(columns) if name != NO_FINDING]
        largest = known[:, finding_cols].max(axis=1) if finding_cols else np.zeros(len(probs))
        out[:, list(classes).index(NO_FINDING)] = 1.0 - largest
    return out


def reference_reader_metrics(
    ctx: RunContext,
    reference_rows: Sequence[dict[str, Any]],
    truth_of: Callable[[list[dict[str, Any]]], np.ndarray],
    *,
    classes: Sequence[str] | None = None,
    keep: Callable[[dict[str, Any]], bool] = lambda row: True,
) -> dict[str, Any]:
    """``{reader: metrics with ci95}`` of the readers in :data:`READERS` on the ``reference_rows``
    (:func:`classify_films`) that ``keep`` accepts, against ``truth_of(rows)`` (``[N, C]`` over
    ``classes``, by default the NIH classes); empty without a classifier or rows."""
    cfg = ctx.config
    classes = list(classes) if classes is not None else nih_classes()
    rows = [r for r in reference_rows if keep(r)]
    if not rows or ctx.classifier is None:
        return {}
    truth = truth_of(rows)
    kw = {"min_positives": cfg.min_positives}
    out: dict[str, Any] = {}
    for name, field in READERS.items():
        score = classifier_reader_scores(
            np.array([r[field] for r in rows]), ctx.classifier.labels, classes
        )
        pred = (score >= 0.5).astype(np.int64)
        out[name] = classification_metrics(truth, score, pred, classes, **kw)
        out[name]["ci95"] = headline_intervals(
            truth, score, pred, n_boot=cfg.bootstrap, seed=cfg.seed, **kw
        )
    return out
