"""Fit the step count and the cosine learning-rate schedule to a time budget (``trainer.max_time``).

A GPU window gives each phase a fixed number of seconds, and nobody knows the step rate before
the run: with a fixed ``max_steps`` the run either ends early or is cut by ``max_time`` half-way
down its cosine (learning rate still high). This callback times a few steps, then sets
``max_steps`` to what the remaining time allows and re-bases the warm-up + cosine schedule on it.
Every rank takes rank 0's figure, so DDP ranks stop at the same step.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

log = logging.getLogger(__name__)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine down to `min_ratio`
    at `total` (the same shape as transformers' cosine-with-min-lr schedule)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class FitScheduleToTime(L.Callback):
    """Re-plan ``max_steps`` and the learning-rate schedule from the measured step rate."""

    def __init__(
        self,
        measure_from: int = 5,
        measure_steps: int = 20,
        reserve_fraction: float = 0.1,
        reserve_seconds: float = 5.0,
    ) -> None:
        """
        Args:
            measure_from: optimizer step at which timing starts (skips start-up and compilation).
            measure_steps: steps timed before re-planning.
            reserve_fraction: share of the remaining time kept back for validation passes.
            reserve_seconds: seconds kept back besides (the last checkpoint and the export).
        """
        self.measure_from = measure_from
        self.measure_steps = measure_steps
        self.reserve_fraction = reserve_fraction
        self.reserve_seconds = reserve_seconds
        self._start: float | None = None
        self.planned_steps: int | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if self.planned_steps is not None or step < self.measure_from:
            return
        if self._start is None:
            self._start = time.monotonic()
            return
        if step < self.measure_from + self.measure_steps:
            return
        seconds_per_step = (time.monotonic() - self._start) / (step - self.measure_from)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        planned = trainer.max_steps if trainer.max_steps > 0 else None
        if remaining is not None:
            usable = remaining * (1 - self.reserve_fraction) - self.reserve_seconds
            by_time = step + max(1, int(usable / seconds_per_step))
            planned = by_time if planned is None else min(planned, by_time)
        if planned is None:
            self.planned_steps = step
            return
        planned = int(trainer.strategy.broadcast(torch.tensor(planned), src=0))
        was, self.planned_steps = trainer.max_steps, planned
        trainer.fit_loop.epoch_loop.max_steps = planned
        self._rebase_schedule(trainer, pl_module, planned)
        log.info(
            "%.3f s per step: training stops at step %d (was %d)",
            seconds_per_step,
            planned,
            was,
        )
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics(
                {"schedule/planned_steps": planned, "schedule/seconds_per_step": seconds_per_step},
                step=step,
            )

    @staticmethod
    def _rebase_schedule(trainer: L.Trainer, pl_module: L.LightningModule, total: int) -> None:
        """Swap each step-wise scheduler for warm-up + cosine over `total` steps, continuing
        from the current step with the module's own warm-up and floor."""
        settings = getattr(pl_module, "optim", None)
        warmup = int(getattr(settings, "warmup_steps", 0))
        floor = float(getattr(settings, "min_lr_ratio", 0.0))
        for config in trainer.lr_scheduler_configs:
            optimizer = config.scheduler.optimizer
            config.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda s: warmup_cosine(s, min(warmup, total), total, floor),
                last_epoch=trainer.global_step - 1,
            )
