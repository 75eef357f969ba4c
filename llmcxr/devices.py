"""Pick the device and dtype for inference: CUDA, then Apple MPS, then CPU.

bf16 is chosen only where it is fast. On CPUs it needs native bf16 instructions
(avx512_bf16 or AMX): measured 2026-11-23 on an AVX2-only AMD EPYC (2 threads), a
[1, 576] x [576, 2304] linear took 167 us in fp32 and 2,324 us in bf16, so without
those instructions bf16 is ~14x slower and fp32 is the right default.

Measured 2026-11-28 on the shipped model (AVX2-only EPYC, torch 2.14, 1 thread, CPU ms per
decode step on a loaded machine): fp32 ~77 (~83 with the full-vocabulary head, as in reports);
every `nn.Linear` dynamically quantised to int8 after loading ~58 (~55), but see `INT8_SKIP`:
with those kept in float ~61 (~66); bf16 without native instructions ~57-74 for the decoder, so
not 14x slower in the whole model, but no reliable gain either; a transformers `StaticCache`
without `torch.compile` ~79 (no gain).

Measured 2026-11-29 (same CPU, 1 thread, the other core training; one 64-code image, decode only,
medians of 5 interleaved runs): fp32 3.27 s, fp16 weights (`Fp16Linear`) 2.38 s, int8 2.56 s,
the whole model in bf16 2.79 s or fp16 3.05 s. A decode step is bound by reading the weights:
fusing q/k/v and gate/up into single products and cutting the rotary and norm ops by a third
changed nothing measurable (3.093 s against 3.095 s), so this engine keeps transformers' layout.

Measured 2026-12-04 on a 2-core AMD EPYC with avx512_bf16 (quiet, medians of 3,
`benchmarks/results/inference_default_model_2core_avx512bf16.json`): one 64-code image warm in
3.74 s fp32, 2.37 s bf16, 1.78 s int8, 1.90 s fp16 weights; cold `generate-image` with guidance 2
7.7 / 5.4 / 5.2 / 5.3 s; held-out NLL in bf16 2.8514 against 2.8534 in fp32, every greedy report
identical (`quantization_quality_bf16.json`). So `resolve_dtype`'s bf16 on such CPUs stands.

Measured 2026-12-05 on the same CPU type with the new default model, cold processes of every mode
interleaved in 5 rounds (`benchmarks/results/cpu_default_mode/`): `generate-image` 5.5 s fp32,
4.4 s bf16, 4.2 s fp16 weights; `report` 3.2 / 2.8 / 3.4 s. fp16 weights cost no quality there
either, but their packing makes a one-shot report slower, so `CPU_AUTO_QUANTIZE` stays "none".

Measured 2026-12-06 on the same CPU type, after the lean engine's decode products moved to
`llmcxr.cpu_linear` (fp32 split across threads, one bf16 row on ATen's kernel;
`benchmarks/results/decode_kernels/`): one 64-code image warm in 1.41 s fp32, 0.74 s bf16, 0.75 s
fp16 weights, 0.82 s int8. The figures for AVX2-only CPUs above predate it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

from cxrcommon.dtypes import torch_dtype

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("auto", "none", "int8", "fp16")
WEIGHT_MODES = ("int8", "fp16")
"""The modes that replace the CPU model's Linear layers (`LLMCXR.quantize`)."""
CPU_AUTO_QUANTIZE = "none"
"""What `quantize="auto"` means on a CPU. Measured on 2 AVX2 cores (2026-11-29,
`benchmarks/results/inference_default_model_2core.json`): int8 and fp16 weights decode a 64-code
image in ~2.2 s warm against 3.5 s, for 0.53 s / 0.85 s of packing at load; int8 costs +0.10 /
+0.08 nats of held-out image / text NLL, fp16 nothing measurable (NLL equal to 4 decimals, every
greedy report identical; `benchmarks/quantization_quality.py`). Cold, fp16 makes a guidance-2
`generate-image` 7.3 s instead of 9.7 s but a `report` 5.2 s instead of 4.8 s, and a guidance-1
drawing 6.8 s instead of 6.2 s. The one-shot default stays fp32 until evaluation runs, which
record "auto" in their resumable identity, pin the concrete mode; long-lived processes use
`long_run_quantize`."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` -> the best available accelerator (CUDA, MPS) or the CPU; anything else as given."""
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        try:
            chosen = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps"
            ) from err
        _check_available(chosen)
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_available(device: torch.device) -> None:
    """A ValueError naming the device when this machine does not have it (asked for explicitly)."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {device} asked for, but no CUDA GPU is usable here: use cpu or auto"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {device} asked for, but this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {device} asked for, but Apple MPS is not available here: use cpu or auto"
        )


def is_out_of_memory(err: BaseException) -> bool:
    """True for host (`MemoryError`) or accelerator (`torch.OutOfMemoryError`) memory exhaustion."""
    return isinstance(err, (MemoryError, torch.OutOfMemoryError))


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (avx512_bf16 or AMX-BF16)."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            flags = _cpu_flags()
            # oneDNN also reports bf16 "support" on plain AVX-512 via emulation, which is slow.
            return not flags or bool(flags & {"avx512_bf16", "amx_bf16"})
    except (AttributeError, RuntimeError):
        pass
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None`/`"auto"` -> bf16 on CUDA (fp16 if the GPU lacks bf16), fp16 on MPS,
    bf16 on CPUs with native bf16, else fp32; a name such as `"bf16"` or `"float32"` as given."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype != "auto":
        chosen = torch_dtype(dtype)
        if chosen == torch.bfloat16:
            _check_bf16(device)
        return chosen
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def _check_bf16(device: torch.device) -> None:
    """A ValueError for bf16 on a GPU without it; a warning on a CPU without native bf16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{device} has no bfloat16 support: use --dtype float16 or float32")
    if device.type == "cpu" and not cpu_has_fast_bf16():
        logger.warning(
            "this CPU has no native bf16 (avx512_bf16 / AMX): bfloat16 runs emulated "
            "and is usually no faster than float32 (try --quantize int8)"
        )


def long_run_quantize(device: torch.device) -> str:
    """The speed mode for a process that draws and reads many times (the demo): fp16 weights on
    a CPU with fbgemm's fp16 GEMM (0.85 s more at load, then one 64-code image 2.2 s instead of
    3.5 s warm on 2 AVX2 cores, at no measurable quality cost), else `"none"`."""
    return "fp16" if device.type == "cpu" and cpu_has_fp16_gemm() else "none"


def resolve_quantize(quantize: str, device: torch.device) -> str:
    """`"auto"` -> `CPU_AUTO_QUANTIZE` on a CPU, `"none"` elsewhere; `"int8"` and `"fp16"` only on
    a CPU (`"fp16"` also needs fbgemm's fp16 GEMM, `cpu_has_fp16_gemm`)."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}: use {', '.join(QUANTIZE_MODES)}")
    if quantize == "auto":
        return CPU_AUTO_QUANTIZE if device.type == "cpu" else "none"
    if quantize in WEIGHT_MODES and device.type != "cpu":
        raise ValueError(
            f"{quantize} quantisation runs on the CPU only, the model is on {device}: "
            "use --device cpu or --quantize none"
        )
    if quantize == "fp16" and not cpu_has_fp16_gemm():
        raise ValueError(
            "--quantize fp16 needs fbgemm's fp16 GEMM (x86 CPUs with AVX2), which this "
            "PyTorch build or CPU lacks: use --quantize int8 or none"
        )
    return quantize


@lru_cache(maxsize=1)
def cpu_has_fp16_gemm() -> bool:
    """True when `Fp16Linear` can run here: fbgemm's fp16-weight GEMM (x86 with AVX2)."""
    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(2, 2), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 2), packed)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


INT8_SKIP = ("down_proj", "lm_head")
"""Linear layers int8 leaves in float, by name. Measured on the shipped model (8 test records,
teacher-forced NLL, fp32 image / text 7.28 / 1.94 nats): all Linear in int8 7.42 / 3.24; all
but `down_proj` and `lm_head` 7.30 / 2.10. The MLP output projection sees the SwiGLU's outlier
activations, which one int8 scale per tensor cannot hold."""


class Int8Linear(torch.nn.Module):
    """A Linear with int8 weights (one symmetric scale per output row) and activations quantised
    on the fly: the computation of `torch.ao`'s dynamic quantised Linear under
    `per_channel_dynamic_qconfig` (fbgemm `linear_dynamic`, reduced activation range), written out
    because building `torch.ao`'s modules packs each weight three times (twice a placeholder):
    2.1 s of a cold start for the default model, against about 1 s packing each weight once
    (measured 2026-11-29, AVX2 EPYC, 1 thread). Tests pin its output to `torch.ao`'s."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        # torch.ao's PerChannelMinMaxObserver (qint8, symmetric): scale = max |w| / 127.5, zp 0
        eps = torch.finfo(torch.float32).eps
        scale = (weight.abs().amax(dim=1).double() / 127.5).clamp(min=eps)
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao
            warnings.filterwarnings("ignore", message=".*deprecated.*")
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, True).to(x.dtype)

    def weight(self) -> torch.Tensor:
        """The quantised weight (a method, as on `torch.ao`'s module)."""
        return torch.ops.quantized.linear_unpack(self._packed)[0]

    def bias(self) -> torch.Tensor | None:
        """The float bias, or None."""
        return torch.ops.quantized.linear_unpack(self._packed)[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Fp16Linear(torch.nn.Module):
    """A Linear whose weight is stored in fp16 and multiplied in fp32 by fbgemm's fp16 GEMM
    (`quantized::linear_dynamic_fp16`). A CPU decode step waits on reading the weights, so half
    the bytes decode faster: on an AVX2 EPYC (1 thread, 2026-11-29) a [1, 576] x [576, 1536]
    product took 127 us against 268 us in fp32, and one 64-code image 2.4 s against 3.3 s.
    Activations stay fp32, so the only error is the weights' rounding to fp16 (~2e-4 of the
    output's scale), far below int8's. Packing costs ~10 ns per weight and core at load (0.85 s for
    the default model on 2 cores), more than a one-shot report saves."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self._packed).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 weights"


FP16_SKIP = ("lm_head",)
"""Linear layers fp16 mode leaves in fp32: the output head, whose rows decoding slices
(`llmcxr.decoding`), and which is tied to the input embeddings."""


def _replace_linears(
    model: torch.nn.Module,
    make: Callable[[torch.nn.Linear], torch.nn.Module],
    skip: tuple[str, ...],
) -> torch.nn.Module:
    """Replace the `nn.Linear` layers inside `model` in place by `make(linear)`, except those whose
    own name is in `skip`; a shared (tied) Linear is replaced once and stays shared."""
    if type(model) is torch.nn.Linear:
        raise TypeError("quantisation replaces the Linear layers inside a module: wrap it")
    if getattr(model, "packed", False):
        model.unpack()  # the lean engine's packed projections (`LeanLlama.pack`) are Linears again
    sites = [
        (parent, name, child)
        for parent in list(model.modules())
        for name, child in list(parent._modules.items())  # named_children() skips repeats
        if type(child) is torch.nn.Linear and name not in skip
    ]
    unique = list({id(child): child for _, _, child in sites}.values())
    # Packing runs in torch ops that release the GIL, so threads use every core: fp16 packing of
    # the default model took 0.84 s on 2 threads against 1.50 s on one (AVX2 EPYC, 2026-11-29,
    # benchmarks/decode_bandwidth.py).
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        made = dict(zip(map(id, unique), pool.map(make, unique)))
    for parent, name, child in sites:
        setattr(parent, name, made[id(child)])
    return model


def quantize_int8(model: torch.nn.Module, skip: tuple[str, ...] = INT8_SKIP) -> torch.nn.Module:
    """Replace the `nn.Linear` layers of an fp32 CPU `model` in place by `Int8Linear` (int8
    weights, one scale per output row, activations quantised on the fly), except those whose own
    name is in `skip`. A shared (tied) Linear is quantised once."""
    return _replace_linears(model, Int8Linear, skip)


def quantize_fp16(model: torch.nn.Module, skip: tuple[str, ...] = FP16_SKIP) -> torch.nn.Module:
    """Replace the `nn.Linear` layers of an fp32 CPU `model` in place by `Fp16Linear` (fp16
    weights, fp32 arithmetic), except those whose own name is in `skip`."""
    return _replace_linears(model, Fp16Linear, skip)


def speed_mode(model: torch.nn.Module) -> str:
    """`"int8"` or `"fp16"` when some Linear of `model` was replaced by that mode, else `"none"`."""
    for module in model.modules():
        if isinstance(module, Int8Linear):
            return "int8"
        if isinstance(module, Fp16Linear):
            return "fp16"
    return "none"
