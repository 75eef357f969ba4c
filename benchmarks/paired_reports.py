"""Two `llmcxr evaluate` runs on the same items, compared item by item.

    .venv/bin/python benchmarks/paired_reports.py --a runs/eval_new --b runs/eval_shipped --out F
    .venv/bin/python benchmarks/paired_reports.py --task image --a RUN --b RUN --out F

``--task report`` (default): each run's ``items/report.jsonl`` holds the sampled reports per film;
on the films both runs hold, this labels them as the report task does
(`llmcxr.evaluation.report_task.sampled_label_scores`, with the section, uncertain-label rule and
headline threshold the runs' ``metrics.json`` record, which must agree). ``--task image``: each
run's ``items/image.jsonl`` holds the classifier's outputs on the images drawn for each report;
they are scored as the image task does (the classifier's columns per class, averaged over a
report's images) against the report's labels, and both runs must have used the same classifier
labels. Either way it prints each run's headline macro AUROC and the difference a - b with a
paired bootstrap 95 % interval (items resampled once for both).
Why: the evaluation's per-run intervals hold the noise of which items were drawn, so two
runs whose intervals overlap may still differ; the paired interval says whether they do. It does
not replace a rule that was fixed on per-run intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cxrcommon.files import atomic_write

LABEL_SETTINGS = ("report_section", "uncertain_as_positive", "min_positives")
"""What decides the truth and the headline classes: both runs must have used the same."""


def read_run(
    run: Path, task: str = "report"
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """A task's stored rows of an evaluation run, by key, its label settings, and its whole
    ``metrics.json``."""
    items, metrics = run / "items" / f"{task}.jsonl", run / "metrics.json"
    for path in (items, metrics):
        if not path.is_file():
            raise SystemExit(
                f"{path} is missing: pass a finished `llmcxr evaluate --tasks {task}` folder"
            )
    rows = [json.loads(line) for line in items.read_text().splitlines() if line.strip()]
    stored = json.loads(metrics.read_text())
    settings = stored["run"]
    return {row["key"]: row for row in rows}, {k: settings[k] for k in LABEL_SETTINGS}, stored


def _common_keys(
    rows_a: dict[str, dict[str, Any]], rows_b: dict[str, dict[str, Any]], field: str
) -> list[str]:
    """The items both runs hold; refused when none, or when one item's `field` (its reference
    text) differs, which means the runs read different splits."""
    keys = sorted(set(rows_a) & set(rows_b))
    if not keys:
        raise SystemExit("the two runs share no item")
    if any(rows_a[k][field] != rows_b[k][field] for k in keys):
        raise SystemExit("the runs hold different references for one item: not the same split")
    return keys


def _classifier_labels(stored: dict[str, Any]) -> list[str]:
    """The output labels of the classifier an image-task run used (its export's
    ``classifier.json``, so no weights are loaded)."""
    path = Path(str(stored["run"].get("classifier") or ""))
    config = path / "classifier.json" if path.is_dir() else path.with_suffix(".json")
    if not config.is_file():
        raise SystemExit(f"{config} not found: the image run's classifier export is needed")
    return list(json.loads(config.read_text())["labels"])


def compare_images(a: Path, b: Path, n_boot: int, seed: int) -> dict[str, Any]:
    """Headline macro AUROC of the drawings' classifier scores against their reports' labels, on
    the reports both runs drew for, and the paired difference."""
    from llmcxr.evaluation.classifier import chexpert_columns
    from llmcxr.evaluation.image_task import drawing_scores
    from llmcxr.evaluation.labelling import label_matrix
    from llmcxr.evaluation.metrics import paired_macro_auroc_difference

    (rows_a, settings, stored_a), (rows_b, settings_b, stored_b) = (
        read_run(a, "image"),
        read_run(b, "image"),
    )
    if settings != settings_b:
        raise SystemExit(f"the runs labelled reports differently: {settings} against {settings_b}")
    labels = _classifier_labels(stored_a)
    if labels != _classifier_labels(stored_b):
        raise SystemExit("the runs' classifiers have different labels")
    classes = stored_a["image"]["classes"]
    if classes != stored_b["image"]["classes"]:
        raise SystemExit(f"the runs scored different classes: {classes}")
    keys = _common_keys(rows_a, rows_b, "report")
    columns = chexpert_columns(labels, classes)
    truth = label_matrix(
        [rows_a[k]["report"] for k in keys],
        classes,
        uncertain_as_positive=settings["uncertain_as_positive"],
    )

    result = paired_macro_auroc_difference(
        truth,
        drawing_scores([rows_a[k] for k in keys], columns),
        drawing_scores([rows_b[k] for k in keys], columns),
        min_positives=settings["min_positives"],
        n_boot=n_boot,
        seed=seed,
    )
    return {"task": "image", "reports": len(keys), "classes": classes, **settings, **result}


def compare(a: Path, b: Path, n_boot: int, seed: int) -> dict[str, Any]:
    """Headline macro AUROC of both runs on their common films and the paired difference."""
    from llmcxr.evaluation.labelling import chexpert_classes, label_matrix
    from llmcxr.evaluation.metrics import paired_macro_auroc_difference
    from llmcxr.evaluation.report_task import sampled_label_scores

    (rows_a, settings, _), (rows_b, settings_b, _) = read_run(a), read_run(b)
    if settings != settings_b:
        raise SystemExit(f"the runs labelled reports differently: {settings} against {settings_b}")
    keys = _common_keys(rows_a, rows_b, "reference")
    kw = {
        "section": settings["report_section"],
        "uncertain_as_positive": settings["uncertain_as_positive"],
    }
    classes = chexpert_classes()
    truth = label_matrix([rows_a[k]["reference"] for k in keys], classes, **kw)
    score_a, _ = sampled_label_scores([rows_a[k]["generated"] for k in keys], classes, **kw)
    score_b, _ = sampled_label_scores([rows_b[k]["generated"] for k in keys], classes, **kw)
    result = paired_macro_auroc_difference(
        truth, score_a, score_b, min_positives=settings["min_positives"], n_boot=n_boot, seed=seed
    )
    return {"films": len(keys), **settings, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("report", "image"), default="report")
    parser.add_argument("--a", type=Path, required=True, help="evaluation folder (candidate)")
    parser.add_argument("--b", type=Path, required=True, help="evaluation folder (reference)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    args = parser.parse_args(argv)
    result = {
        "a": str(args.a),
        "b": str(args.b),
        "seed": args.seed,
        **(compare_images if args.task == "image" else compare)(
            args.a, args.b, args.bootstrap, args.seed
        ),
    }
    print(json.dumps(result, indent=2))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
