"""An atomic Lightning ModelCheckpoint: checkpoint files appear whole or not at all.

Why: Lightning 2.6 saves through an fsspec transaction that writes a temporary file in the
*system* temp folder and then ``shutil.move``s it to the checkpoint path. When that folder is on
another filesystem (a local ``/tmp`` with checkpoints on a network or mounted disk, the usual
cluster layout) the move degrades to a copy into the final path, so a crash mid-copy leaves a
truncated ``.ckpt``. Here the temporary file sits next to the target, so the last step is
always a same-filesystem ``os.replace``.
"""

from __future__ import annotations

import os
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``.<name>.partial`` beside the target and renames it.

    Same arguments and behaviour as Lightning's callback; only the final write differs. Remote
    URLs (``s3://``...) keep Lightning's own path: object stores publish a file only on completion.
    """

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if "://" in str(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        directory, name = os.path.split(filepath)
        partial = os.path.join(directory, f".{name}.partial")
        trainer.save_checkpoint(partial, self.save_weights_only)  # collective under DDP/FSDP
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
