"""Label report texts with the project's CheXpert-style labeler for scoring."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from llmcxr.evaluation.metrics import binarize_labels

_IMPRESSION = re.compile(r"\bimpression\s*:", re.IGNORECASE)


def chexpert_classes() -> list[str]:
    """The 14 CheXpert classes, in the labeler's order."""
    from instructions import CHEXPERT_CLASSES

    return list(CHEXPERT_CLASSES)


def impression_section(text: str) -> str:
    """The text after the last ``IMPRESSION:`` header, or the whole text when there is none
    (stage-2 reports hold the impression alone)."""
    parts = _IMPRESSION.split(text)
    return parts[-1].strip() if len(parts) > 1 else text.strip()


def label_matrix(
    texts: Sequence[str],
    classes: Sequence[str],
    *,
    section: str = "full",
    uncertain_as_positive: bool = False,
) -> np.ndarray:
    """Binary label matrix ``[N, C]`` of report texts (conventions in ``metrics``)."""
    from instructions import label_report

    if section == "impression":
        texts = [impression_section(t) for t in texts]
    return binarize_labels(
        [label_report(t) for t in texts], classes, uncertain_as_positive=uncertain_as_positive
    )
