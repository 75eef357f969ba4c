"""End to end: the real `python -m vqgan` entry point trains the tiny config on the bundled CXRs."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from vqgan_testing import TINY, single_thread  # noqa: F401  (autouse fixture)

from vqgan import CXRTokenizer, VQGANConfig
from vqgan.__main__ import main
from vqgan.clinical import build_densenet, save_classifier_export
from vqgan.export import main as export_main
from vqgan.losses import VQGANLossConfig
from vqgan.module import VQGANModule

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "vqgan" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _cli_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI gets its arguments from ``main(args)``; hide pytest's own argv from it."""
    monkeypatch.setattr(sys, "argv", ["python -m vqgan"])


def _fit_args(out: Path, *extra: str, command: str = "fit") -> list[str]:
    """``command`` (fit, validate) on the bundled fixtures with every output under ``out``."""
    return [
        command,
        "-c",
        str(TINY_YAML),
        "--data.data",
        str(REPO / "tests" / "fixtures"),
        "--trainer.default_root_dir",  # moves logs and checkpoints too
        str(out),
        *extra,
    ]


def _metric(metrics_csv: Path, name: str) -> list[float]:
    with metrics_csv.open() as handle:
        return [float(row[name]) for row in csv.DictReader(handle) if row.get(name)]


def test_tiny_config_trains_resumes_validates_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # 10 batches on a fixed set of 3 images (no augmentation), discriminator still off.
    main(_fit_args(out, "--trainer.max_steps", "10", "--model.loss.disc_start", "1000"))

    last = out / "checkpoints" / "last.ckpt"
    metrics = out / "logs" / "version_0" / "metrics.csv"
    assert last.is_file() and metrics.is_file()
    assert (out / "logs" / "version_0" / "config.yaml").is_file()
    grids = sorted(p.name for p in (out / "logs" / "version_0" / "reconstructions").glob("*.png"))
    assert any(g.startswith("train_") for g in grids) and any(g.startswith("val_") for g in grids)

    l1 = _metric(metrics, "train/l1_step")
    assert len(l1) == 10 and all(math.isfinite(v) for v in l1)
    first, final = sum(l1[:2]) / 2, sum(l1[-2:]) / 2
    assert final < 0.9 * first, f"pixel loss did not fall: {l1}"
    usage = _metric(metrics, "val/codebook_usage")
    perplexity = _metric(metrics, "val/perplexity")
    assert usage and all(0 < u <= 1 for u in usage)
    assert perplexity and all(1 <= p <= TINY.n_embed for p in perplexity)

    # Resume with the discriminator on: both optimisers step, so 2 more batches = 4 more steps.
    main(
        _fit_args(
            out,
            "--trainer.max_steps",
            "14",
            "--model.loss.disc_start",
            "0",
            "--ckpt_path",
            str(last),
        )
    )
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 14
    assert int(resumed["state_dict"]["batches_seen"]) == 12
    disc = _metric(out / "logs" / "version_1" / "metrics.csv", "train/disc_loss_step")
    assert disc and all(math.isfinite(v) for v in disc)

    main(_fit_args(out, "--ckpt_path", str(last), command="validate"))

    export_main([str(last), str(tmp_path / "exported")])
    images = torch.rand(2, 1, TINY.image_size, TINY.image_size)
    from_ckpt, from_folder = (
        CXRTokenizer.from_pretrained(last),
        CXRTokenizer.from_pretrained(tmp_path / "exported"),
    )
    assert torch.equal(from_ckpt.encode(images), from_folder.encode(images))


def test_clinical_loss_runs_through_training(tmp_path: Path) -> None:
    classifier = save_classifier_export(
        build_densenet(2), ["Effusion", "No Finding"], tmp_path / "classifier"
    )
    out = tmp_path / "run"
    main(
        _fit_args(
            out,
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "0",
            "--model.loss.clinical_weight",
            "100",
            "--model.loss.clinical_weights",
            str(classifier),
        )
    )
    clinical = _metric(out / "logs" / "version_0" / "metrics.csv", "train/clinical_step")
    assert len(clinical) == 1 and all(math.isfinite(v) and v > 0 for v in clinical)
    checkpoint = torch.load(
        out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert not any("densenet" in key for key in checkpoint["state_dict"])  # frozen, not saved


def test_clinical_loss_without_classifier_fails_at_setup(tmp_path: Path) -> None:
    missing = tmp_path / "no_classifier_here"
    module = VQGANModule(
        TINY, VQGANLossConfig(clinical_weight=100.0, clinical_weights=str(missing))
    )
    with pytest.raises(FileNotFoundError, match="no_classifier_here"):
        module.setup("fit")


def test_init_from_a_tokenizer_copies_its_weights(tmp_path: Path) -> None:
    source = CXRTokenizer(TINY).save_pretrained(tmp_path / "tok")
    module = VQGANModule(TINY, init_from=str(source))
    images = torch.rand(2, 1, TINY.image_size, TINY.image_size)
    module.eval()
    with torch.no_grad():
        _, ids = module(images)
    assert torch.equal(ids, CXRTokenizer.from_pretrained(source).encode(images))
    other = VQGANConfig(**{**TINY.to_dict(), "n_embed": 32})
    with pytest.raises(ValueError, match="differs from this run's config"):
        VQGANModule(other, init_from=str(source))


def test_dead_code_restart_moves_unused_codes_onto_encoder_outputs() -> None:
    module = VQGANModule(TINY, dead_code_restart_every=1)
    module.trainer = SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu")))
    codebook = module.generator.quantize.embedding.weight
    before = codebook.detach().clone()
    module.window_code_counts[:5] = 3  # codes 0-4 were chosen in the window, the rest never
    latents = torch.randn(2, TINY.embed_dim, 4, 4) * 3.0 + 1.0
    restarted = module._restart_dead_codes(latents)

    assert int(restarted) == TINY.n_embed - 5
    assert torch.equal(codebook[:5], before[:5])
    pool = latents.permute(0, 2, 3, 1).reshape(-1, TINY.embed_dim)
    nearest = torch.cdist(codebook[5:].detach(), pool).min(dim=1).values
    # each restarted code sits on one encoder output, up to the 1 % jitter
    assert nearest.max() < 0.05 * pool.std() * math.sqrt(TINY.embed_dim)
    assert int(module.window_code_counts.sum()) == 0


def test_dead_code_restart_runs_in_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    main(
        _fit_args(
            out,
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--model.dead_code_restart_every",
            "2",
        )
    )
    restarted = _metric(out / "logs" / "version_0" / "metrics.csv", "train/restarted_codes_step")
    # 3 fixture images x 64 tokens cannot use all 64 codes of a fresh codebook in 2 batches
    assert restarted and restarted[-1] > 0


def test_decoder_only_training_keeps_every_code_and_changes_the_decoder(tmp_path: Path) -> None:
    """`train_decoder_only`: the exported tokenizer encodes every image to the source's codes
    (encoder, quant_conv and codebook bit-identical) while its decoder draws them differently."""
    torch.manual_seed(0)
    source = CXRTokenizer(TINY).save_pretrained(tmp_path / "source")
    out = tmp_path / "run"
    main(
        _fit_args(
            out,
            "--trainer.max_steps",
            "4",
            "--trainer.limit_val_batches",
            "0",
            "--model.init_from",
            str(source),
            "--model.train_decoder_only",
            "true",
            "--model.learning_rate",
            "0.001",
        )
    )
    export_main([str(out / "checkpoints" / "last.ckpt"), str(tmp_path / "tuned")])
    before = CXRTokenizer.from_pretrained(source)
    after = CXRTokenizer.from_pretrained(tmp_path / "tuned")
    old, new = before.model.state_dict(), after.model.state_dict()
    frozen = ("encoder.", "quant_conv.", "quantize.")
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(frozen))
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    images = torch.rand(4, 1, TINY.image_size, TINY.image_size)
    ids = before.encode(images)
    assert torch.equal(after.encode(images), ids)
    assert not torch.allclose(after.decode(ids), before.decode(ids))


def test_decoder_only_training_refuses_settings_that_would_move_the_codes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs init_from"):
        VQGANModule(TINY, train_decoder_only=True)
    source = CXRTokenizer(TINY).save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="dead_code_restart_every"):
        VQGANModule(TINY, init_from=str(source), train_decoder_only=True, dead_code_restart_every=5)
