"""Section parsing, filter rules and the MIMIC / OpenI / table readers (synthetic files + shipped
OpenI)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from instructions.corpora import read_mimic, read_openi, read_table
from instructions.corpora.openi import metadata_image_id, parse_openi_xml
from instructions.filters import (
    DropPriorComparisons,
    FilterPipeline,
    MinWords,
    RequireSections,
    StripDeidMarks,
    stage1_rules,
    stage2_rules,
)
from instructions.labeler import CHEXPERT_CLASSES
from instructions.reports import ReadStats, Report, normalize_text, parse_sections

REPORTS = Path(__file__).parent / "fixtures" / "reports"


def _report(findings: str = "", impression: str = "") -> Report:
    sections = {k: v for k, v in (("FINDINGS", findings), ("IMPRESSION", impression)) if v}
    return Report("r1", "p1", "test", sections)


def test_parse_sections_mimic_style() -> None:
    sections = parse_sections((REPORTS / "mimic_style_report.txt").read_text())
    assert set(sections) >= {
        "EXAMINATION",
        "INDICATION",
        "TECHNIQUE",
        "COMPARISON",
        "FINDINGS",
        "IMPRESSION",
        "NOTIFICATION",
    }
    assert sections["FINDINGS"].startswith(
        "Heart size is normal. There is a small left pleural effusion"
    )
    assert "\n" not in sections["FINDINGS"] and "  " not in sections["FINDINGS"]
    assert (
        sections["IMPRESSION"]
        == "Small left pleural effusion. Left basilar opacity, possibly pneumonia."
    )
    assert sections["PREAMBLE"] == "FINAL REPORT"


def test_parse_sections_aliases_and_missing() -> None:
    sections = parse_sections("CONCLUSION: No acute disease.\nReason for exam: none")
    assert sections == {"IMPRESSION": "No acute disease. Reason for exam: none"}
    assert parse_sections("just text") == {"PREAMBLE": "just text"}
    assert normalize_text(" a\n\tb   c ") == "a b c"


def test_strip_deid_marks_both_modes() -> None:
    report = _report(
        "There is no XXXX of effusion. Patient ___ is upright.", "Normal chest x-XXXX."
    )
    stripped, count = StripDeidMarks().apply(report)
    assert count == 3 and stripped is not None
    assert "XXXX" not in stripped.findings and "___" not in stripped.findings
    assert stripped.impression == "Normal chest."
    dropped, count = StripDeidMarks(mode="drop_sentence").apply(report)
    assert (
        dropped is not None and count == 3 and dropped.findings == "" and dropped.impression == ""
    )
    with pytest.raises(ValueError, match="mode"):
        StripDeidMarks(mode="bogus")


def test_drop_prior_comparison_sentences() -> None:
    report = _report(
        "Small left effusion. Compared to the prior study, the heart is unchanged. Opacity is "
        "again seen.",
        "Interval improvement of edema. No pneumothorax.",
    )
    kept, removed = DropPriorComparisons().apply(report)
    assert removed == 3 and kept is not None
    assert kept.findings == "Small left effusion." and kept.impression == "No pneumothorax."


def test_require_sections_and_min_words() -> None:
    both = _report("one two three four five six seven eight nine ten", "Normal chest.")
    only_impression = _report("", "Normal chest.")
    assert RequireSections().apply(both) == (both, 0)
    assert RequireSections().apply(only_impression) == (None, 1)
    assert RequireSections(any_of=True).apply(only_impression) == (only_impression, 0)
    assert MinWords("FINDINGS", 10).apply(both) == (both, 0)
    assert MinWords("FINDINGS", 11).apply(both) == (None, 1)
    assert MinWords("IMPRESSION", 3).apply(both)[0] is None
    assert MinWords("IMPRESSION", 2).name == "min_impression_words_2"


def test_filter_pipeline_counts_each_step() -> None:
    reports = [
        _report("one two three four five six seven eight nine ten", "Normal chest."),
        _report("too short", "Normal chest."),
        _report("one two three four five six seven eight nine ten", ""),
        _report(
            "one two three four five six seven eight nine ten eleven. Unchanged since prior.",
            "Clear.",
        ),
    ]
    pipeline = FilterPipeline(stage2_rules())
    kept = list(pipeline(reports))
    assert len(kept) == 1
    steps = {s["name"]: s["removed"] for s in pipeline.summary()["steps"]}
    assert steps["require_findings_and_impression"] == 1
    assert steps["min_findings_words_10"] == 1
    assert steps["min_impression_words_2"] == 1
    assert steps["drop_prior_comparison_sentences"] == 1
    stage1 = FilterPipeline(stage1_rules())
    assert len(list(stage1(reports))) == 4


@pytest.fixture(scope="module")
def openi_reports() -> list[Report]:
    return list(read_openi(limit=120))


def test_openi_reader_on_shipped_reports(openi_reports: list[Report]) -> None:
    assert len(openi_reports) == 120
    first = openi_reports[0]
    assert first.report_id == "CXR1" and first.patient_id == "CXR1" and first.source == "openi"
    assert first.findings and first.impression and first.mesh
    assert all(im.image_id.startswith("CXR1_") for im in first.images)
    assert sum(bool(r.images) for r in openi_reports) > 100
    assert metadata_image_id("CXR1_1_IM-0001-3001") == "CXR1_IM-0001-3001"


def test_openi_reader_counts_malformed_documents(tmp_path: Path) -> None:
    good = (
        b'<eCitation><uId id="CXR7"/><Abstract><AbstractText Label="FINDINGS">No '
        b"effusion.</AbstractText>"
        b'</Abstract><MeSH><major>normal</major></MeSH><parentImage id="CXR7_IM-1"/></eCitation>'
    )
    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (
            ("ecgen-radiology/7.xml", good),
            ("ecgen-radiology/8.xml", b"<eCitation><oops"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stats = ReadStats()
    reports = list(read_openi(archive, stats=stats))
    assert [r.report_id for r in reports] == ["CXR7"]
    assert reports[0].mesh == ["normal"] and reports[0].images[0].image_id == "CXR7_IM-1"
    assert stats.read == 1 and stats.skipped == {"malformed XML": 1}
    with pytest.raises(ValueError, match="no uId"):
        parse_openi_xml(b"<eCitation/>")


def _write_csv(path: Path, header: list[str], rows: list[list[object]], gz: bool = False) -> None:
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_mimic_reader_with_synthetic_tables(tmp_path: Path) -> None:
    text = (REPORTS / "mimic_style_report.txt").read_text()
    root = tmp_path / "mimic-cxr-reports"
    for subject, study in (
        ("10000001", "50000001"),
        ("10000001", "50000002"),
        ("11000002", "50000003"),
    ):
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"s{study}.txt").write_text(text)
    (root / "files" / "p11" / "p11000002" / "s50000004.txt").write_bytes(
        b"FINDINGS: caf\xe9 \xff\n"
    )
    metadata = tmp_path / "metadata.csv.gz"
    _write_csv(
        metadata,
        [
            "dicom_id",
            "subject_id",
            "study_id",
            "PerformedProcedureStepDescription",
            "ViewPosition",
            "StudyDate",
            "StudyTime",
        ],
        [
            ["d1", "10000001", "50000001", "CHEST", "PA", "21800506", "213014.531"],
            ["d2", "10000001", "50000001", "CHEST", "LATERAL", "21800506", "213014.531"],
            ["d3", "10000001", "50000002", "CHEST", "AP", "21790101", "080000"],
            ["d4", "11000002", "50000003", "CHEST", "PA", "21810101", "1200"],
        ],
        gz=True,
    )
    split = tmp_path / "split.csv"
    _write_csv(
        split,
        ["dicom_id", "study_id", "subject_id", "split"],
        [
            ["d1", "50000001", "10000001", "validate"],
            ["d3", "50000002", "10000001", "validate"],
            ["d4", "50000003", "11000002", "test"],
        ],
    )
    chexpert = tmp_path / "chexpert.csv"
    labels = [
        "1.0" if c == "Pleural Effusion" else ("-1.0" if c == "Pneumonia" else "")
        for c in CHEXPERT_CLASSES
    ]
    _write_csv(
        chexpert, ["subject_id", "study_id", *CHEXPERT_CLASSES], [["10000001", "50000001", *labels]]
    )
    stats = ReadStats()
    reports = {
        r.report_id: r for r in read_mimic(root, metadata, split, chexpert, tmp_path / "jpg", stats)
    }
    assert set(reports) == {"50000001", "50000002", "50000003"}
    assert stats.skipped == {"not UTF-8": 1}
    first = reports["50000001"]
    assert first.patient_id == "10000001" and first.split == "val"
    assert [(im.image_id, im.view) for im in first.images] == [("d1", "PA"), ("d2", "LATERAL")]
    assert first.images[0].path.endswith("files/p10/p10000001/s50000001/d1.jpg")
    assert (
        first.study_time == "21800506213014" and reports["50000002"].study_time < first.study_time
    )
    assert first.reference_labels == {"Pleural Effusion": 1, "Pneumonia": -1}
    assert first.impression.startswith("Small left pleural effusion")
    with pytest.raises(ValueError, match="missing column"):
        _write_csv(tmp_path / "bad.csv", ["study_id"], [["1"]])
        list(read_mimic(root, split_csv=None, chexpert_csv=tmp_path / "bad.csv"))


def test_table_reader_csv_and_jsonl(tmp_path: Path) -> None:
    table = tmp_path / "reports.csv"
    _write_csv(
        table,
        ["image", "report", "patient_id", "view", "study_id"],
        [
            [
                "img/a.png",
                "FINDINGS: Small right effusion.\nIMPRESSION: Effusion.",
                "P1",
                "pa",
                "S1",
            ],
            [
                "img/b.png",
                "FINDINGS: Small right effusion.\nIMPRESSION: Effusion.",
                "P1",
                "lateral",
                "S1",
            ],
            ["img/c.png", "Clear lungs. No effusion.", "P2", "PA", ""],
            ["img/d.png", "", "P3", "PA", ""],
        ],
    )
    stats = ReadStats()
    reports = list(read_table(table, stats=stats))
    assert len(reports) == 2 and stats.skipped == {"no report text": 1}
    assert [im.view for im in reports[0].images] == ["PA", "LATERAL"]
    assert reports[0].images[0].path == str(tmp_path / "img" / "a.png")
    assert reports[1].findings == "Clear lungs. No effusion."
    jsonl = tmp_path / "reports.jsonl"
    jsonl.write_text(
        json.dumps({"image_path": "/x/e.png", "text": "IMPRESSION: Normal."}) + "\nnot json\n"
    )
    stats = ReadStats()
    (only,) = read_table(jsonl, stats=stats)
    assert only.impression == "Normal." and only.images[0].image_id == "e"
    assert stats.skipped == {"malformed JSON line": 1}
