"""vqgan: the chest X-ray image tokenizer (VQ-GAN) of llmcxr.

Public API: ``CXRTokenizer``, ``VQGANConfig``, the image readers ``read_cxr``,
``prepare_image``, ``load_cxr_tensor``, ``match_histogram``, ``CXRReadError``,
``IMAGE_SUFFIXES``, and the CXR classifier ``ClinicalFeatureExtractor`` (the clinical loss;
the image metrics of ``llmcxr evaluate``). Names are imported lazily so that ``import vqgan``
stays cheap and the inference path never loads the training stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrcommon.lazy import lazy_exports

if TYPE_CHECKING:
    from vqgan.clinical import ClinicalFeatureExtractor
    from vqgan.config import VQGANConfig
    from vqgan.image_io import (
        IMAGE_SUFFIXES,
        CXRReadError,
        load_cxr_tensor,
        match_histogram,
        prepare_image,
        read_cxr,
    )
    from vqgan.tokenizer import CXRTokenizer

_EXPORTS = {
    "CXRTokenizer": "vqgan.tokenizer",
    "VQGANConfig": "vqgan.config",
    "read_cxr": "vqgan.image_io",
    "prepare_image": "vqgan.image_io",
    "load_cxr_tensor": "vqgan.image_io",
    "match_histogram": "vqgan.image_io",
    "CXRReadError": "vqgan.image_io",
    "IMAGE_SUFFIXES": "vqgan.image_io",
    "ClinicalFeatureExtractor": "vqgan.clinical",
}

__all__ = [
    "IMAGE_SUFFIXES",
    "CXRReadError",
    "CXRTokenizer",
    "ClinicalFeatureExtractor",
    "VQGANConfig",
    "load_cxr_tensor",
    "match_histogram",
    "prepare_image",
    "read_cxr",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
