"""cxrcommon.files: the one atomic file / folder writer every package uses."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrcommon.files import (
    atomic_folder,
    atomic_write,
    atomic_write_text,
    current_umask,
    replace_folders,
    to_uint8,
    write_png,
)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_current_umask_reads_without_changing(umask_027) -> None:
    assert current_umask() == 0o027
    assert current_umask() == 0o027


def test_atomic_write_follows_the_umask_and_replaces(tmp_path: Path, umask_027) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert _mode(target) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_folder_replaces_whole_folders(tmp_path: Path, umask_027) -> None:
    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("2")
        os.chmod(tmp / "b.txt", 0o600)  # safetensors and mkstemp write private files
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert _mode(target) == 0o750
    assert _mode(target / "b.txt") == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_failed_folder_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(KeyError), atomic_folder(target) as tmp:
        (tmp / "half.txt").write_text("?")
        raise KeyError("interrupted")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_replace_folders_swaps_several_targets(tmp_path: Path) -> None:
    staged = {}
    for name in ("stage1", "stage2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "old").write_text("")
        new = tmp_path / f".{name}.new"
        new.mkdir()
        (new / "new").write_text("")
        staged[tmp_path / name] = new
    replace_folders(staged)
    for name in ("stage1", "stage2"):
        assert [p.name for p in (tmp_path / name).iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1", "stage2"]


def test_write_png_round_trip_and_clipping(tmp_path: Path) -> None:
    image = np.array([[0.0, 0.5], [1.0, 2.0]], dtype=np.float32)[None]  # [1, H, W]
    path = write_png(tmp_path / "x.png", image)
    with Image.open(path) as img:
        assert img.mode == "L"
        assert np.asarray(img).tolist() == [[0, 128], [255, 255]]


def test_to_uint8_refuses_a_non_image() -> None:
    with pytest.raises(ValueError, match="2-D image"):
        to_uint8(np.zeros((2, 3, 4)))
