"""The dataset folder format (`cxrcommon.manifest`): one reader for training, `llmcxr report`,
the instruction build and the token cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrcommon.manifest import (
    IMAGES_FILE,
    ListedImage,
    ManifestError,
    find_manifest,
    read_image_list,
    read_rows,
    resolve_image_path,
    write_image_list,
)
from instructions.corpora import read_table
from llmcxr.cli import InputError, list_images
from vqgan.data import read_manifest


def _table(folder: Path, column: str) -> Path:
    """A CSV naming two images (one nested) and a row without an image, in ``column``."""
    (folder / "sub").mkdir()
    for name in ("a.png", "sub/b.png"):
        (folder / name).write_bytes(b"")
    table = folder / "list.csv"
    table.write_text(
        f"{column},patient_id,report\n"
        "a.png,p1,IMPRESSION: Normal.\n"
        "sub/b.png,p2,IMPRESSION: Effusion.\n"
        ",p3,IMPRESSION: No image.\n"
    )
    return table


@pytest.mark.parametrize("column", ["filename", "image", "path", "image_path", "file"])
def test_one_csv_names_the_same_images_for_training_report_and_the_build(
    tmp_path: Path, column: str
) -> None:
    table = _table(tmp_path, column)
    expected = [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    records = read_manifest(table)  # the vqgan data modules' manifest parsing
    assert [Path(r.path) for r in records] == expected
    assert [r.patient_id for r in records] == ["p1", "p2"]
    assert list_images(table) == expected  # `llmcxr report list.csv`
    reports = list(read_table(table))  # an instruction build's report table
    assert [Path(r.images[0].path) for r in reports[:2]] == [p.resolve() for p in expected]


def test_a_table_without_an_image_column_is_a_clear_error(tmp_path: Path) -> None:
    table = tmp_path / "list.csv"
    table.write_text("name,patient_id\na.png,p1\n")
    with pytest.raises(ManifestError, match=r"list\.csv: no image path column.*filename"):
        read_manifest(table)
    with pytest.raises(InputError, match=r"list\.csv: no image path column"):
        list_images(table)
    table.write_text("path,patient_id\n,p1\n")
    with pytest.raises(InputError, match="no row names an image"):
        list_images(table)


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "only_nested.png").write_bytes(b"")
    (tmp_path / "both.png").write_bytes(b"")
    (tmp_path / "images" / "both.png").write_bytes(b"")
    assert resolve_image_path(tmp_path, "only_nested.png") == tmp_path / "images/only_nested.png"
    assert resolve_image_path(tmp_path, "both.png") == tmp_path / "both.png"
    assert resolve_image_path(tmp_path, "missing.png") == tmp_path / "missing.png"
    assert resolve_image_path(tmp_path, "/abs/x.png") == Path("/abs/x.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "only_nested.png"}) + "\n")
    assert [r.path for r in read_manifest(manifest)] == [str(tmp_path / "images/only_nested.png")]


def test_bad_jsonl_lines_raise_naming_file_and_line_or_are_counted(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png"}\n\nnot json\n[1, 2]\n{"path": "b.png"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl, line 3: malformed JSON line"):
        read_manifest(manifest)
    manifest.write_text('{"path": "a.png"}\n[1, 2]\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl, line 2: JSON line is not an object"):
        list(read_rows(manifest))
    manifest.write_text('{"path": "a.png"}\n\nnot json\n[1, 2]\n{"path": "b.png"}\n')
    skipped: list[str] = []
    rows = list(read_rows(manifest, on_bad_line=skipped.append))
    assert [r["path"] for r in rows] == ["a.png", "b.png"]
    assert skipped == ["malformed JSON line", "JSON line is not an object"]
    with pytest.raises(ManifestError, match="unsupported manifest type"):
        list(read_rows(tmp_path / "m.txt"))


def test_images_jsonl_round_trip(tmp_path: Path) -> None:
    entries = [
        ListedImage("set/a.png", "/data/a.png", "p1", "PA", "train"),
        ListedImage("set/b.png", "images/b.png", "p2", "LATERAL", "test"),
        ListedImage("set/c.png", "", "p3"),  # not available, no split
    ]
    written = write_image_list(tmp_path, entries)
    assert written == tmp_path / IMAGES_FILE
    assert read_image_list(tmp_path) == entries
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    assert list(lines[0]) == ["image_id", "path", "patient_id", "view", "split"]
    assert "split" not in lines[2]
    assert [e.file(tmp_path) for e in entries] == [
        Path("/data/a.png"),
        tmp_path / "images/b.png",
        None,
    ]
    written.write_text(written.read_text() + '{"path": "x.png"}\n')
    with pytest.raises(ManifestError, match=r"images\.jsonl, line 4: no image_id"):
        read_image_list(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a built instruction dataset"):
        read_image_list(tmp_path / "elsewhere")


def test_find_manifest_takes_a_file_or_a_folder_holding_one(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text("")
    assert find_manifest(tmp_path) == tmp_path / "manifest.jsonl"
    (tmp_path / "labels.csv").write_text("")
    assert find_manifest(tmp_path) == tmp_path / "labels.csv"
    assert find_manifest(tmp_path / "manifest.jsonl") == tmp_path / "manifest.jsonl"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no labels.csv or manifest.jsonl"):
        find_manifest(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        find_manifest(tmp_path / "missing")


def test_report_takes_a_jsonl_manifest_as_training_does(tmp_path: Path) -> None:
    for name in ("a.png", "b.dcm"):
        (tmp_path / name).write_bytes(b"")
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"filename": "a.png"}\n{"image": "b.dcm", "patient_id": "p2"}\n')
    expected = [tmp_path / "a.png", tmp_path / "b.dcm"]
    assert [Path(r.path) for r in read_manifest(manifest)] == expected
    assert list_images(manifest) == expected  # `llmcxr report list.jsonl`: two images, not one
