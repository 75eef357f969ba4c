"""Typed settings of one evaluation run, and the run context the task protocols share."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrcommon.files import atomic_write_text, write_png
from llmcxr.evaluation.store import ResultStore

if TYPE_CHECKING:
    from llmcxr.evaluation.classifier import ImageClassifier
    from llmcxr.evaluation.data import EvalSplit
    from llmcxr.pipeline import LLMCXR

logger = logging.getLogger(__name__)

TASKS = ("report", "nih", "image", "vqa", "roundtrip", "tokenizer")
CLASSIFIER_TASKS = ("image", "roundtrip")
REPORT_SECTIONS = ("full", "impression")
PROTOCOL_VERSION = 2
"""Bumped when stored per-item rows change meaning (2: image rows at the tokenizer's resolution,
with the real image's reconstruction); a results folder of another version is refused."""


@dataclass
class EvaluationConfig:
    """What to evaluate and how; every field has a matching ``llmcxr evaluate`` flag."""

    data: Path
    """Built instruction dataset folder (holds stage1/, stage2/, images.jsonl)."""
    model: str | None = None
    """Model folder or training .ckpt; None = the embedded default model."""
    out: Path = Path("results/eval")
    """Results folder: metrics.json, table.md, plots, per-item JSONL (resumable)."""
    stage: int = 2
    split: str = "test"
    tasks: tuple[str, ...] | None = None
    """Subset of TASKS; None = all of them, less image and roundtrip when no classifier is given."""
    classifier: str | None = None
    """CXR classifier weights (export folder, .safetensors, .ckpt or torchxrayvision cache name)."""
    limit: int | None = None
    """Evaluate a seeded random subset of this many records per task (quick runs; None = all)."""
    report_section: str = "full"
    """Which text is labelled and scored: the whole report, or its IMPRESSION section."""
    samples_per_image: int = 3
    """Sampled reports per image; > 1 gives per-class probabilities for AUROC."""
    images_per_report: int = 2
    """Generated images per report; >= 2 is needed for the diversity (pairwise SSIM) figure."""
    uncertain_as_positive: bool = False
    batch_size: int = 8
    seed: int = 0
    subset_seed: int | None = None
    """Seed of the `limit` subset; None = `seed`. Another `seed` with the same subset seed samples
    the same records again: how far a figure moves between sampling seeds (for the image task on
    320 reports, the shipped model's label AUROC was 0.639 with seed 0 and 0.571 with another,
    same code)."""
    max_new_tokens: int | None = None
    bootstrap: int = 1000
    """Bootstrap resamples for confidence intervals (0 = none)."""
    device: str = "auto"
    quantize: str = "auto"
    """The model's speed mode (`LLMCXR.quantize`: auto, none, int8, fp16), to measure its cost."""
    inception_weights: str | None = None
    """torchvision Inception-v3 state dict for Inception FID (omitted without it)."""
    nih_labels: str | None = None
    """NIH ChestX-ray14 labels.csv for the nih task (default: the one beside the NIH images)."""
    min_positives: int = 5
    """Headline macro AUROC / F1 average the classes with at least this many positives."""
    guidance_scale: float | None = None
    """Classifier-free guidance of the drawings (image and roundtrip tasks); None = the model's
    own (its generation.json), so a guidance setting is evaluated without editing a folder."""

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        if self.tasks is None:
            self.tasks = (
                TASKS if self.classifier else tuple(t for t in TASKS if t not in CLASSIFIER_TASKS)
            )
            if not self.classifier:
                logger.warning(
                    "no --classifier: skipping the %s tasks", " and ".join(CLASSIFIER_TASKS)
                )
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(
                f"--tasks: unknown {unknown or 'empty'}; choose from {', '.join(TASKS)}"
            )
        if self.report_section not in REPORT_SECTIONS:
            raise ValueError(
                f"--report-section must be one of {REPORT_SECTIONS}, got {self.report_section!r}"
            )
        for name in ("samples_per_image", "images_per_report", "batch_size", "min_positives"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.guidance_scale is not None:
            from llmcxr.decoding import check_guidance_scale

            try:
                check_guidance_scale(self.guidance_scale)
            except ValueError as err:
                raise ValueError(f"--guidance-scale: {err}") from None
        needs_classifier = set(CLASSIFIER_TASKS) & set(self.tasks)
        if needs_classifier and not self.classifier:
            raise ValueError(
                f"--tasks {','.join(sorted(needs_classifier))} needs --classifier (torchxrayvision "
                "DenseNet weights or a classifier exported by `llmcxr export classifier`)"
            )

    def identity(self) -> dict[str, Any]:
        """Settings that change per-item results: a resumed run must match them."""
        return {
            "protocol": PROTOCOL_VERSION,
            "model": str(Path(self.model).resolve()) if self.model else None,
            "data": str(self.data.resolve()),
            "stage": self.stage,
            "split": self.split,
            "classifier": self.classifier,
            "samples_per_image": self.samples_per_image,
            "images_per_report": self.images_per_report,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            # only when set, so folders written before the option existed still resume
            **({"quantize": self.quantize} if self.quantize != "auto" else {}),
            **({"subset_seed": self.records_seed} if self.records_seed != self.seed else {}),
            **({"guidance_scale": self.guidance_scale} if self.guidance_scale is not None else {}),
        }

    @property
    def records_seed(self) -> int:
        """The seed that picks the `limit` subset."""
        return self.seed if self.subset_seed is None else self.subset_seed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"], out["out"], out["tasks"] = str(self.data), str(self.out), list(self.tasks)
        return out


@dataclass
class RunContext:
    """What the task protocols share: settings, data, the lazily loaded model and classifier."""

    config: EvaluationConfig
    split: EvalSplit
    classes: list[str] = field(default_factory=list)

    @cached_property
    def model(self) -> LLMCXR:
        """The model, loaded on first use (a fully resumed run never loads it)."""
        from llmcxr.pipeline import LLMCXR

        return LLMCXR.from_pretrained(
            self.config.model, device=self.config.device, quantize=self.config.quantize
        )

    @cached_property
    def classifier(self) -> ImageClassifier | None:
        from llmcxr.evaluation.classifier import ImageClassifier

        return (
            ImageClassifier.from_weights(self.config.classifier) if self.config.classifier else None
        )

    def store(self, name: str) -> ResultStore:
        return ResultStore(self.config.out / "items" / f"{name}.jsonl")

    def save_png(self, image: np.ndarray, relative: str) -> str:
        """Write a float image [H, W] in [0, 1] as 8-bit PNG under the output folder."""
        write_png(self.config.out / relative, image)
        return relative

    def save_features(self, features: np.ndarray, relative: str) -> str:
        path = self.config.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(features, dtype=np.float32))
        return relative

    def load_features(self, relative: str) -> np.ndarray:
        return np.load(self.config.out / relative)


def check_run_identity(config: EvaluationConfig) -> None:
    """Refuse to mix results of different runs in one folder; record this run's identity."""
    path = config.out / "run.json"
    identity = config.identity()
    if path.is_file():
        previous = json.loads(path.read_text())
        diff = sorted(k for k in identity | previous if previous.get(k) != identity.get(k))
        if diff:
            raise ValueError(
                f"{config.out} holds results of a different run ({', '.join(diff)} differ); "
                "use another --out"
            )
    atomic_write_text(path, json.dumps(identity, indent=2) + "\n")
