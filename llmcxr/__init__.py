"""llmcxr: one causal LLM that reads and draws chest X-rays through VQ-GAN image tokens.

Public names are imported lazily (PEP 562) so ``import llmcxr`` stays cheap and never pulls in
Lightning or peft; the training stack lives in ``llmcxr.lit_module`` / ``llmcxr.train``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrcommon.lazy import lazy_exports

if TYPE_CHECKING:
    from llmcxr.base_model import BaseModelSpec, TinyLMConfig, load_base_model
    from llmcxr.image_tokens import ImageTokenMap, add_image_tokens
    from llmcxr.model_folder import (
        GenerationDefaults,
        LLMCXRComponents,
        load_model_folder,
        save_model_folder,
    )
    from llmcxr.pipeline import LLMCXR

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
    "LLMCXR": "llmcxr.pipeline",
}

__all__ = [
    "LLMCXR",
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


__getattr__ = lazy_exports(__name__, _EXPORTS)
