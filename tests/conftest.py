"""Shared test fixtures: small synthetic CXR-like images and the bundled real fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _private_merged_model_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tests never write into the user's cache (~/.cache/llmcxr): merged LoRA models go to a
    folder of this session (subprocesses inherit it through the environment)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LLMCXR_CACHE", str(tmp_path_factory.mktemp("llmcxr_cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def fixtures_dir() -> Path:
    """Folder with real CXR fixture images (see fixtures/ATTRIBUTION.md)."""
    return FIXTURES


def synthetic_cxr(size: int = 64, seed: int = 0) -> np.ndarray:
    """A CXR-like float image in [0, 1]: bright mediastinum, two dark lung fields, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.1 * yy
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1
        img = np.where(lung, 0.25 + 0.1 * rng.random(), img)
    img = img + 0.03 * rng.standard_normal((size, size))
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture
def synthetic_images() -> torch.Tensor:
    """A batch [4, 1, 64, 64] of synthetic CXR-like images in [0, 1]."""
    return torch.from_numpy(np.stack([synthetic_cxr(64, s) for s in range(4)]))[:, None]
