"""cxrcommon.lazy: the packages' lazy public names."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from cxrcommon.lazy import lazy_exports


def test_lazy_exports_imports_on_first_use_and_caches(monkeypatch) -> None:
    package = types.ModuleType("fakepkg")
    monkeypatch.setitem(sys.modules, "fakepkg", package)
    package.__getattr__ = lazy_exports("fakepkg", {"dumps": "json"})
    import json

    assert package.dumps is json.dumps
    assert package.__dict__["dumps"] is json.dumps  # cached: __getattr__ is not asked again
    with pytest.raises(AttributeError, match="'fakepkg' has no attribute 'loads'"):
        package.loads  # noqa: B018


def test_packages_export_their_public_names_without_importing_torch() -> None:
    code = (
        "import sys, llmcxr, vqgan; "
        "names = llmcxr.__all__ + vqgan.__all__; "
        "assert 'LLMCXR' in llmcxr.__all__; "
        "assert 'torch' not in sys.modules, 'import llmcxr pulled in torch'; "
        "[getattr(llmcxr, n) for n in llmcxr.__all__]; [getattr(vqgan, n) for n in vqgan.__all__]; "
        "print(len(names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-2000:]
