"""The `llmcxr` command on the tiny model: files it writes, outputs, and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_fixtures import make_tiny_model_folder
from PIL import Image

from llmcxr.cli import main
from llmcxr.pipeline import LLMCXR

IMAGE_SIZE = 64  # the tiny tokenizer's image size (tests/llm_fixtures.py)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("llmcxr: error: ") and "Traceback" not in err[0]
    return err[0]


def test_generate_image_writes_pngs_of_the_tokenizer_size(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "effusion.png"
    code = main(
        [
            "generate-image",
            "Left pleural effusion",
            "-o",
            str(out),
            "--model",
            str(model_dir),
            "--seed",
            "3",
            "--num-images",
            "2",
            "--top-p",
            "0.9",
            "--temperature",
            "1.1",
        ]
    )
    assert code == 0
    assert not out.exists()
    for path in (tmp_path / "effusion_0.png", tmp_path / "effusion_1.png"):
        with Image.open(path) as image:
            assert (
                image.format == "PNG"
                and image.mode == "L"
                and image.size == (IMAGE_SIZE, IMAGE_SIZE)
            )


def test_report_single_image_json_has_labels(
    model_dir: Path, fixtures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "report",
            str(fixtures_dir / "00000001_000.png"),
            "--model",
            str(model_dir),
            "--json",
            "--max-new-tokens",
            "6",
            "--seed",
            "0",
        ]
    )
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert row["image"].endswith("00000001_000.png") and isinstance(row["report"], str)
    assert isinstance(row["labels"], dict)


def test_report_folder_and_csv_give_one_row_per_image(
    model_dir: Path, fixtures_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("00000001_000.png", "16747_3_1.jpg", "synthetic_cxr_mono1.dcm"):
        (folder / name).write_bytes((fixtures_dir / name).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "reports.csv"
    assert (
        main(
            [
                "report",
                str(folder),
                "--model",
                str(model_dir),
                "-o",
                str(out),
                "--max-new-tokens",
                "4",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["image"]).name for r in rows) == sorted(
        p.name for p in folder.glob("*.*") if p.suffix != ".txt"
    )
    listing = tmp_path / "list.csv"
    listing.write_text("path,split\nimages/16747_3_1.jpg,test\nimages/00000001_000.png,test\n")
    jsonl = tmp_path / "reports.jsonl"
    assert (
        main(
            [
                "report",
                str(listing),
                "--model",
                str(model_dir),
                "-o",
                str(jsonl),
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [Path(r["image"]).name for r in lines] == ["16747_3_1.jpg", "00000001_000.png"]
    assert all("labels" in r for r in lines)


def test_report_batch_keeps_going_past_an_unreadable_image(
    model_dir: Path, fixtures_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes((fixtures_dir / "00000001_000.png").read_bytes())
    (folder / "broken.png").write_bytes((fixtures_dir / "00000001_000.png").read_bytes()[:300])
    out = tmp_path / "reports.jsonl"
    assert (
        main(
            [
                "report",
                str(folder),
                "--model",
                str(model_dir),
                "-o",
                str(out),
                "--max-new-tokens",
                "3",
            ]
        )
        == 1
    )
    rows = {Path(r["image"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["broken.png"]["error"] and "error" not in rows["good.png"]


def test_ask_and_chat(
    model_dir: Path,
    fixtures_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = str(fixtures_dir / "16747_3_1.jpg")
    assert (
        main(
            [
                "ask",
                image,
                "Is there a pleural effusion?",
                "--model",
                str(model_dir),
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Is the heart enlarged?\n\nAny effusion?\n"))
    assert (
        main(["chat", image, "--model", str(model_dir), "--max-new-tokens", "4", "--seed", "1"])
        == 0
    )
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "problem",
    [
        "missing model",
        "corrupt image",
        "not an image",
        "empty prompt",
        "empty question",
        "huge prompt",
        "zero guidance",
    ],
)
def test_bad_inputs_give_one_clear_line(
    problem: str,
    model_dir: Path,
    fixtures_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = str(fixtures_dir / "00000001_000.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((fixtures_dir / "00000001_000.png").read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("this is a text file with an image name")
    model = ["--model", str(model_dir)]
    argv, expected = {
        "missing model": (
            ["report", good, "--model", str(tmp_path / "no_such_model")],
            "model not found",
        ),
        "corrupt image": (["report", str(corrupt), *model], "corrupt.png"),
        "not an image": (["ask", str(text), "What is this?", *model], "notes.png"),
        "empty prompt": (["generate-image", "  ", "-o", str(tmp_path / "x.png"), *model], "empty"),
        "empty question": (["ask", good, "", *model], "empty"),
        "huge prompt": (
            ["generate-image", "effusion " * 5000, "-o", str(tmp_path / "x.png"), *model],
            "too long",
        ),
        "zero guidance": (
            ["generate-image", "Effusion.", "-o", str(tmp_path / "x.png"), "--guidance-scale", "0"]
            + model,
            "guidance scale must be a finite number > 0",
        ),
    }[problem]
    assert main(argv) == 2
    assert expected in _error_line(capsys)


def test_no_default_model_says_how_to_pass_one(
    fixtures_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llmcxr.pipeline

    # an install whose default model folder is missing or empty (e.g. a stripped wheel)
    monkeypatch.setattr(llmcxr.pipeline, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    assert main(["ask", str(fixtures_dir / "00000001_000.png"), "Any effusion?"]) == 2
    assert "--model" in _error_line(capsys)


def test_console_script_runs_and_help_imports_no_torch(model_dir: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "llmcxr"
    if not script.exists():
        pytest.skip("the llmcxr console script is not installed in this environment")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = tmp_path / "drawn.png"
    done = subprocess.run(
        [
            str(script),
            "generate-image",
            "Cardiomegaly",
            "-o",
            str(out),
            "--model",
            str(model_dir),
            "--seed",
            "0",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and np.asarray(image).dtype == np.uint8
    probe = "import sys, llmcxr.cli; llmcxr.cli.build_parser(); print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        == "False"
    )


# ----------------------------------------------------------------------------- one error path
def _corrupt_copy(model_dir: Path, tmp_path: Path, part: str) -> Path:
    copy = tmp_path / "corrupt_model"
    shutil.copytree(model_dir, copy)
    (copy / part).write_bytes(b"\x00garbage" * 8)
    return copy


@pytest.mark.parametrize(
    ("case", "status", "expected"),
    [
        ("-o a folder", 2, "is a folder"),
        ("-o not writable", 2, "is not a writable folder"),
        ("-o the input", 2, "is also an input"),
        ("csv field over 128 KiB", 2, "not a readable CSV table"),
        ("binary csv", 2, "not a readable CSV table"),
        ("corrupt safetensors", 2, "corrupt_model/llm is corrupt or unreadable (SafetensorError"),
        ("corrupt tokenizer", 2, "corrupt_model/tokenizer is corrupt or unreadable"),
        ("--device cuda without a GPU", 2, "no CUDA GPU is usable here"),
        ("--batch-size -1", 2, "argument --batch-size: must be a whole number >= 1, got '-1'"),
        ("out of memory", 1, "out of memory"),
    ],
)
def test_known_failures_are_one_line_with_their_exit_status(
    case: str,
    status: int,
    expected: str,
    model_dir: Path,
    fixtures_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = str(fixtures_dir / "00000001_000.png")
    model = ["--model", str(model_dir)]
    table = tmp_path / "list.csv"
    table.write_text(f"path\n{good}\n")
    (tmp_path / "file.txt").write_text("x")
    if case == "csv field over 128 KiB":
        table.write_text('path\n"' + "x" * 200_000 + '"\n')
    if case == "binary csv":
        table.write_bytes((fixtures_dir / "00000001_000.png").read_bytes())
    if case == "--device cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case == "out of memory":
        monkeypatch.setattr(LLMCXR, "generate_report", _out_of_memory)
    corrupt = {
        "corrupt safetensors": "llm/model.safetensors",
        "corrupt tokenizer": "tokenizer/tokenizer.json",
    }
    if case in corrupt:
        model = ["--model", str(_corrupt_copy(model_dir, tmp_path, corrupt[case]))]
    missing_model = ["--model", str(tmp_path / "no_model")]  # -o must be refused before loading
    argv = {
        "-o a folder": ["report", good, "-o", str(tmp_path), *missing_model],
        "-o not writable": [
            "report",
            good,
            "-o",
            str(tmp_path / "file.txt" / "r.csv"),
            *missing_model,
        ],
        "-o the input": ["report", str(table), "-o", str(table), *missing_model],
        "csv field over 128 KiB": ["report", str(table), *model],
        "binary csv": ["report", str(table), *model],
        "corrupt safetensors": ["report", good, *model],
        "corrupt tokenizer": ["report", good, *model],
        "--device cuda without a GPU": ["report", good, "--device", "cuda", *model],
        "--batch-size -1": ["report", good, "--batch-size", "-1", *model],
        "out of memory": ["report", good, *model],
    }[case]
    assert main(argv) == status
    assert expected in _error_line(capsys)
    with pytest.raises(Exception):  # noqa: B017 - --debug re-raises whatever the error was
        main(["--debug", *argv])


def _out_of_memory(*args: object, **kwargs: object) -> list[str]:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_report_run_killed_half_way_resumes(
    model_dir: Path,
    fixtures_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        (folder / f"{index}.png").write_bytes((fixtures_dir / "00000001_000.png").read_bytes())
    out = tmp_path / "reports.jsonl"
    argv = [
        "report",
        str(folder),
        "-o",
        str(out),
        "--model",
        str(model_dir),
        "--batch-size",
        "1",
        "--max-new-tokens",
        "3",
    ]
    seen: list[str] = []
    real = LLMCXR.generate_report

    def killed_at_the_third(self: LLMCXR, images: list, **kwargs: object) -> list[str]:
        if len(seen) == 2:
            raise KeyboardInterrupt  # stands in for a kill: rows already written must stay
        seen.append("x")
        return real(self, images, **kwargs)

    monkeypatch.setattr(LLMCXR, "generate_report", killed_at_the_third)
    assert main(argv) == 130
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["0.png", "1.png"]
    with out.open("a") as handle:
        handle.write('{"image": "torn')  # a write cut short by the kill
    monkeypatch.setattr(LLMCXR, "generate_report", real)
    capsys.readouterr()
    assert main(argv) == 0
    assert "resuming: 2 of 4 images are already in" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["image"]).name for r in rows) == ["0.png", "1.png", "2.png", "3.png"]


def test_outputs_follow_the_umask(model_dir: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        png = tmp_path / "drawn.png"
        assert (
            main(
                [
                    "generate-image",
                    "Cardiomegaly",
                    "-o",
                    str(png),
                    "--model",
                    str(model_dir),
                    "--seed",
                    "0",
                ]
            )
            == 0
        )
        table = tmp_path / "reports.csv"
        assert (
            main(
                [
                    "report",
                    str(fixtures_dir / "00000001_000.png"),
                    "-o",
                    str(table),
                    "--model",
                    str(model_dir),
                    "--max-new-tokens",
                    "2",
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(png.stat().st_mode) == 0o644
    assert stat.S_IMODE(table.stat().st_mode) == 0o644
