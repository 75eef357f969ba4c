"""Where a training step's time goes, measured on a few steps inside a GPU window.

The first window ran SmolLM2-135M at ~30k tokens/s on an H200, several times under what the
model's arithmetic needs, and its logs could not say why: waiting on the DataLoader, Python and
kernel-launch overhead (a small model, ~200 LoRA modules), or the lanes sharing the GPU. This
callback answers that cheaply. Over every step it sums the time spent waiting for the next batch;
over `steps` steps from `start` it runs ``torch.profiler`` and reports the device's busy time. It
prints one summary line and the top operators to the phase log, and writes them as CSV files
beside ``metrics.csv`` (the GPU kit returns every CSV of a run folder). Lightning's own
``PyTorchProfiler`` was not used: its default schedule repeats for the whole run and it hooks
every module, which would slow the window it is meant to measure.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

SUMMARY_CSV = "profile_summary.csv"
OPS_CSV = "profile_ops.csv"


class ProfileSteps(L.Callback):
    """Profile training steps ``start`` .. ``start + steps - 1`` and time the data waits."""

    def __init__(self, start: int = 30, steps: int = 5, row_limit: int = 25) -> None:
        """
        Args:
            start: optimizer step at which profiling starts (after start-up and the first
                timings of `FitScheduleToTime`, which reads steps 5-25).
            steps: steps profiled.
            row_limit: operators listed, by device time (by CPU time without a GPU).
        """
        if start < 0 or steps < 1 or row_limit < 1:
            raise ValueError("ProfileSteps needs start >= 0, steps >= 1 and row_limit >= 1")
        self.start, self.steps, self.row_limit = start, steps, row_limit
        self._profiler: torch.profiler.profile | None = None
        self._window_start = 0.0
        self._batch_end: float | None = None
        self._wait = self._wait_window = 0.0
        self._waits = 0
        self.summary: dict[str, float | int | str] | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        now = time.perf_counter()
        if self._batch_end is not None:  # the DataLoader's time to hand over this batch
            wait = now - self._batch_end
            self._wait += wait
            self._waits += 1
            if self._profiler is not None:
                self._wait_window += wait
        if trainer.global_step == self.start and self._profiler is None and self.summary is None:
            try:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if pl_module.device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                    torch.cuda.synchronize(pl_module.device)
                profiler = torch.profiler.profile(activities=activities)
                profiler.start()
            except Exception as err:  # noqa: BLE001 - a measurement must never end a paid-for run
                rank_zero_warn(f"ProfileSteps: the profiler did not start ({err}); no profile")
                self.summary = {"error": str(err)}
                return
            self._profiler = profiler
            self._window_start = time.perf_counter()
            self._wait_window = 0.0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self._profiler is not None and trainer.global_step >= self.start + self.steps:
            self._finish(trainer, pl_module)
        self._batch_end = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._profiler is not None:  # the run ended inside the window
            self._finish(trainer, pl_module)

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        profiler, self._profiler = self._profiler, None
        assert profiler is not None
        try:
            self._report(trainer, pl_module, profiler)
        except Exception as err:  # noqa: BLE001 - as above: report the failure, keep training
            rank_zero_warn(f"ProfileSteps: the profile could not be read ({err}); no profile")
            self.summary = {"error": str(err)}

    def _report(
        self, trainer: L.Trainer, pl_module: L.LightningModule, profiler: torch.profiler.profile
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        wall = time.perf_counter() - self._window_start
        profiler.stop()
        steps = max(1, trainer.global_step - self.start)
        events = profiler.key_averages()
        device_us = sum(e.self_device_time_total for e in events)
        cpu_us = sum(e.self_cpu_time_total for e in events)
        self.summary = {
            "device": str(pl_module.device),
            "steps": steps,
            "wall_s_per_step": wall / steps,
            "data_wait_s_per_step": self._wait_window / steps,
            "data_wait_s_per_step_all": self._wait / max(1, self._waits),
            "device_busy_s_per_step": device_us / 1e6 / steps,
            "device_busy_fraction": device_us / 1e6 / wall if wall > 0 else 0.0,
            "cpu_op_s_per_step": cpu_us / 1e6 / steps,
        }
        sort = "self_device_time_total" if device_us > 0 else "self_cpu_time_total"
        top = sorted(events, key=lambda e: getattr(e, sort), reverse=True)[: self.row_limit]
        s = self.summary
        rank_zero_info(
            f"profile of steps {self.start}-{self.start + steps - 1}: "
            f"wall {s['wall_s_per_step']:.3f} s/step, data wait {s['data_wait_s_per_step']:.3f} "
            f"s/step, device busy {s['device_busy_s_per_step']:.3f} s/step "
            f"({100 * float(s['device_busy_fraction']):.0f} % of wall), "
            f"CPU ops {s['cpu_op_s_per_step']:.3f} s/step\n"
            f"top operators by {sort}:\n{_table(top)}"
        )
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / SUMMARY_CSV, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.summary))
                writer.writeheader()
                writer.writerow(self.summary)
            with open(folder / OPS_CSV, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["name", "calls", "self_cpu_us", "self_device_us"])
                for e in top:
                    writer.writerow(
                        [e.key, e.count, e.self_cpu_time_total, e.self_device_time_total]
                    )


def _table(events: list[Any]) -> str:
    lines = [f"{'calls':>7} {'self CPU ms':>12} {'self device ms':>15}  name"]
    for e in events:
        lines.append(
            f"{e.count:>7} {e.self_cpu_time_total / 1e3:>12.2f} "
            f"{e.self_device_time_total / 1e3:>15.2f}  {e.key[:80]}"
        )
    return "\n".join(lines)
