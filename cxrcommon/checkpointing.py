"""One run folder per training run, and checkpoints in it that appear whole or not at all.

A config names its run folder once, as ``trainer.default_root_dir``; logs, checkpoints and exports
are derived from it, so ``--trainer.default_root_dir=X`` moves them all:

- the logger's ``save_dir`` is linked to it (`link_run_folder`);
- `AtomicModelCheckpoint` writes to ``<run>/checkpoints`` when no ``dirpath`` is given (not
  Lightning's versioned ``<log_dir>/checkpoints``: scripts resume from ``checkpoints/last.ckpt``);
- the model-export callbacks write under ``<run>`` (``llmcxr.train.ExportModelFolder``: ``model``).

Why atomic: Lightning 2.6 saves through an fsspec transaction that writes a temporary file in the
*system* temp folder and then ``shutil.move``s it to the checkpoint path. When that folder is on
another filesystem (a local ``/tmp`` with checkpoints on a network or mounted disk, the usual
cluster layout) the move degrades to a copy into the final path, so a crash mid-copy leaves a
truncated ``.ckpt``. Here the temporary file sits next to the target, so the last step is
always a same-filesystem ``os.replace``.
"""

from __future__ import annotations

import os
from pathlib import Path
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser

from cxrcommon.files import replace_folders

CHECKPOINTS = "checkpoints"


def link_run_folder(parser: LightningArgumentParser) -> None:
    """Make ``trainer.default_root_dir`` the logger's ``save_dir`` (a config that still sets
    ``save_dir`` is overridden), so logs follow the run folder. Call it from a LightningCLI's
    ``add_arguments_to_parser``."""
    parser.link_arguments(
        "trainer.default_root_dir",
        "trainer.logger.init_args.save_dir",
        compute_fn=lambda root: os.getcwd() if root is None else root,  # Lightning's default
    )


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``.<name>.partial`` beside the target and renames it.

    Same arguments and behaviour as Lightning's callback except two: without ``dirpath`` it writes
    to ``<trainer.default_root_dir>/checkpoints``, and the final write is a rename. Sharded
    strategies (DeepSpeed) write a checkpoint *folder*; it replaces the old one the same way.
    Remote URLs (``s3://``...) keep Lightning's own path: object stores publish a file only on
    completion.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, CHECKPOINTS)
        super().setup(trainer, pl_module, stage)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if "://" in str(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        directory, name = os.path.split(filepath)
        partial = os.path.join(directory, f".{name}.partial")
        trainer.save_checkpoint(partial, self.save_weights_only)  # collective under DDP/FSDP
        trainer.strategy.barrier("atomic_checkpoint_written")  # every shard of a folder is in
        if trainer.is_global_zero:
            if os.path.isdir(partial):
                replace_folders({Path(filepath): Path(partial)})
            else:
                os.replace(partial, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
