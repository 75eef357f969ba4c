"""CXR -> report protocol: generate a report per test image, label both sides, score labels and text.

LLM-CXR's protocol (Table 1): the CheXpert labeler on the reference and the generated report,
per-label / micro / macro / weighted AUROC and F1 over 14 classes, plus NLG metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.labelling import impression_section, label_matrix
from llmcxr.evaluation.metrics import classification_metrics, headline_intervals, mean_interval
from llmcxr.evaluation.nlg import NLG_NOTES, cider_d, nlg_metrics, rouge_l
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

    return run_pending(ctx.store(STORE), records, key=lambda r: r.id, generate=generate,
                       make_row=make_row, batch_size=cfg.batch_size, desc="CXR->report")


def score_reports(
    references: Sequence[str],
    generated: Sequence[Sequence[str]],
    classes: Sequence[str],
    *,
    section: str,
    uncertain_as_positive: bool,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Label and text metrics of sampled reports (``generated[i]`` = samples for item i)."""
    kw = {"section": section, "uncertain_as_positive": uncertain_as_positive}
    truth = label_matrix(references, classes, **kw)
    n_samples = len(generated[0])
    sampled = np.stack([label_matrix([g[k] for g in generated], classes, **kw) for k in range(n_samples)])
    score = sampled.mean(axis=0)  # fraction of samples labelling each class positive
    pred = (score >= 0.5).astype(np.int64)  # majority of samples; the label itself when n = 1
    result = classification_metrics(truth, score, pred, classes)
    hyps = [g[0] for g in generated]
    refs = list(references)
    if section == "impression":
        hyps, refs = [impression_section(h) for h in hyps], [impression_section(r) for r in refs]
    result["nlg"] = nlg_metrics(hyps, refs)
    ci = headline_intervals(truth, score, pred, n_boot=n_boot, seed=seed)
    ci["rouge_l"] = mean_interval(rouge_l(hyps, refs), n_boot=n_boot, seed=seed)
    ci["cider_d"] = mean_interval(cider_d(hyps, refs)[1], n_boot=n_boot, seed=seed)
    result["ci95"] = ci
    return result


def summarize(ctx: RunContext, rows: Sequence[dict[str, Any]], baseline_report: str | None) -> dict[str, Any]:
    """Metrics of the stored rows, and of the most-common-report baseline on the same items."""
    cfg = ctx.config
    if not rows:
        return {"n_items": 0, "note": "no CXR->report records with an available image"}
    kw = {
        "section": cfg.report_section,
        "uncertain_as_positive": cfg.uncertain_as_positive,
        "n_boot": cfg.bootstrap,
        "seed": cfg.seed,
    }
    references = [r["reference"] for r in rows]
    out = score_reports(references, [r["generated"] for r in rows], ctx.classes, **kw)
    out["samples_per_image"] = len(rows[0]["generated"])
    out["report_section"] = cfg.report_section
    out["nlg_notes"] = {**NLG_NOTES, "scored_sample": "the first sampled report of each image"}
    if baseline_report is not None:
        baseline = score_reports(references, [[baseline_report]] * len(rows), ctx.classes, **kw)
        baseline["report"] = baseline_report
        out["baseline_most_common_report"] = baseline
    return out
