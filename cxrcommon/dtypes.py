"""Weight dtype names: the one list the command lines offer and the one name -> torch map.

The names are plain strings so an argument parser can offer them without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float16", "bfloat16")
"""What `--dtype` accepts for stored or loaded weights."""

ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""Short spellings accepted where a user names a dtype (model loading)."""


def torch_dtype(name: str) -> torch.dtype:
    """``"float16"`` (or an alias such as ``"fp16"``) -> ``torch.float16``; ValueError naming the
    accepted names otherwise."""
    import torch

    canonical = ALIASES.get(name, name)
    if canonical not in DTYPE_NAMES:
        accepted = ", ".join([*DTYPE_NAMES, *ALIASES])
        raise ValueError(f"unknown dtype {name!r}: use one of {accepted}")
    return getattr(torch, canonical)
