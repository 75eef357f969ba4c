"""Round trips, which no peer reports: does the model keep the findings when it translates twice?

- report -> image -> report: labels of the final report against the original report's labels.
- image -> report -> image: the classifier's outputs on the final image against those on the
  original image (prediction agreement at 0.5, mean absolute probability gap, feature cosine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.image_task import read_real
from llmcxr.evaluation.labelling import label_matrix
from llmcxr.evaluation.metrics import classification_metrics, cosine_similarity, mean_interval
from llmcxr.evaluation.store import run_pending

REPORT_STORE = "roundtrip_report"
IMAGE_STORE = "roundtrip_image"


def run_report_trip(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """report -> image -> report for each report->CXR record."""
    cfg = ctx.config

    def trip(part: Sequence[EvalRecord], start: int) -> list[tuple[np.ndarray, str]]:
        images = [
            imgs[0]
            for imgs in ctx.model.generate_images(
                [r.report for r in part],
                seed=cfg.seed + start,
                guidance_scale=cfg.guidance_scale,
                batch_size=cfg.batch_size,
            )
        ]
        reports = ctx.model.generate_report(
            images,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed + start,
            batch_size=cfg.batch_size,
        )
        return list(zip(images, reports))

    def make_row(record: EvalRecord, result: tuple[np.ndarray, str]) -> dict[str, Any]:
        image, back = result
        return {
            "report": record.report,
            "report_back": back,
            "image": ctx.save_png(image, f"images/{REPORT_STORE}/{record.id}.png"),
        }

    return run_pending(
        ctx.store(REPORT_STORE),
        records,
        key=lambda r: r.id,
        generate=trip,
        make_row=make_row,
        batch_size=cfg.batch_size,
        desc="report->CXR->report",
    )


def run_image_trip(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """image -> report -> image for each CXR->report record with an image."""
    cfg = ctx.config

    def trip(part: Sequence[EvalRecord], start: int) -> list[tuple[str, np.ndarray]]:
        reports = ctx.model.generate_report(
            [str(r.image_path) for r in part],
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed + start,
            batch_size=cfg.batch_size,
        )
        images = [
            imgs[0]
            for imgs in ctx.model.generate_images(
                reports,
                seed=cfg.seed + start,
                guidance_scale=cfg.guidance_scale,
                batch_size=cfg.batch_size,
            )
        ]
        return list(zip(reports, images))

    def make_row(record: EvalRecord, result: tuple[str, np.ndarray]) -> dict[str, Any]:
        report, image = result
        probs, feats = ctx.classifier([read_real(record, image.shape[0]), image])
        return {
            "report": report,
            "image": ctx.save_png(image, f"images/{IMAGE_STORE}/{record.id}.png"),
            "original_probs": probs[0].tolist(),
            "final_probs": probs[1].tolist(),
            "feature_cosine": float(cosine_similarity(feats[:1], feats[1:])[0]),
        }

    return run_pending(
        ctx.store(IMAGE_STORE),
        records,
        key=lambda r: r.id,
        generate=trip,
        make_row=make_row,
        batch_size=cfg.batch_size,
        desc="CXR->report->CXR",
    )


def summarize(
    ctx: RunContext, report_rows: Sequence[dict[str, Any]], image_rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    cfg = ctx.config
    out: dict[str, Any] = {}
    if report_rows:
        kw = {"uncertain_as_positive": cfg.uncertain_as_positive}
        original = label_matrix([r["report"] for r in report_rows], ctx.classes, **kw)
        back = label_matrix([r["report_back"] for r in report_rows], ctx.classes, **kw)
        agree = (original == back).all(axis=1).astype(float)
        out["report_image_report"] = {
            "n_items": len(report_rows),
            "label_agreement": float((original == back).mean()),
            "exact_label_match": float(agree.mean()),
            "exact_label_match_ci95": mean_interval(agree, n_boot=cfg.bootstrap, seed=cfg.seed),
            "f1": classification_metrics(original, back, back, ctx.classes)["f1"],
        }
    if image_rows:
        first = np.array([r["original_probs"] for r in image_rows])
        final = np.array([r["final_probs"] for r in image_rows])
        cosine = [r["feature_cosine"] for r in image_rows]
        out["image_report_image"] = {
            "n_items": len(image_rows),
            "prediction_agreement": float(((first >= 0.5) == (final >= 0.5)).mean()),
            "mean_abs_probability_gap": float(np.abs(first - final).mean()),
            "feature_cosine": float(np.mean(cosine)) if cosine else math.nan,
            "feature_cosine_ci95": mean_interval(cosine, n_boot=cfg.bootstrap, seed=cfg.seed),
        }
    return out
