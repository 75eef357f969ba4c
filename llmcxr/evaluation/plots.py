"""PNG plots of an evaluation: per-label AUROC/F1 bars, real vs generated grid, VQA confusion.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot), so
nothing global (backend, open-figure registry) changes in the calling process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def per_label_bars(per_label: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path:
    """Grouped bars of AUROC and F1 per class (undefined AUROC drawn as an empty slot)."""
    names = list(per_label)
    x = np.arange(len(names))
    auroc = [math.nan if per_label[n]["auroc"] is None else per_label[n]["auroc"] for n in names]
    f1 = [per_label[n]["f1"] for n in names]
    fig = Figure(figsize=(max(6, 0.6 * len(names) + 2), 4))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [0 if math.isnan(v) else v for v in auroc], 0.4, label="AUROC")
    ax.bar(x + 0.2, f1, 0.4, label="F1")
    for i, v in enumerate(auroc):
        if math.isnan(v):
            ax.text(x[i] - 0.2, 0.02, "n/a", ha="center", rotation=90, fontsize=7)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(
        x,
        [f"{n}\n(n={per_label[n]['support']})" for n in names],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def real_vs_generated_grid(
    examples: Sequence[tuple[str, np.ndarray | None, Sequence[np.ndarray]]], path: Path
) -> Path:
    """One row per finding: the real image of a report with it, then the images generated from
    it."""
    n_cols = 1 + max((len(g) for _, _, g in examples), default=1)
    fig = Figure(figsize=(1.8 * n_cols, 1.9 * max(1, len(examples))))
    for row, (finding, real, generated) in enumerate(examples):
        for col, image in enumerate([real, *generated]):
            ax = fig.add_subplot(len(examples), n_cols, row * n_cols + col + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if image is not None:
                ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            if row == 0:
                ax.set_title("real" if col == 0 else f"generated {col}", fontsize=8)
            if col == 0:
                ax.set_ylabel(finding, fontsize=7)
    return _save(fig, path)


def vqa_confusion(confusion: Mapping[str, Any], path: Path) -> Path:
    """Reference yes/no against the model's yes/no/other answers, as a count heat map."""
    counts = np.array(confusion["counts"])
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set_xticks(range(counts.shape[1]), confusion["columns_answer"])
    ax.set_yticks(range(counts.shape[0]), confusion["rows_reference"])
    ax.set_xlabel("model answer")
    ax.set_ylabel("reference answer")
    ax.set_title("VQA yes/no questions")
    return _save(fig, path)
