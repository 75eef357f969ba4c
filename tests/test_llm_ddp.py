"""The tiny LLM config under DDP on 2 CPU processes (gloo): scaling out is a config change.

One rank builds the token cache, one writes the checkpoint, the CSV log
and the exported model folder; the time-fitted schedule (`FitScheduleToTime`) gives every rank
the same step count, so the run ends instead of hanging in a collective.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llm_fixtures import tiny_run_args

from llmcxr.gpu_kit.driver import run_group
from llmcxr.model_folder import load_model_folder

# The time-fitted schedule of the GPU configs, added to tiny.yaml's callbacks.
FIT_TO_TIME = json.dumps(
    {
        "class_path": "llmcxr.gpu_kit.schedule.FitScheduleToTime",
        "init_args": {"measure_from": 1, "measure_steps": 2},
    }
)


def _stray(folder: Path) -> list[str]:
    """Leftovers of concurrent or interrupted writers (atomic writes use dot-named temporaries)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != ".gitignore")


def test_tiny_config_trains_under_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "ddp.log"
    with log.open("w") as sink:  # own process group: a timeout also ends the launched rank
        code = run_group(
            [sys.executable, "-m", "llmcxr.train", "fit", *tiny_run_args(tmp_path)]
            + [f"--trainer.callbacks+={FIT_TO_TIME}"]
            + ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
            + ["--trainer.max_steps=8", "--trainer.max_time=00:00:10:00"]
            # Validation on both ranks: on this tiny set some batches hold no image targets, which
            # once left one rank waiting in an all_reduce the other never joined.
            + ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=2"]
            + ["--trainer.val_check_interval=4", "--trainer.check_val_every_n_epoch=null"],
            900,
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    output = log.read_text()
    assert code == 0, output[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output, output[-2000:]

    stage1 = tmp_path / "stage1"
    assert sorted(p.name for p in stage1.iterdir()) == ["checkpoints", "logs", "model"]
    assert [p.name for p in (stage1 / "logs").iterdir()] == ["version_0"]
    header = (stage1 / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert {"val/loss", "val/loss_image", "val/loss_text"} <= set(header.split(","))
    assert sorted(p.name for p in (stage1 / "checkpoints").iterdir()) == ["last.ckpt"]
    cache = tmp_path / "data" / "image_tokens"
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["complete"] and meta["num_cached"] == 16
    assert sorted(p.name for p in (cache / "shards").iterdir()) == ["00000"]
    assert _stray(tmp_path) == []

    manifest = json.loads((stage1 / "model" / "llmcxr.json").read_text())
    assert manifest["training"]["global_step"] == 8
    parts = load_model_folder(stage1 / "model")
    assert parts.token_map.tokens_per_image == 16
