"""Benchmark a CXR tokenizer: reconstruction quality, clinical fidelity, codebook use, speed.

    python benchmarks/tokenizer.py --tokenizer <folder|.ckpt> --classifier <export|.ckpt> \
        [--data ../shared/data/nih_chestxray14] [--limit 128]

Prints a summary and writes JSON (default ``benchmarks/results/tokenizer.json``) with PSNR and
SSIM (torchmetrics, images in [0, 1]), the cosine between the classifier's 1,024-d features of
each original and its reconstruction, classifier-output agreement (predicted labels at 0.5, mean
absolute probability difference), codebook usage and perplexity over all tokens, and encode /
decode images per second on the CPU (and on the GPU when one is present).

``loss_balance`` calibrates the VQ-GAN's ``clinical_weight`` for this classifier: the training
loss's L1 term (images in [-1, 1]) and unweighted clinical term (feature MSE) on these
reconstructions, with the norm of each term's gradient with respect to the reconstruction, and
the weights that make the weighted clinical term equal L1 in value and in gradient norm. The
scale of the clinical term depends on the classifier, so the weight must be re-measured when the
classifier changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from tqdm import tqdm

from vqgan import CXRReadError, CXRTokenizer, load_cxr_tensor
from vqgan.clinical import ClinicalFeatureExtractor
from vqgan.data import load_records
from vqgan.module import code_perplexity

logger = logging.getLogger("benchmarks.tokenizer")

DEFAULT_DATA = "../shared/data/nih_chestxray14"
DEFAULT_OUTPUT = "benchmarks/results/tokenizer.json"


def load_images(
    data: str, size: int, limit: int | None, seed: int, split: str | None = None
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Read up to ``limit`` images (seeded subset) as ``[N, 1, size, size]``; unreadable ones are
    skipped. ``split`` keeps the manifest rows of that ``split`` column value only."""
    records = load_records(data)
    if split is not None:
        records = [r for r in records if r.fields.get("split") == split]
        if not records:
            raise SystemExit(f"no rows with split={split!r} in {data}")
    if limit is not None and limit < len(records):
        records = random.Random(seed).sample(records, limit)
    images, paths, skipped = [], [], []
    for record in tqdm(records, desc="reading images", unit="img"):
        try:
            images.append(load_cxr_tensor(record.path, size))
            paths.append(record.path)
        except CXRReadError as err:
            logger.warning("skipped %s", err)
            skipped.append(record.path)
    if not images:
        raise SystemExit(f"no readable images in {data}")
    return torch.stack(images), paths, skipped


def _timed(fn, device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def measure_speed(
    tokenizer: CXRTokenizer, images: torch.Tensor, batch_size: int, device: torch.device
) -> dict:
    """Encode and decode throughput (images/s) on ``device``, after one warm-up batch."""
    tokenizer.to(device)
    batches = list(images.split(batch_size))
    tokenizer.decode(tokenizer.encode(batches[0].to(device)))  # warm-up (allocations, kernels)
    encode_s = decode_s = 0.0
    for batch in tqdm(batches, desc=f"speed on {device.type}", unit="batch"):
        batch = batch.to(device)
        ids, seconds = _timed(lambda b=batch: tokenizer.encode(b), device)
        encode_s += seconds
        _, seconds = _timed(lambda i=ids: tokenizer.decode(i), device)
        decode_s += seconds
    n = images.shape[0]
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "batch_size": batch_size,
        "encode_images_per_s": n / encode_s,
        "decode_images_per_s": n / decode_s,
    }


@torch.no_grad()
def evaluate(
    tokenizer: CXRTokenizer,
    classifier: ClinicalFeatureExtractor,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> dict:
    """Quality metrics of decode(encode(images)) against the originals."""
    tokenizer.to(device)
    classifier.to(device)
    psnr, ssim, cosine, agree, prob_diff, all_ids, balance = [], [], [], [], [], [], []
    for batch in tqdm(images.split(batch_size), desc="reconstructing", unit="batch"):
        batch = batch.to(device)
        ids = tokenizer.encode(batch)
        recon = tokenizer.decode(ids)
        all_ids.append(ids.cpu())
        psnr.append(
            peak_signal_noise_ratio(recon, batch, data_range=1.0, reduction="none", dim=(1, 2, 3))
        )
        ssim.append(
            structural_similarity_index_measure(recon, batch, data_range=1.0, reduction="none")
        )
        features, recon_features = classifier(batch), classifier(recon)
        cosine.append(F.cosine_similarity(features, recon_features, dim=1))
        p_orig = classifier.proba_from_features(features)
        p_recon = classifier.proba_from_features(recon_features)
        agree.append(((p_orig > 0.5) == (p_recon > 0.5)).float().mean(dim=1))
        prob_diff.append((p_orig - p_recon).abs().mean(dim=1))
        balance.append(balance_terms(classifier, batch, recon))
    ids = torch.cat(all_ids)
    counts = torch.bincount(ids.flatten(), minlength=tokenizer.codebook_size).float()
    perplexity = code_perplexity(counts)

    def mean(values: list[torch.Tensor]) -> float:
        return float(torch.cat([v.reshape(-1).float().cpu() for v in values]).mean())

    return {
        "psnr_db": mean(psnr),
        "ssim": mean(ssim),
        "clinical_feature_cosine": mean(cosine),
        "label_agreement_at_0.5": mean(agree),
        "mean_abs_prob_diff": mean(prob_diff),
        "codebook_usage": float((counts > 0).float().mean()),
        "codes_used": int((counts > 0).sum()),
        "code_perplexity": float(perplexity),
        "classifier_labels": list(classifier.labels),
        "loss_balance": summarise_balance(balance),
    }


def balance_terms(
    classifier: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, recon: torch.Tensor
) -> tuple[float, float, float, float]:
    """L1 (images in [-1, 1]) and unweighted clinical term of one batch, and the norm of each
    term's gradient with respect to the reconstruction."""
    from vqgan.losses import clinical_loss

    with torch.enable_grad():
        recon = recon.detach().clone().requires_grad_(True)
        l1 = ((batch * 2 - 1) - (recon * 2 - 1)).abs().mean()
        (l1_grad,) = torch.autograd.grad(l1, recon)
        clinical, _ = clinical_loss(classifier, batch, recon)
        (clinical_grad,) = torch.autograd.grad(clinical, recon)
    return l1.item(), clinical.item(), l1_grad.norm().item(), clinical_grad.norm().item()


def summarise_balance(terms: Sequence[tuple[float, float, float, float]]) -> dict:
    """Batch means of `balance_terms` and the clinical weights that equalise value / gradient."""
    l1, clinical, l1_grad, clinical_grad = (sum(t) / len(terms) for t in zip(*terms, strict=True))
    return {
        "l1": l1,
        "clinical_mse_unweighted": clinical,
        "l1_grad_norm": l1_grad,
        "clinical_grad_norm_unweighted": clinical_grad,
        "clinical_weight_equal_value": l1 / max(clinical, 1e-12),
        "clinical_weight_equal_gradient": l1_grad / max(clinical_grad, 1e-12),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokenizer", required=True, help="tokenizer folder (save_pretrained) or fit .ckpt"
    )
    parser.add_argument(
        "--classifier",
        required=True,
        help=(
            "clinical classifier: export folder, .safetensors, .ckpt or torchxrayvision cache name"
        ),
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder or CSV/JSONL manifest of CXRs")
    parser.add_argument(
        "--limit", type=int, default=128, help="images to use (seeded random subset)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset")
    parser.add_argument(
        "--split",
        default=None,
        help=(
            "only manifest rows with this split (e.g. test of an instruction build's images.jsonl)"
        ),
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON results file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the figures and write them as JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = CXRTokenizer.from_pretrained(args.tokenizer)
    classifier = ClinicalFeatureExtractor.from_weights(args.classifier)
    images, paths, skipped = load_images(
        args.data, tokenizer.image_size, args.limit, args.seed, args.split
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    results = {
        "data": str(args.data),
        "split": args.split,
        "images": len(paths),
        "skipped": skipped,
        "tokenizer": str(args.tokenizer),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "tokenizer_config": tokenizer.config.to_dict(),
        "tokenizer_parameters": sum(p.numel() for p in tokenizer.parameters()),
        "classifier": str(args.classifier),
        "quality": evaluate(tokenizer, classifier, images, args.batch_size, device),
        "speed": {"cpu": measure_speed(tokenizer, images, args.batch_size, torch.device("cpu"))},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    results["loss_balance"] = results["quality"].pop("loss_balance")
    if device.type == "cuda":
        results["speed"]["cuda"] = measure_speed(tokenizer, images, args.batch_size, device)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    quality = results["quality"]
    print(
        f"{results['images']} images from {args.data} ({len(skipped)} skipped), "
        f"tokenizer {tokenizer.fingerprint} ({tokenizer.tokens_per_image} tokens, "
        f"{tokenizer.codebook_size} codes)"
    )
    print(
        f"PSNR {quality['psnr_db']:.2f} dB  SSIM {quality['ssim']:.4f}  "
        f"clinical-feature cosine {quality['clinical_feature_cosine']:.4f}"
    )
    print(
        f"label agreement {quality['label_agreement_at_0.5']:.4f}  "
        f"mean |dp| {quality['mean_abs_prob_diff']:.4f}  codebook usage "
        f"{quality['codebook_usage']:.3f} ({quality['codes_used']} codes)  perplexity "
        f"{quality['code_perplexity']:.1f}"
    )
    balance = results["loss_balance"]
    print(
        f"loss balance: L1 {balance['l1']:.4f}, clinical MSE "
        f"{balance['clinical_mse_unweighted']:.4g} -> clinical_weight "
        f"{balance['clinical_weight_equal_value']:.3g} (equal value), "
        f"{balance['clinical_weight_equal_gradient']:.3g} (equal gradient norm)"
    )
    for name, speed in results["speed"].items():
        print(
            f"{name}: encode {speed['encode_images_per_s']:.2f} img/s, decode "
            f"{speed['decode_images_per_s']:.2f} img/s (batch {speed['batch_size']})"
        )
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
