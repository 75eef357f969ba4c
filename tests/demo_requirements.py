"""Optional packages the demo tests need: skip without them locally, fail under CI.

The demo's dependencies (gradio, playwright, a chromium binary) are an extra; a developer
without them gets a clear skip, while CI (the ``CI`` variable set) must run these tests.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def require(missing: list[str]) -> None:
    """Skip (or under ``CI`` fail) the calling test module when ``missing`` is not empty."""
    if not missing:
        return
    reason = "demo test needs " + " and ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI is set: it must run here)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def missing_modules(*names: str) -> list[str]:
    """Which of the importable module ``names`` are not installed, with how to get them."""
    return [
        f"{name} (pip install {name})" for name in names if importlib.util.find_spec(name) is None
    ]
