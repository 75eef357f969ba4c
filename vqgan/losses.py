"""VQ-GAN training losses as pure functions returning ``(loss, terms)``.

The maths follows taming-transformers' ``VQLPIPSWithDiscriminator`` (Esser et al., CVPR 2021):
pixel reconstruction + codebook/commitment + hinge GAN with the adaptive weight measured at the
decoder's last layer, plus LLM-CXR's clinical-information-preserving loss (Lee et al., ICLR 2024,
sec. 3.1): L2 between a frozen CXR classifier's pooled features of the input and of the
reconstruction. Images passed here are in [-1, 1] (the network's range) unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Terms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class VQGANLossConfig:
    """Weights and schedule of the VQ-GAN loss terms."""

    l1_weight: float = 1.0
    """Weight of the mean absolute pixel error."""
    l2_weight: float = 0.0
    """Weight of the mean squared pixel error."""
    codebook_weight: float = 1.0
    """Weight of the quantiser's codebook + commitment loss."""
    disc_weight: float = 0.8
    """Scale of the adaptive GAN weight (taming's ``disc_weight``)."""
    disc_factor: float = 1.0
    """GAN loss factor once the discriminator is on."""
    disc_start: int = 10_000
    """Training batch from which the discriminator trains and the GAN loss applies."""
    clinical_weight: float = 0.0
    """Weight of the clinical loss (LLM-CXR used 100); > 0 needs ``clinical_weights``."""
    clinical_relative: bool = False
    """Read ``clinical_weight`` as the clinical term's size relative to the pixel term, re-measured
    each batch (detached values): the feature MSE's scale depends on the classifier (with the
    project's all-sources classifier a weight of 100 makes it ~40x L1 on the shipped tokenizer;
    ``benchmarks/tokenizer.py`` loss balance), so a fixed weight does not carry across
    classifiers."""
    clinical_weights: str | None = None
    """Classifier for the clinical loss: our export folder / .safetensors / .ckpt, or a
    torchxrayvision weight name found in its cache folder (never downloaded)."""
    perceptual_weight: float = 0.0
    """Weight of an optional LPIPS-style perceptual loss; > 0 needs ``perceptual_weights``."""
    perceptual_weights: str | None = None
    """TorchScript file of a perceptual distance ``f(x, y) -> [B, ...]`` on 3-channel images in
    [-1, 1] (e.g. an exported LPIPS-VGG). The lpips package is not used: it downloads weights."""

    def __post_init__(self) -> None:
        for name in (
            "l1_weight",
            "l2_weight",
            "codebook_weight",
            "disc_weight",
            "disc_factor",
            "clinical_weight",
            "perceptual_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"VQGANLossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_start < 0:
            raise ValueError(f"VQGANLossConfig.disc_start must be >= 0, got {self.disc_start}")
        if self.l1_weight == 0 and self.l2_weight == 0:
            raise ValueError(
                "VQGANLossConfig: l1_weight and l2_weight are both 0; no reconstruction loss"
            )
        if self.clinical_weight > 0 and not self.clinical_weights:
            raise ValueError(
                "VQGANLossConfig.clinical_weight > 0 needs clinical_weights (a classifier export, "
                ".ckpt, or torchxrayvision cache name); train one with a configs/classifier/ "
                "config, or set clinical_weight: 0"
            )
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError(
                "VQGANLossConfig.perceptual_weight > 0 needs perceptual_weights (a TorchScript "
                "file)"
            )


def pixel_loss(
    inputs: torch.Tensor, recon: torch.Tensor, l1_weight: float, l2_weight: float
) -> tuple[torch.Tensor, Terms]:
    """Weighted mean L1 and L2 pixel error."""
    l1 = (inputs - recon).abs().mean()
    l2 = (inputs - recon).pow(2).mean()
    loss = l1_weight * l1 + l2_weight * l2
    return loss, {"l1": l1.detach(), "l2": l2.detach()}


def clinical_loss(
    extractor: Callable[[torch.Tensor], torch.Tensor], inputs01: torch.Tensor, recon01: torch.Tensor
) -> tuple[torch.Tensor, Terms]:
    """MSE between classifier features of the input (target, no grad) and of the reconstruction.

    Images are in [0, 1] (the extractor converts to its own range and size). Gradients flow only
    to ``recon01``; the extractor is frozen.
    """
    with torch.no_grad():
        target = extractor(inputs01).float()
    features = extractor(recon01).float()
    loss = F.mse_loss(features, target)
    return loss, {"clinical": loss.detach()}


def hinge_discriminator_loss(
    logits_real: torch.Tensor, logits_fake: torch.Tensor
) -> tuple[torch.Tensor, Terms]:
    """Hinge loss of the discriminator (real -> >= 1, fake -> <= -1)."""
    loss_real = F.relu(1.0 - logits_real).mean()
    loss_fake = F.relu(1.0 + logits_fake).mean()
    loss = 0.5 * (loss_real + loss_fake)
    return loss, {
        "disc_loss": loss.detach(),
        "logits_real": logits_real.detach().mean(),
        "logits_fake": logits_fake.detach().mean(),
    }


def adaptive_gan_weight(
    rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, disc_weight: float
) -> torch.Tensor:
    """Balance GAN against reconstruction: ||grad rec|| / ||grad gan|| at the decoder's last layer.

    Taming's formula (clamped to [0, 1e4], then scaled by ``disc_weight``); detached.
    """
    rec_grads = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grads = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(rec_grads) / (torch.norm(gan_grads) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


def generator_loss(
    config: VQGANLossConfig,
    inputs: torch.Tensor,
    recon: torch.Tensor,
    codebook_loss: torch.Tensor,
    *,
    logits_fake: torch.Tensor | None = None,
    last_layer: torch.Tensor | None = None,
    extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, Terms]:
    """Total generator loss and its terms.

    ``logits_fake`` (discriminator on ``recon``) switches the GAN term on; ``last_layer`` enables
    the adaptive weight (training only; without it the GAN term is weighted by ``disc_weight``
    alone). ``extractor`` is needed when ``config.clinical_weight > 0``, ``perceptual`` when
    ``config.perceptual_weight > 0``.
    """
    rec, terms = pixel_loss(inputs, recon, config.l1_weight, config.l2_weight)
    if config.perceptual_weight > 0:
        if perceptual is None:
            raise ValueError("perceptual_weight > 0 but no perceptual model was given")
        p_loss = perceptual(inputs.expand(-1, 3, -1, -1), recon.expand(-1, 3, -1, -1)).mean()
        rec = rec + config.perceptual_weight * p_loss
        terms["perceptual"] = p_loss.detach()
    if config.clinical_weight > 0:
        if extractor is None:
            raise ValueError("clinical_weight > 0 but no clinical feature extractor was given")
        c_loss, c_terms = clinical_loss(extractor, (inputs + 1) / 2, (recon + 1) / 2)
        c_weight = torch.tensor(config.clinical_weight, device=c_loss.device)
        if config.clinical_relative:
            pixel = config.l1_weight * terms["l1"] + config.l2_weight * terms["l2"]
            c_weight = c_weight * pixel / c_loss.detach().clamp_min(1e-12)
        rec = rec + c_weight * c_loss
        terms.update(c_terms)
        terms["clinical_weight"] = c_weight.detach()
    terms["rec_loss"] = rec.detach()
    loss = rec + config.codebook_weight * codebook_loss
    terms["codebook"] = codebook_loss.detach()
    if logits_fake is not None:
        gan = -logits_fake.mean()
        if last_layer is not None:
            weight = adaptive_gan_weight(rec, gan, last_layer, config.disc_weight)
        else:
            weight = torch.tensor(config.disc_weight, device=gan.device)
        loss = loss + weight * config.disc_factor * gan
        terms["gan"] = gan.detach()
        terms["gan_weight"] = weight.detach()
    terms["loss"] = loss.detach()
    return loss, terms
