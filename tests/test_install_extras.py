"""The lighter install: evaluation-only packages in the `[eval]` extra, with one clear error when
they are missing, and scripts/install.sh's optional PyTorch wheel index."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmcxr.cli import main
from llmcxr.evaluation import EVAL_MODULES

ROOT = Path(__file__).resolve().parents[1]


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalised(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])


def test_eval_extra_is_exactly_the_guarded_modules() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {_requirement_name(r) for r in project["optional-dependencies"]["eval"]}
    core = {_requirement_name(r) for r in project["dependencies"]}
    assert extra and not extra & core
    provided_by = {
        module: {_normalised(d) for d in dists}
        for module, dists in importlib.metadata.packages_distributions().items()
    }
    guarded = {module: provided_by.get(module, set()) for module in EVAL_MODULES}
    assert all(dists & extra for dists in guarded.values()), guarded  # each guarded module: [eval]
    assert all(any(dist in dists for dists in guarded.values()) for dist in extra), (
        extra
    )  # and back


def test_nothing_but_the_evaluation_imports_an_eval_package() -> None:
    """Inference, training and data building must work without `[eval]`."""
    offenders = []
    for package in ("vqgan", "llmcxr", "instructions"):
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(ROOT / "llmcxr" / "evaluation"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                offenders += [
                    f"{path.relative_to(ROOT)}: {n}"
                    for n in names
                    if n.split(".")[0] in EVAL_MODULES
                ]
    assert not offenders


@pytest.mark.parametrize("missing", ["rouge_score", "matplotlib"])
def test_evaluate_without_the_extra_says_how_to_install_it(
    missing: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # what an uninstalled package looks like
    for name in [
        n for n in sys.modules if n == "llmcxr.evaluation" or n.startswith("llmcxr.evaluation.")
    ]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, so the guard runs again
    assert main(["evaluate", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmcxr: error: ") and missing in err[0]
    assert "pip install 'llmcxr[eval]'" in err[0]


# ----------------------------------------------------------------------------- scripts/install.sh
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../pip.log"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of install.sh and pyproject.toml whose .venv python only logs the pip calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install.sh", tmp_path / "scripts" / "install.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def _install(checkout: Path, index: str | None) -> list[str]:
    """Run install.sh; the pip calls it made this time."""
    env = {k: v for k, v in os.environ.items() if k != "LLMCXR_TORCH_INDEX_URL"}
    if index is not None:
        env["LLMCXR_TORCH_INDEX_URL"] = index
    log = checkout / "pip.log"
    before = log.read_text().splitlines() if log.exists() else []
    subprocess.run(
        ["bash", str(checkout / "scripts" / "install.sh")], env=env, check=True, timeout=60
    )
    return log.read_text().splitlines()[len(before) :] if log.exists() else []


def test_install_uses_the_torch_index_only_for_torch_and_keys_the_stamp_on_it(
    checkout: Path,
) -> None:
    plain = _install(checkout, None)
    assert len(plain) == 3 and not any("--index-url" in call for call in plain)
    assert "torch==2.14.1" in plain[0] and "-e .[dev,demo,eval]" in plain[1]
    assert _install(checkout, None) == []  # stamp matches: nothing to do
    url = "https://download.pytorch.org/whl/cpu"
    indexed = _install(checkout, url)  # a new index is a new install
    assert f"--index-url {url} torch==2.14.1 torchvision==0.29.1" in indexed[0]
    assert not any("--index-url" in call for call in indexed[1:])
    assert _install(checkout, url) == []
    assert len(_install(checkout, None)) == 3
