"""Report -> CXR protocol: generate images from test reports and judge them with a CXR classifier.

LLM-CXR's protocol (Table 4): the classifier's AUROC / F1 on generated images against the labels
of the report, for the classes the classifier knows; FID on the classifier's pooled 1,024-d
features (and Inception FID); plus diversity, the mean pairwise SSIM of the images of one report.

Realism beside FID, on the same features against the real test images: KID (unbiased at small N)
and k-NN precision / recall (Kynkäänniemi et al. 2019). The ceiling is the tokenizer's own
reconstruction of each real image: the best any LLM drawing through this tokenizer can reach.
Generated, real and reconstructed images are all compared at the tokenizer's resolution (the
model upsamples its drawings for display, which adds no detail a real image at full size has).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llmcxr.evaluation.classifier import ImageClassifier
from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.labelling import label_matrix
from llmcxr.evaluation.metrics import (
    classification_metrics,
    frechet_distance,
    gradient_energy,
    headline_intervals,
    kernel_inception_distance,
    knn_precision_recall,
    lowpass,
    mean_difference_interval,
    mean_interval,
    mean_pairwise_ssim,
    nearest_ssim,
    tile_shuffle,
)
from llmcxr.evaluation.store import run_pending

logger = logging.getLogger(__name__)

STORE = "image"
PRECISION_RECALL_K = 3
"""Neighbourhood size of the k-NN manifolds (Kynkäänniemi et al. 2019 use k = 3)."""
CONTROL_GRID = 4
"""The negative control: each real image cut into 4 x 4 tiles and shuffled (`tile_shuffle`)."""
LOWPASS_SIGMA = 2.0
"""Gaussian sigma (pixels at the tokenizer's size) of the matched-sharpness pixel realism: SSIM to
other images rewards blur (real test images blurred with sigma 1 px score 0.61 against 0.57
unblurred), so drawings and real images are both low-passed before that comparison."""


def matched_sharpness(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`images` low-passed with `LOWPASS_SIGMA`: what the matched-sharpness (layout) realism
    compares, drawings and real images alike."""
    return [lowpass(image, LOWPASS_SIGMA) for image in images]


def at_size(image: np.ndarray, size: int) -> np.ndarray:
    """A float image [H, W] in [0, 1] resized and centre-cropped to [size, size] as the tokenizer's
    input is (``vqgan.prepare_image``)."""
    from vqgan import prepare_image

    return prepare_image(np.asarray(image, dtype=np.float32), size)[0].numpy()


def read_real(record: EvalRecord, size: int) -> np.ndarray | None:
    """The record's real image prepared like the tokenizer's input ([size, size] in [0, 1]), if
    any."""
    if record.image_path is None:
        return None
    from vqgan import read_cxr

    return at_size(read_cxr(record.image_path), size)


@torch.no_grad()
def reconstruct(tokenizer: Any, images: Sequence[np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
    """decode(encode(images)) at the tokenizer's size: reconstructions [B, S, S] and codes
    [B, N]."""
    pixels = torch.from_numpy(np.stack(images))[:, None].to(tokenizer.device)
    codes = tokenizer.encode(pixels)
    return tokenizer.decode(codes)[:, 0].float().cpu().numpy(), codes


def run(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Generate ``images_per_report`` images per report, classify them and the real image."""
    cfg = ctx.config

    def generate(part: Sequence[EvalRecord], start: int) -> list[list[np.ndarray]]:
        return ctx.model.generate_images(
            [r.report for r in part],
            num_images=cfg.images_per_report,
            seed=cfg.seed + start,
            guidance_scale=cfg.guidance_scale,
            batch_size=cfg.batch_size,
        )

    return run_pending(
        ctx.store(STORE),
        records,
        key=lambda r: r.id,
        generate=generate,
        make_row=lambda r, images: _classify_item(ctx, r, images),
        batch_size=cfg.batch_size,
        desc="report->CXR",
    )


def _classify_item(ctx: RunContext, record: EvalRecord, images: list[np.ndarray]) -> dict[str, Any]:
    """Classifier outputs of the generated images, the real one and its reconstruction, all at the
    tokenizer's size; features stored in that order ([n generated, real, reconstruction])."""
    tokenizer = ctx.model.image_tokenizer
    size = tokenizer.image_size
    real = read_real(record, size)
    batch = [at_size(img, size) for img in images]
    if real is not None:
        batch += [real, reconstruct(tokenizer, [real])[0][0]]
    probs, feats = ctx.classifier(batch)
    n = len(images)
    return {
        "image_id": record.image_id,
        "report": record.report,
        "resolution": size,
        "images": [
            ctx.save_png(img, f"images/{STORE}/{record.id}_{k}.png") for k, img in enumerate(images)
        ],
        "generated_probs": probs[:n].tolist(),
        "real_probs": probs[n].tolist() if real is not None else None,
        "recon_probs": probs[n + 1].tolist() if real is not None else None,
        "features": ctx.save_features(feats, f"features/{STORE}/{record.id}.npy"),
        "diversity_ssim": mean_pairwise_ssim(images) if n > 1 else None,
    }


def drawing_scores(rows: Sequence[dict[str, Any]], columns: dict[str, list[int]]) -> np.ndarray:
    """``[reports, classes]``: per stored row, the classifier's class scores (its `columns` per
    class) averaged over the report's drawings, the score the image task's AUROC reads."""
    return np.array(
        [
            ImageClassifier.class_scores(np.asarray(r["generated_probs"]), columns).mean(axis=0)
            for r in rows
        ]
    )


def summarize(ctx: RunContext, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Classifier metrics of generated, real and reconstructed images against the reports' labels;
    realism (FID, KID, precision, recall) against the real images; diversity."""
    cfg = ctx.config
    if not rows:
        return {"n_items": 0, "note": "no report->CXR records"}
    columns = ctx.classifier.chexpert_columns(ctx.classes)
    classes = list(columns)
    if not classes:
        return {
            "n_items": len(rows),
            "note": f"the classifier's labels {ctx.classifier.labels} "
            "name none of the CheXpert classes; no AUROC / F1 / FID computed",
        }
    truth = label_matrix(
        [r["report"] for r in rows], classes, uncertain_as_positive=cfg.uncertain_as_positive
    )
    gen_score = drawing_scores(rows, columns)
    gen_pred = (gen_score >= 0.5).astype(np.int64)
    kw = {"min_positives": cfg.min_positives}
    out: dict[str, Any] = {
        "classes": classes,
        "class_columns": {
            c: [ctx.classifier.labels[i] for i in cols] for c, cols in columns.items()
        },
        "images_per_report": len(rows[0]["images"]),
        "resolution": rows[0]["resolution"],
        "score": (
            "classifier probability (a class with several classifier labels: the largest) "
            "averaged over a report's images; F1 threshold 0.5 (the classifier's calibrated "
            "operating point when it ships op_threshs)"
        ),
        "generated": classification_metrics(truth, gen_score, gen_pred, classes, **kw),
    }
    out["generated"]["ci95"] = headline_intervals(
        truth, gen_score, gen_pred, n_boot=cfg.bootstrap, seed=cfg.seed, **kw
    )
    with_real = [i for i, r in enumerate(rows) if r["real_probs"] is not None]
    for name, field in (("real", "real_probs"), ("tokenizer_reconstruction", "recon_probs")):
        if with_real:
            score = ImageClassifier.class_scores(
                np.array([rows[i][field] for i in with_real]), columns
            )
            out[name] = classification_metrics(
                truth[with_real], score, (score >= 0.5).astype(np.int64), classes, **kw
            )
    generated, real = _stored_images(ctx, rows)
    rng = np.random.default_rng(cfg.seed)
    control = [tile_shuffle(image, CONTROL_GRID, rng) for image in real]
    out["realism"] = _realism(ctx, rows, control)
    out["fid_xrv"] = out["realism"]["generated"]["fid"]
    out["nearest_real_ssim"] = _nearest_real(ctx, generated, real, control)
    diversity = [r["diversity_ssim"] for r in rows if r["diversity_ssim"] is not None]
    out["diversity_ssim"] = float(np.mean(diversity)) if diversity else math.nan
    out["diversity_ssim_ci95"] = mean_interval(diversity, n_boot=cfg.bootstrap, seed=cfg.seed)
    out["fid_inception"] = _inception_fid(ctx, generated, real)
    return out


def distribution_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """FID, KID and k-NN precision / recall of feature set ``fake`` against ``real`` [N, D]."""
    fid = frechet_distance(fake, real) if min(len(real), len(fake)) >= 2 else math.nan
    return {
        "n": len(fake),
        "fid": fid,
        "kid": kernel_inception_distance(real, fake),
        **knn_precision_recall(real, fake, k=PRECISION_RECALL_K),
    }


def _realism(
    ctx: RunContext, rows: Sequence[dict[str, Any]], control: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Generated images, the tokenizer's reconstructions (the ceiling) and the tile-shuffled real
    images (the negative control, ``control``) against the distinct real images of the rows, on
    the classifier's pooled features."""
    generated, real, recon = [], {}, {}
    for row in rows:
        feats = ctx.load_features(row["features"])
        n = len(row["images"])
        generated.append(feats[:n])
        if row["real_probs"] is not None:
            real[row["image_id"]], recon[row["image_id"]] = feats[n], feats[n + 1]
    out: dict[str, Any] = {
        "n_real": len(real),
        "k": PRECISION_RECALL_K,
        "features": "the classifier's pooled 1,024-d features",
    }
    if len(real) < 2:
        nan = {"n": 0, "fid": math.nan, "kid": math.nan, "precision": math.nan, "recall": math.nan}
        return {**out, "generated": nan, "tokenizer_reconstruction": nan, "control": nan}
    real_feats = np.stack(list(real.values()))
    out["generated"] = distribution_metrics(real_feats, np.concatenate(generated))
    out["tokenizer_reconstruction"] = distribution_metrics(
        real_feats, np.stack(list(recon.values()))
    )
    out["control"] = distribution_metrics(real_feats, ctx.classifier(control)[1])
    return out


def _stored_images(
    ctx: RunContext, rows: Sequence[dict[str, Any]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The stored drawings of the rows and their distinct real images (one per image id), all at
    the tokenizer's size: what the pixel realism and the Inception FID compare."""
    from vqgan import read_cxr

    size = rows[0]["resolution"]
    records = {r.id: r for r in ctx.split.records("report_to_cxr")}
    real: dict[str, np.ndarray] = {}
    for row in rows:
        if row["real_probs"] is not None and row["image_id"] not in real:
            real[row["image_id"]] = read_real(records[row["key"]], size)
    generated = [at_size(read_cxr(ctx.config.out / p), size) for row in rows for p in row["images"]]
    return generated, list(real.values())


def _nearest_real(
    ctx: RunContext,
    generated: Sequence[np.ndarray],
    real: Sequence[np.ndarray],
    control: Sequence[np.ndarray],
) -> dict[str, Any]:
    """Realism in pixels, where the classifier features can miss layout: each generated image's
    SSIM to the most similar real test image, beside each real image's SSIM to the most similar
    *other* real one (the level a real chest X-ray reaches) and each tile-shuffled real image's
    SSIM to the most similar real one other than its source (the negative control); then the same
    with every image low-passed (`LOWPASS_SIGMA`), where blur earns nothing, plus the mean real
    image there (a measure of layout alone: an average chest scores high, so read diversity too);
    and the sharpness (mean gradient magnitude) of the drawings and the real images."""
    if len(real) < 2:
        nan = math.nan
        return {"n_real": len(real), "generated": nan, "real_leave_one_out": nan, "control": nan}
    boot = {"n_boot": ctx.config.bootstrap, "seed": ctx.config.seed}

    def compare(
        gen: Sequence[np.ndarray], ref: Sequence[np.ndarray], ctl: Sequence[np.ndarray]
    ) -> dict[str, Any]:
        values = {
            "generated": nearest_ssim(gen, ref),
            "real_leave_one_out": nearest_ssim(ref, ref, leave_one_out=True),
            "control": nearest_ssim(ctl, ref, leave_one_out=True),
        }
        out: dict[str, Any] = {}
        for name, v in values.items():
            out[name], out[f"{name}_ci95"] = float(v.mean()), mean_interval(v.tolist(), **boot)
        # Higher is not better past the real level (an average chest scores far above it): the
        # signed gap to real films is what a comparison of two models should read.
        gen, ref = values["generated"], values["real_leave_one_out"]
        out["generated_minus_real"] = float(gen.mean() - ref.mean())
        out["generated_minus_real_ci95"] = mean_difference_interval(gen, ref, **boot)
        return out

    smooth = matched_sharpness(real)
    matched = compare(matched_sharpness(generated), smooth, matched_sharpness(control))
    matched["mean_real_image"] = float(nearest_ssim([np.mean(smooth, axis=0)], smooth)[0])
    return {
        "n_real": len(real),
        "n_generated": len(generated),
        **compare(generated, real, control),
        "sharpness": {
            "generated": float(np.mean([gradient_energy(image) for image in generated])),
            "real": float(np.mean([gradient_energy(image) for image in real])),
        },
        "lowpass_sigma": LOWPASS_SIGMA,
        "lowpass": matched,
    }


def _inception_fid(
    ctx: RunContext, generated: Sequence[np.ndarray], real: Sequence[np.ndarray]
) -> float | None:
    """Inception FID when ``--inception-weights`` is given, else None (weights are never
    fetched)."""
    if not ctx.config.inception_weights:
        return None
    if len(real) < 2:
        return math.nan
    from llmcxr.evaluation.inception import InceptionFeatures

    extractor = InceptionFeatures.from_weights(ctx.config.inception_weights)
    return frechet_distance(extractor(generated), extractor(real))
