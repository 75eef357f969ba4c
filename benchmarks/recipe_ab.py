"""A/B of LLM training recipes at equal steps: image-token and text validation loss.

Each arm continues the same model (the config's ``init_from``) for the same number of optimizer
steps on the same data, then validates on the same (unshuffled) validation batches, so the arms
differ only in their recipe overrides. A ``validate`` run of the starting model gives step 0.
Runs each arm in its own process (``python -m llmcxr.train``) and writes
``benchmarks/results/recipe_ab.json``.

    python benchmarks/recipe_ab.py --config configs/llmcxr/default_model_continue.yaml --steps 25
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TODAY = {
    "model": {"optimizer": {"lr": 0.0002, "new_token_lr_scale": 1.0}},
    "data": {
        "cfg_drop": 0.0,
        "task_weights": {"cxr_to_report": 1.0, "report_to_cxr": 1.0, "vqa": 0.2, "text": 0.1},
    },
}
"""The shipped model's stage-2 recipe (configs/llmcxr/default_model_stage2.yaml)."""
ARMS: dict[str, dict[str, Any]] = {"shipped recipe": TODAY, "new recipe": {}}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _arm_config(config: dict[str, Any], overrides: dict[str, Any], root: Path, steps: int) -> dict:
    """The config with the arm's overrides, its run folder under `root`, `steps` steps."""
    cfg = _merge(config, overrides)
    trainer = cfg["trainer"]
    trainer.update(
        max_steps=steps,
        max_time=None,
        val_check_interval=steps,
        default_root_dir=str(root),
        enable_progress_bar=False,
    )
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"name": "logs"},  # save_dir follows default_root_dir
    }
    trainer["callbacks"] = []  # no checkpoints or exports: only the logged losses matter
    return cfg


def _last_val(root: Path) -> dict[str, float]:
    rows = []
    for path in sorted(root.glob("logs/version_*/metrics.csv")):
        with path.open() as handle:
            rows += list(csv.DictReader(handle))
    found: dict[str, float] = {}
    for row in rows:
        for key in ("val/loss", "val/loss_image", "val/loss_text"):
            if row.get(key):
                found[key] = float(row[key])
    return found


def _run(subcommand: str, cfg: dict[str, Any], root: Path) -> tuple[dict[str, float], float]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "llmcxr.train", subcommand, "-c", str(path)]
    subprocess.run(cmd, cwd=REPO, check=True)
    return _last_val(root), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "recipe_ab")
    parser.add_argument(
        "--results", type=Path, default=REPO / "benchmarks" / "results" / "recipe_ab.json"
    )
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    results: dict[str, Any] = {
        "config": str(args.config),
        "steps": args.steps,
        "batch_size": config["data"]["batch_size"],
        "machine": platform.processor() or platform.machine(),
        "arms": {},
    }
    start_cfg = _arm_config(config, {}, args.out / "step0", args.steps)
    val, seconds = _run("validate", start_cfg, args.out / "step0")
    results["arms"]["start (step 0)"] = {"val": val, "seconds": round(seconds, 1)}
    print(f"step 0: {val}", flush=True)
    for name, overrides in ARMS.items():
        root = args.out / name.replace(" ", "_")
        val, seconds = _run("fit", _arm_config(config, overrides, root, args.steps), root)
        arm_cfg = _merge(config, overrides)
        results["arms"][name] = {
            "settings": {
                "optimizer": arm_cfg["model"]["optimizer"],
                "data": {k: arm_cfg["data"].get(k) for k in ("cfg_drop", "task_weights")},
            },
            "val": val,
            "seconds": round(seconds, 1),
        }
        print(f"{name}: {val} ({seconds:.0f} s)", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'arm':<16} {'val loss':>9} {'image':>9} {'text':>9}")
    for name, arm in results["arms"].items():
        v = arm["val"]
        print(
            f"{name:<16} {v.get('val/loss', float('nan')):9.3f} "
            f"{v.get('val/loss_image', float('nan')):9.3f} "
            f"{v.get('val/loss_text', float('nan')):9.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
