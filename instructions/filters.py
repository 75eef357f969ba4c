"""Named, configurable report filter steps; each counts what it removed (printed by the build, kept
in the card).

Defaults follow XrayGPT's cleaning of MIMIC-CXR reports (used by LLM-CXR-style data): drop reports
lacking findings or impression, findings under 10 words, impression under 2 words; strip
de-identification marks; drop sentences that compare with prior studies. Cue lists are data
(``data/report_filters.json``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Protocol

from instructions.labeler import DATA_DIR, split_sentences
from instructions.reports import Report, normalize_text

TEXT_SECTIONS = ("FINDINGS", "IMPRESSION")


@cache
def filter_cues(path: str | None = None) -> dict[str, re.Pattern[str]]:
    """Compiled cue lists of ``report_filters.json`` (prior_comparison, plans, deid_marks)."""
    data = json.loads(Path(path or DATA_DIR / "report_filters.json").read_text(encoding="utf-8"))
    return {
        key: re.compile("|".join(f"(?:{p})" for p in value), re.IGNORECASE)
        for key, value in data.items()
        if not key.startswith("_")
    }


class FilterRule(Protocol):
    """One filter step: returns the (possibly edited) report, or None to drop it, and how much it
    removed."""

    name: str

    def apply(self, report: Report) -> tuple[Report | None, int]: ...


def _with_sections(report: Report, sections: dict[str, str]) -> Report:
    return replace(report, sections={**report.sections, **sections})


def _drop_sentences(report: Report, regex: re.Pattern[str]) -> tuple[Report, int]:
    """The report without findings/impression sentences matching ``regex``, and how many went."""
    removed = 0
    edited: dict[str, str] = {}
    for name in TEXT_SECTIONS:
        if name in report.sections:
            sentences = split_sentences(report.sections[name])
            kept = [s for s in sentences if not regex.search(s)]
            removed += len(sentences) - len(kept)
            edited[name] = " ".join(kept)
    return _with_sections(report, edited), removed


@dataclass
class StripDeidMarks:
    """Remove de-identification placeholders ("___", "XXXX") from the findings and impression.

    ``mode="strip"`` deletes the mark; ``mode="drop_sentence"`` drops the sentences holding one
    (better where marks replaced words mid-sentence, as in OpenI's "There are no XXXX of a pleural
    effusion").
    """

    name: str = "strip_deid_marks"
    pattern: str | None = None
    """Regex of marks to strip; default: ``deid_marks`` of report_filters.json."""
    mode: str = "strip"

    def __post_init__(self) -> None:
        if self.mode not in ("strip", "drop_sentence"):
            raise ValueError(
                f"StripDeidMarks.mode must be 'strip' or 'drop_sentence', got {self.mode!r}"
            )

    def apply(self, report: Report) -> tuple[Report | None, int]:
        regex = re.compile(self.pattern) if self.pattern else filter_cues()["deid_marks"]
        if self.mode == "drop_sentence":
            return _drop_sentences(report, regex)
        removed = 0
        edited: dict[str, str] = {}
        for name in TEXT_SECTIONS:
            if name in report.sections:
                text, count = regex.subn("", report.sections[name])
                removed += count
                edited[name] = normalize_text(re.sub(r"\s+([.,;:])", r"\1", text))
        return _with_sections(report, edited), removed


@dataclass
class DropPriorComparisons:
    """Drop findings/impression sentences that compare with prior studies ("unchanged", "since the
    prior", ...)."""

    name: str = "drop_prior_comparison_sentences"
    pattern: str | None = None
    """Regex of comparison cues; default: ``prior_comparison`` of report_filters.json."""

    def apply(self, report: Report) -> tuple[Report | None, int]:
        regex = (
            re.compile(self.pattern, re.IGNORECASE)
            if self.pattern
            else filter_cues()["prior_comparison"]
        )
        return _drop_sentences(report, regex)


@dataclass
class RequireSections:
    """Drop reports lacking any of ``sections`` (``any_of=True``: lacking all of them)."""

    sections: tuple[str, ...] = TEXT_SECTIONS
    any_of: bool = False
    name: str = "require_findings_and_impression"

    def apply(self, report: Report) -> tuple[Report | None, int]:
        present = [bool(report.sections.get(s, "").strip()) for s in self.sections]
        ok = any(present) if self.any_of else all(present)
        return (report, 0) if ok else (None, 1)


@dataclass
class MinWords:
    """Drop reports whose ``section`` has fewer than ``min_words`` words."""

    section: str = "FINDINGS"
    min_words: int = 10
    name: str = ""

    def __post_init__(self) -> None:
        if self.min_words < 0:
            raise ValueError(f"MinWords.min_words must be >= 0, got {self.min_words}")
        self.name = self.name or f"min_{self.section.lower()}_words_{self.min_words}"

    def apply(self, report: Report) -> tuple[Report | None, int]:
        ok = len(report.sections.get(self.section, "").split()) >= self.min_words
        return (report, 0) if ok else (None, 1)


@dataclass
class FilterPipeline:
    """Filter steps applied in order; ``removed`` counts per step (reports dropped or
    marks/sentences removed)."""

    rules: list[FilterRule]
    removed: Counter[str] = field(default_factory=Counter)
    seen: int = 0
    kept: int = 0

    def __call__(self, reports: Iterable[Report]) -> Iterator[Report]:
        for report in reports:
            self.seen += 1
            current: Report | None = report
            for rule in self.rules:
                current, count = rule.apply(current)
                self.removed[rule.name] += count
                if current is None:
                    break
            if current is not None:
                self.kept += 1
                yield current

    def summary(self) -> dict[str, object]:
        """Counts for the card: reports seen/kept and what each named step removed."""
        return {
            "seen": self.seen,
            "kept": self.kept,
            "steps": [{"name": r.name, "removed": self.removed[r.name]} for r in self.rules],
        }


def stage1_rules(deid_mode: str = "strip") -> list[FilterRule]:
    """Stage 1 (unfiltered, high volume): strip marks, keep reports with findings or impression."""
    return [
        StripDeidMarks(mode=deid_mode),
        RequireSections(TEXT_SECTIONS, any_of=True, name="require_findings_or_impression"),
    ]


def stage2_rules(
    min_findings_words: int = 10,
    min_impression_words: int = 2,
    drop_prior: bool = True,
    deid_mode: str = "strip",
) -> list[FilterRule]:
    """Stage 2 (high quality): the XrayGPT-style cleaning described in the module docstring."""
    rules: list[FilterRule] = [StripDeidMarks(mode=deid_mode)]
    if drop_prior:
        rules.append(DropPriorComparisons())
    rules += [
        RequireSections(),
        MinWords("FINDINGS", min_findings_words),
        MinWords("IMPRESSION", min_impression_words),
    ]
    return rules
