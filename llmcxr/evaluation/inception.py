"""Inception-v3 pool features for Inception FID, with weights given by path (never downloaded).

Uses torchvision's Inception-v3 layout (``inception_v3_google`` state dict, ImageNet
normalisation, 299 px). Note: FID papers usually use the TF-ported "pt_inception-2015-12-05"
network; figures from the two differ a little, so the table labels ours "torchvision Inception".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrcommon.batching import chunks

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class InceptionFeatures:
    """2,048-d average-pool features of gray images [H, W] in [0, 1]."""

    def __init__(self, network: nn.Module, batch_size: int = 16) -> None:
        network.fc = nn.Identity()
        self.network = network.eval().requires_grad_(False)
        self.batch_size = batch_size

    @classmethod
    def from_weights(cls, path: str | Path) -> InceptionFeatures:
        """Load a torchvision ``inception_v3`` state dict (.safetensors, or .pth read
        weights-only)."""
        from torchvision.models import inception_v3

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found: {path} (pass a torchvision inception_v3 state dict, "
                "e.g. inception_v3_google-0cc3c7bd.pth copied from a machine with internet access)"
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        # transform_input=True as torchvision sets it for these weights: they expect [-1, 1]
        # inputs and the model maps our ImageNet-normalised batch to that range.
        network = inception_v3(
            weights=None, aux_logits=True, init_weights=False, transform_input=True
        )
        network.load_state_dict(state)
        network.AuxLogits = None
        network.aux_logits = False
        return cls(network)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        feats = []
        for _, part in chunks(images, self.batch_size):
            batch = torch.from_numpy(np.stack(part).astype(np.float32))
            batch = F.interpolate(batch[:, None], size=(299, 299), mode="bilinear", antialias=True)
            batch = (batch.expand(-1, 3, -1, -1) - _MEAN) / _STD
            feats.append(self.network(batch).numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 2048))
