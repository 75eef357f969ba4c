"""Evaluation of llmcxr models with LLM-CXR's protocols: `llmcxr evaluate` (see `cli.main`).

`evaluate(EvaluationConfig(...))` runs the selected tasks on a built test split and writes
metrics.json, table.md and plots; pure metric functions live in `metrics` and `nlg`.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

EVAL_MODULES = ("matplotlib", "nltk", "rouge_score", "scipy")
"""Import names of the `[eval]` extra's packages (pyproject.toml); nothing outside this package
imports them, so inference and training do not need them."""


def require_eval_extra() -> None:
    """Raise `ModuleNotFoundError` for the first missing `[eval]` package, before anything runs
    (a late import would fail hours into an evaluation); `find_spec` imports nothing."""
    missing = [name for name in EVAL_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"the evaluation needs the [eval] extra (missing: {', '.join(missing)})",
            name=missing[0],
        )


require_eval_extra()

if TYPE_CHECKING:
    from llmcxr.evaluation.config import EvaluationConfig
    from llmcxr.evaluation.runner import evaluate

__all__ = ["EvaluationConfig", "evaluate"]


def __getattr__(name: str) -> Any:
    """Import the public names lazily so `llmcxr.evaluation.metrics` stays light."""
    if name == "EvaluationConfig":
        from llmcxr.evaluation.config import EvaluationConfig

        return EvaluationConfig
    if name == "evaluate":
        from llmcxr.evaluation.runner import evaluate

        return evaluate
    raise AttributeError(f"module 'llmcxr.evaluation' has no attribute {name!r}")
