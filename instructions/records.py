"""Turn labelled reports into Alpaca instruction records (the contract columns) and mix tasks per
stage."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from instructions.labeler import (
    CHEXPERT_CLASSES,
    POSITIVE,
    UNCERTAIN,
    Finding,
    extract_findings,
    labels_from_findings,
)
from instructions.prompt_format import IMAGE_PLACEHOLDER
from instructions.reports import ImageRef, Report
from instructions.splits import stable_fraction
from instructions.templates import InstructionTemplates
from instructions.vqa import QAPair, synthesize_vqa

TASKS = ("cxr_to_report", "report_to_cxr", "vqa", "text")
COLUMNS = (
    "id",
    "task",
    "instruction",
    "input",
    "response",
    "image_id",
    "patient_id",
    "labels",
    "source",
    "report_pool",
)


@dataclass(frozen=True)
class TaskMix:
    """Share of each task in a stage (normalised; LLM-CXR: stage 1 30/30/20/20, stage 2
    21/21/63/5)."""

    cxr_to_report: float
    report_to_cxr: float
    vqa: float
    text: float

    def __post_init__(self) -> None:
        values = self.as_dict().values()
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise ValueError(
                f"task mix needs non-negative shares with a positive sum, got {self.as_dict()}"
            )

    def as_dict(self) -> dict[str, float]:
        """Task -> share as given."""
        return {t: float(getattr(self, t)) for t in TASKS}

    def normalised(self) -> dict[str, float]:
        """Task -> fraction summing to 1."""
        total = sum(self.as_dict().values())
        return {t: v / total for t, v in self.as_dict().items()}

    @classmethod
    def parse(cls, text: str) -> TaskMix:
        """From ``"30,30,20,20"`` (cxr_to_report, report_to_cxr, vqa, text)."""
        parts = [p for p in text.replace("/", ",").split(",") if p.strip()]
        if len(parts) != 4:
            raise ValueError(
                f"task mix needs 4 numbers (cxr_to_report,report_to_cxr,vqa,text), got {text!r}"
            )
        return cls(*(float(p) for p in parts))


STAGE1_MIX = TaskMix(30, 30, 20, 20)
STAGE2_MIX = TaskMix(21, 21, 63, 5)


@dataclass(frozen=True)
class Record:
    """One instruction record with the contract's string columns, plus its split and source
    report."""

    id: str
    task: str
    instruction: str
    input: str
    response: str
    image_id: str
    patient_id: str
    labels: str
    source: str
    split: str
    report_id: str
    report_pool: str = ""
    """Key of the report pool (``report_pool.json`` of the stage) a training run may draw this
    record's report text from instead of its own; empty: the text is fixed."""

    def row(self) -> dict[str, str]:
        """The contract columns only."""
        return {c: getattr(self, c) for c in COLUMNS}


@dataclass
class RecordOptions:
    """How one stage turns reports into candidate records."""

    text_sections: tuple[str, ...] = ("FINDINGS", "IMPRESSION")
    """Sections forming the report text (stage 1: findings + impression; stage 2: impression)."""
    alternate_directions: bool = True
    """Use each image for one direction only (cxr_to_report or report_to_cxr) by a stable hash of
    its id."""
    certain_qa_only: bool = False
    max_qa_per_report: int = 8
    seed: int = 0
    extra_qa: Callable[[str], list[QAPair]] | None = None
    """Optional extra QA source given the report text (e.g. ``vqa_llm.llm_qa`` with a local LM)."""


def direction_of(image_id: str) -> str:
    """The one direction an image is used for when directions alternate (stable across runs)."""
    return "cxr_to_report" if stable_fraction(image_id, "direction") < 0.5 else "report_to_cxr"


def abnormal_findings_text(findings: list[Finding]) -> str:
    """A short list of the positive/uncertain findings a report states (response of a text task)."""
    labels = labels_from_findings(findings)
    items = []
    for name in CHEXPERT_CLASSES:
        value = labels.get(name)
        if name == "No Finding" or value not in (POSITIVE, UNCERTAIN):
            continue
        detail = next((f for f in findings if f.label == name and f.status == value), None)
        words = [w for w in (detail.severity, detail.laterality) if w] if detail else []
        words = words + (["possible"] if value == UNCERTAIN else [])
        items.append(f"{name}" + (f" ({', '.join(words)})" if words else ""))
    return "; ".join(items) + "." if items else "No abnormal findings are described."


@dataclass
class ReportRecords:
    """Candidate records of one report for one stage, grouped by task."""

    report: Report
    text: str
    labels: dict[str, int]
    by_task: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))


def report_records(
    report: Report,
    images: list[ImageRef],
    split: str,
    templates: InstructionTemplates,
    options: RecordOptions,
) -> ReportRecords:
    """All candidate records of a report: both image directions (or the hashed one), VQA, text
    tasks."""
    text = report.text(options.text_sections)
    findings = extract_findings(text)
    labels = (
        report.reference_labels
        if report.reference_labels is not None
        else labels_from_findings(findings)
    )
    labels_json = json.dumps(labels, sort_keys=True)
    rng = random.Random(f"{options.seed}:{report.report_id}")
    out = ReportRecords(report, text, labels)
    # only the two directions hold the report text alone; VQA and text tasks stay tied to this one
    pool = report.pool.key if report.pool is not None else ""

    def add(
        task: str, key: str, instruction: str, input_: str, response: str, image_id: str = ""
    ) -> None:
        record_id = f"{report.source}:{report.report_id}:{task}:{key}"
        out.by_task[task].append(
            Record(
                record_id,
                task,
                instruction,
                input_,
                response,
                image_id,
                report.patient_id,
                labels_json,
                report.source,
                split,
                report.report_id,
                pool if task in ("cxr_to_report", "report_to_cxr") else "",
            )
        )

    if not text:
        return out
    for image in images:
        directions = (
            [direction_of(image.image_id)]
            if options.alternate_directions
            else ["cxr_to_report", "report_to_cxr"]
        )
        for direction in directions:
            instruction = templates.sample(direction, rng)
            if direction == "cxr_to_report":
                add(direction, image.image_id, instruction, IMAGE_PLACEHOLDER, text, image.image_id)
            else:
                add(direction, image.image_id, instruction, text, IMAGE_PLACEHOLDER, image.image_id)
    if images:
        # QA always draws on findings + impression of the (filtered) report: stage 2's
        # impression-only text would leave too few questions for its VQA-heavy mix.
        full_text = report.text()
        qa_findings = findings if full_text == text else extract_findings(full_text)
        pairs = synthesize_vqa(qa_findings, report.impression, rng, options.max_qa_per_report)
        if options.extra_qa is not None:
            pairs = pairs + options.extra_qa(full_text)
        for number, pair in enumerate(pairs):
            if options.certain_qa_only and not pair.certain:
                continue
            image = images[rng.randrange(len(images))]
            add(
                "vqa",
                f"{image.image_id}:{number}",
                pair.question,
                IMAGE_PLACEHOLDER,
                pair.answer,
                image.image_id,
            )
    if report.findings and report.impression:
        add(
            "text",
            "impression",
            templates.sample("text_impression", rng),
            report.findings,
            report.impression,
        )
    add(
        "text",
        "abnormal",
        templates.sample("text_abnormal_findings", rng),
        text,
        abnormal_findings_text(findings),
    )
    return out


def general_records(
    rows: Iterable[dict[str, object]], split_for: Callable[[str], str], source: str
) -> list[Record]:
    """Plain-text Alpaca/Dolly records (instruction, input/context, output/response) given by the
    user."""
    records = []
    for number, row in enumerate(rows):
        instruction = str(row.get("instruction", "")).strip()
        response = str(row.get("output", row.get("response", ""))).strip()
        if not instruction or not response:
            continue
        input_ = str(row.get("input", row.get("context", ""))).strip()
        record_id = f"{source}:{number}:text:general"
        records.append(
            Record(
                record_id,
                "text",
                instruction,
                input_,
                response,
                "",
                "",
                "{}",
                source,
                split_for(record_id),
                record_id,
            )
        )
    return records


def mix_records(
    pools: dict[str, list[Record]], mix: TaskMix, rng: random.Random, max_records: int | None = None
) -> tuple[list[Record], dict[str, object]]:
    """Sample records so the task shares follow ``mix`` without repeating any record.

    The total is the largest one every non-empty pool can supply at its share (capped by
    ``max_records``); tasks with an empty pool are left out and the others renormalised. Returns the
    records (sorted by id) and a summary of pool sizes, target and achieved counts.
    """
    shares = {t: f for t, f in mix.normalised().items() if f > 0 and pools.get(t)}
    summary: dict[str, object] = {
        "pool": {t: len(pools.get(t, [])) for t in TASKS},
        "mix": mix.as_dict(),
    }
    if not shares:
        summary["achieved"] = {t: 0 for t in TASKS}
        return [], summary
    norm = sum(shares.values())
    shares = {t: f / norm for t, f in shares.items()}
    total = min(len(pools[t]) / f for t, f in shares.items())
    if max_records is not None:
        total = min(total, max_records)
    chosen: list[Record] = []
    achieved = {t: 0 for t in TASKS}
    for task in TASKS:
        if task not in shares:
            continue
        count = min(len(pools[task]), round(shares[task] * total))
        picked = rng.sample(sorted(pools[task], key=lambda r: r.id), count)
        achieved[task] = count
        chosen.extend(picked)
    summary["achieved"] = achieved
    summary["left_out_tasks"] = [t for t in TASKS if mix.normalised()[t] > 0 and t not in shares]
    return sorted(chosen, key=lambda r: r.id), summary
