"""How much of what a report needs survives an image tokenizer? The evaluation's classifier as the
reader, on the real test films and on each tokenizer's reconstructions of them.

    .venv/bin/python benchmarks/reading_ceiling.py --classifier runs/gpu/latest/classifier_export \
        [--data runs/default_model/data] [--tokenizer shipped --tokenizer models/X] [--out F]

Items: the report task's (every CXR->report record of the stage-2 test split, scored against the
labels of its label-matched reference report) and the NIH task's (every NIH test film, against its
NIH labels), as `llmcxr evaluate` builds them. Scores: `llmcxr evaluate`'s reference readers (the
same functions: class probability as the score, positive at the calibrated 0.5), with 95 %
bootstrap intervals. An LLM reads only its tokenizer's codes, so the classifier on that
tokenizer's reconstructions is a practical ceiling for its reports (an LLM could in principle read
a code the decoder renders badly, but it was never trained to beat this classifier).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cxrcommon.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHIPPED_TOKENIZER = REPO / "llmcxr" / "default_model" / "image_tokenizer"


def _metrics(truth: np.ndarray, probs: np.ndarray, labels: list[str], classes: list[str]) -> dict:
    from llmcxr.evaluation.metrics import classification_metrics, headline_intervals
    from llmcxr.evaluation.reference_readers import classifier_reader_scores

    score = classifier_reader_scores(probs, labels, classes)
    pred = (score >= 0.5).astype(np.int64)
    out = classification_metrics(truth, score, pred, classes)
    ci = headline_intervals(truth, score, pred, n_boot=1000, seed=0)
    return {
        "n": len(truth),
        "auroc_macro": out["auroc"]["macro"],
        "auroc_macro_ci95": ci.get("auroc_macro"),
        "f1_macro": out["f1"]["macro"],
        "f1_micro": out["f1"]["micro"],
        "f1_micro_ci95": ci.get("f1_micro"),
        "headline_classes": out["headline_classes"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", required=True, help="the evaluation's classifier export")
    parser.add_argument("--data", default="runs/default_model/data")
    parser.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        help="a tokenizer folder ('shipped': the default model's); repeatable",
    )
    parser.add_argument("--out", default="benchmarks/results/reading_ceiling.json")
    args = parser.parse_args(argv)

    from llmcxr.evaluation import nih_task
    from llmcxr.evaluation.classifier import ImageClassifier
    from llmcxr.evaluation.data import EvalSplit
    from llmcxr.evaluation.image_task import read_real, reconstruct
    from llmcxr.evaluation.labelling import (
        chexpert_classes,
        label_matrix,
        nih_classes,
        nih_label_matrix,
    )
    from vqgan import CXRTokenizer

    tokenizers = args.tokenizer or ["shipped"]
    loaded = {
        name: CXRTokenizer.from_pretrained(SHIPPED_TOKENIZER if name == "shipped" else name)
        for name in tokenizers
    }
    sizes = {t.image_size for t in loaded.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the tokenizers work at different sizes {sorted(sizes)}: compare alike")
    size = sizes.pop()
    classifier = ImageClassifier.from_weights(args.classifier)
    split = EvalSplit(args.data, 2, "test")
    report_records = split.records("cxr_to_report", need_image=True)
    nih_records = [r for r in nih_task.nih_records(split) if r.image_path is not None]
    findings = nih_task.read_findings(nih_task.labels_csv_for(nih_records, None))
    nih_records = [r for r in nih_records if r.image_path.name in findings]
    tasks: dict[str, tuple[list, np.ndarray, list[str]]] = {
        "report": (
            report_records,
            label_matrix([r.report for r in report_records], chexpert_classes()),
            chexpert_classes(),
        ),
        "nih": (
            nih_records,
            nih_label_matrix([findings[r.image_path.name] for r in nih_records], nih_classes()),
            nih_classes(),
        ),
    }
    results: dict[str, Any] = {
        "classifier": args.classifier,
        "data": args.data,
        "image_size": size,
        "tokenizers": {
            name: str(SHIPPED_TOKENIZER if name == "shipped" else name) for name in tokenizers
        },
    }
    for task, (records, truth, classes) in tasks.items():
        real = [read_real(r, size) for r in records]
        readers = {"real": real}
        for name, tokenizer in loaded.items():
            recon: list[np.ndarray] = []
            for start in range(0, len(real), 16):
                recon += list(reconstruct(tokenizer, real[start : start + 16])[0])
            readers[f"reconstruction:{name}"] = recon
        results[task] = {}
        for reader, images in readers.items():
            probs, _ = classifier(images)
            m = _metrics(truth, probs, classifier.labels, classes)
            results[task][reader] = m
            print(
                f"{task:7s} {reader:40s} n {m['n']:4d}  AUROC macro {m['auroc_macro']:.3f} "
                f"{m['auroc_macro_ci95']}  F1 micro {m['f1_micro']:.3f}",
                flush=True,
            )
    atomic_write_text(Path(args.out), json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
