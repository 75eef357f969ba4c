"""Label report texts with the project's CheXpert-style labeler for scoring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmcxr.evaluation.metrics import binarize_labels


def chexpert_classes() -> list[str]:
    """The 14 CheXpert classes, in the labeler's order."""
    from instructions import CHEXPERT_CLASSES

    return list(CHEXPERT_CLASSES)


def impression_section(text: str) -> str:
    """The report's IMPRESSION section (``instructions`` section parser), or the whole text when
    it has none (stage-2 reports hold the impression alone)."""
    from instructions.reports import normalize_text, parse_sections

    return parse_sections(text).get("IMPRESSION") or normalize_text(text)


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
