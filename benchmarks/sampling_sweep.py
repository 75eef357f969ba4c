"""Image sampling defaults chosen by measurement: temperature, top-p and guidance on the test split.

For each setting, draws one image per report for the same seeded subset of the split's
report->CXR records and scores the drawings against the real test images on the evaluation
classifier's features: k-NN precision / recall (realism / coverage), KID and FID, and label
agreement (macro AUROC of the classifier on the drawings against the report labels), and in
pixels: each drawing's SSIM to its nearest real image of the subset (`llmcxr evaluate`'s
classifier-free realism, which sees chest layout the classifier features miss), raw and at
matched sharpness (drawings and real images low-passed alike, `LOWPASS_SIGMA`: raw SSIM rewards
blur), with the drawings' sharpness (mean gradient magnitude). The same real images and their
tokenizer reconstructions (the ceiling) are scored once. Prints a table and writes
``benchmarks/results/sampling_sweep.json``.

    python benchmarks/sampling_sweep.py --data runs/default_model/data \
        --classifier runs/default_model/classifier/export --model llmcxr/default_model --limit 48
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr.evaluation.classifier import ImageClassifier
from llmcxr.evaluation.data import EvalSplit
from llmcxr.evaluation.image_task import (
    LOWPASS_SIGMA,
    at_size,
    distribution_metrics,
    matched_sharpness,
    read_real,
    reconstruct,
)
from llmcxr.evaluation.labelling import chexpert_classes, label_matrix
from llmcxr.evaluation.metrics import (
    classification_metrics,
    gradient_energy,
    mean_interval,
    nearest_ssim,
)
from llmcxr.pipeline import LLMCXR

REPO = Path(__file__).resolve().parents[1]


def _settings(args: argparse.Namespace) -> list[dict[str, float]]:
    grid = itertools.product(args.temperatures, args.top_ps, args.guidance)
    return [{"temperature": t, "top_p": p, "guidance_scale": g} for t, p, g in grid]


def _agreement(
    classifier: ImageClassifier, reports: list[str], probs: np.ndarray
) -> dict[str, Any]:
    columns = classifier.chexpert_columns(chexpert_classes())
    classes = list(columns)
    truth = label_matrix(reports, classes)
    score = ImageClassifier.class_scores(probs, columns)
    metrics = classification_metrics(truth, score, (score >= 0.5).astype(np.int64), classes)
    return {"auroc_macro": metrics["auroc"]["macro"], "f1_macro": metrics["f1"]["macro"]}


def _pixel_realism(
    images: list[np.ndarray], real: list[np.ndarray], *, leave_one_out: bool = False
) -> dict[str, Any]:
    values = nearest_ssim(images, real, leave_one_out=leave_one_out)
    return {"mean": float(values.mean()), "ci95": mean_interval(values.tolist(), seed=0)}


def _pixels(
    images: list[np.ndarray],
    real: list[np.ndarray],
    smooth_real: list[np.ndarray],
    *,
    leave_one_out: bool = False,
) -> dict[str, Any]:
    """Nearest-real SSIM raw and at matched sharpness (`smooth_real`: the real images through
    `matched_sharpness`, once), and the images' sharpness."""
    return {
        "nearest_real_ssim": _pixel_realism(images, real, leave_one_out=leave_one_out),
        "nearest_real_ssim_matched_sharpness": _pixel_realism(
            matched_sharpness(images), smooth_real, leave_one_out=leave_one_out
        ),
        "sharpness": float(np.mean([gradient_energy(image) for image in images])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--model", default=None, help="model folder (default: the embedded one)")
    parser.add_argument("--limit", type=int, default=48, help="reports (one drawing each)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.8, 1.0])
    parser.add_argument("--top-ps", type=float, nargs="+", default=[0.92, 1.0])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--results", type=Path, default=REPO / "benchmarks" / "results" / "sampling_sweep.json"
    )
    args = parser.parse_args(argv)
    llm = LLMCXR.from_pretrained(args.model, device="cpu")
    classifier = ImageClassifier.from_weights(args.classifier)
    records = EvalSplit(args.data, 2, "test").records("report_to_cxr", need_image=True)
    records = random.Random(args.seed).sample(records, min(args.limit, len(records)))
    reports = [r.report for r in records]
    size = llm.image_tokenizer.image_size
    real = [read_real(r, size) for r in records]
    smooth_real = matched_sharpness(real)
    real_probs, real_feats = classifier(real)
    recon_probs, recon_feats = classifier(list(reconstruct(llm.image_tokenizer, real)[0]))
    results: dict[str, Any] = {
        "model": args.model or "llmcxr/default_model",
        "classifier": args.classifier,
        "n_reports": len(records),
        "resolution": size,
        "lowpass_sigma": LOWPASS_SIGMA,
        "machine": platform.processor() or platform.machine(),
        "real": {
            "agreement": _agreement(classifier, reports, real_probs),
            **_pixels(real, real, smooth_real, leave_one_out=True),
        },
        "tokenizer_reconstruction": {
            **distribution_metrics(real_feats, recon_feats),
            "agreement": _agreement(classifier, reports, recon_probs),
        },
        "settings": [],
    }
    for setting in _settings(args):
        start = time.perf_counter()
        drawn = llm.generate_images(reports, seed=args.seed, batch_size=args.batch_size, **setting)
        seconds = time.perf_counter() - start
        drawings = [at_size(images[0], size) for images in drawn]
        probs, feats = classifier(drawings)
        row = {
            **setting,
            **distribution_metrics(real_feats, feats),
            "agreement": _agreement(classifier, reports, probs),
            **_pixels(drawings, real, smooth_real),
            "seconds_per_image": round(seconds / len(records), 2),
        }
        results["settings"].append(row)
        print(
            f"T={setting['temperature']:.2f} top_p={setting['top_p']:.2f} "
            f"cfg={setting['guidance_scale']:.1f}: precision {row['precision']:.3f} "
            f"recall {row['recall']:.3f} KID {row['kid']:.4f} FID {row['fid']:.1f} "
            f"AUROC {row['agreement']['auroc_macro']:.3f} "
            f"nearest-real SSIM {row['nearest_real_ssim']['mean']:.3f}, matched sharpness "
            f"{row['nearest_real_ssim_matched_sharpness']['mean']:.3f}, sharpness "
            f"{row['sharpness']:.4f}",
            flush=True,
        )
    ceiling = results["tokenizer_reconstruction"]
    print(
        f"ceiling (tokenizer reconstructions): precision {ceiling['precision']:.3f} "
        f"recall {ceiling['recall']:.3f} KID {ceiling['kid']:.4f} FID {ceiling['fid']:.1f}"
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
