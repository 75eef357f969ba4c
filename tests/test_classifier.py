"""vqgan.classifier*: label encoding, masked loss, AUROC logging, decision thresholds, atomic
checkpoints, the CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vqgan.classifier import CXRClassifierModule, masked_bce, operating_thresholds
from vqgan.classifier_data import (
    DEFAULT_LABELS,
    NO_FINDING,
    LabelEncoder,
    LabelledCXRDataModule,
)
from vqgan.classifier_train import main
from vqgan.clinical import ClinicalFeatureExtractor
from vqgan.data import ImageRecord

REPO = Path(__file__).resolve().parents[1]


def test_masked_bce_ignores_unknown_labels() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    a = masked_bce(logits, torch.tensor([[1.0, 0.0, 0.0]]), mask)
    b = masked_bce(logits, torch.tensor([[1.0, 1.0, 0.0]]), mask)  # differs only where masked
    assert torch.equal(a, b) and a > 0
    assert masked_bce(logits, torch.ones(1, 3), torch.zeros(1, 3)) == 0


def test_label_encoder_targets_and_masks() -> None:
    encoder = LabelEncoder(["Pneumonia", "COVID-19", "Effusion", NO_FINDING])
    rows = ["Normal", "COVID-19 (PCR-positive patient)", "PNEUMONIA (viral)", "unknown", "SARS"]
    records = [ImageRecord(f"/x/{i}.jpg", fields={"labels": raw}) for i, raw in enumerate(rows)]
    encoded = encoder.encode_source(records, "src")
    assert [e.record.path for e in encoded] == ["/x/0.jpg", "/x/1.jpg", "/x/2.jpg"]
    normal, covid, pneumonia = encoded
    assert normal.target == (0, 0, 0, 1) and normal.known == (1, 1, 1, 1)
    # The source annotates Pneumonia, COVID-19 and No Finding, never Effusion: masked.
    assert covid.target == (0, 1, 0, 0) and covid.known == (1, 1, 0, 1)
    assert pneumonia.target == (1, 0, 0, 0) and pneumonia.known == (1, 1, 0, 1)
    assert encoder.unmatched == {"SARS"}
    with pytest.raises(ValueError, match="not in labels"):
        LabelEncoder(["A"], {"x": "B"})


def test_datamodule_on_fixture_labels(fixtures_dir: Path) -> None:
    dm = LabelledCXRDataModule(
        [str(fixtures_dir)],
        labels=["Cardiomegaly", NO_FINDING],
        batch_size=2,
        image_size=32,
        val_fraction=0.0,
        augment=False,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32)
    by_name = {
        Path(p).name: t.tolist() for p, t in zip(batch["path"], batch["target"], strict=True)
    }
    assert by_name == {"00000001_000.png": [1.0, 0.0], "00027426_000.png": [0.0, 1.0]}
    assert batch["mask"].min() == 1


def test_operating_thresholds_maximise_youden_j() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.9], [0.3, 0.6, 0.9], [0.35, 0.4, 0.1], [0.8, 0.7, 0.2]])
    target = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # A: t = 0.35 separates perfectly (J = 1). B over rows 0-2 (row 3 unknown): t = 0.6 gives
    # TPR 1, FPR 0. C: its known positives only are rows 0-1 and negatives row 2: t = 0.9.
    assert operating_thresholds(probs, target, mask) == pytest.approx([0.35, 0.6, 0.9])
    # A label without both classes known keeps 0.5 (op_norm leaves it unchanged); J ties take
    # the highest threshold (0.8: TPR 1/2, FPR 0 ties 0.35: TPR 1, FPR 1/2).
    ties = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    assert operating_thresholds(ties, target[:, :1], torch.ones(4, 1)) == pytest.approx([0.8])
    assert operating_thresholds(probs[:, :1], torch.zeros(4, 1), torch.ones(4, 1)) == [0.5]


def test_validation_logs_auroc_for_labels_with_both_classes(synthetic_images) -> None:
    module = CXRClassifierModule(labels=["A", "B"])
    batch = {
        "image": synthetic_images[:3],
        "path": [str(i) for i in range(3)],
        "target": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
        "mask": torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]),  # B: only one known label
    }
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)
    metrics = trainer.callback_metrics
    assert 0.0 <= float(metrics["val/auroc/A"]) <= 1.0
    assert "val/auroc/B" not in metrics and math.isfinite(float(metrics["val/loss"]))
    assert float(metrics["val/auroc_macro"]) == float(metrics["val/auroc/A"])
    assert module.op_threshs is not None and module.op_threshs[1] == 0.5  # B: one class known
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["op_threshs"] == module.op_threshs
    batch["mask"][:, 0] = 0.0  # now no label has both classes: NaN, not a missing key
    trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)
    assert math.isnan(float(trainer.callback_metrics["val/auroc_macro"]))


def _fit_tiny(tmp_path: Path, *overrides: str) -> None:
    """One step of configs/classifier/tiny.yaml with its run folder (logs, checkpoints, export)
    moved to tmp_path."""
    main(
        ["fit", "-c", "configs/classifier/tiny.yaml", "--trainer.max_steps", "1"]
        + ["--trainer.default_root_dir", str(tmp_path), *overrides]
    )


def test_tiny_config_trains_and_exports(tmp_path: Path, monkeypatch, synthetic_images) -> None:
    monkeypatch.chdir(REPO)  # the config names tests/fixtures relative to the repository root
    _fit_tiny(tmp_path)
    (metrics,) = tmp_path.rglob("metrics.csv")
    losses = [
        float(row["train/loss"]) for row in csv.DictReader(metrics.open()) if row["train/loss"]
    ]
    assert len(losses) == 1 and all(math.isfinite(x) for x in losses)
    (export,) = tmp_path.rglob("classifier_export")
    extractor = ClinicalFeatureExtractor.from_weights(export)
    assert extractor.labels == ["Cardiomegaly", NO_FINDING]
    assert extractor.op_threshs is None  # this config has no validation split to choose them
    assert extractor(synthetic_images[:1]).shape == (1, 1024)
    # The checkpoint itself loads too, and the export subcommand gives the same weights.
    last = next(tmp_path.rglob("last.ckpt"))
    main(["export", "--ckpt", str(last), "--out", str(tmp_path / "again")])
    again = ClinicalFeatureExtractor.from_weights(tmp_path / "again").state_dict()
    from_ckpt = ClinicalFeatureExtractor.from_weights(last).state_dict()
    assert all(torch.equal(again[k], from_ckpt[k]) for k in from_ckpt)
    # Thresholds a validation pass put into a checkpoint travel to the export and its loader.
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["op_threshs"] = [0.25, 0.625]
    torch.save(checkpoint, tmp_path / "with_thresholds.ckpt")
    main(["export", "--ckpt", str(tmp_path / "with_thresholds.ckpt"), "--out", str(tmp_path / "t")])
    loaded = ClinicalFeatureExtractor.from_weights(tmp_path / "t")
    assert loaded.op_threshs.tolist() == [0.25, 0.625]


def test_default_label_set_trains_with_a_logger(tmp_path: Path, monkeypatch) -> None:
    """Without `data.labels` the model gets the default set; logging both hparams must not clash
    (Lightning refused to log a datamodule `labels: None` beside the model's resolved list)."""
    monkeypatch.chdir(REPO)
    _fit_tiny(tmp_path, "--data.labels", "null")
    (export,) = tmp_path.rglob("classifier_export")
    assert ClinicalFeatureExtractor.from_weights(export).labels == list(DEFAULT_LABELS)


@pytest.mark.parametrize(
    "config", sorted((REPO / "configs" / "classifier").glob("*.yaml")), ids=lambda p: p.name
)
def test_classifier_configs_parse(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(config), "--print_config"])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "sources:" in printed and "checkpoint:" in printed and "save_last: true" in printed
