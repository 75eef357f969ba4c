"""Label report texts with the project's CheXpert-style labeler for scoring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmcxr.evaluation.metrics import binarize_labels

NO_FINDING = "No Finding"
"""The class of a report or film with no finding."""

NIH_TO_CHEXPERT = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Pleural_Thickening": "Pleural Other",
    "No Finding": "No Finding",
}
"""NIH ChestX-ray14 finding -> the CheXpert class that names it (11 classes). Emphysema, Fibrosis
and Hernia have no CheXpert class. The same correspondence as the paired data's label map
(``instructions/data/paired_label_map.json``), one class per finding: a truth label, not the set
of classes a matching report may state."""


def chexpert_classes() -> list[str]:
    """The 14 CheXpert classes, in the labeler's order."""
    from instructions import CHEXPERT_CLASSES

    return list(CHEXPERT_CLASSES)


def nih_classes() -> list[str]:
    """The CheXpert classes NIH labels map to, in the labeler's order (11)."""
    mapped = set(NIH_TO_CHEXPERT.values())
    return [c for c in chexpert_classes() if c in mapped]


def nih_label_matrix(findings: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """Binary ``[N, C]`` truth from each image's NIH findings through :data:`NIH_TO_CHEXPERT`."""
    out = np.zeros((len(findings), len(classes)), dtype=np.int64)
    index = {c: j for j, c in enumerate(classes)}
    for i, names in enumerate(findings):
        for name in names:
            mapped = NIH_TO_CHEXPERT.get(name.strip())
            if mapped in index:
                out[i, index[mapped]] = 1
    return out


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
