"""Two-stage LLM-CXR instruction tuning with LightningCLI.

    llmcxr train llm -c configs/llmcxr/tiny.yaml          # stage 1
    llmcxr train llm -c configs/llmcxr/tiny_stage2.yaml   # stage 2 (init_from stage 1)
    llmcxr export llm --checkpoint RUN/checkpoints/last.ckpt --out MODEL_DIR

(``python -m llmcxr.train fit|export ...`` stay as aliases.)

``fit`` writes atomic checkpoints (``cxrcommon.checkpointing.AtomicModelCheckpoint``) and, through
`ExportModelFolder`, a model folder at the end, all under ``trainer.default_root_dir``. Single
device, DDP, FSDP or DeepSpeed are chosen with ``trainer.strategy`` (see
configs/llmcxr/paper_gpu.yaml).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from cxrcommon.checkpointing import link_run_folder
from cxrcommon.dtypes import torch_dtype
from llmcxr.data import InstructionDataModule
from llmcxr.lit_module import LLMCXRModule

log = logging.getLogger(__name__)


class ExportModelFolder(L.Callback):
    """Writes a model folder when ``fit`` ends (rank 0), replacing an older one."""

    def __init__(self, dirpath: str | None = None, dtype: str | None = None) -> None:
        """
        Args:
            dirpath: target folder; default ``<trainer.default_root_dir>/model``.
            dtype: cast the stored LLM weights (``float16`` for a model to ship); None keeps them.
        """
        if dtype is not None:
            torch_dtype(dtype)  # refuse a bad name before training, not at the export
        self.dirpath = dirpath
        self.dtype = dtype

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LLMCXRModule):
            raise TypeError("ExportModelFolder works with LLMCXRModule only")
        if trainer.strategy.__class__.__name__.startswith(("DeepSpeed", "FSDP")):
            log.warning(
                "sharded strategy: export from the last checkpoint with `llmcxr export llm` instead"
            )
            return
        if trainer.is_global_zero:
            target = Path(self.dirpath or Path(trainer.default_root_dir) / "model")
            pl_module.export(
                target,
                dtype=torch_dtype(self.dtype) if self.dtype else None,
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
        **parts.model_parts(),
        training_info={"exported_from": str(checkpoint)},
        dtype=torch_dtype(dtype) if dtype else None,
        overwrite=overwrite,
    )


class LLMCXRCLI(LightningCLI):
    """LightningCLI that refuses to resume (``--ckpt_path``) a checkpoint trained with another
    image tokenizer than the one this run's config loads; its logs follow the run folder."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        link_run_folder(parser)

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


def cli_main(
    args: Sequence[str] | None = None, parser_kwargs: dict[str, Any] | None = None
) -> LightningCLI:
    """Run LightningCLI (``fit``/``validate``/``test``) on LLMCXRModule + InstructionDataModule;
    ``parser_kwargs`` go to its parser (name, error mode)."""
    return LLMCXRCLI(
        LLMCXRModule,
        InstructionDataModule,
        args=list(args) if args is not None else None,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmcxr.train``: ``export`` is ``llmcxr export llm`` (same options, errors and
    exit status), every other subcommand goes to LightningCLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["export"]:
        from llmcxr.cli import main as llmcxr_main

        return llmcxr_main(["export", "llm", *args[1:]])
    cli_main(argv)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
