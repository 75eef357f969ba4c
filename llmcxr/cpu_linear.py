"""An fp32 CPU product of a few rows by a weight, using every thread.

Why: a decode step multiplies one row (or a handful) by each weight matrix, and for fp32 MKL runs
such a product on one thread, so a second core sits idle while the step waits on reading the
weights. Splitting the weight's output rows into one block per thread and multiplying the blocks
as a batch (`torch.matmul` on a view, no copy) lets each thread read its own block. Measured on a
2-core AMD EPYC (avx512_bf16, 2026-12-06, torch 2.14.1; the default model's 120 fused decoder
products, distinct weights so none sits in cache): 26.1 ms per token for one row as `F.linear`,
14.9 ms split; 4 rows 39.2 / 23.6 ms; 64 rows 89.0 / 79.8 ms. bf16 and the fp16 / int8 weight
layers (`llmcxr.devices`) already use both threads, so they keep their own kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPLIT_MAX_ROWS = 64
"""Above this many rows MKL threads the product itself (measured gains up to 64)."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, with the output rows split across threads for a CPU fp32
    product of at most `SPLIT_MAX_ROWS` rows. Each output is the same dot product, so only the
    summation order inside the BLAS kernel may differ."""
    parts = _parts(weight)
    rows = x.numel() // max(1, x.shape[-1])
    if parts < 2 or x.dtype != torch.float32 or not 0 < rows <= SPLIT_MAX_ROWS:
        return F.linear(x, weight, bias)
    blocks = weight.view(parts, weight.shape[0] // parts, weight.shape[1]).mT  # [P, H, K / P]
    out = torch.matmul(x.reshape(1, rows, -1).expand(parts, -1, -1), blocks)  # [P, rows, K / P]
    out = out.transpose(0, 1).reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


def _parts(weight: torch.Tensor) -> int:
    """How many blocks to split `weight`'s rows into: the most, up to the thread count, that
    divide them evenly (1 = do not split: not a contiguous fp32 CPU weight)."""
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
        return 1
    if not weight.is_contiguous():
        return 1
    rows = weight.shape[0]
    return next(p for p in range(torch.get_num_threads(), 0, -1) if rows % p == 0)
