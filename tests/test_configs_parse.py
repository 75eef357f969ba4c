"""Every YAML under configs/ parses against today's code, through its own entry point's parser.

Parsing only (``fit -c <yaml> --print_config``): class paths are imported and every key and type
is checked, but nothing is instantiated, so GPU configs and missing data folders are fine here.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# configs/<folder>/*.yaml -> "module:function" taking an argument list like the command line.
ENTRY_POINTS = {
    "vqgan": "vqgan.__main__:main",
    "classifier": "vqgan.classifier_train:main",
    "llmcxr": "llmcxr.train:main",
}

YAMLS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.is_file()) + sorted(CONFIGS.rglob("*.yml"))


def test_configs_exist_for_every_entry_point() -> None:
    folders = {p.relative_to(CONFIGS).parts[0] for p in YAMLS}
    assert "vqgan" in folders


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = path.relative_to(CONFIGS).parts[0]
    assert folder in ENTRY_POINTS, (
        f"no entry point known for configs/{folder}/: add it to ENTRY_POINTS"
    )
    module_name, function = ENTRY_POINTS[folder].split(":")
    main = getattr(importlib.import_module(module_name), function)
    monkeypatch.setattr(sys, "argv", [module_name])  # LightningCLI must read only our arguments
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(path), "--print_config"])
    printed = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"{path} does not parse:\n{printed.err[-2000:]}"
    assert "model:" in printed.out and "trainer:" in printed.out
