"""The frozen CXR classifier behind the clinical-information-preserving loss (LLM-CXR, sec. 3.1).

This is the one adapter around torchxrayvision in the project. It avoids the library's traps:
importing it silences all warnings process-wide (we restore the filters), ``forward`` resizes
inputs silently (we resize explicitly to 224 px), it expects ``[-1024, 1024]`` (we convert from
``[0, 1]`` explicitly), and its pretrained weights are downloaded on demand (we never download:
weights come from torchxrayvision's cache folder or from our own classifier export).

Export format written by :func:`save_classifier_export` and read by
:meth:`ClinicalFeatureExtractor.from_weights`: a folder with ``classifier.safetensors`` (the
DenseNet state dict) and ``classifier.json`` (``labels``, ``architecture``, ``input_size``, and
``op_threshs`` when validation chose per-label decision thresholds).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cxrcommon.files import atomic_write
from cxrcommon.weights import shape_mismatch

logger = logging.getLogger(__name__)

XRV_INPUT_SIZE = 224
XRV_INPUT_RANGE = 1024.0
FEATURE_DIM = 1024
ARCHITECTURE = "xrv-densenet121"
EXPORT_WEIGHTS = "classifier.safetensors"
EXPORT_CONFIG = "classifier.json"

# Classes a torchxrayvision weight file (a pickled whole model) may reference; anything else in
# such a file is refused rather than unpickled.
_XRV_PICKLE_ALLOWED_PREFIXES = (
    "torchxrayvision.models.",
    "torch.nn.modules.",
    "torchvision.models.",
)
_XRV_PICKLE_ALLOWED_NAMES = {"collections.OrderedDict"}

_TRAIN_HINT = (
    "train one with `llmcxr train classifier -c configs/classifier/nih_cpu.yaml` (it "
    "exports to <log_dir>/classifier_export; `llmcxr export classifier --checkpoint <file.ckpt> "
    "--out <dir>` exports any checkpoint) and pass that folder"
)
_COPY_HINT = (
    "nothing is downloaded: copy the file there from a machine with internet access "
    "(torchxrayvision saves it to that path on first use), or " + _TRAIN_HINT
)


def import_torchxrayvision() -> ModuleType:
    """Import torchxrayvision without keeping its process-wide
    ``warnings.filterwarnings("ignore")``."""
    with warnings.catch_warnings():  # restores the global filter list on exit
        import torchxrayvision

    return torchxrayvision


def build_densenet(num_classes: int) -> nn.Module:
    """A randomly initialised torchxrayvision DenseNet-121 (res224 layout) with ``num_classes``
    outputs."""
    xrv = import_torchxrayvision()
    return xrv.models.DenseNet(weights=None, num_classes=num_classes, op_threshs=None)


def xrv_weight_names() -> list[str]:
    """torchxrayvision's DenseNet-121 weight names (``densenet121-res224-*``)."""
    return sorted(
        k for k in import_torchxrayvision().models.model_urls if k.startswith("densenet121")
    )


def xrv_weights_path(name: str) -> Path:
    """Where torchxrayvision keeps the file for weight name ``name`` (e.g.
    ``densenet121-res224-all``)."""
    if name not in xrv_weight_names():
        raise ValueError(
            f"unknown torchxrayvision DenseNet weights {name!r}; known: {xrv_weight_names()}"
        )
    xrv = import_torchxrayvision()
    url = xrv.models.model_urls[name]["weights_url"]
    return Path(xrv.utils.get_cache_dir()) / os.path.basename(url)


def to_xrv_input(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` in ``[0, 1]`` -> ``[B, 1, 224, 224]`` in ``[-1024, 1024]`` (differentiable).

    The input torchxrayvision's DenseNet was trained on; ``(2x - 1) * 1024`` is its
    ``utils.normalize`` for images already in ``[0, 1]``.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images [B, 1, H, W], got shape {tuple(images.shape)}")
    if images.shape[-2:] != (XRV_INPUT_SIZE, XRV_INPUT_SIZE):
        images = F.interpolate(
            images,
            size=(XRV_INPUT_SIZE, XRV_INPUT_SIZE),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    return (images * 2.0 - 1.0) * XRV_INPUT_RANGE


class ClinicalFeatureExtractor(nn.Module):
    """Frozen DenseNet-121 CXR classifier: pooled ``features2`` (1,024-d) and label probabilities.

    Input images are ``[B, 1, H, W]`` in ``[0, 1]`` and should be square (centre-cropped); they
    are resized to 224 px and mapped to ``[-1024, 1024]`` here. The network never trains: its
    parameters do not require grad and the module stays in eval mode even when a parent calls
    ``.train()``, so batch-norm statistics never move. Gradients flow to the input only.
    """

    def __init__(
        self,
        densenet: nn.Module,
        labels: Sequence[str],
        op_threshs: Sequence[float] | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        # torchxrayvision resizes silently when this attribute is set: we resize ourselves.
        if "input_resolution" in vars(densenet):
            del densenet.input_resolution
        densenet.op_threshs = None  # forward() would otherwise return calibrated probabilities
        self.densenet = densenet
        self.labels = list(labels)
        if len(self.labels) != densenet.classifier.out_features:
            raise ValueError(
                f"{len(self.labels)} labels for a classifier with "
                f"{densenet.classifier.out_features} outputs"
            )
        thresholds = (
            None if op_threshs is None else torch.tensor(list(op_threshs), dtype=torch.float32)
        )
        self.register_buffer("op_threshs", thresholds, persistent=False)
        self.source = source
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> ClinicalFeatureExtractor:
        """Always eval: a frozen feature extractor must not update batch-norm statistics."""
        return super().train(False)

    def to_xrv_input(self, images: torch.Tensor) -> torch.Tensor:
        """See :func:`to_xrv_input`."""
        return to_xrv_input(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled DenseNet features ``[B, 1024]`` for images ``[B, 1, H, W]`` in ``[0, 1]``."""
        return self.densenet.features2(self.to_xrv_input(images))

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities ``[B, len(labels)]`` (sigmoid; torchxrayvision's operating-point
        calibration when the weights come with one, so 0.5 is the decision threshold)."""
        return self.proba_from_features(self(images))

    def proba_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_proba` from features already computed by :meth:`forward` (one pass for
        callers that need both)."""
        probs = torch.sigmoid(self.densenet.classifier(features))
        if self.op_threshs is not None:
            probs = import_torchxrayvision().models.op_norm(probs, self.op_threshs)
        return probs

    @classmethod
    def from_weights(cls, weights: str | Path) -> ClinicalFeatureExtractor:
        """Load from our export folder / ``.safetensors`` / Lightning ``.ckpt``, or a
        torchxrayvision weight name looked up in its cache folder only (never downloaded).

        Raises ``FileNotFoundError`` naming the expected path when nothing is there.
        """
        path = Path(weights).expanduser()
        if path.is_dir():
            return _load_export(path / EXPORT_WEIGHTS, path / EXPORT_CONFIG)
        if path.is_file() and path.suffix == ".safetensors":
            return _load_export(path, _config_beside(path))
        if path.is_file() and path.suffix == ".ckpt":
            return _load_lightning_checkpoint(path)
        if path.is_file():
            raise ValueError(
                f"{path}: unsupported classifier weights (use an export folder, .safetensors or "
                ".ckpt)"
            )
        known = xrv_weight_names()
        if isinstance(weights, str) and weights in known:
            return _load_xrv_cache(weights)
        raise FileNotFoundError(
            f"classifier weights not found: {path} is no file or folder, nor a torchxrayvision "
            f"weight name ({', '.join(known)}); {_TRAIN_HINT}"
        )


def _config_beside(weights_file: Path) -> Path:
    same_stem = weights_file.with_suffix(".json")
    return same_stem if same_stem.is_file() else weights_file.parent / EXPORT_CONFIG


def _load_export(weights_file: Path, config_file: Path) -> ClinicalFeatureExtractor:
    for required in (weights_file, config_file):
        if not required.is_file():
            raise FileNotFoundError(
                f"classifier export incomplete: {required} is missing ({_TRAIN_HINT})"
            )
    config = json.loads(config_file.read_text())
    if config.get("architecture") != ARCHITECTURE:
        raise ValueError(
            f"{config_file}: architecture {config.get('architecture')!r}, expected {ARCHITECTURE!r}"
        )
    labels = config.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{config_file}: 'labels' must be a non-empty list of label names")
    try:
        state = load_file(weights_file)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_file} is not a readable safetensors file: {err}") from err
    # The labels are the config's word: compare the head they imply with the stored one on the
    # meta device first, so a mismatch is an error naming the files, not a traceback.
    with torch.device("meta"):
        expected = {k: v.shape for k, v in build_densenet(len(labels)).state_dict().items()}
    differ = shape_mismatch(expected, {k: v.shape for k, v in state.items()})
    if differ:
        raise ValueError(
            f"{weights_file} does not match the {len(labels)} labels of {config_file}: {differ}"
        )
    densenet = build_densenet(len(labels))
    densenet.load_state_dict(state)
    logger.info("clinical classifier loaded from %s (%d labels)", weights_file, len(labels))
    return ClinicalFeatureExtractor(
        densenet, labels, op_threshs=config.get("op_threshs"), source=str(weights_file)
    )


def _load_lightning_checkpoint(path: Path) -> ClinicalFeatureExtractor:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    labels = checkpoint.get("hyper_parameters", {}).get("labels")
    if not labels:
        raise ValueError(
            f"{path}: no 'labels' in the checkpoint's hyper_parameters (not a classifier "
            "checkpoint)"
        )
    prefix = "model."
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    densenet = build_densenet(len(labels))
    densenet.load_state_dict(state)
    logger.info("clinical classifier loaded from checkpoint %s (%d labels)", path, len(labels))
    return ClinicalFeatureExtractor(
        densenet, labels, op_threshs=checkpoint.get("op_threshs"), source=str(path)
    )


def _load_xrv_cache(name: str) -> ClinicalFeatureExtractor:
    xrv = import_torchxrayvision()
    path = xrv_weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"torchxrayvision weights {name!r} not found at {path} ({_COPY_HINT})"
        )
    state = _load_pickled_xrv_state(path)
    entry = xrv.models.model_urls[name]
    densenet = build_densenet(len(entry["labels"]))
    densenet.load_state_dict(state)
    logger.info("clinical classifier loaded from torchxrayvision cache %s", path)
    return ClinicalFeatureExtractor(
        densenet, entry["labels"], op_threshs=entry.get("op_threshs"), source=str(path)
    )


def _load_pickled_xrv_state(path: Path) -> dict[str, torch.Tensor]:
    """torchxrayvision ships whole pickled models; unpickle them with ``weights_only=True`` and an
    allow-list of the model classes the file names, refusing anything else (no arbitrary code)."""
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    import_torchxrayvision()  # the pickle names torchxrayvision classes; keep warnings intact
    allowed = []
    for qualified in needed:
        if qualified not in _XRV_PICKLE_ALLOWED_NAMES and not qualified.startswith(
            _XRV_PICKLE_ALLOWED_PREFIXES
        ):
            raise ValueError(
                f"{path}: refusing to unpickle {qualified!r} (not a torch/torchxrayvision model "
                "class)"
            )
        module_name, _, attr = qualified.rpartition(".")
        allowed.append(getattr(importlib.import_module(module_name), attr))
    with torch.serialization.safe_globals(allowed):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, nn.Module):
        for module in loaded.modules():  # modules pickled by old torch lack this attribute
            if not hasattr(module, "_non_persistent_buffers_set"):
                module._non_persistent_buffers_set = set()
        loaded = loaded.state_dict()
    return loaded


def save_classifier_export(
    densenet: nn.Module, labels: Sequence[str], out_dir: str | Path, **extra: object
) -> Path:
    """Write ``classifier.safetensors`` + ``classifier.json`` into ``out_dir`` atomically per
    file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": ARCHITECTURE,
        "input_size": XRV_INPUT_SIZE,
        "labels": list(labels),
        **extra,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in densenet.state_dict().items()}
    atomic_write(out_dir / EXPORT_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    atomic_write(
        out_dir / EXPORT_CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n")
    )
    return out_dir
