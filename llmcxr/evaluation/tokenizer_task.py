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
import torch
from tqdm.auto import tqdm

from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.image_task import read_real
from llmcxr.evaluation.metrics import cosine_similarity, mean_interval, psnr, ssim
from llmcxr.evaluation.store import chunks

STORE = "tokenizer"


def unique_images(records: Sequence[EvalRecord]) -> list[EvalRecord]:
    """One record per distinct available image, in first-seen order."""
    seen: dict[str, EvalRecord] = {}
    for record in records:
        if record.image_path is not None and record.image_id not in seen:
            seen[record.image_id] = record
    return list(seen.values())


@torch.no_grad()
def run(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Encode and decode each image once; finished images are skipped."""
    store = ctx.store(STORE)
    tokenizer = ctx.model.image_tokenizer
    todo = [r for r in records if not store.done(r.image_id)]
    with tqdm(total=len(records), initial=len(records) - len(todo), desc="tokenizer", unit="img") as bar:
        for _, chunk in chunks(todo, ctx.config.batch_size):
            originals = [read_real(r, tokenizer.image_size) for r in chunk]
            pixels = torch.from_numpy(np.stack(originals))[:, None].to(tokenizer.device)
            codes = tokenizer.encode(pixels)
            recon = tokenizer.decode(codes)[:, 0].float().cpu().numpy()
            if ctx.classifier is not None:
                probs, feats = ctx.classifier(originals + list(recon))
            n = len(chunk)
            for i, record in enumerate(chunk):
                row = {
                    "key": record.image_id,
                    "psnr": psnr(originals[i], recon[i]),
                    "ssim": ssim(originals[i], recon[i]),
                    "codes": sorted(set(codes[i].tolist())),
                    "codebook_size": tokenizer.codebook_size,
                }
                if ctx.classifier is not None:
                    row["feature_cosine"] = float(cosine_similarity(feats[i : i + 1], feats[n + i : n + i + 1])[0])
                    row["prediction_agreement"] = float(((probs[i] >= 0.5) == (probs[n + i] >= 0.5)).mean())
                store.add(row)
            bar.update(n)
    return store.select(r.image_id for r in records)


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
