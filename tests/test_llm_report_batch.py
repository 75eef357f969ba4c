"""`llmcxr report` on a folder: batching changes speed, not the reports; the run ends with its
throughput on stderr."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from llm_fixtures import make_tiny_model_folder
from safetensors.torch import load_file, save_file

from llmcxr.cli import main
from llmcxr.pipeline import LLMCXR

IMAGES = ("00000001_000.png", "00027426_000.png", "16747_3_1.jpg", "synthetic_cxr_mono1.dcm")
SUMMARY = re.compile(r"^(\d+) images in \d+\.\d s \(\d+\.\d\d images/s\)$")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its LLM matrices scaled up: at init scale its greedy report is empty
    for every image, so a batching mix-up could not show; scaled, the report follows the image."""
    folder = make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")
    weights = folder / "llm" / "model.safetensors"
    tensors = load_file(weights)
    save_file(
        {k: v * 30 if v.ndim == 2 else v for k, v in tensors.items()},
        weights,
        metadata={"format": "pt"},
    )
    return folder


def _report(folder: Path, model_dir: Path, out: Path, batch_size: int) -> dict[str, str]:
    assert (
        main(
            [
                "report",
                str(folder),
                "--model",
                str(model_dir),
                "-o",
                str(out),
                "--greedy",
                "--max-new-tokens",
                "12",
                "--batch-size",
                str(batch_size),
            ]
        )
        == 0
    )
    return {
        Path(row["image"]).name: row["report"]
        for row in map(json.loads, out.read_text().splitlines())
    }


def test_batched_reports_match_one_at_a_time(
    model_dir: Path,
    fixtures_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in IMAGES:
        (folder / name).write_bytes((fixtures_dir / name).read_bytes())
    encoded: list[int] = []
    real = LLMCXR.encode_images

    def counting(self: LLMCXR, images: list) -> object:
        encoded.append(len(images))
        return real(self, images)

    monkeypatch.setattr(LLMCXR, "encode_images", counting)
    one = _report(folder, model_dir, tmp_path / "one.jsonl", batch_size=1)
    assert encoded == [1, 1, 1, 1]
    capsys.readouterr()
    encoded.clear()
    three = _report(folder, model_dir, tmp_path / "three.jsonl", batch_size=3)
    assert encoded == [3, 1]  # the VQ-GAN encodes a batch at a time, the LLM decodes it as one
    assert sorted(one) == sorted(IMAGES) and three == one
    assert len(set(one.values())) > 2  # the reports differ by image: a mix-up would show
    summary = SUMMARY.match(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary and summary.group(1) == str(len(IMAGES))


def test_single_image_prints_no_summary(
    model_dir: Path, fixtures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "report",
                str(fixtures_dir / "00000001_000.png"),
                "--model",
                str(model_dir),
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    assert not any(SUMMARY.match(line) for line in capsys.readouterr().err.splitlines())
