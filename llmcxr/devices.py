"""Pick the device and dtype for inference: CUDA, then Apple MPS, then CPU.

bf16 is chosen only where it is fast. On CPUs it needs native bf16 instructions
(avx512_bf16 or AMX): measured 2026-11-23 on an AVX2-only AMD EPYC (2 threads), a
[1, 576] x [576, 2304] linear took 167 us in fp32 and 2,324 us in bf16, so without
those instructions bf16 is ~14x slower and fp32 is the right default.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use auto, {', '.join(sorted(_DTYPES))}")
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
