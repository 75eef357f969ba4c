"""`llmcxr evaluate`: the LLM-CXR evaluation tables for a model on a built test split.

Example::

    llmcxr evaluate --model runs/stage2/model --data data/openi --stage 2 --split test \\
        --tasks report,nih,image,vqa,roundtrip,tokenizer --classifier densenet121-res224-all \\
        --out results/eval --limit 200
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from llmcxr.evaluation.config import TASKS, EvaluationConfig

logger = logging.getLogger(__name__)

_DEFAULTS = {f.name: f.default for f in fields(EvaluationConfig) if f.name != "data"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmcxr evaluate",
        description="Evaluate a model like LLM-CXR's Tables 1 and 4 (resumable: rerun the same "
        "command to continue an interrupted run).",
    )
    p.add_argument(
        "--data", type=Path, required=True, help="built dataset folder (llmcxr data build)"
    )
    p.add_argument("--model", help="model folder or training .ckpt (default: the embedded model)")
    p.add_argument(
        "--out", type=Path, default=_DEFAULTS["out"], help="results folder (default %(default)s)"
    )
    p.add_argument(
        "--stage",
        type=int,
        choices=(1, 2),
        default=_DEFAULTS["stage"],
        help="dataset stage: 1 = findings+impression, 2 = impression only (default %(default)s)",
    )
    p.add_argument(
        "--split", default=_DEFAULTS["split"], help="dataset split (default %(default)s)"
    )
    p.add_argument(
        "--tasks",
        help=f"comma-separated subset of {','.join(TASKS)} (default: all; "
        "without --classifier all but image and roundtrip)",
    )
    p.add_argument(
        "--classifier",
        help="CXR classifier weights: export folder, .safetensors, .ckpt, "
        "or a torchxrayvision cache name such as densenet121-res224-all (never downloaded)",
    )
    p.add_argument(
        "--limit",
        type=int,
        help="a seeded random subset of N records per task (quick runs; "
        "a larger N contains a smaller one's records; default: the whole split)",
    )
    p.add_argument(
        "--report-section",
        choices=("full", "impression"),
        default=_DEFAULTS["report_section"],
        help="score the whole report or its IMPRESSION section (default %(default)s)",
    )
    p.add_argument(
        "--samples-per-image",
        type=int,
        default=_DEFAULTS["samples_per_image"],
        help="sampled reports per image; > 1 gives AUROC from label frequencies (default %(default)s)",
    )
    p.add_argument(
        "--images-per-report",
        type=int,
        default=_DEFAULTS["images_per_report"],
        help="generated images per report; >= 2 for diversity (default %(default)s)",
    )
    p.add_argument(
        "--uncertain-as-positive",
        action="store_true",
        help="count the labeler's uncertain (-1) as positive (default: negative)",
    )
    p.add_argument("--batch-size", type=int, default=_DEFAULTS["batch_size"])
    p.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    p.add_argument(
        "--max-new-tokens", type=int, help="report / answer length cap (default: the model's)"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=_DEFAULTS["bootstrap"],
        help="bootstrap resamples for 95%% intervals, 0 = none (default %(default)s)",
    )
    p.add_argument(
        "--device", default=_DEFAULTS["device"], help="auto, cpu, cuda, mps (default %(default)s)"
    )
    p.add_argument(
        "--quantize",
        choices=("auto", "none", "int8"),
        default=_DEFAULTS["quantize"],
        help="the model's speed mode, as on the other commands (default %(default)s)",
    )
    p.add_argument(
        "--inception-weights", help="torchvision inception_v3 state dict for Inception FID"
    )
    p.add_argument(
        "--nih-labels",
        help="NIH ChestX-ray14 labels.csv for the nih task (default: the "
        "labels.csv beside the NIH images, <folder>/images/../labels.csv)",
    )
    p.add_argument(
        "--min-positives",
        type=int,
        default=_DEFAULTS["min_positives"],
        help="headline macro AUROC / F1 average classes with at least this many positives "
        "(default %(default)s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the evaluation, print where the results are; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from llmcxr.evaluation.runner import evaluate

    try:
        config = EvaluationConfig(
            data=args.data,
            model=args.model,
            out=args.out,
            stage=args.stage,
            split=args.split,
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip())
            if args.tasks
            else None,
            classifier=args.classifier,
            limit=args.limit,
            report_section=args.report_section,
            samples_per_image=args.samples_per_image,
            images_per_report=args.images_per_report,
            uncertain_as_positive=args.uncertain_as_positive,
            batch_size=args.batch_size,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            bootstrap=args.bootstrap,
            device=args.device,
            quantize=args.quantize,
            inception_weights=args.inception_weights,
            nih_labels=args.nih_labels,
            min_positives=args.min_positives,
        )
        evaluate(config)
    except (FileNotFoundError, ValueError) as err:
        print(f"llmcxr evaluate: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {config.out / 'metrics.json'}, {config.out / 'table.md'} and plots in {config.out / 'plots'}"
    )
    print((config.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
