"""Image-tokenizer reconstruction on the test split: PSNR, SSIM, classifier-feature cosine and
prediction agreement (original vs decode(encode(image))), and codebook usage.

The same figures as the tokenizer benchmark, computed here per test image with the model's own
tokenizer so that they sit in the evaluation table next to the tasks that depend on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.image_task import read_real, reconstruct
from llmcxr.evaluation.metrics import cosine_similarity, mean_interval, psnr, ssim
from llmcxr.evaluation.store import run_pending

STORE = "tokenizer"


def unique_images(records: Sequence[EvalRecord]) -> list[EvalRecord]:
    """One record per distinct available image, in first-seen order."""
    seen: dict[str, EvalRecord] = {}
    for record in records:
        if record.image_path is not None and record.image_id not in seen:
            seen[record.image_id] = record
    return list(seen.values())


def run(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Encode and decode each image once; finished images are skipped."""
    tokenizer = ctx.model.image_tokenizer

    def measure(part: Sequence[EvalRecord], start: int) -> list[dict[str, Any]]:
        originals = [read_real(r, tokenizer.image_size) for r in part]
        recon, codes = reconstruct(tokenizer, originals)
        rows = [
            {
                "psnr": psnr(orig, rec),
                "ssim": ssim(orig, rec),
                "codes": sorted(set(c.tolist())),
                "codebook_size": tokenizer.codebook_size,
            }
            for orig, rec, c in zip(originals, recon, codes)
        ]
        if ctx.classifier is not None:
            n = len(part)
            probs, feats = ctx.classifier(originals + list(recon))
            cosine = cosine_similarity(feats[:n], feats[n:])
            agreement = ((probs[:n] >= 0.5) == (probs[n:] >= 0.5)).mean(axis=1)
            for row, cos, agree in zip(rows, cosine, agreement):
                row["feature_cosine"], row["prediction_agreement"] = float(cos), float(agree)
        return rows

    return run_pending(
        ctx.store(STORE),
        records,
        key=lambda r: r.image_id,
        generate=measure,
        make_row=lambda record, row: row,
        batch_size=ctx.config.batch_size,
        desc="tokenizer",
    )


def summarize(ctx: RunContext, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"n_items": 0, "note": "no test images available"}
    cfg = ctx.config
    out: dict[str, Any] = {"n_items": len(rows)}
    for name in ("psnr", "ssim", "feature_cosine", "prediction_agreement"):
        values = [r[name] for r in rows if name in r]
        out[name] = float(np.mean(values)) if values else math.nan
        if values:
            out[f"{name}_ci95"] = mean_interval(values, n_boot=cfg.bootstrap, seed=cfg.seed)
    used = set().union(*(r["codes"] for r in rows))
    out["codebook_usage"] = len(used) / rows[0]["codebook_size"]
    return out
