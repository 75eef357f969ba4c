"""Train the CXR classifier whose features drive the clinical loss (no pretrained download needed).

Same architecture as torchxrayvision's ``densenet121-res224-*`` (DenseNet-121, one input
channel, 224 px, inputs in ``[-1024, 1024]``), trained multi-label with a BCE masked to the labels
each source annotates. Its checkpoint (or ``export``) is read by
:meth:`vqgan.clinical.ClinicalFeatureExtractor.from_weights`.

Run: ``python -m vqgan.classifier fit -c configs/classifier/tiny.yaml`` and
``python -m vqgan.classifier export --ckpt <file.ckpt> --out <folder>``.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MultilabelAUROC

from vqgan.clinical import build_densenet, to_xrv_input

logger = logging.getLogger(__name__)

IGNORE = -1  # target value torchmetrics skips (unknown label for that image)


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the known (mask 1) entries only; 0 when nothing is known."""
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


class CXRClassifierModule(L.LightningModule):
    """Multi-label DenseNet-121 CXR classifier (torchxrayvision layout), AUROC per label.

    Args:
        labels: output labels, in order (linked from the datamodule's label set by the CLI).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        cosine_schedule: anneal the learning rate to 0 over the run (per step).
    """

    def __init__(
        self,
        labels: list[str],
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        cosine_schedule: bool = True,
    ) -> None:
        super().__init__()
        if not labels:
            raise ValueError("labels must not be empty")
        self.save_hyperparameters()
        self.labels = list(labels)
        self.model = build_densenet(len(self.labels))
        self.val_auroc = MultilabelAUROC(
            num_labels=len(self.labels), average=None, ignore_index=IGNORE
        )
        self.register_buffer("val_counts", torch.zeros(2, len(self.labels)), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L]`` for images ``[B, 1, H, W]`` in ``[0, 1]``."""
        return self.model(to_xrv_input(images))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = masked_bce(logits, batch["target"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        target, mask = batch["target"], batch["mask"]
        self.log(
            "val/loss", masked_bce(logits, target, mask), prog_bar=True, batch_size=len(logits)
        )
        known_target = torch.where(mask > 0, target, torch.full_like(target, IGNORE)).long()
        self.val_auroc.update(torch.sigmoid(logits.float()), known_target)
        self.val_counts[0] += (target * mask).sum(0)
        self.val_counts[1] += ((1 - target) * mask).sum(0)

    def on_validation_epoch_end(self) -> None:
        """Log AUROC per label with both classes present in validation, and their mean."""
        counts = self.trainer.strategy.reduce(self.val_counts.clone(), reduce_op="sum")
        scores = self.val_auroc.compute()
        valid = (counts[0] > 0) & (counts[1] > 0)
        for name, score, ok in zip(self.labels, scores, valid.tolist(), strict=True):
            if ok:
                self.log(f"val/auroc/{name}", score, sync_dist=False)
        if valid.any():
            self.log("val/auroc_macro", scores[valid].mean(), prog_bar=True)
        self.val_auroc.reset()
        self.val_counts.zero_()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        if not self.hparams.cosine_schedule:
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


if __name__ == "__main__":
    # Run the CLI from the importable module so checkpoints name `vqgan.classifier` classes.
    from vqgan.classifier_train import main

    main()
