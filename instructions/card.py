"""The dataset card: counts per stage, split and task, filter steps, sources and notes (JSON +
README)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from cxrcommon.files import atomic_write_text
from instructions.records import COLUMNS, TASKS
from instructions.report_pool import pool_summary
from instructions.splits import SPLITS

if TYPE_CHECKING:
    from instructions.build import BuildConfig, StageResult

DATASET_NOTES = [
    (
        "Images are referenced by id (images.jsonl); the LLM side joins ids with cached image "
        "tokens and reports records dropped for missing images."
    ),
    (
        "General instruction data (dolly-15k, as LLM-CXR used) is not available offline; pass "
        "--general-instructions FILE.jsonl to add your own. Without it the 'text' task holds "
        "report-derived text tasks only (impression from findings, list of abnormal findings)."
    ),
    (
        "VQA pairs are synthesised by rules from each report's own sentences (LLM-CXR used "
        "Llama-2-13b-chat)."
    ),
]


def _jsonable(value: object) -> object:
    """JSON for the card's non-JSON values (dataclass statistics, sets)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"card value of type {type(value).__name__} is not JSON serialisable")


def card_dict(
    results: list[StageResult], config: BuildConfig, n_images: int, n_reports: int
) -> dict[str, object]:
    """The card as a plain dict."""
    stages = {}
    for result in results:
        counts = {
            s: {t: sum(r.task == t for r in result.records[s]) for t in TASKS} for s in SPLITS
        }
        stages[result.name] = {
            "records": {s: len(result.records[s]) for s in SPLITS},
            "counts": counts,
            "source_reports": len(result.source_report_ids),
            "patients": {
                s: len({r.patient_id for r in result.records[s] if r.patient_id}) for s in SPLITS
            },
            "filters": result.filters,
            "images_dropped_by_view": result.views_dropped,
            "studies_dropped_not_earliest": result.not_earliest_dropped,
            "mix": result.mix,
        }
        if result.report_pools is not None:
            stages[result.name]["report_pools"] = pool_summary(result.records, result.report_pools)
    return {
        "format": "llmcxr-instructions/1",
        "columns": list(COLUMNS),
        "reports_read": n_reports,
        "images": n_images,
        "seed": config.seed,
        "split": {
            "val_fraction": config.split.val_fraction,
            "test_fraction": config.split.test_fraction,
            "by": "patient (official split when the corpus has one)",
        },
        "alternate_directions": config.alternate_directions,
        "sources": config.sources,
        "stages": stages,
        "notes": DATASET_NOTES + config.notes,
    }


def card_markdown(card: dict[str, object]) -> str:
    """A README for the dataset folder, rendered from the card."""
    lines = [
        "# LLM-CXR instruction data",
        "",
        f"Reports read: {card['reports_read']}; images referenced: {card['images']}.",
        "",
    ]
    for name, stage in card["stages"].items():  # type: ignore[union-attr]
        lines += [
            f"## {name}",
            "",
            f"Source reports: {stage['source_reports']}",
            "",
            "| split | " + " | ".join(TASKS) + " | total |",
            "|---|" + "---|" * (len(TASKS) + 1),
        ]
        for split in SPLITS:
            row = stage["counts"][split]
            lines.append(
                f"| {split} | "
                + " | ".join(str(row[t]) for t in TASKS)
                + f" | {sum(row.values())} |"
            )
        lines += ["", "Filter steps (removed):", ""]
        lines += [f"- {s['name']}: {s['removed']}" for s in stage["filters"]["steps"]]
        lines += [
            f"- images dropped by view: {stage['images_dropped_by_view']}",
            (
                "- studies dropped (not the patient's earliest): "
                f"{stage['studies_dropped_not_earliest']}"
            ),
            "",
        ]
        if "report_pools" in stage:
            lines += [f"Report pools (report_pool.json): {json.dumps(stage['report_pools'])}", ""]
    lines += [
        "## Sources",
        "",
        "```json",
        json.dumps(card["sources"], indent=2, default=_jsonable),
        "```",
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {note}" for note in card["notes"]]  # type: ignore[union-attr]
    return "\n".join(lines) + "\n"


def write_card(
    out: Path, results: list[StageResult], config: BuildConfig, n_images: int, n_reports: int
) -> dict[str, object]:
    """Write ``card.json`` and ``README.md`` into ``out``; returns the card."""
    card = card_dict(results, config, n_images, n_reports)
    atomic_write_text(out / "card.json", json.dumps(card, indent=2, default=_jsonable))
    atomic_write_text(out / "README.md", card_markdown(card))
    return card
