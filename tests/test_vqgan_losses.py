"""VQ-GAN loss functions: clinical loss gradients, adaptive GAN weight, hinge loss, config
checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from vqgan_testing import TINY, single_thread  # noqa: F401  (autouse fixture)

from vqgan.clinical import ClinicalFeatureExtractor, build_densenet
from vqgan.losses import (
    VQGANLossConfig,
    adaptive_gan_weight,
    clinical_loss,
    generator_loss,
    hinge_discriminator_loss,
    pixel_loss,
)
from vqgan.networks import VQGAN


@pytest.fixture(scope="module")
def extractor() -> ClinicalFeatureExtractor:
    """The real torchxrayvision DenseNet-121 architecture, random weights (test only)."""
    torch.manual_seed(0)
    return ClinicalFeatureExtractor(build_densenet(3), ["a", "b", "c"])


def test_clinical_loss_gradient_flows_to_reconstruction_only(extractor, synthetic_images) -> None:
    inputs = synthetic_images[:2].clone().requires_grad_(True)
    recon = (synthetic_images[:2] + 0.1 * torch.randn_like(synthetic_images[:2])).clamp(0, 1)
    recon.requires_grad_(True)
    loss, terms = clinical_loss(extractor, inputs, recon)
    loss.backward()
    assert torch.isfinite(loss.detach()) and float(loss.detach()) > 0
    assert (
        recon.grad is not None and torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0
    )
    assert inputs.grad is None  # the target features are detached
    assert all(p.grad is None for p in extractor.parameters())  # classifier frozen
    assert float(terms["clinical"]) == pytest.approx(float(loss))


def test_clinical_loss_is_zero_for_identical_images(extractor, synthetic_images) -> None:
    loss, _ = clinical_loss(extractor, synthetic_images[:2], synthetic_images[:2].clone())
    assert float(loss) == 0.0


def test_pixel_loss_values() -> None:
    a, b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    loss, terms = pixel_loss(a, b, l1_weight=1.0, l2_weight=2.0)
    assert float(terms["l1"]) == pytest.approx(0.5) and float(terms["l2"]) == pytest.approx(0.25)
    assert float(loss) == pytest.approx(0.5 + 2 * 0.25)


def test_hinge_discriminator_loss_values() -> None:
    confident, _ = hinge_discriminator_loss(torch.full((2, 1), 2.0), torch.full((2, 1), -2.0))
    undecided, terms = hinge_discriminator_loss(torch.zeros(2, 1), torch.zeros(2, 1))
    assert float(confident) == 0.0 and float(undecided) == pytest.approx(1.0)
    assert set(terms) == {"disc_loss", "logits_real", "logits_fake"}


def test_adaptive_weight_is_the_gradient_norm_ratio() -> None:
    weight = nn.Parameter(torch.ones(3, 4))
    rec, gan = (2.0 * weight).sum(), (3.0 * weight).sum()  # gradients: all 2s and all 3s
    expected = 0.8 * (2.0 * 12**0.5) / (3.0 * 12**0.5 + 1e-4)
    assert float(adaptive_gan_weight(rec, gan, weight, disc_weight=0.8)) == pytest.approx(expected)


def test_adaptive_weight_finite_on_the_decoder_last_layer(synthetic_images) -> None:
    model = VQGAN(TINY)
    x = torch.nn.functional.interpolate(synthetic_images, size=32, mode="area") * 2 - 1
    recon, codebook_loss, _ = model(x)
    fake_logits = recon.mean(dim=(1, 2, 3)) * 3 + recon.pow(2).mean()  # any differentiable critic
    loss, terms = generator_loss(
        VQGANLossConfig(),
        x,
        recon,
        codebook_loss,
        logits_fake=fake_logits,
        last_layer=model.last_layer,
    )
    assert torch.isfinite(terms["gan_weight"]) and float(terms["gan_weight"]) > 0
    loss.backward()
    assert torch.isfinite(model.last_layer.grad).all()


def test_generator_loss_terms_follow_config(extractor, synthetic_images) -> None:
    x = synthetic_images[:2] * 2 - 1
    recon = x.flip(-1)
    codebook = torch.tensor(0.5)
    plain, terms = generator_loss(VQGANLossConfig(), x, recon, codebook)
    assert "gan" not in terms and "clinical" not in terms
    assert float(plain) == pytest.approx(float(terms["l1"]) + 0.5)

    config = VQGANLossConfig(clinical_weight=100.0, clinical_weights="unused-here")
    with pytest.raises(ValueError, match="no clinical feature extractor"):
        generator_loss(config, x, recon, codebook)
    total, terms = generator_loss(config, x, recon, codebook, extractor=extractor)
    assert float(total) == pytest.approx(
        float(terms["l1"]) + 100.0 * float(terms["clinical"]) + 0.5, rel=1e-5
    )


def test_relative_clinical_weight_sizes_the_term_against_the_pixel_term(
    extractor, synthetic_images
) -> None:
    x = synthetic_images[:2] * 2 - 1
    recon = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    config = VQGANLossConfig(
        l1_weight=1.0,
        l2_weight=0.5,
        clinical_weight=2.0,
        clinical_weights="unused-here",
        clinical_relative=True,
    )
    total, terms = generator_loss(config, x, recon, torch.tensor(0.0), extractor=extractor)
    pixel = float(terms["l1"]) + 0.5 * float(terms["l2"])
    # The weighted clinical term is twice the pixel term, whatever the feature MSE's own scale.
    assert float(terms["clinical_weight"]) * float(terms["clinical"]) == pytest.approx(2 * pixel)
    assert float(total) == pytest.approx(3 * pixel, rel=1e-5)
    # The weight is a detached scale: the clinical gradient is the plain one times that scale.
    total.backward()
    grad_total = recon.grad.clone()
    recon.grad = None
    pixel_only, _ = pixel_loss(x, recon, 1.0, 0.5)
    clinical, _ = clinical_loss(extractor, (x + 1) / 2, (recon + 1) / 2)
    (pixel_only + float(terms["clinical_weight"]) * clinical).backward()
    assert torch.allclose(grad_total, recon.grad, rtol=1e-4, atol=1e-8)


def test_loss_config_rejects_clinical_weight_without_classifier() -> None:
    with pytest.raises(ValueError, match="clinical_weight > 0 needs clinical_weights"):
        VQGANLossConfig(clinical_weight=100.0)
    with pytest.raises(ValueError, match="disc_start"):
        VQGANLossConfig(disc_start=-1)
    with pytest.raises(ValueError, match="no reconstruction loss"):
        VQGANLossConfig(l1_weight=0.0, l2_weight=0.0)
