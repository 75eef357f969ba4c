"""Two-stage LLM-CXR instruction tuning with LightningCLI.

    python -m llmcxr.train fit -c configs/llmcxr/tiny.yaml          # stage 1
    python -m llmcxr.train fit -c configs/llmcxr/tiny_stage2.yaml   # stage 2 (init_from stage 1)
    python -m llmcxr.train export --checkpoint RUN/checkpoints/last.ckpt --out MODEL_DIR

``fit`` writes atomic checkpoints (``vqgan.checkpointing.AtomicModelCheckpoint``) and, through
`ExportModelFolder`, a model folder at the end. Single device, DDP, FSDP or DeepSpeed are chosen
with ``trainer.strategy`` (see configs/llmcxr/paper_gpu.yaml).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from llmcxr.data import InstructionDataModule
from llmcxr.lit_module import LLMCXRModule

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ExportModelFolder(L.Callback):
    """Writes a model folder when ``fit`` ends (rank 0), replacing an older one."""

    def __init__(self, dirpath: str | None = None, dtype: str | None = None) -> None:
        """
        Args:
            dirpath: target folder; default ``<trainer.default_root_dir>/model``.
            dtype: cast the stored LLM weights (``float16`` for a model to ship); None keeps them.
        """
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.dirpath = dirpath
        self.dtype = dtype

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LLMCXRModule):
            raise TypeError("ExportModelFolder works with LLMCXRModule only")
        if trainer.strategy.__class__.__name__.startswith(("DeepSpeed", "FSDP")):
            log.warning(
                "sharded strategy: export from the last checkpoint with "
                "`python -m llmcxr.train export` instead"
            )
            return
        if trainer.is_global_zero:
            target = Path(self.dirpath or Path(trainer.default_root_dir) / "model")
            pl_module.export(
                target,
                dtype=_DTYPES[self.dtype] if self.dtype else None,
                global_step=trainer.global_step,
            )
            log.info("exported model folder %s", target)
        trainer.strategy.barrier("llmcxr_export")


def export(checkpoint: str, out: str, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Turn an llmcxr training checkpoint into a model folder (LoRA merged)."""
    from llmcxr.model_folder import load_model_folder, save_model_folder

    parts = load_model_folder(checkpoint)
    return save_model_folder(
        out,
        model=parts.model,
        text_tokenizer=parts.text_tokenizer,
        image_tokenizer=parts.image_tokenizer,
        token_map=parts.token_map,
        prompt_format=parts.prompt_format,
        generation_defaults=parts.generation_defaults,
        training_info={"exported_from": str(checkpoint)},
        dtype=_DTYPES[dtype] if dtype else None,
        overwrite=overwrite,
    )


def _export_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcxr.train export")
    parser.add_argument("--checkpoint", required=True, help=".ckpt written by `fit`")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="cast weights")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(export(args.checkpoint, args.out, args.dtype, args.overwrite))
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


class LLMCXRCLI(LightningCLI):
    """LightningCLI that refuses to resume (``--ckpt_path``) a checkpoint trained with another
    image tokenizer than the one this run's config loads."""

    def before_fit(self) -> None:
        self._check_resumed_tokenizer()

    def before_validate(self) -> None:
        self._check_resumed_tokenizer()

    def before_test(self) -> None:
        self._check_resumed_tokenizer()

    def _check_resumed_tokenizer(self) -> None:
        from llmcxr.model_folder import CHECKPOINT_KEY, check_image_tokenizer

        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():  # None, or "last"/"best"
            return
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        payload = checkpoint.get(CHECKPOINT_KEY) or {}
        check_image_tokenizer(
            ckpt_path,
            payload.get("image_tokenizer_fingerprint"),
            self.model.image_tokenizer_fingerprint,
        )


def cli_main(args: Sequence[str] | None = None) -> LightningCLI:
    """Run LightningCLI (``fit``/``validate``/``test``) on LLMCXRModule + InstructionDataModule."""
    return LLMCXRCLI(
        LLMCXRModule,
        InstructionDataModule,
        args=list(args) if args is not None else None,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``export`` is ours, every other subcommand goes to LightningCLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["export"]:
        return _export_main(args[1:])
    cli_main(argv)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
