"""Train or validate the VQ-GAN tokenizer: ``python -m vqgan fit|validate -c configs/vqgan/<name>.yaml``.

Resume with ``--ckpt_path <file.ckpt>``. Export a checkpoint for the LLM side with
``python -m vqgan.export <file.ckpt> <folder> [--fp16]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vqgan.data import CXRDataModule
from vqgan.module import VQGANModule


class VQGANCLI(LightningCLI):
    """LightningCLI whose data image size follows the model's (one source of truth)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.config.image_size", "data.image_size")


def build_cli(args: Sequence[str] | None = None, run: bool = True) -> LightningCLI:
    """The tokenizer's LightningCLI; ``args`` replaces ``sys.argv`` (tests, scripts)."""
    return VQGANCLI(
        VQGANModule,
        CXRDataModule,
        args=list(args) if args is not None else None,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m vqgan``."""
    build_cli(args)


if __name__ == "__main__":
    main()
