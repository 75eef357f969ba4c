"""Run the selected protocols on one test split and write metrics.json, table.md and plots."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxrcommon.files import atomic_write_text
from llmcxr.evaluation import (
    image_task,
    nih_task,
    plots,
    report_task,
    roundtrip_task,
    table,
    tokenizer_task,
    vqa_task,
)
from llmcxr.evaluation.config import EvaluationConfig, RunContext, check_run_identity
from llmcxr.evaluation.data import EvalSplit
from llmcxr.evaluation.labelling import chexpert_classes, label_matrix
from llmcxr.evaluation.metrics import LABEL_CONVENTIONS
from llmcxr.evaluation.reference_readers import classify_films

logger = logging.getLogger(__name__)

T = TypeVar("T")


def subset(records: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """A seeded random ``limit`` records in dataset order (all when ``limit`` is None).

    Test splits are often sorted (e.g. by finding), so the first N would not be representative.
    Subsets are prefixes of one permutation, so a larger limit contains a smaller one's items
    and a resumed run with a raised ``--limit`` only computes the new ones.
    """
    if limit is None or limit >= len(records):
        return list(records)
    chosen = np.random.default_rng(seed).permutation(len(records))[:limit]
    return [records[i] for i in sorted(chosen)]


def _finished(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    ok = [r for r in rows if "error" not in r]
    return ok, len(rows) - len(ok)


def evaluate(config: EvaluationConfig) -> dict[str, Any]:
    """Run every task in ``config.tasks``, resuming from the per-item JSONL files in ``config.out``.

    Returns the metrics written to ``config.out / "metrics.json"``.
    """
    split = EvalSplit(config.data, config.stage, config.split)
    config.out.mkdir(parents=True, exist_ok=True)
    check_run_identity(config)
    ctx = RunContext(config, split, classes=chexpert_classes())
    cap = lambda records: subset(records, config.limit, config.records_seed)
    metrics: dict[str, Any] = {
        "run": {**config.to_dict(), "dataset_card": split.card()},
        "conventions": LABEL_CONVENTIONS,
        "skipped": {},
    }
    if "report" in config.tasks:
        records = cap(split.records("cxr_to_report", need_image=True))
        rows, metrics["skipped"]["report"] = _finished(report_task.run(ctx, records))
        reference = classify_films(ctx, records) if ctx.classifier else []
        try:
            baseline = split.most_common_report()
        except ValueError as err:
            logger.warning("%s", err)
            baseline = None
        metrics["report"] = report_task.summarize(ctx, rows, baseline, _finished(reference)[0])
    if "nih" in config.tasks:
        records = nih_task.nih_records(split)
        if records:
            findings = nih_task.read_findings(nih_task.labels_csv_for(records, config.nih_labels))
            rows, metrics["skipped"]["nih"] = _finished(nih_task.run(ctx, cap(records)))
            reference = classify_films(ctx, cap(records)) if ctx.classifier else []
        else:
            findings, rows, reference = {}, [], []
        metrics["nih"] = nih_task.summarize(ctx, rows, findings, _finished(reference)[0])
    if "image" in config.tasks:
        rows, metrics["skipped"]["image"] = _finished(
            image_task.run(ctx, cap(split.records("report_to_cxr")))
        )
        metrics["image"] = image_task.summarize(ctx, rows)
        _image_grid(ctx, rows)
    if "vqa" in config.tasks:
        rows, metrics["skipped"]["vqa"] = _finished(
            vqa_task.run(ctx, cap(split.records("vqa", need_image=True)))
        )
        metrics["vqa"] = vqa_task.summarize(ctx, rows)
    if "roundtrip" in config.tasks:
        report_rows, metrics["skipped"]["roundtrip_report"] = _finished(
            roundtrip_task.run_report_trip(ctx, cap(split.records("report_to_cxr")))
        )
        image_rows, metrics["skipped"]["roundtrip_image"] = _finished(
            roundtrip_task.run_image_trip(ctx, cap(split.records("cxr_to_report", need_image=True)))
        )
        metrics["roundtrip"] = roundtrip_task.summarize(ctx, report_rows, image_rows)
    if "tokenizer" in config.tasks:
        images = cap(
            tokenizer_task.unique_images(
                [r for t in ("cxr_to_report", "vqa", "report_to_cxr") for r in split.records(t)]
            )
        )
        rows, _ = _finished(tokenizer_task.run(ctx, images))
        metrics["tokenizer"] = tokenizer_task.summarize(ctx, rows)
    metrics = _json_safe(metrics)
    atomic_write_text(config.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(config.out / "table.md", table.render(metrics))
    _plots(config.out, metrics)
    return metrics


def _plots(out: Path, metrics: dict[str, Any]) -> None:
    if metrics.get("report", {}).get("per_label"):
        plots.per_label_bars(
            metrics["report"]["per_label"],
            out / "plots" / "report_per_label.png",
            "CXR -> report: per-label AUROC and F1",
        )
    if metrics.get("nih", {}).get("per_label"):
        plots.per_label_bars(
            metrics["nih"]["per_label"],
            out / "plots" / "nih_per_label.png",
            "CXR -> report on NIH images: per-label AUROC and F1 against NIH labels",
        )
    if metrics.get("image", {}).get("generated"):
        plots.per_label_bars(
            metrics["image"]["generated"]["per_label"],
            out / "plots" / "image_per_label.png",
            "Report -> CXR: classifier on generated images",
        )
    if metrics.get("vqa", {}).get("n_yes_no"):
        plots.vqa_confusion(metrics["vqa"]["confusion"], out / "plots" / "vqa_confusion.png")


def _image_grid(ctx: RunContext, rows: list[dict[str, Any]]) -> None:
    """Real vs generated images for the first report with each positive finding."""
    from vqgan import read_cxr

    if not rows:
        return
    labels = label_matrix(
        [r["report"] for r in rows],
        ctx.classes,
        uncertain_as_positive=ctx.config.uncertain_as_positive,
    )
    records = {r.id: r for r in ctx.split.records("report_to_cxr")}
    examples = []
    for j, finding in enumerate(ctx.classes):
        hits = np.flatnonzero(labels[:, j])
        if hits.size == 0:
            continue
        row = rows[hits[0]]
        generated = [read_cxr(ctx.config.out / p) for p in row["images"]]
        real = image_task.read_real(records[row["key"]], generated[0].shape[0])
        examples.append((finding, real, generated))
    if examples:
        plots.real_vs_generated_grid(examples, ctx.config.out / "plots" / "real_vs_generated.png")


def _json_safe(value: Any) -> Any:
    """NaN -> None and tuples -> lists, so metrics.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value
