"""`llmcxr` is the one command for every job: its help lists them all, `train` reaches each job's
own LightningCLI, `export` takes the same options for the three exporters, errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmcxr.cli import main
from vqgan import CXRTokenizer
from vqgan.export import main as export_alias

REPO = Path(__file__).resolve().parents[1]
JOBS = ("generate-image", "report", "ask", "chat", "data", "train", "export", "evaluate", "demo")


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_help_lists_every_job_and_imports_no_torch() -> None:
    probe = (
        "import sys\nfrom llmcxr.cli import main\ncode = main(['--help'])\n"
        "print(code, sorted({'torch', 'lightning'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")}
    assert set(JOBS) <= listed, done.stdout
    assert done.stdout.strip().splitlines()[-1] == "0 []"


@pytest.mark.parametrize("job", ["tokenizer", "classifier", "llm"])
def test_train_job_help_is_its_lightning_cli(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", job, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: llmcxr train {job}" in out and "fit" in out and "--config" in out


def test_train_errors_are_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "gpt"]) == 2
    assert _error_lines(capsys) == [
        "llmcxr: error: unknown train job 'gpt': use tokenizer, classifier, llm"
    ]
    missing = tmp_path / "missing.yaml"
    assert main(["train", "tokenizer", "-c", str(missing)]) == 2  # LightningCLI's own parser
    (line,) = _error_lines(capsys)
    assert line.startswith("llmcxr: error:") and str(missing) in line


@pytest.mark.parametrize("job", ["tokenizer", "classifier", "llm"])
def test_export_of_a_missing_checkpoint_is_one_line_naming_it(
    job: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.ckpt"
    out = tmp_path / "X"
    assert main(["export", job, "--checkpoint", str(missing), "--out", str(out)]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("llmcxr: error:") and str(missing) in line
    assert not out.exists()


def test_export_options_are_spelled_alike(capsys: pytest.CaptureFixture[str]) -> None:
    for job in ("tokenizer", "classifier", "llm"):
        assert main(["export", job, "--help"]) == 0
        usage = capsys.readouterr().out
        assert "--checkpoint PATH" in usage and "--out FOLDER" in usage
        if job != "classifier":  # the classifier export stores float32 only
            assert "--dtype {float32,float16,bfloat16}" in usage
    assert main(["export", "llm", "--out", "b"]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("llmcxr: error:") and "--checkpoint" in line


def test_train_then_export_tokenizer_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One training step through `llmcxr train tokenizer` (fit is the default subcommand), then
    `llmcxr export tokenizer --dtype float16`; the `python -m vqgan.export` alias agrees."""
    monkeypatch.chdir(tmp_path)  # anything the config names relative to the run lands here
    run = tmp_path / "run"
    argv = ["train", "tokenizer", "-c", str(REPO / "configs" / "vqgan" / "tiny.yaml")]
    argv += ["--data.data", str(REPO / "tests" / "fixtures"), "--trainer.max_steps", "1"]
    assert main([*argv, "--trainer.default_root_dir", str(run)]) == 0
    (ckpt,) = run.rglob("last.ckpt")
    capsys.readouterr()

    half = tmp_path / "half"
    assert (
        main(
            ["export", "tokenizer", "--checkpoint", str(ckpt), "--out", str(half)]
            + ["--dtype", "float16"]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith(f"wrote {half}")
    stored = load_file(half / "model.safetensors")
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    assert CXRTokenizer.from_pretrained(half).tokens_per_image == 64

    full, alias = tmp_path / "full", tmp_path / "alias"
    assert main(["export", "tokenizer", "--checkpoint", str(ckpt), "--out", str(full)]) == 0
    export_alias([str(ckpt), str(alias)])
    fingerprints = [
        json.loads((p / "config.json").read_text())["fingerprint"] for p in (full, alias)
    ]
    assert fingerprints[0] == fingerprints[1] == CXRTokenizer.from_pretrained(ckpt).fingerprint


def test_evaluate_flags_come_from_evaluation_config() -> None:
    """One flag per `EvaluationConfig` field, its default the field's own (no copy to drift)."""
    from llmcxr.evaluation.cli import HELP, build_parser
    from llmcxr.evaluation.config import EvaluationConfig

    parser = build_parser()
    by_flag = {action.option_strings[0]: action for action in parser._actions[1:]}
    assert set(HELP) == {field.name for field in fields(EvaluationConfig)}
    for field in fields(EvaluationConfig):
        action = by_flag.pop(f"--{field.name.replace('_', '-')}")
        assert action.dest == field.name
        assert action.required == (field.default is MISSING)
        if field.default is not MISSING:
            assert action.default == field.default, field.name
    assert not by_flag, f"flags without a config field: {sorted(by_flag)}"
    args = parser.parse_args(["--data", "d", "--tasks", "report, vqa", "--limit", "4"])
    assert EvaluationConfig(**vars(args)).tasks == ("report", "vqa")
