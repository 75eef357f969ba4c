"""The CXR classifier as the evaluation uses it: batched probabilities and pooled features,
and the mapping from the classifier's label names to the 14 CheXpert classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vqgan.clinical import ClinicalFeatureExtractor

# Classifier label spellings (torchxrayvision / NIH) that differ from the CheXpert class names.
_ALIASES = {"effusion": "pleural effusion"}


def _normalise(name: str) -> str:
    key = name.replace("_", " ").strip().lower()
    return _ALIASES.get(key, key)


class ImageClassifier:
    """Wraps a frozen :class:`vqgan.clinical.ClinicalFeatureExtractor` for batched numpy use."""

    def __init__(self, extractor: ClinicalFeatureExtractor, batch_size: int = 16) -> None:
        self.extractor = extractor
        self.batch_size = batch_size
        self.labels = list(extractor.labels)

    @classmethod
    def from_weights(cls, weights: str, batch_size: int = 16) -> ImageClassifier:
        """Load weights by path or torchxrayvision cache name (never downloaded)."""
        return cls(ClinicalFeatureExtractor.from_weights(weights), batch_size)

    def chexpert_columns(self, classes: Sequence[str]) -> dict[str, int]:
        """``CheXpert class -> classifier output column`` for the classes the classifier knows."""
        by_name = {_normalise(label): i for i, label in enumerate(self.labels) if label}
        return {c: by_name[_normalise(c)] for c in classes if _normalise(c) in by_name}

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``[N, n_labels]`` and pooled features ``[N, 1024]`` of float images
        ``[H, W]`` in ``[0, 1]`` (square, as the tokenizer produces them)."""
        device = next(self.extractor.parameters()).device
        probs, feats = [], []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.stack(images[start : start + self.batch_size]))[:, None]
            batch = batch.to(device=device, dtype=torch.float32)
            features = self.extractor(batch)
            batch_probs = self.extractor.proba_from_features(features)  # no second forward
            probs.append(batch_probs.cpu())
            feats.append(features.cpu())
        if not probs:
            return np.zeros((0, len(self.labels))), np.zeros((0, 0))
        return torch.cat(probs).numpy(), torch.cat(feats).numpy()
