"""vqgan.clinical: the frozen torchxrayvision DenseNet adapter for the clinical loss."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from vqgan.clinical import (
    EXPORT_CONFIG,
    ClinicalFeatureExtractor,
    build_densenet,
    save_classifier_export,
    xrv_weights_path,
)

LABELS = ["Cardiomegaly", "No Finding"]


@pytest.fixture(scope="module")
def extractor() -> ClinicalFeatureExtractor:
    torch.manual_seed(0)
    return ClinicalFeatureExtractor(build_densenet(len(LABELS)), LABELS)


def test_import_keeps_global_warning_filters() -> None:
    before = list(warnings.filters)
    build_densenet(1)
    assert warnings.filters == before


def test_features_shape_and_frozen(extractor: ClinicalFeatureExtractor, synthetic_images) -> None:
    features = extractor(synthetic_images[:1])
    assert features.shape == (1, 1024) and torch.isfinite(features).all()
    assert not any(p.requires_grad for p in extractor.parameters())


def test_stays_in_eval_after_parent_train(
    extractor: ClinicalFeatureExtractor, synthetic_images
) -> None:
    parent = torch.nn.Sequential(torch.nn.Identity(), extractor)
    parent.train()
    assert not extractor.training
    assert not any(m.training for m in extractor.modules())
    running = extractor.densenet.features.norm0.running_mean.clone()
    extractor(synthetic_images[:1])
    assert torch.equal(running, extractor.densenet.features.norm0.running_mean)


def test_gradient_flows_to_input_only(
    extractor: ClinicalFeatureExtractor, synthetic_images
) -> None:
    images = synthetic_images[:1].clone().requires_grad_(True)
    extractor(images).pow(2).mean().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())


def test_input_conversion_is_explicit(extractor: ClinicalFeatureExtractor) -> None:
    images = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 64, 64)
    converted = extractor.to_xrv_input(images)
    assert converted.shape == (2, 1, 224, 224)
    assert torch.allclose(converted[0], torch.full_like(converted[0], -1024.0))
    assert torch.allclose(converted[1], torch.full_like(converted[1], 1024.0))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        extractor.to_xrv_input(torch.zeros(2, 3, 64, 64))


def test_predict_proba(extractor: ClinicalFeatureExtractor, synthetic_images) -> None:
    probs = extractor.predict_proba(synthetic_images[:2])
    assert probs.shape == (2, len(LABELS)) and ((probs >= 0) & (probs <= 1)).all()
    assert torch.allclose(extractor.proba_from_features(extractor(synthetic_images[:2])), probs)
    assert extractor.labels == LABELS


def test_export_round_trip(
    extractor: ClinicalFeatureExtractor, synthetic_images, tmp_path: Path
) -> None:
    out = save_classifier_export(extractor.densenet, LABELS, tmp_path / "export")
    assert json.loads((out / EXPORT_CONFIG).read_text())["labels"] == LABELS
    assert not list(out.glob("*.tmp"))
    expected = extractor.state_dict()
    for source in (out, out / "classifier.safetensors"):
        loaded = ClinicalFeatureExtractor.from_weights(source)
        assert loaded.labels == LABELS and not loaded.training
        state = loaded.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_an_export_whose_labels_or_weights_do_not_fit_is_refused_naming_them(
    extractor: ClinicalFeatureExtractor, tmp_path: Path
) -> None:
    """The labels in classifier.json decide the head's size; an export whose stored head does
    not fit them (or whose labels are not names, or whose weights are not safetensors) is a
    clear error naming the files, not a state-dict traceback."""
    out = save_classifier_export(extractor.densenet, LABELS, tmp_path / "export")
    config = json.loads((out / EXPORT_CONFIG).read_text())
    (out / EXPORT_CONFIG).write_text(json.dumps({**config, "labels": [*LABELS, "Extra"]}))
    message = rf"classifier.safetensors does not match the {len(LABELS) + 1} labels of .*differ"
    with pytest.raises(ValueError, match=message):
        ClinicalFeatureExtractor.from_weights(out)
    (out / EXPORT_CONFIG).write_text(json.dumps({**config, "labels": "Cardiomegaly"}))
    with pytest.raises(ValueError, match="'labels' must be a non-empty list"):
        ClinicalFeatureExtractor.from_weights(out)
    (out / EXPORT_CONFIG).write_text(json.dumps(config))
    (out / "classifier.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ClinicalFeatureExtractor.from_weights(out)


def test_export_thresholds_make_half_the_operating_point(
    extractor: ClinicalFeatureExtractor, synthetic_images, tmp_path: Path
) -> None:
    raw = extractor.predict_proba(synthetic_images[:1])[0]
    thresholds = [float(raw[0]), 0.75]  # label 0 exactly at its threshold
    out = save_classifier_export(extractor.densenet, LABELS, tmp_path / "t", op_threshs=thresholds)
    loaded = ClinicalFeatureExtractor.from_weights(out)
    assert loaded.op_threshs.tolist() == pytest.approx(thresholds)
    calibrated = loaded.predict_proba(synthetic_images[:1])[0]
    assert float(calibrated[0]) == pytest.approx(0.5)
    # torchxrayvision's op_norm: below the threshold p / (2 t), above 1 - (1 - p) / (2 (1 - t)).
    p = float(raw[1])
    expected = p / 1.5 if p < 0.75 else 1 - (1 - p) / 0.5
    assert float(calibrated[1]) == pytest.approx(expected, rel=1e-5)


def test_missing_weights_give_clear_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = xrv_weights_path("densenet121-res224-all")
    assert str(expected).startswith(str(tmp_path / ".torchxrayvision" / "models_data"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded") as info:
        ClinicalFeatureExtractor.from_weights("densenet121-res224-all")
    assert str(expected) in str(info.value) and "llmcxr train classifier" in str(info.value)
    assert not expected.exists()
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        ClinicalFeatureExtractor.from_weights(tmp_path / "no_such_dir")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / EXPORT_CONFIG).write_text(json.dumps({"labels": LABELS}))
    with pytest.raises(FileNotFoundError, match="classifier.safetensors is missing"):
        ClinicalFeatureExtractor.from_weights(tmp_path / "half")


def test_torchxrayvision_cache_file_loads_with_allow_list(tmp_path: Path, monkeypatch) -> None:
    """torchxrayvision's release files are whole pickled models; emulate one in a temp cache."""
    from vqgan.clinical import import_torchxrayvision

    monkeypatch.setenv("HOME", str(tmp_path))
    path = xrv_weights_path("densenet121-res224-nih")
    path.parent.mkdir(parents=True)
    model = import_torchxrayvision().models.DenseNet(weights=None, num_classes=18)
    torch.save(model, path)
    loaded = ClinicalFeatureExtractor.from_weights("densenet121-res224-nih")
    assert torch.equal(loaded.densenet.classifier.weight, model.classifier.weight)
    assert len(loaded.labels) == 18 and loaded.op_threshs is not None


def test_pickle_with_foreign_class_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = xrv_weights_path("densenet121-res224-all")
    path.parent.mkdir(parents=True)
    torch.save({"payload": Path("x")}, path)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        ClinicalFeatureExtractor.from_weights("densenet121-res224-all")
