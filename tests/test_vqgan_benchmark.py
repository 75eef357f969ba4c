"""benchmarks/tokenizer.py runs end to end on the fixtures and writes sane JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmark_modules import load_benchmark
from vqgan_testing import TINY, single_thread  # noqa: F401  (autouse fixture)

from vqgan import CXRTokenizer
from vqgan.clinical import build_densenet, save_classifier_export


def test_tokenizer_benchmark_writes_results(tmp_path: Path, fixtures_dir: Path) -> None:
    benchmark = load_benchmark("tokenizer")
    tokenizer = CXRTokenizer(TINY).save_pretrained(tmp_path / "tokenizer")
    classifier = save_classifier_export(
        build_densenet(2), ["Effusion", "No Finding"], tmp_path / "classifier"
    )
    out = tmp_path / "results.json"

    benchmark.main(
        [
            "--tokenizer",
            str(tokenizer),
            "--classifier",
            str(classifier),
            "--data",
            str(fixtures_dir),
            "--limit",
            "3",
            "--batch-size",
            "2",
            "--output",
            str(out),
        ]
    )

    results = json.loads(out.read_text())
    quality = results["quality"]
    assert results["images"] + len(results["skipped"]) == 3
    assert results["tokenizer_fingerprint"] == CXRTokenizer.from_pretrained(tokenizer).fingerprint
    assert 0 < quality["psnr_db"] < 100 and -1 <= quality["ssim"] <= 1
    assert -1 <= quality["clinical_feature_cosine"] <= 1
    assert 0 <= quality["label_agreement_at_0.5"] <= 1 and 0 <= quality["mean_abs_prob_diff"] <= 1
    assert 0 < quality["codebook_usage"] <= 1 and 1 <= quality["code_perplexity"] <= TINY.n_embed
    assert results["loss_balance"]["l1"] > 0 and results["loss_balance"]["l1_grad_norm"] > 0
    assert (
        results["speed"]["cpu"]["encode_images_per_s"] > 0
        and results["speed"]["cpu"]["decode_images_per_s"] > 0
    )


def test_tokenizer_benchmark_keeps_one_split_of_a_manifest(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    benchmark = load_benchmark("tokenizer")
    names = sorted(p.name for p in fixtures_dir.iterdir() if p.suffix in {".png", ".jpg"})[:3]
    manifest = tmp_path / "images.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"path": str(fixtures_dir / n), "split": "test" if i else "train"}) + "\n"
            for i, n in enumerate(names)
        )
    )
    images, paths, skipped = benchmark.load_images(str(manifest), 32, None, 0, "test")
    assert skipped == []
    assert sorted(Path(p).name for p in paths) == names[1:] and images.shape[0] == 2


def test_loss_balance_on_hand_computed_terms() -> None:
    benchmark = load_benchmark("tokenizer")
    images = torch.rand(4, 1, 4, 4) * 0.5
    features = lambda x: x.flatten(1)  # a stand-in classifier: the pixels
    # A reconstruction 0.1 above the input everywhere, in two batches of 32 values.
    terms = [benchmark.balance_terms(features, b, b + 0.1) for b in images.split(2)]
    balance = benchmark.summarise_balance(terms)
    # L1 in [-1, 1]: |2 * 0.1| = 0.2; clinical: mean of 0.1^2 = 0.01.
    assert balance["l1"] == pytest.approx(0.2)
    assert balance["clinical_mse_unweighted"] == pytest.approx(0.01)
    assert balance["clinical_weight_equal_value"] == pytest.approx(20.0)
    # dL1/dr = 2/32 per value -> norm 2/sqrt(32); dMSE/dr = 2*0.1/32 -> norm 0.2/sqrt(32).
    assert balance["l1_grad_norm"] == pytest.approx(2 / 32**0.5)
    assert balance["clinical_weight_equal_gradient"] == pytest.approx(10.0)
