"""CXRTokenizer: chest X-ray <-> 256 image tokens, for inference.

This is the only image interface the LLM side uses. It loads an exported folder
(``config.json`` + ``model.safetensors``) or a Lightning checkpoint written by
``llmcxr train tokenizer``, and needs nothing of the training stack (no Lightning import).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cxrcommon.files import atomic_write
from vqgan.config import VQGANConfig
from vqgan.networks import VQGAN

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "llmcxr-vqgan-tokenizer"
FORMAT_VERSION = 1
# Key under which VQGANModule stores the generator's config in a Lightning checkpoint,
# and the attribute prefix of the generator's weights in its state_dict.
CHECKPOINT_CONFIG_KEY = "vqgan_config"
CHECKPOINT_WEIGHTS_PREFIX = "generator."


class CXRTokenizer(nn.Module):
    """Encode chest X-rays into VQ-GAN token ids and decode ids back to images.

    ``CXRTokenizer(VQGANConfig(...))`` builds a randomly initialised tokenizer (tests only);
    use :meth:`from_pretrained` for real weights. The module stays in eval mode and its weights
    are frozen: encoding is deterministic.
    """

    def __init__(self, config: VQGANConfig | None = None) -> None:
        super().__init__()
        self.config = config or VQGANConfig()
        # Channels-last convolutions: on a 2-core EPYC (2026-12-07) encoding one 128 px film took
        # 13 instead of 16 ms and decoding 23 instead of 29, the same codes for 64 real films
        # (oneDNN need not reorder every activation). `save_pretrained` stores contiguous copies.
        self.model = VQGAN(self.config).to(memory_format=torch.channels_last)
        self.model.requires_grad_(False)
        self.eval()
        self._fingerprint: str | None = None

    # ---------------------------------------------------------------- properties
    @property
    def codebook_size(self) -> int:
        """Number of distinct image token ids (ids are in ``[0, codebook_size)``)."""
        return self.config.n_embed

    @property
    def tokens_per_image(self) -> int:
        """Token ids per image (``latent_size**2``, row-major)."""
        return self.config.tokens_per_image

    @property
    def image_size(self) -> int:
        """Side in pixels of the square images ``encode`` takes and ``decode`` returns."""
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """Short sha256 of the config and the weights that decide the codes (``VQGAN.CODE_PARTS``):
        it changes whenever the tokens could change, and not for a new decoder, which an LLM
        trained on the codes uses unchanged (token caches and model folders stay valid)."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.config, self.model.state_dict())
        return self._fingerprint

    def gives_same_codes(self, other: CXRTokenizer) -> bool:
        """True when `other` encodes every image to this tokenizer's codes and maps each code to
        the same latent vector (same config, bit-identical ``VQGAN.CODE_PARTS`` weights): an LLM
        trained on one's codes reads and draws with the other. Decoders may differ."""
        if self.config != other.config:
            return False
        mine = VQGAN.code_weights(self.model.state_dict())
        theirs = VQGAN.code_weights(other.model.state_dict())
        return all(
            torch.equal(mine[name].float().cpu(), theirs[name].float().cpu()) for name in mine
        )

    def codebook_vectors(self) -> torch.Tensor:
        """The codebook, ``[codebook_size, embed_dim]`` float32 (row ``i`` is the vector of id
        ``i``)."""
        return self.model.quantize.embedding.weight.detach().float().cpu().clone()

    def train(self, mode: bool = True) -> CXRTokenizer:
        """Always stays in eval mode: the tokenizer is inference-only."""
        return super().train(False)

    # ---------------------------------------------------------------- encode / decode
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 1, S, S]`` float in [0, 1] (S = image_size) -> token ids LongTensor
        ``[B, N]``."""
        self._check_images(images)
        x = images.to(self.device, torch.float32) * 2.0 - 1.0
        _, _, ids = self.model.encode(x.contiguous(memory_format=torch.channels_last))
        return ids.to(images.device)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, N]`` -> images FloatTensor ``[B, 1, S, S]`` in [0, 1]."""
        self._check_ids(ids)
        z_q = self.model.codes_to_latents(ids.to(self.device, torch.long))
        images = self.model.decode(z_q.contiguous(memory_format=torch.channels_last)).float()
        return ((images.clamp(-1.0, 1.0) + 1.0) / 2.0).to(ids.device)

    def _check_images(self, images: torch.Tensor) -> None:
        size, channels = self.image_size, self.config.in_channels
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(
                f"images must be a float tensor [B, {channels}, {size}, {size}], got {type(images)}"
            )
        if (
            images.ndim != 4
            or images.shape[1] != channels
            or tuple(images.shape[2:]) != (size, size)
        ):
            raise ValueError(
                f"images must have shape [B, {channels}, {size}, {size}], got "
                f"{list(images.shape)}; resize with vqgan.prepare_image(array, size) first"
            )
        if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
            raise ValueError(
                f"images must be in [0, 1], got values in [{images.min():.3f}, {images.max():.3f}]"
            )

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex():
            raise TypeError(
                f"ids must be an integer tensor [B, {self.tokens_per_image}], got {type(ids)}"
            )
        if ids.ndim != 2 or ids.shape[1] != self.tokens_per_image:
            raise ValueError(
                f"ids must have shape [B, {self.tokens_per_image}], got {list(ids.shape)}"
            )
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.codebook_size):
            raise ValueError(
                f"ids must be in [0, {self.codebook_size}), got values in [{int(ids.min())}, "
                f"{int(ids.max())}]"
            )

    # ---------------------------------------------------------------- persistence
    def save_pretrained(
        self, directory: str | os.PathLike[str], dtype: torch.dtype = torch.float32
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (``dtype=torch.float16`` halves the
        size).

        Files are written to temporaries and moved into place, so a crash never leaves a torn file.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().to("cpu", dtype).contiguous() for k, v in self.model.state_dict().items()
        }
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "fingerprint": _fingerprint(self.config, state),  # of the weights as stored
        }
        atomic_write(
            out / WEIGHTS_NAME,
            lambda tmp: save_file(state, str(tmp), metadata={"format": FORMAT_NAME}),
        )
        atomic_write(
            out / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n")
        )
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> CXRTokenizer:
        """Load an exported folder (config.json + model.safetensors) or a ``fit`` checkpoint
        (.ckpt)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"tokenizer not found at {path}: pass a folder written by save_pretrained "
                "(config.json + model.safetensors) or a .ckpt from `llmcxr train tokenizer`"
            )
        if path.is_dir():
            config, state = _read_folder(path)
        else:
            config, state = _read_lightning_checkpoint(path)
        _check_config_holds(path, config, state)
        tokenizer = cls(config)
        try:
            tokenizer.model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[:3]
            raise ValueError(
                f"weights in {path} do not match its VQGANConfig: {' '.join(first)}"
            ) from err
        logger.info("loaded CXRTokenizer from %s (fingerprint %s)", path, tokenizer.fingerprint)
        return tokenizer


def _check_config_holds(path: Path, config: VQGANConfig, state: dict[str, torch.Tensor]) -> None:
    """Refuse a saved config that asks for more than the file holds, before the network is
    built: the config is the file's own word, and one asking for wide or many layers would have
    them allocated first. Nothing is built here (a meta-device build imports torch._dynamo,
    0.8 s of every cold start): the level and block counts may not exceed the stored ones, nor
    any width the config names the largest stored dimension; the strict load checks the rest."""
    found = [m.groups() for k in state if (m := _ENCODER_BLOCK.match(k))]
    levels, blocks = {level for level, _ in found}, {block for _, block in found}
    if len(config.ch_mult) > len(levels) or config.num_res_blocks > len(blocks):
        raise ValueError(
            f"weights in {path} do not match its VQGANConfig: it names {len(config.ch_mult)} "
            f"levels of {config.num_res_blocks} blocks, the weights hold {len(levels)} of "
            f"{len(blocks)}"
        )
    widest = max((max(t.shape, default=0) for t in state.values()), default=0)
    widths = {
        "ch x max(ch_mult)": config.ch * max(config.ch_mult),
        "z_channels": config.z_channels,
        "embed_dim": config.embed_dim,
        "n_embed": config.n_embed,
        "in_channels": config.in_channels,
    }
    for name, width in widths.items():
        if width > widest:
            raise ValueError(
                f"weights in {path} do not match its VQGANConfig: {name} is {width}, wider "
                f"than any stored tensor ({widest})"
            )


_ENCODER_BLOCK = re.compile(r"encoder\.down\.(\d+)\.block\.(\d+)\.")
"""An encoder residual block's level and index in a weight name."""


def _fingerprint(config: VQGANConfig, state: dict[str, torch.Tensor]) -> str:
    """Short sha256 of a config and its code-deciding weights (compared in float32). Folders and
    caches written before 2026-12-05 hashed every weight, the decoder's too."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(VQGAN.code_weights(state).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _read_folder(path: Path) -> tuple[VQGANConfig, dict[str, torch.Tensor]]:
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{path} is not a tokenizer folder: missing {needed.name}")
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{config_file} is not a CXRTokenizer config (expected format {FORMAT_NAME!r})"
        )
    config = VQGANConfig.from_dict(meta["config"])
    try:
        state = load_file(weights_file)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_file} is not a readable safetensors file: {err}") from err
    return config, state


def _read_lightning_checkpoint(path: Path) -> tuple[VQGANConfig, dict[str, torch.Tensor]]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for non-checkpoint bytes
        raise ValueError(f"{path} is not a readable PyTorch/Lightning checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    if CHECKPOINT_CONFIG_KEY not in checkpoint:
        raise ValueError(
            f"{path} is not a VQ-GAN checkpoint from `llmcxr train tokenizer` (no "
            f"{CHECKPOINT_CONFIG_KEY!r})"
        )
    config = VQGANConfig.from_dict(checkpoint[CHECKPOINT_CONFIG_KEY])
    prefix = CHECKPOINT_WEIGHTS_PREFIX
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    if not state:
        raise ValueError(f"{path} holds no generator weights (keys starting with {prefix!r})")
    return config, state
