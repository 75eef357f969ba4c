"""`llmcxr evaluate`: the LLM-CXR evaluation tables for a model on a built test split.

Example::

    llmcxr evaluate --model runs/stage2/model --data data/openi --stage 2 --split test \\
        --tasks report,nih,image,vqa,roundtrip,tokenizer --classifier densenet121-res224-all \\
        --out results/eval --limit 200
"""

from __future__ import annotations

import argparse
import logging
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from llmcxr.cli import QUANTIZE_CHOICES, ArgumentParser, run_reporting_errors
from llmcxr.evaluation.config import REPORT_SECTIONS, TASKS, EvaluationConfig

logger = logging.getLogger(__name__)

HELP: dict[str, str] = {
    "data": "built dataset folder (llmcxr data build)",
    "model": "model folder or training .ckpt (default: the embedded model)",
    "out": "results folder",
    "stage": "dataset stage: 1 = findings+impression, 2 = impression only",
    "split": "dataset split",
    "tasks": f"comma-separated subset of {','.join(TASKS)} (default: all; "
    "without --classifier all but image and roundtrip)",
    "classifier": "CXR classifier weights: export folder, .safetensors, .ckpt, "
    "or a torchxrayvision cache name such as densenet121-res224-all (never downloaded)",
    "limit": "a seeded random subset of N records per task (quick runs; "
    "a larger N contains a smaller one's records; default: the whole split)",
    "report_section": "score the whole report or its IMPRESSION section",
    "samples_per_image": "sampled reports per image; > 1 gives AUROC from label frequencies",
    "images_per_report": "generated images per report; >= 2 for diversity",
    "uncertain_as_positive": "count the labeler's uncertain (-1) as positive (default: negative)",
    "batch_size": "images or reports per model call",
    "seed": "random seed of the sampling and the bootstrap",
    "subset_seed": "seed of the --limit subset (default: --seed); keep it and change --seed to "
    "sample the same records again",
    "max_new_tokens": "report / answer length cap (default: the model's)",
    "bootstrap": "bootstrap resamples for 95%% intervals, 0 = none",
    "device": "auto, cpu, cuda, mps",
    "quantize": "the model's speed mode, as on the other commands",
    "inception_weights": "torchvision inception_v3 state dict for Inception FID",
    "nih_labels": "NIH ChestX-ray14 labels.csv for the nih task (default: the "
    "labels.csv beside the NIH images, <folder>/images/../labels.csv)",
    "min_positives": "headline macro AUROC / F1 average classes with at least this many positives",
    "guidance_scale": "classifier-free guidance of the drawings, > 0, 1 = off (default: the "
    "model's)",
}
"""The help of each `EvaluationConfig` field's flag; names, types and defaults come from the
dataclass itself, so the command and the config cannot drift apart."""
CHOICES: dict[str, tuple[Any, ...]] = {
    "stage": (1, 2),
    "report_section": REPORT_SECTIONS,
    "quantize": QUANTIZE_CHOICES,
}


def _comma_list(text: str) -> tuple[str, ...]:
    """`--tasks a,b`: the names, blanks dropped."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _flag_type(hint: Any) -> Any:
    """The argparse type of a field's type hint (``X | None`` -> X; a tuple -> comma list)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    return _comma_list if typing.get_origin(hint) is tuple else hint


def build_parser() -> argparse.ArgumentParser:
    """One flag per `EvaluationConfig` field (``--batch-size`` for ``batch_size``)."""
    p = ArgumentParser(
        prog="llmcxr evaluate",
        description="Evaluate a model like LLM-CXR's Tables 1 and 4 (resumable: rerun the same "
        "command to continue an interrupted run).",
    )
    hints = typing.get_type_hints(EvaluationConfig)
    for field in fields(EvaluationConfig):
        flag, kind = f"--{field.name.replace('_', '-')}", _flag_type(hints[field.name])
        if kind is bool:
            p.add_argument(flag, action="store_true", help=HELP[field.name])
            continue
        shown = field.default not in (MISSING, None)
        p.add_argument(
            flag,
            type=kind,
            choices=CHOICES.get(field.name),
            required=field.default is MISSING,
            default=None if field.default is MISSING else field.default,
            help=HELP[field.name] + (" (default %(default)s)" if shown else ""),
        )
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the evaluation, print where the results are; errors are raised
    (``llmcxr evaluate`` reports them, see `llmcxr.cli.run_reporting_errors`)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from llmcxr.evaluation.runner import evaluate

    config = EvaluationConfig(**vars(args))
    evaluate(config)
    print(
        f"wrote {config.out / 'metrics.json'}, {config.out / 'table.md'} "
        f"and plots in {config.out / 'plots'}"
    )
    print((config.out / "table.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """`run` with its errors as one ``llmcxr: error: ...`` line: 0 on success, 2 on bad input."""
    return run_reporting_errors(lambda: run(argv))


if __name__ == "__main__":
    raise SystemExit(main())
