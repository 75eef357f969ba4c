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


TINY_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "llmcxr"


def make_tiny_run_inputs(root: Path) -> None:
    """What the tiny configs read, made under `root` when missing: the instruction dataset built
    from ``configs/llmcxr/tiny_reports.csv`` (``root/data``) and a seeded random image tokenizer
    (``root/image_tokenizer``, `tiny_vqgan_config`: 16 tokens per image)."""
    import torch

    from instructions.cli import main as build_instructions

    table = TINY_CONFIGS / "tiny_reports.csv"
    if not (root / "data").is_dir():
        argv = ["--source", "csv", "--table", str(table), "--out", str(root / "data")]
        assert build_instructions(argv) == 0, f"building the tiny dataset from {table} failed"
    if not (root / "image_tokenizer").is_dir():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            CXRTokenizer(tiny_vqgan_config()).save_pretrained(root / "image_tokenizer")


def tiny_run_args(root: Path, stage: int = 1) -> list[str]:
    """``-c`` and overrides that run the shipped tiny config of `stage` with its run folder at
    ``root/stage<N>`` (one override: logs, checkpoints and model follow it) and its inputs (the
    data build, the random image tokenizer, stage 1's model) under `root` too; the data and the
    tokenizer are made first (`make_tiny_run_inputs`)."""
    make_tiny_run_inputs(root)
    name = "tiny.yaml" if stage == 1 else "tiny_stage2.yaml"
    args = ["-c", str(TINY_CONFIGS / name), f"--trainer.default_root_dir={root / f'stage{stage}'}"]
    args += [f"--data.dataset_dir={root / 'data'}"]
    if stage == 1:
        return [*args, f"--model.image_tokenizer={root / 'image_tokenizer'}"]
    return [*args, f"--model.init_from={root / 'stage1' / 'model'}"]
