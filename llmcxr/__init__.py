"""llmcxr: one causal LLM that reads and draws chest X-rays through VQ-GAN image tokens.

Public names are imported lazily (PEP 562) so ``import llmcxr`` stays cheap and never pulls in
Lightning or peft; the training stack lives in ``llmcxr.lit_module`` / ``llmcxr.train``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmcxr.base_model import BaseModelSpec, TinyLMConfig, load_base_model
    from llmcxr.image_tokens import ImageTokenMap, add_image_tokens
    from llmcxr.model_folder import (
        GenerationDefaults,
        LLMCXRComponents,
        load_model_folder,
        save_model_folder,
    )

_EXPORTS = {
    "BaseModelSpec": "llmcxr.base_model",
    "TinyLMConfig": "llmcxr.base_model",
    "load_base_model": "llmcxr.base_model",
    "ImageTokenMap": "llmcxr.image_tokens",
    "add_image_tokens": "llmcxr.image_tokens",
    "GenerationDefaults": "llmcxr.model_folder",
    "LLMCXRComponents": "llmcxr.model_folder",
    "load_model_folder": "llmcxr.model_folder",
    "save_model_folder": "llmcxr.model_folder",
}

__all__ = [
    "BaseModelSpec",
    "GenerationDefaults",
    "ImageTokenMap",
    "LLMCXRComponents",
    "TinyLMConfig",
    "add_image_tokens",
    "load_base_model",
    "load_model_folder",
    "save_model_folder",
]


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmcxr' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
