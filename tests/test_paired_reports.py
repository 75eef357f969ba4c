"""benchmarks/paired_reports.py: two evaluation runs compared on their common films."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_modules import load_benchmark

EFFUSION = "Large right pleural effusion."
NORMAL = "No acute cardiopulmonary abnormality."


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("paired_reports")


def _run(
    root: Path, generated: list[list[str]], references: list[str], section: str = "full"
) -> Path:
    items = root / "items"
    items.mkdir(parents=True)
    rows = [
        {"key": f"film{i}", "reference": ref, "generated": gen}
        for i, (ref, gen) in enumerate(zip(references, generated, strict=True))
    ]
    (items / "report.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"report_section": section, "uncertain_as_positive": False, "min_positives": 5}
    (root / "metrics.json").write_text(json.dumps({"run": settings}))
    return root


def test_a_reader_against_a_blind_one(bench, tmp_path: Path) -> None:
    references = [EFFUSION] * 5 + [NORMAL] * 5
    reads = _run(tmp_path / "a", [[r, r, r] for r in references], references)
    blind = _run(tmp_path / "b", [[NORMAL, NORMAL, NORMAL]] * 10, references)
    out = tmp_path / "paired.json"
    assert bench.main(["--a", str(reads), "--b", str(blind), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # headline classes: Pleural Effusion and No Finding (5 positives each); a reads both
    # perfectly, b writes one report for every film
    assert result["films"] == 10 and result["headline_classes"] == 2
    assert (result["auroc_macro_a"], result["auroc_macro_b"]) == (1.0, 0.5)
    assert result["difference"] == pytest.approx(0.5)
    assert result["difference_ci95"][0] > 0


def test_runs_of_different_splits_are_refused(bench, tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [[NORMAL]], [NORMAL])
    b = _run(tmp_path / "b", [[NORMAL]], [EFFUSION])
    with pytest.raises(SystemExit, match="different references"):
        bench.main(["--a", str(a), "--b", str(b), "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="items/report.jsonl is missing"):
        bench.main(["--a", str(tmp_path), "--b", str(b), "--out", str(tmp_path / "x.json")])
    other = _run(tmp_path / "c", [[NORMAL]], [NORMAL], section="impression")
    with pytest.raises(SystemExit, match="labelled reports differently"):
        bench.main(["--a", str(a), "--b", str(other), "--out", str(tmp_path / "x.json")])


def _image_run(root: Path, probs: list[list[float]], reports: list[str], classifier: Path) -> Path:
    """An image-task run: per report, the classifier's outputs (Effusion, No Finding) on its two
    drawings."""
    items = root / "items"
    items.mkdir(parents=True)
    rows = [
        {"key": f"report{i}", "report": report, "generated_probs": [p, p]}
        for i, (report, p) in enumerate(zip(reports, probs, strict=True))
    ]
    (items / "image.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = {
        "report_section": "full",
        "uncertain_as_positive": False,
        "min_positives": 5,
        "classifier": str(classifier),
    }
    image = {"classes": ["Pleural Effusion", "No Finding"]}
    (root / "metrics.json").write_text(json.dumps({"run": run, "image": image}))
    return root


def test_drawings_that_follow_their_reports_against_constant_ones(bench, tmp_path: Path) -> None:
    classifier = tmp_path / "classifier_export"
    classifier.mkdir()
    (classifier / "classifier.json").write_text(json.dumps({"labels": ["Effusion", "No Finding"]}))
    reports = [EFFUSION] * 5 + [NORMAL] * 5
    follows = [[0.9, 0.1]] * 5 + [[0.2, 0.8]] * 5
    a = _image_run(tmp_path / "a", follows, reports, classifier)
    b = _image_run(tmp_path / "b", [[0.3, 0.6]] * 10, reports, classifier)
    out = tmp_path / "paired.json"
    assert bench.main(["--task", "image", "--a", str(a), "--b", str(b), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["reports"] == 10 and result["headline_classes"] == 2
    assert (result["auroc_macro_a"], result["auroc_macro_b"]) == (1.0, 0.5)
    assert result["difference"] == pytest.approx(0.5) and result["difference_ci95"][0] > 0
    # runs of different reports or classifiers are refused
    other = _image_run(tmp_path / "c", follows, [NORMAL] * 10, classifier)
    with pytest.raises(SystemExit, match="different references"):
        bench.main(["--task", "image", "--a", str(a), "--b", str(other), "--out", str(out)])
    (classifier / "classifier.json").unlink()
    with pytest.raises(SystemExit, match="classifier.json not found"):
        bench.main(["--task", "image", "--a", str(a), "--b", str(b), "--out", str(out)])
