"""The first GPU window's tokenizer (models/cxr_tokenizer_window1): loads, is the tokenizer its
README names, and reconstructs the real fixture X-rays better than the shipped tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmcxr.pipeline import DEFAULT_MODEL_DIR
from vqgan import CXRTokenizer
from vqgan.image_io import load_cxr_tensor

CANDIDATE = Path(__file__).parents[1] / "models" / "cxr_tokenizer_window1"
FIXTURES = Path(__file__).parent / "fixtures"


def _psnr(tokenizer: CXRTokenizer, image: torch.Tensor) -> float:
    recon = tokenizer.decode(tokenizer.encode(image))
    return float(10 * torch.log10(1.0 / ((recon - image) ** 2).mean()))


@pytest.fixture(scope="module")
def tokenizers() -> tuple[CXRTokenizer, CXRTokenizer]:
    return (
        CXRTokenizer.from_pretrained(DEFAULT_MODEL_DIR / "image_tokenizer"),
        CXRTokenizer.from_pretrained(CANDIDATE),
    )


def test_the_candidate_is_the_tokenizer_its_readme_names(tokenizers) -> None:
    shipped, candidate = tokenizers
    assert candidate.fingerprint == "2d10d1a7c578890a" != shipped.fingerprint
    assert candidate.fingerprint in (CANDIDATE / "README.md").read_text()
    assert (candidate.image_size, candidate.config.n_embed) == (128, 1024)


@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png", "16747_3_1.jpg"])
def test_the_candidate_reconstructs_real_xrays_better_than_the_shipped_one(
    tokenizers, name: str
) -> None:
    shipped, candidate = tokenizers
    image = load_cxr_tensor(FIXTURES / name, 128)[None]
    # measured: +2.0, +2.6 and +6.8 dB on these three; 22.96 against 18.36 dB on 690 test images
    assert _psnr(candidate, image) > _psnr(shipped, image) + 1.0
