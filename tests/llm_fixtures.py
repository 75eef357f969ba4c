"""Test helpers for llmcxr: a tiny, randomly initialised model folder built in about a second."""

from __future__ import annotations

from pathlib import Path

from instructions.prompt_format import PromptFormat
from llmcxr.base_model import BaseModelSpec, TinyLMConfig, load_base_model
from llmcxr.image_tokens import add_image_tokens
from llmcxr.model_folder import save_model_folder
from vqgan import CXRTokenizer, VQGANConfig

TINY_LM = TinyLMConfig()
"""2 layers, hidden 64, a 400-token byte-level BPE text vocabulary."""


def tiny_vqgan_config() -> VQGANConfig:
    """A 64 px, f=16 tokenizer: 16 tokens per image, 64 codes (for tests only)."""
    return VQGANConfig(
        image_size=64,
        ch=32,
        ch_mult=(1, 1, 2, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        z_channels=32,
        embed_dim=16,
        n_embed=64,
    )


def make_tiny_model_folder(path: Path) -> Path:
    """Write a full llmcxr model folder (tiny Llama, tiny BPE, tiny CXRTokenizer) to `path`."""
    spec = BaseModelSpec(tiny=TINY_LM)
    model, text_tokenizer = load_base_model(spec)
    image_tokenizer = CXRTokenizer(tiny_vqgan_config())
    token_map = add_image_tokens(
        model, text_tokenizer, image_tokenizer.codebook_size, image_tokenizer.tokens_per_image
    )
    return save_model_folder(
        path,
        model=model,
        text_tokenizer=text_tokenizer,
        image_tokenizer=image_tokenizer,
        token_map=token_map,
        prompt_format=PromptFormat(),
        base_model=spec,
        training_info={"note": "random tiny model for tests"},
    )
