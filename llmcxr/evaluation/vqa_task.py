"""VQA protocol: accuracy on yes/no questions, token F1 and ROUGE-L on open answers.

A question is yes/no when its reference answer starts with a standalone "Yes" or "No" ("No. The
heart is normal."; not "No acute abnormality."); the model's answer counts by its first word
("other" when that is neither, which counts as wrong).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcxr.evaluation.config import RunContext
from llmcxr.evaluation.data import EvalRecord
from llmcxr.evaluation.metrics import mean_interval, token_f1, yes_no
from llmcxr.evaluation.nlg import rouge_l
from llmcxr.evaluation.store import run_pending

STORE = "vqa"
ANSWER_CLASSES = ("yes", "no", "other")


def run(ctx: RunContext, records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Ask each test question about its image; finished questions are skipped."""
    cfg = ctx.config

    def answer(part: Sequence[EvalRecord], start: int) -> list[str]:
        record = part[0]
        return [
            ctx.model.ask(
                str(record.image_path),
                record.instruction,
                seed=cfg.seed,
                max_new_tokens=cfg.max_new_tokens,
            )
        ]

    def make_row(record: EvalRecord, reply: str) -> dict[str, Any]:
        return {
            "image_id": record.image_id,
            "question": record.instruction,
            "reference": record.response,
            "answer": reply,
        }

    return run_pending(
        ctx.store(STORE),
        records,
        key=lambda r: r.id,
        generate=answer,
        make_row=make_row,
        batch_size=1,
        desc="VQA",
    )


def score_answers(
    references: Sequence[str], answers: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Yes/no accuracy with a confusion table, and open-answer token F1 / ROUGE-L."""
    closed = [
        (yes_no(r, strict=True), yes_no(a) or "other")
        for r, a in zip(references, answers)
        if yes_no(r, strict=True)
    ]
    open_pairs = [(r, a) for r, a in zip(references, answers) if not yes_no(r, strict=True)]
    correct = [float(ref == pred) for ref, pred in closed]
    confusion = Counter(closed)
    out: dict[str, Any] = {
        "n_yes_no": len(closed),
        "yes_no_accuracy": float(np.mean(correct)) if correct else math.nan,
        "yes_no_accuracy_ci95": mean_interval(correct, n_boot=n_boot, seed=seed),
        "confusion": {
            "rows_reference": ["yes", "no"],
            "columns_answer": list(ANSWER_CLASSES),
            "counts": [[confusion[(ref, ans)] for ans in ANSWER_CLASSES] for ref in ("yes", "no")],
        },
        "n_open": len(open_pairs),
    }
    if open_pairs:
        refs, answers_open = zip(*open_pairs)
        f1s = [token_f1(a, r) for r, a in open_pairs]
        out["open_token_f1"] = float(np.mean(f1s))
        out["open_token_f1_ci95"] = mean_interval(f1s, n_boot=n_boot, seed=seed)
        out["open_rouge_l"] = float(np.mean(rouge_l(answers_open, refs)))
    return out


def summarize(ctx: RunContext, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"n_items": 0, "note": "no VQA records with an available image"}
    out = score_answers(
        [r["reference"] for r in rows],
        [r["answer"] for r in rows],
        n_boot=ctx.config.bootstrap,
        seed=ctx.config.seed,
    )
    out["n_items"] = len(rows)
    return out
