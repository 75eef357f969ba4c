"""VQ-GAN networks built from taming-transformers' building blocks.

``VQGAN`` is taming's ``VQModel`` minus its training code (which does not run on Lightning 2):
encoder -> quant_conv -> VectorQuantizer2 -> post_quant_conv -> decoder. Pixel values inside the
network are in [-1, 1]; conversion from/to [0, 1] images is the caller's job.
"""

from __future__ import annotations

import contextlib
import io

import torch
from einops import rearrange
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from vqgan.config import VQGANConfig


class VQGAN(nn.Module):
    """Encoder, vector quantiser and decoder of the image tokenizer."""

    # The submodules that decide an image's codes and each code's latent vector: two tokenizers
    # equal on these give every image the same codes, whatever their decoders.
    CODE_PARTS = ("encoder", "quant_conv", "quantize")

    @classmethod
    def code_weights(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of a state dict that belong to ``CODE_PARTS``."""
        return {k: v for k, v in state.items() if k.split(".")[0] in cls.CODE_PARTS}

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        blocks = {
            "ch": config.ch,
            "out_ch": config.in_channels,
            "ch_mult": config.ch_mult,
            "num_res_blocks": config.num_res_blocks,
            "attn_resolutions": config.attn_resolutions,
            "dropout": config.dropout,
            "in_channels": config.in_channels,
            "resolution": config.image_size,
            "z_channels": config.z_channels,
            "double_z": False,
        }
        self.encoder = Encoder(**blocks)
        # taming's Decoder prints the latent shape on construction; keep library output quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            self.decoder = Decoder(**blocks)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        # legacy=False puts beta on the commitment (encoder) term, as in the VQ-VAE paper;
        # taming keeps the swapped version only for its old checkpoints.
        self.quantize = VectorQuantizer2(
            config.n_embed, config.embed_dim, beta=config.beta, legacy=False, sane_index_shape=True
        )
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images [B, C, S, S] in [-1, 1] -> (quantised latents [B, D, h, w], codebook loss, ids
        [B, h*w])."""
        return self.quantize_latents(self.pre_quant(x))

    def pre_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, S, S] in [-1, 1] -> continuous latents [B, D, h, w] before quantisation."""
        return self.quant_conv(self.encoder(x))

    def quantize_latents(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continuous latents [B, D, h, w] -> (quantised latents, codebook loss, ids [B, h*w])."""
        # Nearest-code search in fp32 even under bf16 autocast, so token ids do not depend on
        # precision.
        with torch.autocast(device_type=h.device.type, enabled=False):
            z_q, codebook_loss, (_, _, indices) = self.quantize(h.float())
        ids = rearrange(indices, "b h w -> b (h w)")  # row-major raster order
        return z_q, codebook_loss, ids

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latents [B, D, h, w] -> images [B, C, S, S] (about [-1, 1], not clamped)."""
        return self.decoder(self.post_quant_conv(z_q))

    def codes_to_latents(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, h*w] (row-major) -> quantised latents [B, D, h, w]."""
        side = self.config.latent_size
        z_q = self.quantize.embedding(ids)  # [B, h*w, D]
        return rearrange(z_q, "b (h w) d -> b d h w", h=side, w=side).contiguous()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct: images in [-1, 1] -> (reconstruction, codebook loss, ids [B, h*w])."""
        z_q, codebook_loss, ids = self.encode(x)
        return self.decode(z_q), codebook_loss, ids

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv; the adaptive GAN weight is measured here."""
        return self.decoder.conv_out.weight


def build_discriminator(in_channels: int = 1, ndf: int = 64, n_layers: int = 3) -> nn.Module:
    """taming's PatchGAN discriminator with its weight initialisation."""
    return NLayerDiscriminator(input_nc=in_channels, ndf=ndf, n_layers=n_layers).apply(weights_init)
