"""Train or validate the VQ-GAN tokenizer:
``llmcxr train tokenizer [fit|validate] -c configs/vqgan/<name>.yaml`` (alias:
``python -m vqgan fit|validate -c ...``).

Resume with ``--ckpt_path <file.ckpt>``. Export a checkpoint for the LLM side with
``llmcxr export tokenizer --checkpoint <file.ckpt> --out <folder> [--dtype float16]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from cxrcommon.checkpointing import link_run_folder
from vqgan.data import CXRDataModule
from vqgan.module import VQGANModule


class VQGANCLI(LightningCLI):
    """LightningCLI whose data image size follows the model's and whose logs follow the run
    folder (one source of truth each)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.config.image_size", "data.image_size")
        link_run_folder(parser)


def build_cli(
    args: Sequence[str] | None = None, run: bool = True, parser_kwargs: dict[str, Any] | None = None
) -> LightningCLI:
    """The tokenizer's LightningCLI; ``args`` replaces ``sys.argv`` (tests, scripts),
    ``parser_kwargs`` go to its parser (name, error mode: ``llmcxr train tokenizer`` sets them)."""
    return VQGANCLI(
        VQGANModule,
        CXRDataModule,
        args=list(args) if args is not None else None,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
    )


def main(args: Sequence[str] | None = None, parser_kwargs: dict[str, Any] | None = None) -> None:
    """Entry point of ``llmcxr train tokenizer`` and ``python -m vqgan``."""
    build_cli(args, parser_kwargs=parser_kwargs)


if __name__ == "__main__":
    main()
