"""Command line for the clinical-loss classifier: LightningCLI ``fit``/``validate`` plus ``export``.

``llmcxr train classifier -c configs/classifier/tiny.yaml`` (alias:
``python -m vqgan.classifier fit -c ...``) trains and, at the end, exports the best (else last)
checkpoint to ``<log_dir>/classifier_export``.
``llmcxr export classifier --checkpoint <file.ckpt> --out <folder>`` (alias:
``python -m vqgan.classifier export ...``) exports any checkpoint. The export folder is what
``ClinicalFeatureExtractor.from_weights`` and the VQ-GAN's clinical loss take.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from cxrcommon.checkpointing import AtomicModelCheckpoint, link_run_folder
from vqgan.classifier import CXRClassifierModule
from vqgan.classifier_data import LabelledCXRDataModule
from vqgan.clinical import ClinicalFeatureExtractor, save_classifier_export

logger = logging.getLogger(__name__)

EXPORT_DIRNAME = "classifier_export"


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Write ``classifier.safetensors`` + ``classifier.json`` from a training checkpoint, with the
    decision thresholds its validation pass chose (``op_threshs``) when it has them."""
    extractor = ClinicalFeatureExtractor.from_weights(Path(ckpt))
    thresholds = {}
    if extractor.op_threshs is not None:
        thresholds["op_threshs"] = extractor.op_threshs.tolist()
    return save_classifier_export(
        extractor.densenet, extractor.labels, out, source_checkpoint=str(ckpt), **thresholds
    )


class ClassifierCLI(LightningCLI):
    """LightningCLI with the label set linked from data to model and an atomic checkpoint callback
    configured under ``checkpoint:`` (Lightning's ``ModelCheckpoint`` arguments; it writes to
    ``<trainer.default_root_dir>/checkpoints`` and the logs follow that run folder too)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.label_names", "model.labels", apply_on="instantiate")
        parser.add_lightning_class_args(AtomicModelCheckpoint, "checkpoint")
        link_run_folder(parser)
        parser.set_defaults({"checkpoint.save_last": True})

    def after_fit(self) -> None:
        """Export the best checkpoint (or the last one when nothing is monitored)."""
        callback = self.trainer.checkpoint_callback
        ckpt = (callback.best_model_path or callback.last_model_path) if callback else ""
        if not ckpt or not self.trainer.is_global_zero:
            return
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir) / EXPORT_DIRNAME
        export_checkpoint(ckpt, out)
        print(f"classifier exported to {out} (from {ckpt})")


def cli_main(
    args: Sequence[str] | None = None, parser_kwargs: dict[str, Any] | None = None
) -> ClassifierCLI:
    """The classifier's LightningCLI (``fit``/``validate``); ``args`` replaces ``sys.argv``,
    ``parser_kwargs`` go to its parser (name, error mode)."""
    return ClassifierCLI(
        CXRClassifierModule,
        LabelledCXRDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
        args=list(args) if args is not None else None,
    )


def main(args: list[str] | None = None) -> None:
    """``python -m vqgan.classifier``: ``export`` (alias of ``llmcxr export classifier``; the
    old ``--ckpt`` still works), else the LightningCLI; ``args`` defaults to ``sys.argv[1:]``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["export"]:
        parser = argparse.ArgumentParser(
            prog="python -m vqgan.classifier export", description=__doc__
        )
        parser.add_argument(
            "--checkpoint", "--ckpt", required=True, help="checkpoint written by `fit` (.ckpt)"
        )
        parser.add_argument(
            "--out", required=True, help="folder for classifier.safetensors + .json"
        )
        options = parser.parse_args(argv[1:])
        try:
            out = export_checkpoint(options.checkpoint, options.out)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        print(f"classifier exported to {out}")
        return
    cli_main(args)


if __name__ == "__main__":
    main()
