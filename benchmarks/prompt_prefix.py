"""What running a prompt's fixed opening once (`llmcxr.decoding.PromptPrefix`) changes in reports:
time, and the reports themselves, against whole prompts on the same code and weights.

    .venv/bin/python benchmarks/prompt_prefix.py --images DIR [--images DIR] [--count 64]
        [--model FOLDER] [--dtype bfloat16] [--out benchmarks/results/prompt_prefix/FILE.json]

`--count` images (every `len / count`-th file of the folders, sorted) get a greedy and a sampled
(seed 0) report at batch 1 and at batch 8 (the evaluation's batch), once with the prefix and once
with whole prompts (the pipeline's memo of the opening set to None), alternating per batch so a
drifting machine touches both alike. Prints and writes: seconds per pass, and how many reports
are identical. Running the opening apart changes only float rounding in the rest of the prompt
(~1e-5 in fp32, bf16 rounding in bf16), so a few sampled reports may take another path.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from cxrcommon.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def pick_images(folders: list[Path], count: int) -> list[Path]:
    """Every n-th image file of the folders (`llmcxr report`'s listing, sorted), `count` in all."""
    from llmcxr.cli import list_images

    files = sorted(p for folder in folders for p in list_images(folder))
    if len(files) < count:
        raise SystemExit(f"found {len(files)} images under {folders}, need {count}")
    step = len(files) // count
    return files[::step][:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, action="append", required=True)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--model", type=Path, default=REPO / "llmcxr" / "default_model")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: auto)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "prompt_prefix.json"
    )
    args = parser.parse_args(argv)

    from instructions import default_instruction
    from llmcxr.pipeline import LLMCXR

    images = pick_images(args.images, args.count)
    llm = LLMCXR.from_pretrained(args.model, device="cpu", dtype=args.dtype, quantize="none")
    # the pipeline's memo of openings (`LLMCXR._prefix`): None there means "run prompts whole"
    key = (llm.prompt_format.opening(default_instruction("cxr_to_report")), llm.quantization)
    llm.generate_report(images[:1], max_new_tokens=4, seed=0)  # warm: kernels, the prefix
    prefix = llm._prefixes[key]
    if prefix is None:
        raise SystemExit(f"{args.model} does not run on the lean engine: no prefix to compare")
    runs: dict[str, dict[str, Any]] = {}
    for batch in (1, 8):
        for sampled in (False, True):
            case = f"{'sampled' if sampled else 'greedy'}_batch{batch}"
            for how in ("prefix", "whole") if batch == 1 else ("whole", "prefix"):
                llm._prefixes[key] = prefix if how == "prefix" else None
                start = time.perf_counter()
                reports = llm.generate_report(
                    images,
                    do_sample=sampled,
                    seed=0 if sampled else None,
                    batch_size=batch,
                    max_new_tokens=args.max_new_tokens,
                )
                seconds = time.perf_counter() - start
                runs.setdefault(case, {})[how] = {"seconds": round(seconds, 2), "reports": reports}
                print(f"{case}, {how}: {seconds:.2f} s for {len(images)} reports", flush=True)

    summary = {}
    for case, pair in runs.items():
        same = sum(a == b for a, b in zip(pair["prefix"]["reports"], pair["whole"]["reports"]))
        summary[case] = {
            "identical_reports": same,
            "reports": len(images),
            "seconds_prefix": pair["prefix"]["seconds"],
            "seconds_whole": pair["whole"]["seconds"],
        }
        print(
            f"{case}: {same}/{len(images)} reports identical; {pair['prefix']['seconds']:.2f} s "
            f"with the prefix vs {pair['whole']['seconds']:.2f} s whole",
            flush=True,
        )
    result = {
        "model": str(args.model),
        "dtype": str(llm.model.dtype).removeprefix("torch."),
        "engine": type(llm.model).__name__,
        "images": [str(p) for p in images],
        "machine": machine(),
        "summary": summary,
        "runs": runs,
    }
    write_result(args.out, result)
    return 0


def machine() -> dict[str, Any]:
    """Where a figure was measured: platform, torch's CPU threads, torch version."""
    return {
        "platform": platform.platform(),
        "cpu_count": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def write_result(out: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's JSON atomically and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
