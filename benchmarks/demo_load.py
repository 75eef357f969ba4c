"""Load test of the web demo: N simultaneous requests against one served model.

Starts ``llmcxr demo``'s app on a free localhost port with a model folder (default: the tiny
random test model, so it measures the app and queue, not a trained LLM), opens one
``gradio_client`` session per request, fires them all at once and reports requests, errors and
latency (median, p95). Prints the figures and writes them as JSON.

    .venv/bin/python benchmarks/demo_load.py [--model DIR] [--requests 20] [--task report]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from cxrcommon.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGE = REPO / "tests" / "fixtures" / "00000001_000.png"
TASKS = ("report", "draw", "ask", "mixed")
CLIENT_TIMEOUT_S = 300.0


def load_model(folder: Path | None, scratch: Path):
    """The given model folder, or the tiny random model from the test helpers."""
    from llmcxr.pipeline import LLMCXR

    if folder is None:
        sys.path.insert(0, str(REPO / "tests"))
        from llm_fixtures import make_tiny_model_folder

        folder = make_tiny_model_folder(scratch / "tiny-model")
    return LLMCXR.from_pretrained(folder, device="cpu"), str(folder)


def request_for(task: str, index: int):
    """The API call of request ``index``: ``(endpoint, args)``; seeds differ per request."""
    from gradio_client import handle_file

    if task == "mixed":
        task = ("report", "draw", "ask")[index % 3]
    if task == "report":
        return "/report", (handle_file(str(FIXTURE_IMAGE)), True, 1.0, 0.92, index)
    if task == "draw":
        return "/draw", ("Small right pleural effusion. Heart size normal.", 1, 1.0, 0.92, index)
    return "/ask", (handle_file(str(FIXTURE_IMAGE)), "Is there a pleural effusion?")


def fire(url: str, task: str, count: int) -> list[dict[str, object]]:
    """Send ``count`` requests at the same moment, one client session each; per-request results."""
    from gradio_client import Client

    # Browsers wait for an upload as long as it takes; gradio_client's default 5 s read timeout
    # would count a busy 2-core server as an error, so the clients wait like a browser would.
    options = {
        "verbose": False,
        "download_files": False,
        "analytics_enabled": False,
        "httpx_kwargs": {"timeout": CLIENT_TIMEOUT_S},
    }
    clients = [Client(url, **options) for _ in range(count)]
    start = threading.Barrier(count)
    results: list[dict[str, object]] = [{} for _ in range(count)]

    def one(index: int) -> None:
        endpoint, args = request_for(task, index)
        start.wait()
        began = time.perf_counter()
        try:
            clients[index].predict(*args, api_name=endpoint)
            error = None
        except Exception as err:  # noqa: BLE001 - a failed request is a result to count
            error = f"{type(err).__name__}: {err}"
        results[index] = {
            "endpoint": endpoint,
            "seconds": time.perf_counter() - began,
            "error": error,
        }

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    return results


def summarise(results: list[dict[str, object]]) -> dict[str, object]:
    latencies = [float(r["seconds"]) for r in results]
    errors = [r for r in results if r["error"]]
    return {
        "requests": len(results),
        "errors": len(errors),
        "error_messages": sorted({str(r["error"]) for r in errors}),
        "latency_median_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
        "latency_max_s": round(max(latencies), 3),
        "latency_min_s": round(min(latencies), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load test of the llmcxr web demo.")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: tiny)")
    parser.add_argument("--requests", type=int, default=20, help="simultaneous requests")
    parser.add_argument("--task", choices=TASKS, default="report", help="which endpoint to load")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/demo_load.json")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be >= 1")

    from llmcxr.demo.app import build_demo, launch_demo

    with tempfile.TemporaryDirectory() as scratch:
        model, model_path = load_model(args.model, Path(scratch))
        demo = build_demo(model, Path(scratch) / "generated")
        url = launch_demo(demo, max_queue=max(64, args.requests), block=False)
        try:
            wall = time.perf_counter()
            results = fire(url, args.task, args.requests)
            wall = time.perf_counter() - wall
        finally:
            demo.close()
    summary = {
        "task": args.task,
        "model": "tiny random test model" if args.model is None else model_path,
        "note": args.note,
        **summarise(results),
        "wall_s": round(wall, 3),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "per_request": results,
    }
    atomic_write_text(args.out, json.dumps(summary, indent=2))
    print(
        f"task={summary['task']} requests={summary['requests']} errors={summary['errors']} "
        f"median={summary['latency_median_s']}s p95={summary['latency_p95_s']}s "
        f"max={summary['latency_max_s']}s wall={summary['wall_s']}s -> {args.out}"
    )
    for message in summary["error_messages"]:
        print(f"  error: {message}")
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
