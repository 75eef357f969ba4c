"""The report record every corpus reader yields, section parsing and one-line text normalisation."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

FRONTAL_VIEWS = frozenset(
    {"PA", "AP", "FRONTAL", "AP SUPINE", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD"}
)
"""View positions counted as frontal (MIMIC-CXR-JPG ViewPosition / DICOM values; FRONTAL: projection
unknown)."""

# Header spellings seen in MIMIC-CXR / OpenI reports -> canonical section name.
SECTION_ALIASES: dict[str, str] = {
    "FINDINGS": "FINDINGS",
    "FINDING": "FINDINGS",
    "IMPRESSION": "IMPRESSION",
    "IMPRESSIONS": "IMPRESSION",
    "CONCLUSION": "IMPRESSION",
    "SUMMARY": "IMPRESSION",
    "INDICATION": "INDICATION",
    "INDICATIONS": "INDICATION",
    "REASON FOR EXAM": "INDICATION",
    "REASON FOR EXAMINATION": "INDICATION",
    "CLINICAL INDICATION": "INDICATION",
    "CLINICAL INFORMATION": "HISTORY",
    "HISTORY": "HISTORY",
    "CLINICAL HISTORY": "HISTORY",
    "COMPARISON": "COMPARISON",
    "COMPARISONS": "COMPARISON",
    "TECHNIQUE": "TECHNIQUE",
    "EXAMINATION": "EXAMINATION",
    "EXAM": "EXAMINATION",
    "TYPE OF EXAMINATION": "EXAMINATION",
    "PROCEDURE": "EXAMINATION",
    "NOTIFICATION": "NOTIFICATION",
    "RECOMMENDATION": "RECOMMENDATION",
    "RECOMMENDATIONS": "RECOMMENDATION",
    "ADDENDUM": "ADDENDUM",
    "WET READ": "WET READ",
    "FINAL REPORT": "FINAL REPORT",
}
_HEADER = re.compile(r"(?m)^[ \t]*([A-Z][A-Z /&()-]{2,40}?)[ \t]*:[ \t]*")


def normalize_text(text: str) -> str:
    """Collapse all whitespace (newlines, tabs, runs of spaces) into single spaces on one line."""
    return " ".join(text.split())


def parse_sections(text: str) -> dict[str, str]:
    """Split a free-text report into canonical sections (``FINDINGS``, ``IMPRESSION``, ...), one
    line each.

    Headers are upper-case words at a line start followed by a colon (MIMIC-CXR style). Text before
    the first known header goes to ``PREAMBLE``; unknown upper-case headers stay inside the section
    they appear in. Repeated sections are joined.
    """
    sections: dict[str, list[str]] = {}
    current = "PREAMBLE"
    position = 0
    for match in _HEADER.finditer(text):
        name = SECTION_ALIASES.get(" ".join(match.group(1).split()))
        if name is None:
            continue
        sections.setdefault(current, []).append(text[position : match.start()])
        current, position = name, match.end()
    sections.setdefault(current, []).append(text[position:])
    if "FINAL REPORT" in sections:  # MIMIC's banner line carries no content of its own
        sections.setdefault("PREAMBLE", []).extend(sections.pop("FINAL REPORT"))
    joined = {name: normalize_text(" ".join(parts)) for name, parts in sections.items()}
    return {name: body for name, body in joined.items() if body}


@dataclass
class ImageRef:
    """One image of a study, referenced by id; ``path`` is empty when the image is not available."""

    image_id: str
    path: str = ""
    view: str = ""

    @property
    def is_frontal(self) -> bool:
        """True for PA/AP views; unknown views are not frontal."""
        return self.view.upper() in FRONTAL_VIEWS


@dataclass
class Report:
    """One radiology study: its sections, images and patient, whatever corpus it came from."""

    report_id: str
    patient_id: str
    source: str
    sections: dict[str, str]
    images: list[ImageRef] = field(default_factory=list)
    study_time: str = ""
    """Sortable study date/time (``YYYYMMDDHHMMSS``), empty when unknown."""
    split: str = ""
    """Official split (``train``/``val``/``test``) when the corpus has one, else empty."""
    mesh: list[str] = field(default_factory=list)
    reference_labels: dict[str, int] | None = None
    """CheXpert labels shipped with the corpus (e.g. MIMIC's CSV), when available."""
    pool: ReportPool | None = None
    """Other reports that fit this study's image as well (paired studies: the label-matched OpenI
    reports of its split); training may draw one of them instead of this report each epoch."""

    @property
    def findings(self) -> str:
        """The FINDINGS section (empty when missing)."""
        return self.sections.get("FINDINGS", "")

    @property
    def impression(self) -> str:
        """The IMPRESSION section (empty when missing)."""
        return self.sections.get("IMPRESSION", "")

    def text(self, sections: tuple[str, ...] = ("FINDINGS", "IMPRESSION")) -> str:
        """The named sections joined on one line (e.g. findings + impression, as LLM-CXR's stage
        1)."""
        return normalize_text(" ".join(self.sections.get(name, "") for name in sections))


@dataclass(frozen=True, eq=False)
class ReportPool:
    """Reports interchangeable for a set of images (same split, same label match), held once and
    shared by every study that draws from it."""

    key: str
    """Stable name (split and label match), written on the records that may draw from the pool."""
    split: str
    reports: tuple[Report, ...]
    fits: Callable[[str], bool] | None = None
    """Whether a text, as a stage writes it, still fits the pool's images (paired pools: stage
    filters may drop the sentence that states the finding); None: any text does."""


@dataclass
class ReadStats:
    """What a corpus reader read, and what it skipped and why (printed by the build, kept in the
    card)."""

    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str, count: int = 1) -> None:
        """Count ``count`` skipped inputs under ``reason``."""
        self.skipped[reason] += count

    def to_dict(self) -> dict[str, object]:
        """Plain dict for the card."""
        return {"read": self.read, "skipped": dict(sorted(self.skipped.items()))}
