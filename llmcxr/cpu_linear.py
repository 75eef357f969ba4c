"""CPU products of a few rows by a weight (a decode step), on the kernel that reads the weights
fastest.

Why: a decode step multiplies one row (or a handful) by each weight matrix and waits on reading
the weights, and the library's default kernel does not always use the hardware for that:

- **fp32:** MKL runs a product of few rows on one thread, so a second core sits idle. Splitting
  the weight's output rows into one block per thread and multiplying the blocks as a batch
  (`torch.matmul` on a view, no copy) lets each thread read its own block.
- **bf16, one row:** oneDNN (which `F.linear` picks on CPUs with bf16 instructions) is slower than
  ATen's own vectorised, threaded matrix-vector kernel; from two rows on, oneDNN is faster.

Measured on a 2-core AMD EPYC (avx512_bf16, 2026-12-06, torch 2.14.1) over the default model's
120 fused decoder products, distinct weights so none sits in cache, ms per token: fp32 one row
26.1 as `F.linear`, 14.9 split; 4 rows 39.2 / 23.6; 64 rows 89.0 / 79.8. bf16 one row 11.0-16.3
through oneDNN, 5.7-8.0 through ATen; 4 rows 13.4 / 27.1. fp16 already takes ATen's kernel, and
the fp16 / int8 weight layers (`llmcxr.devices`) use fbgemm, which threads by itself.

Faster still where it applies: **packed weights** (`pack`, `linear_packed`). oneDNN reorders a
plain weight into its blocked layout on every product; reordered once at load, a weight is read
as it is. Same machine, 2026-12-07, the 120 products per token, plain and packed interleaved:
bf16 one row 5.5 ms packed (5.6 above), 9 rows 7.2 (14.1 through `F.linear`), 72 rows (a
report's prefill) 22.7 (37.6); fp32 one row 12.7 (14.4 split), 9 rows 20.0 (27.4), 72 rows
55.8 (112.3 through MKL); the 49k-row text head, one row, 0.85 ms bf16 (1.26), 1.94 fp32
(3.56). bf16 products are bit-identical to `F.linear`'s;
fp32 ones equal MKL's within fp32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPLIT_MAX_ROWS = 64
"""Above this many rows MKL threads the product itself (measured gains up to 64)."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`; on a CPU, an fp32 product of at most `SPLIT_MAX_ROWS` rows
    has its output rows split across threads, and one bf16 row runs on ATen's kernel. Each
    output is the same dot product, accumulated in fp32, so only the summation order inside the
    kernel may differ (in bf16 that can move an output by one rounding step)."""
    rows = x.numel() // max(1, x.shape[-1])
    if rows == 1 and x.dtype == torch.bfloat16 and x.device.type == "cpu":
        return _bf16_row(x, weight, bias)
    parts = _parts(weight)
    if parts < 2 or x.dtype != torch.float32 or not 0 < rows <= SPLIT_MAX_ROWS:
        return F.linear(x, weight, bias)
    blocks = weight.view(parts, weight.shape[0] // parts, weight.shape[1]).mT  # [P, H, K / P]
    out = torch.matmul(x.reshape(1, rows, -1).expand(parts, -1, -1), blocks)  # [P, rows, K / P]
    out = out.transpose(0, 1).reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


def _bf16_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One bf16 row through ATen's matrix-vector kernel rather than oneDNN's. oneDNN is
    switched off for this one call only; the switch is process-wide, so a call racing it in
    another thread may take the other kernel, which changes its speed, not its correctness."""
    mkldnn = torch.backends.mkldnn
    if not mkldnn.enabled:
        return F.linear(x, weight, bias)
    mkldnn.enabled = False
    try:
        return F.linear(x, weight, bias)
    finally:
        mkldnn.enabled = True


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's packed copy of a contiguous CPU fp32 or bf16 weight [K, H] for `linear_packed`;
    None where it does not apply (another device or dtype, no oneDNN or no bf16 kernel in this
    torch) or where the packed product of a probe row differs from `F.linear`'s beyond rounding.

    The ops are torch's own (`torch.ops.mkldnn`, what inductor's CPU backend emits), not a
    public API, so anything unexpected from them means: do not pack."""
    if weight.device.type != "cpu" or weight.dim() != 2 or not weight.is_contiguous():
        return None
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    try:
        if not _packing_available(weight.dtype):
            return None
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        probe = torch.linspace(-1, 1, weight.shape[1], dtype=weight.dtype)[None]
        got, want = linear_packed(probe, packed).float(), F.linear(probe, weight).float()
    except (RuntimeError, AttributeError, TypeError):
        return None
    tolerance = 1e-4 if weight.dtype == torch.float32 else 1e-2
    scale = float(want.abs().max()) + 1.0
    return packed if float((got - want).abs().max()) <= tolerance * scale else None


def linear_packed(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for a weight packed by `pack`; any number of rows."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packing_available(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available() or not hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    ):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def _parts(weight: torch.Tensor) -> int:
    """How many blocks to split `weight`'s rows into: the most, up to the thread count, that
    divide them evenly (1 = do not split: not a contiguous fp32 CPU weight)."""
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
        return 1
    if not weight.is_contiguous():
        return 1
    rows = weight.shape[0]
    return next(p for p in range(torch.get_num_threads(), 0, -1) if rows % p == 0)
