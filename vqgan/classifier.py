"""Train the CXR classifier whose features drive the clinical loss (no pretrained download needed).

Same architecture as torchxrayvision's ``densenet121-res224-*`` (DenseNet-121, one input
channel, 224 px, inputs in ``[-1024, 1024]``), trained multi-label with a BCE masked to the labels
each source annotates. Its checkpoint (or ``export``) is read by
:meth:`vqgan.clinical.ClinicalFeatureExtractor.from_weights`.

Each validation pass also chooses a decision threshold per label (torchxrayvision's
``op_threshs``); the checkpoint keeps the thresholds of its validation pass and the export writes
them to ``classifier.json``, so a loaded classifier's probabilities have 0.5 as each label's
operating point.

Run: ``llmcxr train classifier -c configs/classifier/tiny.yaml`` and
``llmcxr export classifier --checkpoint <file.ckpt> --out <folder>``.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from vqgan.clinical import build_densenet, to_xrv_input

logger = logging.getLogger(__name__)


def operating_thresholds(
    probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> list[float]:
    """Per-label decision threshold maximising Youden's J = TPR - FPR over the known (mask 1)
    validation entries, as torchxrayvision chose its ``op_threshs`` (its
    ``scripts/model_calibrate.py``: the ROC point furthest above the diagonal); among equal J the
    highest threshold. A label without both classes known gets 0.5, which ``op_norm`` leaves
    unchanged. Thresholds are kept inside (0, 1) so ``op_norm`` never divides by zero.
    """
    thresholds = []
    for index in range(probs.shape[1]):
        known = mask[:, index] > 0
        scores, labels = probs[known, index].double(), target[known, index] > 0.5
        if labels.all() or not labels.any():
            thresholds.append(0.5)
            continue
        candidates = torch.unique(scores).flip(0)  # descending
        predicted = scores[None, :] >= candidates[:, None]  # [candidates, N]
        tpr = (predicted & labels).sum(1) / labels.sum()
        fpr = (predicted & ~labels).sum(1) / (~labels).sum()
        best = candidates[int(torch.argmax(tpr - fpr))]
        thresholds.append(float(best.clamp(1e-6, 1 - 1e-6)))
    return thresholds


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
        self.op_threshs: list[float] | None = None
        """Decision thresholds of the last validation pass (saved in checkpoints)."""
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

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
        self._val_outputs.append((torch.sigmoid(logits.float()), target, mask))

    def on_validation_epoch_end(self) -> None:
        """Log AUROC per label over its known entries (labels with both classes only) and the mean,
        and choose the per-label decision thresholds (:func:`operating_thresholds`).

        Per-label masking is done here rather than with a multilabel metric's ``ignore_index``,
        which fails outright when a label has no known entry in the validation set.
        """
        if not self._val_outputs:
            return
        probs, target, mask = (torch.cat(parts) for parts in zip(*self._val_outputs, strict=True))
        self._val_outputs.clear()
        if self.trainer.world_size > 1:  # [world, N, L] -> [world * N, L]; every rank logs the same
            probs, target, mask = (self.all_gather(x).flatten(0, 1) for x in (probs, target, mask))
        self.op_threshs = operating_thresholds(probs, target, mask)
        scores = []
        for index, name in enumerate(self.labels):
            known = mask[:, index] > 0
            labels = target[known, index]
            if labels.numel() == 0 or labels.min() == labels.max():
                continue
            score = binary_auroc(probs[known, index], labels.long())
            self.log(f"val/auroc/{name}", score)
            scores.append(score)
        if scores:
            macro = torch.stack(scores).mean()
        else:  # NaN keeps a monitoring checkpoint callback running; it never counts as best
            logger.warning("no label has both classes in this validation pass: AUROC undefined")
            macro = torch.tensor(float("nan"), device=probs.device)
        self.log("val/auroc_macro", macro, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.op_threshs is not None:
            checkpoint["op_threshs"] = list(self.op_threshs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.op_threshs = checkpoint.get("op_threshs")

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
