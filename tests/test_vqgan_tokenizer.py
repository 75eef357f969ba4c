"""CXRTokenizer invariants on a tiny random-init network (CPU, milliseconds to seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from vqgan_testing import TINY, single_thread  # noqa: F401  (autouse fixture)

from vqgan import CXRTokenizer, VQGANConfig
from vqgan.module import VQGANModule


@pytest.fixture
def images(synthetic_images: torch.Tensor) -> torch.Tensor:
    """[4, 1, 32, 32] CXR-like images in [0, 1]."""
    return torch.nn.functional.interpolate(synthetic_images, size=32, mode="area")


@pytest.fixture
def tokenizer() -> CXRTokenizer:
    return CXRTokenizer(TINY)


def test_config_derived_sizes_and_validation() -> None:
    default = VQGANConfig()
    assert (default.image_size, default.tokens_per_image, default.latent_size) == (256, 256, 16)
    assert TINY.tokens_per_image == 64
    assert VQGANConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="image_size"):
        VQGANConfig(image_size=100)
    with pytest.raises(ValueError, match="multiple of 32"):
        VQGANConfig(ch=48)
    with pytest.raises(ValueError, match="unknown VQGANConfig fields: colour"):
        VQGANConfig.from_dict({**TINY.to_dict(), "colour": 3})


def test_encode_decode_shapes_range_and_determinism(
    tokenizer: CXRTokenizer, images: torch.Tensor
) -> None:
    ids = tokenizer.encode(images)
    assert ids.dtype == torch.long and ids.shape == (4, tokenizer.tokens_per_image)
    assert 0 <= int(ids.min()) and int(ids.max()) < tokenizer.codebook_size
    assert torch.equal(ids, tokenizer.encode(images.clone()))
    decoded = tokenizer.decode(ids)
    assert decoded.shape == (4, 1, 32, 32) and decoded.dtype == torch.float32
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0
    tokenizer.train()  # stays in eval: no dropout / batch statistics can change the ids
    assert not tokenizer.training and torch.equal(ids, tokenizer.encode(images))


def test_decode_of_encode_equals_module_reconstruction(images: torch.Tensor) -> None:
    module = VQGANModule(TINY).eval()
    tokenizer = CXRTokenizer(TINY)
    tokenizer.model.load_state_dict(module.generator.state_dict())
    with torch.no_grad():
        recon, module_ids = module(images)
    ids = tokenizer.encode(images)
    assert torch.equal(ids, module_ids)
    torch.testing.assert_close(tokenizer.decode(ids), recon, atol=1e-5, rtol=0)


def test_ids_are_row_major_over_the_latent_grid(
    tokenizer: CXRTokenizer, images: torch.Tensor
) -> None:
    ids = tokenizer.encode(images)
    side = TINY.latent_size
    with torch.no_grad():
        latents = tokenizer.model.quant_conv(
            tokenizer.model.encoder(images * 2 - 1)
        )  # [B, D, h, w]
        codebook = tokenizer.model.quantize.embedding.weight  # [K, D]
        row, col = 2, 5
        nearest = torch.cdist(latents[:, :, row, col], codebook).argmin(dim=1)
    assert torch.equal(ids[:, row * side + col], nearest)
    z_q = tokenizer.model.codes_to_latents(ids)
    torch.testing.assert_close(z_q[:, :, row, col], codebook[ids[:, row * side + col]])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(2, 1, 64, 64), r"shape \[B, 1, 32, 32\]"),
        (torch.rand(2, 3, 32, 32), r"shape \[B, 1, 32, 32\]"),
        (torch.rand(2, 1, 32, 32) * 255, r"in \[0, 1\]"),
        (torch.randint(0, 2, (2, 1, 32, 32)), "float tensor"),
    ],
)
def test_encode_rejects_bad_images(
    tokenizer: CXRTokenizer, bad: torch.Tensor, message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        tokenizer.encode(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 63, dtype=torch.long), r"shape \[B, 64\]"),
        (torch.full((2, 64), 64, dtype=torch.long), r"in \[0, 64\)"),
        (torch.full((2, 64), -1, dtype=torch.long), r"in \[0, 64\)"),
        (torch.zeros(2, 64), "integer tensor"),
    ],
)
def test_decode_rejects_bad_ids(tokenizer: CXRTokenizer, bad: torch.Tensor, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        tokenizer.decode(bad)


def test_save_pretrained_round_trip(
    tmp_path, tokenizer: CXRTokenizer, images: torch.Tensor
) -> None:
    ids = tokenizer.encode(images)
    folder = tokenizer.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = CXRTokenizer.from_pretrained(folder)
    assert loaded.config == TINY
    assert torch.equal(loaded.encode(images), ids)
    assert loaded.fingerprint == tokenizer.fingerprint

    half = tokenizer.save_pretrained(tmp_path / "tok16", dtype=torch.float16)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (
        folder / "model.safetensors"
    ).stat().st_size
    loaded16 = CXRTokenizer.from_pretrained(half)
    assert loaded16.fingerprint != tokenizer.fingerprint  # rounded weights can change tokens
    assert loaded16.encode(images).shape == ids.shape


def test_fingerprint_tracks_weights_and_config(tokenizer: CXRTokenizer) -> None:
    other_weights = CXRTokenizer(TINY)
    other_config = CXRTokenizer(VQGANConfig(**{**TINY.to_dict(), "n_embed": 32}))
    assert len(tokenizer.fingerprint) == 16
    assert len({tokenizer.fingerprint, other_weights.fingerprint, other_config.fingerprint}) == 3


def test_fingerprint_is_of_the_codes_not_of_the_decoder(tokenizer: CXRTokenizer) -> None:
    """A new decoder keeps the fingerprint (the codes, hence LLMs and token caches, stay valid);
    any change to the encoder, quant_conv or codebook changes it."""
    state = tokenizer.model.state_dict()
    for part in ("decoder.", "post_quant_conv.", "encoder.", "quant_conv.", "quantize."):
        other = CXRTokenizer(TINY)
        moved = {k: v + 0.01 if k.startswith(part) else v for k, v in state.items()}
        other.model.load_state_dict(moved)
        same = part in ("decoder.", "post_quant_conv.")
        assert (other.fingerprint == tokenizer.fingerprint) is same, part
        assert tokenizer.gives_same_codes(other) is same, part


def test_lightning_checkpoint_round_trip(tmp_path, images: torch.Tensor) -> None:
    module = VQGANModule(TINY)
    checkpoint = {"state_dict": module.state_dict(), "epoch": 0}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    tokenizer = CXRTokenizer.from_pretrained(tmp_path / "model.ckpt")
    module.eval()
    with torch.no_grad():
        _, module_ids = module(images)
    assert torch.equal(tokenizer.encode(images), module_ids)


def test_wrong_or_corrupt_checkpoints_give_clear_errors(tmp_path, tokenizer: CXRTokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        CXRTokenizer.from_pretrained(tmp_path / "missing")

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable PyTorch/Lightning checkpoint"):
        CXRTokenizer.from_pretrained(corrupt)

    foreign = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(ValueError, match="not a VQ-GAN checkpoint"):
        CXRTokenizer.from_pretrained(foreign)

    folder = tokenizer.save_pretrained(tmp_path / "tok")
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        CXRTokenizer.from_pretrained(folder)

    mismatched = CXRTokenizer(TINY).save_pretrained(tmp_path / "mismatch")
    meta = json.loads((mismatched / "config.json").read_text())
    meta["config"]["n_embed"] = 128
    (mismatched / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match its VQGANConfig"):
        CXRTokenizer.from_pretrained(mismatched)

    for key, value, message in (
        ("ch", 2**20, r"ch x max\(ch_mult\) is 2097152, wider than any stored tensor"),
        ("num_res_blocks", 10**9, "names 3 levels of 1000000000 blocks"),
    ):
        hostile = json.loads(json.dumps(meta))
        hostile["config"].update({"n_embed": TINY.n_embed, key: value})
        (mismatched / "config.json").write_text(json.dumps(hostile))
        with pytest.raises(ValueError, match=f"do not match its VQGANConfig: .*{message}"):
            CXRTokenizer.from_pretrained(mismatched)

    (mismatched / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a CXRTokenizer config"):
        CXRTokenizer.from_pretrained(mismatched)
