"""Why CPU decoding is as fast as it is: memory bandwidth against decode time, per speed mode and
thread count, and what packing the weights costs.

    .venv/bin/python benchmarks/decode_bandwidth.py [--model FOLDER] [--tokens 64]

- Bandwidth: the best of 5 reads (`sum`) and copies of a 512 MB fp32 tensor on 1 and 2 threads.
- Decode: `--tokens` single-token steps of the loaded LLM's decoder after an 80-token prompt,
  logits over the 1,026 image rows (as drawing does), in fp32, bf16, int8 and fp16 weights
  (`llmcxr.devices`), on 1 and 2 threads; medians of 4 interleaved runs. fp32 and bf16 run twice:
  on `llmcxr.cpu_linear`'s kernels (as the engine does) and on `F.linear`'s (`*_F.linear`), so the
  kernel choice is measured in one run. The effective rate is the bytes of the decoder's linear
  weights (in fp32) read per step over the seconds per step.
- Packing: `linear_prepack_fp16` over every decoder Linear, serially and on 2 Python threads.
Run it on a quiet machine. Prints and writes benchmarks/results/decode_bandwidth.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def bandwidth(threads: int) -> dict[str, float]:
    """GB/s of the best of 5 reads and copies of a 512 MB tensor."""
    torch.set_num_threads(threads)
    src = torch.randn(128 * 1024 * 1024)
    dst = torch.empty_like(src)
    reads, copies = [], []
    for _ in range(5):
        start = time.perf_counter()
        src.sum()
        reads.append(time.perf_counter() - start)
        start = time.perf_counter()
        dst.copy_(src)
        copies.append(time.perf_counter() - start)
    size = src.numel() * 4
    return {
        "read_GBps": round(size / min(reads) / 1e9, 1),
        "copy_GBps": round(2 * size / min(copies) / 1e9, 1),
    }


def decode_seconds(model: torch.nn.Module, head: torch.Tensor, first: int, tokens: int) -> float:
    """Seconds for `tokens` greedy single-token decoder steps after an 80-token prompt."""
    decoder = model.get_decoder()
    prompt = torch.randint(0, first, (1, 80))
    mask = torch.ones(1, 80 + tokens, dtype=torch.long)
    with torch.inference_mode():
        out = decoder(
            input_ids=prompt, attention_mask=mask[:, :80], position_ids=torch.arange(80)[None]
        )
        cache, step = out.cache, prompt[:, -1:]
        start = time.perf_counter()
        for i in range(tokens):
            out = decoder(
                input_ids=step,
                attention_mask=mask[:, : 81 + i],
                position_ids=torch.tensor([[80 + i]]),
                cache=cache,
            )
            hidden = out.last_hidden_state[:, -1]
            step = (hidden @ head.to(hidden.dtype).T).argmax(-1, keepdim=True) + first
        return time.perf_counter() - start


@contextlib.contextmanager
def library_kernels(active: bool) -> Iterator[None]:
    """While active, the engine's products run as plain `F.linear` (no `llmcxr.cpu_linear`)."""
    from llmcxr import cpu_linear

    saved = cpu_linear.linear
    if active:
        cpu_linear.linear = F.linear
    try:
        yield
    finally:
        cpu_linear.linear = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded one)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "decode_bandwidth.json"
    )
    args = parser.parse_args(argv)

    from cxrcommon.files import atomic_write
    from llmcxr.devices import cpu_has_fast_bf16, cpu_has_fp16_gemm, quantize_fp16, quantize_int8
    from llmcxr.pipeline import LLMCXR

    result: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "cpu_has_fast_bf16": cpu_has_fast_bf16(),
        },
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "bandwidth": {f"{t}_threads": bandwidth(t) for t in (1, 2)},
    }
    llm = LLMCXR.from_pretrained(args.model, device="cpu", dtype="float32", quantize="none")
    if not hasattr(llm.model.get_decoder(), "new_cache"):
        raise SystemExit("needs the transformers-free engine (a plain Llama model folder)")
    first, count = llm.token_map.first_code_id, llm.token_map.codebook_size
    head = llm.model.get_output_embeddings().weight[first : first + count].detach().clone()
    linears = [m for m in llm.model.get_decoder().modules() if type(m) is torch.nn.Linear]
    weight_bytes = sum(m.weight.numel() * 4 for m in linears)
    result["decoder_linear_weights_MB_fp32"] = round(weight_bytes / 1e6, 1)
    torch.set_num_threads(1)
    for weight in (m.weight.detach() for m in linears):
        weight.sum()  # page the weights in before timing the packing

    def pack(linear: torch.nn.Linear) -> object:
        return torch.ops.quantized.linear_prepack_fp16(linear.weight.detach(), None)

    packing: dict[str, float] = {}
    if cpu_has_fp16_gemm():
        start = time.perf_counter()
        [pack(m) for m in linears]
        packing["fp16_serial_s"] = round(time.perf_counter() - start, 2)
        with ThreadPoolExecutor(2) as pool:
            start = time.perf_counter()
            list(pool.map(pack, linears))
            packing["fp16_2_threads_s"] = round(time.perf_counter() - start, 2)
    result["packing"] = packing
    bf16 = copy.deepcopy(llm.model).to(torch.bfloat16)
    models = {
        "fp32": llm.model,
        "fp32_F.linear": llm.model,
        "bf16": bf16,
        "bf16_F.linear": bf16,
        "int8": quantize_int8(copy.deepcopy(llm.model)),
    }
    if cpu_has_fp16_gemm():
        models["fp16"] = quantize_fp16(copy.deepcopy(llm.model))
    decode: dict[str, Any] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(4):  # interleaved, so drifting load hits every mode alike
            for name, model in models.items():
                with library_kernels(name.endswith("_F.linear")):
                    runs[name].append(decode_seconds(model, head, first, args.tokens))
        for name, times in runs.items():
            seconds = statistics.median(times)
            decode[f"{name}_{threads}_threads"] = {
                "seconds": round(seconds, 3),
                "ms_per_token": round(1000 * seconds / args.tokens, 1),
                "fp32_weights_GBps_equivalent": round(
                    weight_bytes * args.tokens / seconds / 1e9, 1
                ),
            }
    result["decode"] = {"tokens": args.tokens, **decode}
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
