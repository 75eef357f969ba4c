"""Evaluation of llmcxr models with LLM-CXR's protocols: `llmcxr evaluate` (see `cli.main`).

`evaluate(EvaluationConfig(...))` runs the selected tasks on a built test split and writes
metrics.json, table.md and plots; pure metric functions live in `metrics` and `nlg`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
