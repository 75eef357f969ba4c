"""CXR -> report protocol: generate a report per test image, label both sides, score labels and
text.

LLM-CXR's protocol (Table 1): the CheXpert labeler on the reference and the generated report,
per-label / micro / macro / weighted AUROC and F1 over 14 classes, plus NLG metrics. Our pairs
are label-matched, not real (an image's reference is one OpenI report drawn from those with its
labels), so the NLG metrics score each report against every label-matched reference of the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.labelling import impression_section, label_matrix
from llmcxr.evaluation.metrics import (
    MIN_POSITIVES,
    classification_metrics,
    headline_intervals,
    mean_interval,
)
from llmcxr.evaluation.nlg import NLG_NOTES, cider_d, nlg_metrics, rouge_l
from llmcxr.evaluation.reference_readers import reference_reader_metrics
from llmcxr.evaluation.store import run_pending

STORE = "report"


def run(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Generate ``samples_per_image`` reports per record's image; finished records are skipped."""
    cfg = ctx.config

    def generate(part: Sequence[EvalRecord], start: int) -> list[list[str]]:
        paths = [str(r.image_path) for r in part]
        samples = [
            ctx.model.generate_report(
                paths,
                max_new_tokens=cfg.max_new_tokens,
                do_sample=True if cfg.samples_per_image > 1 else None,
                seed=cfg.seed + 1000 * k + start,
                batch_size=cfg.batch_size,
            )
            for k in range(cfg.samples_per_image)
        ]
        return [list(per_item) for per_item in zip(*samples)]

    def make_row(record: EvalRecord, generated: list[str]) -> dict[str, Any]:
        return {"image_id": record.image_id, "reference": record.report, "generated": generated}

    return run_pending(
        ctx.store(STORE),
        records,
        key=lambda r: r.id,
        generate=generate,
        make_row=make_row,
        batch_size=cfg.batch_size,
        desc="CXR->report",
    )


def label_matched_references(
    references: Sequence[str],
    pool: Sequence[str],
    classes: Sequence[str],
    *,
    section: str,
    uncertain_as_positive: bool,
) -> list[list[str]]:
    """For each reference, itself and every distinct ``pool`` text with exactly its labels."""
    kw = {"section": section, "uncertain_as_positive": uncertain_as_positive}
    pool = list(dict.fromkeys(pool))
    by_labels: dict[bytes, list[str]] = {}
    for text, row in zip(pool, label_matrix(pool, classes, **kw)):
        by_labels.setdefault(row.tobytes(), []).append(text)
    return [
        [ref] + [t for t in by_labels.get(row.tobytes(), []) if t != ref]
        for ref, row in zip(references, label_matrix(references, classes, **kw))
    ]


def sampled_label_scores(
    generated: Sequence[Sequence[str]], classes: Sequence[str], **label_kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class score (fraction of an item's sampled reports labelling the class positive) and
    prediction (majority of samples; the label itself with one sample), both ``[N, C]``."""
    n_samples = len(generated[0])
    sampled = np.stack(
        [label_matrix([g[k] for g in generated], classes, **label_kw) for k in range(n_samples)]
    )
    score = sampled.mean(axis=0)
    return score, (score >= 0.5).astype(np.int64)


def score_reports(
    references: Sequence[str],
    generated: Sequence[Sequence[str]],
    classes: Sequence[str],
    *,
    section: str,
    uncertain_as_positive: bool,
    n_boot: int,
    seed: int,
    reference_pool: Sequence[str] = (),
    min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:
    """Label and text metrics of sampled reports (``generated[i]`` = samples for item i).

    Text metrics use every ``reference_pool`` text whose labels equal the item's reference's.
    """
    kw = {"section": section, "uncertain_as_positive": uncertain_as_positive}
    truth = label_matrix(references, classes, **kw)
    score, pred = sampled_label_scores(generated, classes, **kw)
    result = classification_metrics(truth, score, pred, classes, min_positives=min_positives)
    hyps = [g[0] for g in generated]
    refs = label_matched_references(references, reference_pool, classes, **kw)
    if section == "impression":
        hyps = [impression_section(h) for h in hyps]
        refs = [[impression_section(r) for r in rs] for rs in refs]
    result["nlg"] = nlg_metrics(hyps, refs)
    result["nlg_references_per_item"] = float(np.mean([len(rs) for rs in refs]))
    ci = headline_intervals(
        truth, score, pred, min_positives=min_positives, n_boot=n_boot, seed=seed
    )
    ci["rouge_l"] = mean_interval(rouge_l(hyps, refs), n_boot=n_boot, seed=seed)
    ci["cider_d"] = mean_interval(cider_d(hyps, refs)[1], n_boot=n_boot, seed=seed)
    result["ci95"] = ci
    return result


def summarize(
    ctx: RunContext,
    rows: Sequence[dict[str, Any]],
    baseline_report: str | None,
    reference_rows: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Metrics of the stored rows, of the most-common-report baseline on the same items, and of
    the classifier reference readers when ``reference_rows``
    (:func:`~llmcxr.evaluation.reference_readers.classify_films`) are given."""
    cfg = ctx.config
    if not rows:
        return {"n_items": 0, "note": "no CXR->report records with an available image"}
    kw = {
        "section": cfg.report_section,
        "uncertain_as_positive": cfg.uncertain_as_positive,
        "n_boot": cfg.bootstrap,
        "seed": cfg.seed,
        "reference_pool": [
            r.report for t in ("cxr_to_report", "report_to_cxr") for r in ctx.split.records(t)
        ],
        "min_positives": cfg.min_positives,
    }
    references = [r["reference"] for r in rows]
    out = score_reports(references, [r["generated"] for r in rows], ctx.classes, **kw)
    out["samples_per_image"] = len(rows[0]["generated"])
    out["report_section"] = cfg.report_section
    out["nlg_notes"] = {
        **NLG_NOTES,
        "scored_sample": "the first sampled report of each image",
        "reference_pool": f"the {ctx.config.split} split's reports",
    }
    if baseline_report is not None:
        baseline = score_reports(references, [[baseline_report]] * len(rows), ctx.classes, **kw)
        baseline["report"] = baseline_report
        out["baseline_most_common_report"] = baseline
    reference_of = {r["key"]: r["reference"] for r in rows}
    out.update(
        reference_reader_metrics(
            ctx,
            reference_rows,
            lambda kept: label_matrix(
                [reference_of[r["key"]] for r in kept],
                ctx.classes,
                section=cfg.report_section,
                uncertain_as_positive=cfg.uncertain_as_positive,
            ),
            classes=ctx.classes,
            keep=lambda r: r["key"] in reference_of,
        )
    )
    return out
