"""Report -> CXR protocol: generate images from test reports and judge them with a CXR classifier.

LLM-CXR's protocol (Table 4): the classifier's AUROC / F1 on generated images against the labels
of the report, for the classes the classifier knows; FID on the classifier's pooled 1,024-d
features (and Inception FID); plus diversity, the mean pairwise SSIM of the images of one report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.labelling import label_matrix
from llmcxr.evaluation.metrics import (
    classification_metrics,
    frechet_distance,
    headline_intervals,
    mean_interval,
    mean_pairwise_ssim,
)
from llmcxr.evaluation.store import run_pending

logger = logging.getLogger(__name__)

STORE = "image"


def read_real(record: EvalRecord, size: int) -> np.ndarray | None:
    """The record's real image prepared like the tokenizer's input ([size, size] in [0, 1]), if any."""
    if record.image_path is None:
        return None
    from vqgan import prepare_image, read_cxr

    return prepare_image(read_cxr(record.image_path), size)[0].numpy()


def run(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Generate ``images_per_report`` images per report, classify them and the real image."""
    cfg = ctx.config

    def generate(part: Sequence[EvalRecord], start: int) -> list[list[np.ndarray]]:
        return ctx.model.generate_images(
            [r.report for r in part],
            num_images=cfg.images_per_report,
            seed=cfg.seed + start,
            batch_size=cfg.batch_size,
        )

    return run_pending(ctx.store(STORE), records, key=lambda r: r.id, generate=generate,
                       make_row=lambda r, images: _classify_item(ctx, r, images),
                       batch_size=cfg.batch_size, desc="report->CXR")


def _classify_item(ctx: RunContext, record: EvalRecord, images: list[np.ndarray]) -> dict[str, Any]:
    real = read_real(record, images[0].shape[0])
    batch = list(images) + ([real] if real is not None else [])
    probs, feats = ctx.classifier(batch)
    n = len(images)
    return {
        "image_id": record.image_id,
        "report": record.report,
        "images": [ctx.save_png(img, f"images/{STORE}/{record.id}_{k}.png") for k, img in enumerate(images)],
        "generated_probs": probs[:n].tolist(),
        "real_probs": probs[n].tolist() if real is not None else None,
        "features": ctx.save_features(feats, f"features/{STORE}/{record.id}.npy"),
        "diversity_ssim": mean_pairwise_ssim(images) if n > 1 else None,
    }


def summarize(ctx: RunContext, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Classifier metrics of generated (and real) images against the reports' labels; FID; diversity."""
    cfg = ctx.config
    if not rows:
        return {"n_items": 0, "note": "no report->CXR records"}
    columns = ctx.classifier.chexpert_columns(ctx.classes)
    classes = list(columns)
    if not classes:
        return {"n_items": len(rows), "note": f"the classifier's labels {ctx.classifier.labels} "
                "name none of the CheXpert classes; no AUROC / F1 / FID computed"}
    cols = [columns[c] for c in classes]
    truth = label_matrix(
        [r["report"] for r in rows], classes, uncertain_as_positive=cfg.uncertain_as_positive
    )
    gen_score = np.array([np.mean(r["generated_probs"], axis=0)[cols] for r in rows])
    gen_pred = (gen_score >= 0.5).astype(np.int64)
    out: dict[str, Any] = {
        "classes": classes,
        "images_per_report": len(rows[0]["images"]),
        "score": "classifier probability averaged over a report's images; F1 threshold 0.5",
        "generated": classification_metrics(truth, gen_score, gen_pred, classes),
    }
    out["generated"]["ci95"] = headline_intervals(truth, gen_score, gen_pred, n_boot=cfg.bootstrap, seed=cfg.seed)
    with_real = [i for i, r in enumerate(rows) if r["real_probs"] is not None]
    if with_real:
        real_score = np.array([np.asarray(rows[i]["real_probs"])[cols] for i in with_real])
        out["real"] = classification_metrics(
            truth[with_real], real_score, (real_score >= 0.5).astype(np.int64), classes
        )
    out["fid_xrv"] = _xrv_fid(ctx, rows)
    diversity = [r["diversity_ssim"] for r in rows if r["diversity_ssim"] is not None]
    out["diversity_ssim"] = float(np.mean(diversity)) if diversity else math.nan
    out["diversity_ssim_ci95"] = mean_interval(diversity, n_boot=cfg.bootstrap, seed=cfg.seed)
    out["fid_inception"] = _inception_fid(ctx, rows)
    return out


def _xrv_fid(ctx: RunContext, rows: Sequence[dict[str, Any]]) -> float:
    """FID between generated and real images on the classifier's pooled 1,024-d features."""
    gen, real = [], []
    for row in rows:
        feats = ctx.load_features(row["features"])
        n = len(row["images"])
        gen.append(feats[:n])
        if row["real_probs"] is not None:
            real.append(feats[n:])
    if len(real) < 2:
        return math.nan
    return frechet_distance(np.concatenate(gen), np.concatenate(real))


def _inception_fid(ctx: RunContext, rows: Sequence[dict[str, Any]]) -> float | None:
    """Inception FID when ``--inception-weights`` is given, else None (weights are never fetched)."""
    if not ctx.config.inception_weights:
        return None
    from llmcxr.evaluation.inception import InceptionFeatures
    from vqgan import read_cxr

    extractor = InceptionFeatures.from_weights(ctx.config.inception_weights)
    generated = [read_cxr(ctx.config.out / p) for row in rows for p in row["images"]]
    records = {r.id: r for r in ctx.split.records("report_to_cxr")}
    size = generated[0].shape[0]
    real = [read_real(records[row["key"]], size) for row in rows if row["real_probs"] is not None]
    if len(real) < 2:
        return math.nan
    return frechet_distance(extractor(generated), extractor(real))
