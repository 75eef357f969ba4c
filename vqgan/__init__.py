"""vqgan: the chest X-ray image tokenizer (VQ-GAN) of llmcxr.

Public API: ``CXRTokenizer``, ``VQGANConfig``, and the image readers ``read_cxr``,
``prepare_image``, ``load_cxr_tensor``, ``CXRReadError``. Names are imported lazily so that
``import vqgan`` stays cheap and the inference path never loads the training stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vqgan.config import VQGANConfig
    from vqgan.image_io import CXRReadError, load_cxr_tensor, prepare_image, read_cxr
    from vqgan.tokenizer import CXRTokenizer

_EXPORTS = {
    "CXRTokenizer": "vqgan.tokenizer",
    "VQGANConfig": "vqgan.config",
    "read_cxr": "vqgan.image_io",
    "prepare_image": "vqgan.image_io",
    "load_cxr_tensor": "vqgan.image_io",
    "CXRReadError": "vqgan.image_io",
}

__all__ = [
    "CXRReadError",
    "CXRTokenizer",
    "VQGANConfig",
    "load_cxr_tensor",
    "prepare_image",
    "read_cxr",
]


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqgan' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
