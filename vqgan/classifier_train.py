"""Command line for the clinical-loss classifier: LightningCLI ``fit``/``validate`` plus ``export``.

``python -m vqgan.classifier fit -c configs/classifier/tiny.yaml`` trains and, at the end, exports
the best (else last) checkpoint to ``<log_dir>/classifier_export``.
``python -m vqgan.classifier export --ckpt <file.ckpt> --out <folder>`` exports any checkpoint.
The export folder is what ``ClinicalFeatureExtractor.from_weights`` and the VQ-GAN's clinical
loss take.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vqgan.checkpointing import AtomicModelCheckpoint
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
    configured under ``checkpoint:`` (Lightning's ``ModelCheckpoint`` arguments)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.label_names", "model.labels", apply_on="instantiate")
        parser.add_lightning_class_args(AtomicModelCheckpoint, "checkpoint")
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


def main(args: list[str] | None = None) -> None:
    """Entry point; ``args`` defaults to ``sys.argv[1:]`` (tests pass a list)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["export"]:
        parser = argparse.ArgumentParser(
            prog="python -m vqgan.classifier export", description=__doc__
        )
        parser.add_argument("--ckpt", required=True, help="checkpoint written by `fit` (.ckpt)")
        parser.add_argument(
            "--out", required=True, help="folder for classifier.safetensors + .json"
        )
        options = parser.parse_args(argv[1:])
        try:
            out = export_checkpoint(options.ckpt, options.out)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        print(f"classifier exported to {out}")
        return
    ClassifierCLI(
        CXRClassifierModule,
        LabelledCXRDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
