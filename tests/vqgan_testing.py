"""Shared pieces of the vqgan tests: the tiny architecture and a one-thread guard.

On a shared 2-core machine, two intra-op threads per process oversubscribe the CPU and make
small convolutions about 10x slower (measured 2026-11-23: 0.33 s vs 3.7 s for one tiny
encode+decode under load), so the vqgan tests run torch on one thread and restore it after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from vqgan import VQGANConfig

TINY = VQGANConfig(
    image_size=32,
    ch=32,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    z_channels=32,
    embed_dim=16,
    n_embed=64,
)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run the test with one torch thread, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
