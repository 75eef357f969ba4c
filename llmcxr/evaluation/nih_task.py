"""CXR -> report on the real NIH ChestX-ray14 images of the split, scored against their NIH labels.

The report task scores generated reports against the labels of label-matched (synthetic)
reference reports; this task scores them against the findings radiologists' reports gave each
NIH image (Wang et al., CVPR 2017), mapped to the CheXpert classes they name
(:data:`~llmcxr.evaluation.labelling.NIH_TO_CHEXPERT`, 11 classes). Beside it stands the
always-"No Finding" baseline, a constant answer that already scores well on micro averages.

Reports are generated exactly as in the report task and shared with it through its result store:
an NIH image the report task has already read costs nothing here.

With a classifier, the reference readers of :mod:`llmcxr.evaluation.reference_readers` stand
beside the model.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr.evaluation import report_task
from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord, EvalSplit
from llmcxr.evaluation.labelling import NO_FINDING, nih_classes, nih_label_matrix
from llmcxr.evaluation.metrics import MIN_POSITIVES, classification_metrics, headline_intervals
from llmcxr.evaluation.reference_readers import reference_reader_metrics

SOURCE = "nih_chestxray14"
"""Image ids of NIH images start with this folder name (``instructions.paired``)."""


def _file(row: dict[str, Any]) -> str:
    """The NIH file name of a result row (its image id without the source folder)."""
    return row["image_id"].split("/", 1)[-1]


def nih_records(split: EvalSplit) -> list[EvalRecord]:
    """One CXR->report record per NIH image of the split: the stage's own record when it has one
    (so the report task's result is reused), else a record made for the image alone."""
    by_image: dict[str, EvalRecord] = {}
    for record in split.records("cxr_to_report"):
        by_image.setdefault(record.image_id, record)
    return [
        by_image.get(image_id)
        or EvalRecord(
            id=f"image:{image_id}",
            task="cxr_to_report",
            instruction="",
            input="",
            response="",
            image_id=image_id,
            image_path=path,
        )
        for image_id, path in sorted(split.images_of_split(f"{SOURCE}/"))
    ]


def labels_csv_for(records: Sequence[EvalRecord], given: str | Path | None) -> Path:
    """``given``, else the ``labels.csv`` of the NIH folder the images come from
    (``<folder>/images/<file>``, the layout of ``shared/data``)."""
    if given:
        return Path(given)
    if not records or records[0].image_path is None:
        raise FileNotFoundError(
            "no NIH ChestX-ray14 images in this split to find labels.csv beside"
        )
    return records[0].image_path.parent.parent / "labels.csv"


def read_findings(labels_csv: Path) -> dict[str, list[str]]:
    """``file name -> NIH findings`` from a ``labels.csv`` (``filename``, ``labels`` split on
    '|')."""
    if not labels_csv.is_file():
        raise FileNotFoundError(
            f"{labels_csv} not found: pass the NIH labels.csv with --nih-labels"
        )
    with labels_csv.open(newline="") as handle:
        return {
            row["filename"]: [name.strip() for name in row["labels"].split("|") if name.strip()]
            for row in csv.DictReader(handle)
        }


def constant_label_metrics(
    truth: np.ndarray,
    classes: Sequence[str],
    positive: Sequence[str],
    *,
    min_positives: int = MIN_POSITIVES,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics (and bootstrap intervals) of a reader that gives every image the same label set
    ``positive``; its score is the label itself."""
    row = np.array([int(c in positive) for c in classes], dtype=np.int64)
    constant = np.tile(row, (len(truth), 1))
    out = classification_metrics(truth, constant, constant, classes, min_positives=min_positives)
    out["ci95"] = headline_intervals(
        truth, constant, constant, min_positives=min_positives, n_boot=n_boot, seed=seed
    )
    return out


def run(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Generate ``samples_per_image`` reports per image (stored with the report task's results)."""
    return report_task.run(ctx, records)


def summarize(
    ctx: RunContext,
    rows: Sequence[dict[str, Any]],
    findings: dict[str, list[str]],
    reference_rows: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Label metrics of the generated reports against NIH labels, of always "No Finding", and of
    the classifier reference readers when ``reference_rows``
    (:func:`~llmcxr.evaluation.reference_readers.classify_films`) are given."""
    cfg = ctx.config
    rows = [r for r in rows if _file(r) in findings]
    if not rows:
        return {
            "n_items": 0,
            "note": f"no {SOURCE} images with NIH labels in the {cfg.split} split",
        }
    classes = nih_classes()
    truth = nih_label_matrix([findings[_file(r)] for r in rows], classes)
    score, pred = report_task.sampled_label_scores(
        [r["generated"] for r in rows],
        classes,
        section=cfg.report_section,
        uncertain_as_positive=cfg.uncertain_as_positive,
    )
    out = classification_metrics(truth, score, pred, classes, min_positives=cfg.min_positives)
    out["ci95"] = headline_intervals(
        truth, score, pred, min_positives=cfg.min_positives, n_boot=cfg.bootstrap, seed=cfg.seed
    )
    out["samples_per_image"] = len(rows[0]["generated"])
    out["baseline_no_finding"] = constant_label_metrics(
        truth,
        classes,
        [NO_FINDING],
        min_positives=cfg.min_positives,
        n_boot=cfg.bootstrap,
        seed=cfg.seed,
    )
    out.update(
        reference_reader_metrics(
            ctx,
            reference_rows,
            lambda kept: nih_label_matrix([findings[_file(r)] for r in kept], classes),
            keep=lambda r: _file(r) in findings,
        )
    )
    return out
