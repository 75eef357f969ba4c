"""The VQ-GAN tokenizer's architecture as one typed, validated config.

Everything needed to rebuild the network lives here and is saved next to the weights
(``config.json``), so nothing depends on module constants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VQGANConfig:
    """Architecture of the VQ-GAN tokenizer (taming-transformers' Encoder/Decoder/VectorQuantizer2).

    The defaults are LLM-CXR's tokenizer: 256 px, downsampling f=16, 16x16 = 256 tokens per image,
    1,024 codes of dimension 256. We keep chest X-rays single channel (``in_channels=1``) instead of
    replicating gray to RGB as LLM-CXR did: the three channels carry no extra information.
    """

    image_size: int = 256
    """Side of the square input image in pixels."""
    in_channels: int = 1
    """Image channels (1: grayscale CXR)."""
    ch: int = 128
    """Base channel width of the encoder and decoder."""
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    """Channel multiplier per resolution level; the image is downsampled 2x between levels."""
    num_res_blocks: int = 2
    """Residual blocks per resolution level."""
    attn_resolutions: tuple[int, ...] = (16,)
    """Feature-map sides at which self-attention blocks are added."""
    z_channels: int = 256
    """Channels of the encoder output before ``quant_conv``."""
    embed_dim: int = 256
    """Dimension of each codebook vector."""
    n_embed: int = 1024
    """Number of codebook entries (the image-token vocabulary)."""
    beta: float = 0.25
    """Commitment loss weight inside the quantiser (applied to the encoder term)."""
    dropout: float = 0.0
    """Dropout in the residual blocks."""

    def __post_init__(self) -> None:
        # jsonargparse / JSON give lists; store tuples so the frozen config stays hashable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        for name in (
            "image_size",
            "in_channels",
            "ch",
            "num_res_blocks",
            "z_channels",
            "embed_dim",
            "n_embed",
        ):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"VQGANConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(
                f"VQGANConfig.ch_mult must be non-empty positive ints, got {self.ch_mult}"
            )
        if self.ch % 32:
            # taming's blocks use GroupNorm with 32 groups on every feature map.
            raise ValueError(
                f"VQGANConfig.ch must be a multiple of 32 (GroupNorm groups), got {self.ch}"
            )
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"VQGANConfig.image_size={self.image_size} is not divisible by the downsampling "
                f"factor {self.downsample_factor} implied by ch_mult={self.ch_mult}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VQGANConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent cell along one side (f)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent token grid."""
        return self.image_size // self.downsample_factor

    @property
    def tokens_per_image(self) -> int:
        """Image tokens per image (latent grid, row-major)."""
        return self.latent_size**2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQGANConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error (likely a wrong file)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VQGANConfig fields: {', '.join(unknown)}")
        return cls(**data)
