"""The CXR classifier as the evaluation uses it: batched probabilities and pooled features,
and the mapping from the classifier's label names (torchxrayvision / NIH) to CheXpert classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cxrcommon.batching import chunks
from llmcxr.evaluation.labelling import NIH_TO_CHEXPERT
from vqgan import ClinicalFeatureExtractor


def _key(name: str) -> str:
    return name.replace("_", " ").strip().lower()


# Classifier label spellings (NIH) -> the CheXpert class they stand for.
_ALIASES = {_key(nih): _key(chexpert) for nih, chexpert in NIH_TO_CHEXPERT.items()}


def _normalise(name: str) -> str:
    key = _key(name)
    return _ALIASES.get(key, key)


def chexpert_columns(labels: Sequence[str], classes: Sequence[str]) -> dict[str, list[int]]:
    """``CheXpert class -> output columns`` of a classifier with output ``labels``, for the classes
    it knows (several for Lung Lesion: NIH's Mass and Nodule; a label named like the class itself,
    e.g. torchxrayvision's "Lung Lesion", counts too)."""
    by_name: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if label:
            by_name.setdefault(_normalise(label), []).append(i)
    return {c: by_name[_normalise(c)] for c in classes if _normalise(c) in by_name}


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

    def chexpert_columns(self, classes: Sequence[str]) -> dict[str, list[int]]:
        """:func:`chexpert_columns` of this classifier's labels."""
        return chexpert_columns(self.labels, classes)

    @staticmethod
    def class_scores(probs: np.ndarray, columns: dict[str, list[int]]) -> np.ndarray:
        """``[N, len(columns)]`` class probabilities from classifier outputs ``[N, n_labels]``: the
        largest of a class's columns (Lung Lesion = Mass or Nodule). With calibrated outputs
        (0.5 = each label's threshold) the class is positive when any of its labels is."""
        probs = np.asarray(probs, dtype=np.float64)
        return np.stack([probs[:, cols].max(axis=1) for cols in columns.values()], axis=-1)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``[N, n_labels]`` and pooled features ``[N, 1024]`` of float images
        ``[H, W]`` in ``[0, 1]`` (square, as the tokenizer produces them)."""
        device = next(self.extractor.parameters()).device
        probs, feats = [], []
        for _, part in chunks(images, self.batch_size):
            batch = torch.from_numpy(np.stack(part))[:, None]
            batch = batch.to(device=device, dtype=torch.float32)
            features = self.extractor(batch)
            batch_probs = self.extractor.proba_from_features(features)  # no second forward
            probs.append(batch_probs.cpu())
            feats.append(features.cpu())
        if not probs:
            return np.zeros((0, len(self.labels))), np.zeros((0, 0))
        return torch.cat(probs).numpy(), torch.cat(feats).numpy()
