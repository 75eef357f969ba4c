"""`ProfileSteps`: profiles exactly the steps it is given and writes its CSVs beside the metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from llmcxr.gpu_kit.profile import OPS_CSV, SUMMARY_CSV, ProfileSteps


def _fit(tmp_path: Path, max_steps: int, callback: ProfileSteps) -> L.Trainer:
    logger = CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=logger,
        callbacks=[callback],
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())
    return trainer


@pytest.mark.parametrize(("max_steps", "expected"), [(10, 3), (4, 2)])
def test_profiles_its_steps_or_up_to_the_runs_end(
    tmp_path: Path, max_steps: int, expected: int
) -> None:
    callback = ProfileSteps(start=2, steps=3, row_limit=5)
    folder = Path(_fit(tmp_path, max_steps, callback).log_dir)
    assert callback.summary is not None and callback.summary["steps"] == expected
    with (folder / SUMMARY_CSV).open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert int(row["steps"]) == expected and row["device"] == "cpu"
    assert float(row["device_busy_s_per_step"]) == 0.0  # no GPU here
    assert 0 < float(row["cpu_op_s_per_step"]) and 0 <= float(row["data_wait_s_per_step"])
    with (folder / OPS_CSV).open() as handle:
        ops = list(csv.DictReader(handle))
    assert 0 < len(ops) <= 5 and all(int(op["calls"]) >= 1 for op in ops)


def test_a_run_shorter_than_the_start_profiles_nothing(tmp_path: Path) -> None:
    callback = ProfileSteps(start=8, steps=2)
    folder = Path(_fit(tmp_path, 5, callback).log_dir)
    assert callback.summary is None and not (folder / SUMMARY_CSV).exists()


@pytest.mark.parametrize("kwargs", [{"start": -1}, {"steps": 0}, {"row_limit": 0}])
def test_rejects_a_window_that_cannot_be(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="ProfileSteps needs"):
        ProfileSteps(**kwargs)


class _Unstartable:
    def __init__(self, **kwargs: object) -> None:
        raise RuntimeError("CUPTI unavailable")


class _Unreadable:
    def __init__(self, **kwargs: object) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def key_averages(self) -> list:
        raise RuntimeError("trace lost")


@pytest.mark.parametrize("profiler", [_Unstartable, _Unreadable])
def test_a_profiler_that_fails_never_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profiler: type
) -> None:
    monkeypatch.setattr("torch.profiler.profile", profiler)
    callback = ProfileSteps(start=2, steps=2)
    with pytest.warns(UserWarning, match="ProfileSteps"):
        trainer = _fit(tmp_path, 8, callback)
    assert trainer.global_step == 8  # the run went on to its last step
    assert callback.summary is not None and "error" in callback.summary
    assert not (Path(trainer.log_dir) / SUMMARY_CSV).exists()
