"""Build the two-stage LLM-CXR instruction dataset from a list of reports and save it (Arrow +
card)."""

from __future__ import annotations

import logging
import random
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from cxrcommon.files import new_folder_beside, replace_folders
from cxrcommon.manifest import ListedImage, write_image_list
from instructions.card import write_card
from instructions.filters import FilterPipeline, FilterRule, stage1_rules, stage2_rules
from instructions.prompt_format import PromptFormat
from instructions.records import (
    COLUMNS,
    STAGE1_MIX,
    STAGE2_MIX,
    Record,
    RecordOptions,
    TaskMix,
    general_records,
    mix_records,
    report_records,
)
from instructions.report_pool import ReportPools, stage_pools
from instructions.reports import ImageRef, Report, ReportPool
from instructions.splits import SPLITS, SplitConfig, patient_splits
from instructions.templates import InstructionTemplates
from instructions.vqa import QAPair

logger = logging.getLogger(__name__)


@dataclass
class StageConfig:
    """What one training stage keeps and how its tasks are mixed."""

    name: str
    rules: list[FilterRule]
    mix: TaskMix
    text_sections: tuple[str, ...] = ("FINDINGS", "IMPRESSION")
    frontal_only: bool = False
    keep_unknown_views: bool = True
    """With ``frontal_only``: keep images whose view is unknown (e.g. OpenI without its metadata
    CSV)."""
    earliest_study_only: bool = False
    certain_qa_only: bool = False
    max_records: int | None = None
    """Cap per split (None: as many as the task mix allows)."""


def default_stages(
    min_findings_words: int = 10,
    min_impression_words: int = 2,
    drop_prior: bool = True,
    deid_mode: str = "strip",
    stage1_mix: TaskMix = STAGE1_MIX,
    stage2_mix: TaskMix = STAGE2_MIX,
    keep_unknown_views: bool = True,
) -> tuple[StageConfig, StageConfig]:
    """LLM-CXR's stages: 1 = all views, findings + impression, all QA; 2 = frontal, earliest study,
    impression."""
    stage1 = StageConfig("stage1", stage1_rules(deid_mode), stage1_mix)
    stage2 = StageConfig(
        "stage2",
        stage2_rules(min_findings_words, min_impression_words, drop_prior, deid_mode),
        stage2_mix,
        text_sections=("IMPRESSION",),
        frontal_only=True,
        keep_unknown_views=keep_unknown_views,
        earliest_study_only=True,
        certain_qa_only=True,
    )
    return stage1, stage2


@dataclass
class BuildConfig:
    """Everything the build needs besides the reports."""

    stages: tuple[StageConfig, ...] = field(default_factory=default_stages)
    split: SplitConfig = field(default_factory=SplitConfig)
    seed: int = 0
    alternate_directions: bool = True
    max_qa_per_report: int = 8
    extra_qa: Callable[[str], list[QAPair]] | None = None
    """Optional extra VQA source (e.g. a local LM via ``instructions.vqa_llm``)."""
    general_instructions: list[dict[str, object]] = field(default_factory=list)
    """Optional plain-text Alpaca/Dolly rows (instruction, input/context, output/response)."""
    sources: dict[str, object] = field(default_factory=dict)
    """Described in the card: corpus, paths, read statistics."""
    notes: list[str] = field(default_factory=list)


@dataclass
class StageResult:
    """One built stage: records per split, filter and mix summaries, and the source reports it drew
    on."""

    name: str
    records: dict[str, list[Record]]
    filters: dict[str, object]
    mix: dict[str, object]
    source_report_ids: set[str]
    views_dropped: int = 0
    not_earliest_dropped: int = 0
    report_pools: ReportPools | None = None
    """Pools the paired records may draw their report from (None: no record names one)."""


def _earliest_studies(reports: list[Report]) -> tuple[list[Report], int]:
    by_patient: dict[str, list[Report]] = defaultdict(list)
    for report in reports:
        by_patient[report.patient_id].append(report)
    kept: list[Report] = []
    for studies in by_patient.values():
        dated = [r for r in studies if r.study_time]
        if dated:
            kept.append(min(dated, key=lambda r: (r.study_time, r.report_id)))
        else:  # no dates: every study stays (OpenI has one study per patient anyway)
            kept.extend(studies)
    order = {id(r): i for i, r in enumerate(reports)}
    kept.sort(key=lambda r: order[id(r)])
    return kept, len(reports) - len(kept)


def _stage_images(report: Report, stage: StageConfig) -> list[ImageRef]:
    if not stage.frontal_only:
        return list(report.images)
    return [
        im for im in report.images if im.is_frontal or (not im.view and stage.keep_unknown_views)
    ]


def build_stage(
    reports: list[Report],
    stage: StageConfig,
    splits: dict[str, str],
    config: BuildConfig,
    templates: InstructionTemplates,
) -> StageResult:
    """Filter, select and turn reports into mixed records for one stage."""
    pipeline = FilterPipeline(stage.rules)
    kept = list(pipeline(reports))
    dropped_old = 0
    if stage.earliest_study_only:
        kept, dropped_old = _earliest_studies(kept)
    options = RecordOptions(
        text_sections=stage.text_sections,
        alternate_directions=config.alternate_directions,
        certain_qa_only=stage.certain_qa_only,
        max_qa_per_report=config.max_qa_per_report,
        extra_qa=config.extra_qa,
        seed=config.seed,
    )
    pools: dict[str, dict[str, list[Record]]] = {s: defaultdict(list) for s in SPLITS}
    views_dropped = 0
    sources: set[str] = set()
    report_pools: dict[str, ReportPool] = {}
    for report in tqdm(kept, desc=f"{stage.name} records", unit="report", leave=False):
        if report.pool is not None:
            if report.pool.split != splits[report.patient_id]:
                raise ValueError(
                    f"study {report.report_id} is in split {splits[report.patient_id]} but its "
                    f"report pool {report.pool.key!r} is not: pair and build with one SplitConfig"
                )
            report_pools[report.pool.key] = report.pool
        images = _stage_images(report, stage)
        views_dropped += len(report.images) - len(images)
        built = report_records(report, images, splits[report.patient_id], templates, options)
        if built.by_task:
            sources.add(report.report_id)
        for task, records in built.by_task.items():
            pools[splits[report.patient_id]][task].extend(records)
    for record in general_records(
        config.general_instructions, lambda rid: config.split.assign(rid), "general"
    ):
        pools[record.split]["text"].append(record)
    chosen: dict[str, list[Record]] = {}
    mix_summary: dict[str, object] = {}
    for split in SPLITS:
        rng = random.Random(f"{config.seed}:{stage.name}:{split}")
        chosen[split], mix_summary[split] = mix_records(
            pools[split], stage.mix, rng, stage.max_records
        )
    drawable = stage_pools(chosen, report_pools, stage.rules, stage.text_sections)
    return StageResult(
        stage.name,
        chosen,
        pipeline.summary(),
        mix_summary,
        sources,
        views_dropped,
        dropped_old,
        drawable if drawable.pools else None,
    )


def build_dataset(reports: list[Report], config: BuildConfig) -> list[StageResult]:
    """Both stages from the same reports, with one patient-level split shared by all stages."""
    officials: dict[str, set[str]] = defaultdict(set)
    for report in reports:
        officials[report.patient_id].add(report.split)
    splits = patient_splits({p: s - {""} for p, s in officials.items()}, config.split)
    templates = InstructionTemplates.load()
    return [build_stage(reports, stage, splits, config, templates) for stage in config.stages]


def _save_stage(result: StageResult, out: Path) -> Path:
    """Write one stage's DatasetDict into a new staging folder beside the old stage; returns it."""
    from datasets import (
        Dataset,
        DatasetDict,
        Features,
        Value,
    )  # lazy: keeps `import instructions` light

    features = Features({c: Value("string") for c in COLUMNS})
    dataset = DatasetDict(
        {
            split: Dataset.from_dict(
                {c: [r.row()[c] for r in records] for c in COLUMNS}, features=features
            )
            for split, records in result.records.items()
        }
    )
    staging = new_folder_beside(out / result.name)
    dataset.save_to_disk(str(staging))
    if result.report_pools is not None:
        result.report_pools.save(staging)
    return staging


def save_dataset(
    results: list[StageResult], reports: list[Report], config: BuildConfig, out: str | Path
) -> dict[str, object]:
    """Write ``stage*/`` (DatasetDict), ``images.jsonl``, ``prompt_format.json``, ``card.json``,
    ``README.md``.

    The new stages are written beside the old ones and swapped in only once all are complete, so
    a failed or interrupted build leaves the previous dataset whole.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staged: dict[Path, Path] = {}
    try:
        for result in results:
            staged[out / result.name] = _save_stage(result, out)
        replace_folders(staged)
    finally:
        for staging in staged.values():
            shutil.rmtree(staging, ignore_errors=True)
    images: dict[str, ListedImage] = {}
    for report in reports:
        for image in report.images:
            images.setdefault(
                image.image_id,
                ListedImage(image.image_id, image.path, report.patient_id, image.view),
            )
    # The split travels with each image so image-only training (classifier, tokenizer) can leave
    # out the same test patients as the LLM (``held_out`` of the vqgan data modules).
    split_of = {
        r.image_id: split
        for res in results
        for split, recs in res.records.items()
        for r in recs
        if r.image_id
    }
    used = sorted(split_of)
    write_image_list(out, [replace(images[i], split=split_of[i]) for i in used])
    PromptFormat().save(out / "prompt_format.json")
    return write_card(out, results, config, n_images=len(used), n_reports=len(reports))
