"""Image reading throughput: how fast ``read_cxr`` + ``prepare_image`` turn files into model inputs.

Tells whether data loading can feed tokenizer/classifier training on this machine.
Prints the figures and writes JSON (default ``benchmarks/results/image_io.json``).

    python benchmarks/image_io.py --data ../shared/data/nih_chestxray14 --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from vqgan.data import load_records
from vqgan.image_io import CXRReadError, prepare_image, read_cxr


def run(data: str, limit: int, size: int) -> dict:
    """Time reading and preparing up to ``limit`` images of ``data`` (folder or manifest)."""
    records = load_records(data, limit=limit, seed=0)
    read_s = prepare_s = 0.0
    failures: list[str] = []
    shapes = set()
    for record in tqdm(records, desc="reading", unit="img"):
        start = time.perf_counter()
        try:
            array = read_cxr(record.path)
        except CXRReadError as err:
            failures.append(str(err))
            continue
        middle = time.perf_counter()
        prepare_image(array, size)
        read_s += middle - start
        prepare_s += time.perf_counter() - middle
        shapes.add(tuple(array.shape))
    done = len(records) - len(failures)
    return {
        "data": str(data),
        "images": done,
        "unreadable": len(failures),
        "image_size": size,
        "distinct_input_shapes": len(shapes),
        "read_ms_per_image": 1000 * read_s / max(done, 1),
        "prepare_ms_per_image": 1000 * prepare_s / max(done, 1),
        "images_per_second_one_process": done / max(read_s + prepare_s, 1e-9),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "load_average_1min": os.getloadavg()[0],  # the CPU may be shared: read timings with it
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of images or .csv/.jsonl manifest")
    parser.add_argument("--limit", type=int, default=200, help="images to time (random subset)")
    parser.add_argument("--size", type=int, default=256, help="prepare_image output side")
    parser.add_argument("--out", default="benchmarks/results/image_io.json")
    options = parser.parse_args()
    result = run(options.data, options.limit, options.size)
    for key, value in result.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[str(options.data)] = result
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
