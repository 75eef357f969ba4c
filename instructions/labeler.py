"""Rule-based CheXpert-style finding labeler: mentions, negation, uncertainty, laterality, severity.

Hand-written on purpose (PyPI checked 2026-11): the CheXpert labeler is not on PyPI; radtext
(NegBio) needs parser models downloaded; f1chexbert/CheXbert need hub weights; negspacy (NegEx) does
negation only; medspaCy's ConText could run on a blank spaCy pipeline but brings spaCy and PyRuSH
and clinical-note rules, not CheXpert's 14 classes, uncertainty conventions or laterality/severity.
The rules follow the CheXpert labeler's order (uncertainty phrases containing a negation word, then
negation, then other uncertainty) with a clause-limited scope instead of a dependency parse. Mention
phrases and cues are data (``instructions/data/*.json``); only pure-Python ``re`` is used, so it
labels thousands of reports per second on one core and is deterministic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

CHEXPERT_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
"""The 14 CheXpert observation classes, in the CheXpert CSV column order (alphabetical)."""

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
NOT_ABNORMAL: tuple[str, ...] = ("No Finding", "Support Devices")
"""Classes that do not make a film abnormal (CheXpert's No Finding ignores support devices)."""
DATA_DIR = Path(str(resources.files("instructions") / "data"))
_IGNORE = "_ignore"
_MENTION_KINDS = ("mentions", "attributes", "hedges")
"""Phrase kinds of the mention table: findings; anatomy labelled only when qualified; and hedges,
phrases that suggest a class without confirming it (e.g. "infection" for Pneumonia), at most
uncertain."""
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[a-z]\.)(?=[A-Z][a-z])|\n+|\s+(?=\d{1,2}[.)]\s)")
_WORD = re.compile(r"\S+")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Finding:
    """One labelled mention of a CheXpert class in a report.

    ``status`` is 1 positive, 0 negative, -1 uncertain. ``mention`` is the matched phrase (for
    Support Devices: which device), ``sentence`` the report sentence it came from; laterality
    (left/right/bilateral), location (lobe/zone) and severity are the nearest cue in the same
    clause.
    """

    label: str
    status: int
    mention: str
    sentence: str
    laterality: str | None = None
    location: str | None = None
    severity: str | None = None


def _alternation(patterns: Iterable[str]) -> re.Pattern[str]:
    r"""One regex matching any of ``patterns``.

    Patterns of the form ``\bBODY\b`` share one pair of word boundaries: Python's ``re`` does not
    factor alternations, and testing each boundary separately made labelling several times slower.
    """
    bounded, other = [], []
    for pattern in patterns:
        if pattern.startswith(r"\b") and pattern.endswith(r"\b"):
            bounded.append(f"(?:{pattern[2:-2]})")
        else:
            other.append(f"(?:{pattern})")
    parts = ([rf"\b(?:{'|'.join(bounded)})\b"] if bounded else []) + other
    return re.compile("|".join(parts))


def _phrase_regex(phrases: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(
        set(phrases), key=len, reverse=True
    )  # longest first, so "pleural effusion" beats "effusion"
    body = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in ordered)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])")


def _last_words(text: str, n: int) -> str:
    words = _WORD.findall(text)
    return " ".join(words[-n:]) if words else ""


def _first_words(text: str, n: int) -> str:
    words = _WORD.findall(text)
    return " ".join(words[:n]) if words else ""


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (period/question mark + space, newlines, numbered items)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


class ReportLabeler:
    """Labels report text over ``CHEXPERT_CLASSES`` from a mention table and cue lists (JSON
    data)."""

    def __init__(
        self, mentions_path: str | Path | None = None, cues_path: str | Path | None = None
    ) -> None:
        mentions_path = (
            Path(mentions_path) if mentions_path else DATA_DIR / "chexpert_mentions.json"
        )
        cues_path = Path(cues_path) if cues_path else DATA_DIR / "labeler_cues.json"
        table = json.loads(mentions_path.read_text(encoding="utf-8"))
        cues = json.loads(cues_path.read_text(encoding="utf-8"))
        # phrase -> [(class, kind)]; a phrase may name two classes (e.g. hydropneumothorax).
        self._phrase_class: dict[str, list[tuple[str, str]]] = {}
        for label, entry in table.items():
            if label.startswith("_") and label != _IGNORE:
                continue
            if label != _IGNORE and label not in CHEXPERT_CLASSES:
                raise ValueError(f"{mentions_path}: unknown CheXpert class {label!r}")
            for kind in _MENTION_KINDS:
                for phrase in entry.get(kind, []):
                    self._phrase_class.setdefault(phrase.lower(), []).append((label, kind))
        self._mentions = _phrase_regex(self._phrase_class)
        self._boundaries = _alternation(cues["clause_boundaries"])
        self._pseudo = _alternation(cues["pseudo_negation"])
        pre_n, post_n = int(cues["pre_window_words"]), int(cues["post_window_words"])
        adjacent, adjacent_n = (
            _alternation(cues["adjacent_uncertainty"]),
            int(cues["adjacent_window_words"]),
        )
        # (status, cues before the mention, cues after it, words before, words after), checked in
        # order.
        self._cue_rules: list[tuple[int, re.Pattern[str], re.Pattern[str], int, int]] = [
            (
                UNCERTAIN,
                _alternation(cues["uncertain_with_negation"]["pre"]),
                _alternation(cues["uncertain_with_negation"]["post"]),
                pre_n,
                post_n,
            ),
            (
                NEGATIVE,
                _alternation(cues["negation"]["pre"]),
                _alternation(cues["negation"]["post"]),
                pre_n,
                post_n,
            ),
            (
                UNCERTAIN,
                _alternation(cues["uncertainty"]["pre"]),
                _alternation(cues["uncertainty"]["post"]),
                pre_n,
                post_n,
            ),
            (UNCERTAIN, adjacent, adjacent, adjacent_n, adjacent_n),
        ]
        self._qualifiers = [
            (UNCERTAIN, _alternation(cues["attribute_qualifiers"]["uncertain"])),
            (NEGATIVE, _alternation(cues["attribute_qualifiers"]["normal"])),
            (POSITIVE, _alternation(cues["attribute_qualifiers"]["abnormal"])),
        ]
        self._laterality = [(side, _alternation(pats)) for side, pats in cues["laterality"].items()]
        self._location = _alternation(cues["location"])
        self._severity = _alternation(cues["severity"])

    def _clauses(self, sentence: str) -> list[str]:
        parts = self._boundaries.split(sentence)
        return [p.strip(" ,.") for p in parts if p and p.strip(" ,.")]

    def _status(self, clause: str, start: int, end: int) -> int:
        """Status of a finding mention: the first cue rule (CheXpert order) whose window matches."""
        for status, pre_cues, post_cues, pre_window, post_window in self._cue_rules:
            pre = _last_words(clause[:start], pre_window)
            post = _first_words(clause[end:], post_window)
            if pre_cues.search(pre) or post_cues.search(post):
                return status
        return POSITIVE

    @staticmethod
    def _nearest(
        pattern: re.Pattern[str], clause: str, start: int, end: int
    ) -> tuple[re.Match[str] | None, int]:
        """The cue match closest to the mention span [start, end) in the clause, and its
        distance."""
        best: re.Match[str] | None = None
        best_distance = len(clause) + 1
        for match in pattern.finditer(clause):
            if match.start() < end and match.end() > start:
                continue
            distance = start - match.end() if match.end() <= start else match.start() - end
            if distance < best_distance:
                best, best_distance = match, distance
        return best, best_distance

    def _closest_kind(
        self, kinds: list[tuple[_T, re.Pattern[str]]], clause: str, start: int, end: int
    ) -> _T | None:
        """Which of several cue kinds has the match nearest the mention (ties: first listed)."""
        best: _T | None = None
        best_distance = len(clause) + 1
        for kind, pattern in kinds:
            match, distance = self._nearest(pattern, clause, start, end)
            if match is not None and distance < best_distance:
                best, best_distance = kind, distance
        return best

    def _attribute_status(self, clause: str, start: int, end: int) -> int | None:
        status = self._closest_kind(
            self._qualifiers, clause, start, end
        )  # ties: uncertain, normal, abnormal
        if status == POSITIVE:
            return UNCERTAIN if self._status(clause, start, end) == UNCERTAIN else POSITIVE
        return status

    def _finding(
        self, label: str, status: int, phrase: str, sentence: str, clause: str, start: int, end: int
    ) -> Finding:
        """A Finding with its descriptors; a negated mention gets none (there is nothing to
        describe)."""
        if status == NEGATIVE:
            return Finding(label, status, phrase, sentence)
        location, _ = self._nearest(self._location, clause, start, end)
        severity, _ = self._nearest(self._severity, clause, start, end)
        return Finding(
            label=label,
            status=status,
            mention=phrase,
            sentence=sentence,
            laterality=self._closest_kind(self._laterality, clause, start, end),
            location=location.group() if location else None,
            severity=severity.group() if severity else None,
        )

    def extract(self, text: str) -> list[Finding]:
        """Every mention of a CheXpert class in ``text``, with status, laterality, location and
        severity."""
        findings: list[Finding] = []
        for sentence in split_sentences(text):
            lowered = sentence.lower()
            if not self._mentions.search(lowered):
                continue  # most sentences name no class: skip the costlier clause work
            for clause in self._clauses(lowered):
                masked = self._pseudo.sub(lambda m: " " * len(m.group()), clause)
                for match in self._mentions.finditer(masked):
                    phrase = re.sub(r"\s+", " ", match.group())
                    start, end = match.span()
                    for label, kind in self._phrase_class[phrase]:
                        if label == _IGNORE:
                            continue
                        status = (
                            self._attribute_status(masked, start, end)
                            if kind == "attributes"
                            else self._status(masked, start, end)
                        )
                        if kind == "hedges" and status == POSITIVE:
                            status = UNCERTAIN
                        if status is None:
                            continue
                        findings.append(
                            self._finding(label, status, phrase, sentence, masked, start, end)
                        )
        return findings

    def mentions_any(self, text: str) -> bool:
        """True when ``text`` names any CheXpert class (used to tell on-topic text)."""
        return any(
            label != _IGNORE
            for m in self._mentions.finditer(text.lower())
            for label, _ in self._phrase_class[re.sub(r"\s+", " ", m.group())]
        )

    def label(self, text: str) -> dict[str, int]:
        """CheXpert labels: per class 1 if any positive mention, else -1 if any uncertain, else 0.

        "No Finding" is 1 when no class other than Support Devices is positive or uncertain; classes
        never mentioned are absent from the dict (CheXpert's blank).
        """
        return labels_from_findings(self.extract(text)) if text.strip() else {}


def labels_from_findings(findings: Iterable[Finding]) -> dict[str, int]:
    """Aggregate mentions into CheXpert labels (positive beats uncertain beats negative)."""
    rank = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}
    labels: dict[str, int] = {}
    for finding in findings:
        current = labels.get(finding.label)
        if current is None or rank[finding.status] > rank[current]:
            labels[finding.label] = finding.status
    abnormal = any(v in (POSITIVE, UNCERTAIN) for k, v in labels.items() if k not in NOT_ABNORMAL)
    if not abnormal:
        labels["No Finding"] = POSITIVE
    return {name: labels[name] for name in CHEXPERT_CLASSES if name in labels}


def film_abnormal(labels: Mapping[str, int]) -> bool | None:
    """Whether labels describe an abnormal film: True when a class outside `NOT_ABNORMAL` is
    positive, False when "No Finding" is, None when neither is certain (an uncertain finding, or
    no labels)."""
    if any(v == UNCERTAIN for k, v in labels.items() if k not in NOT_ABNORMAL):
        return None
    if any(v == POSITIVE for k, v in labels.items() if k not in NOT_ABNORMAL):
        return True
    return False if labels.get("No Finding") == POSITIVE else None


_DEFAULT: list[ReportLabeler] = []


def default_labeler() -> ReportLabeler:
    """The labeler with the shipped rules, built once on first use (not at import)."""
    if not _DEFAULT:
        _DEFAULT.append(ReportLabeler())
    return _DEFAULT[0]


def label_report(text: str) -> dict[str, int]:
    """CheXpert labels of a report text with the shipped rules (see ``ReportLabeler.label``)."""
    return default_labeler().label(text)


def extract_findings(text: str) -> list[Finding]:
    """Labelled mentions of a report text with the shipped rules (see ``ReportLabeler.extract``)."""
    return default_labeler().extract(text)
