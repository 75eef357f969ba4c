"""Finding labels of a generated report, shaped for display: highlighted sentences and a table.

The CheXpert-style labeler (``instructions.label_report``) gives labels for a whole text but no
character spans, so each sentence is labelled on its own and highlighted with what it states;
the table shows the labels of the report as a whole.
"""

from __future__ import annotations

import re

import instructions

STATUS_NAMES: dict[int, str] = {1: "positive", -1: "uncertain", 0: "negative"}
"""How the labeler's values read in the page."""

STATUS_COLOURS: dict[str, str] = {
    "positive": "#ef4444",
    "uncertain": "#f59e0b",
    "negative": "#22c55e",
}
"""Highlight colour of a sentence by the strongest status it states (positive first)."""

NO_FINDING = "No Finding"
"""The labeler's report-level "normal" class: green, dropped from sentences naming a finding."""

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences, keeping every character (the parts join back to ``text``)."""
    parts: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        parts.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        parts.append(text[start:])
    return parts


def sentence_tag(labels: dict[str, int]) -> str | None:
    """A short tag for the labels one sentence states, e.g. ``"Edema, Effusion?"``; None if none.

    Positive findings read plainly, uncertain ones end in ``?`` and negated ones read ``no X``.
    """
    labels = _sentence_labels(labels)
    if not labels:
        return None
    order = sorted(labels, key=lambda name: (-(labels[name] == 1), -(labels[name] == -1), name))
    suffix = {1: "", -1: "?"}
    return ", ".join(
        f"no {name}" if labels[name] == 0 else f"{name}{suffix[labels[name]]}" for name in order
    )


def tag_status(labels: dict[str, int]) -> str:
    """The strongest status among a sentence's labels: positive, else uncertain, else negative.

    "No Finding" alone reads as negative (a normal study), whatever its value.
    """
    if not labels:
        raise ValueError("tag_status needs at least one label")
    values = {value for name, value in labels.items() if name != NO_FINDING}
    for value in (1, -1):
        if value in values:
            return STATUS_NAMES[value]
    return STATUS_NAMES[0]


def _sentence_labels(labels: dict[str, int]) -> dict[str, int]:
    """A sentence's labels without "No Finding", unless that is all the sentence says."""
    named = {name: value for name, value in labels.items() if name != NO_FINDING}
    return named or labels


def highlight_findings(text: str) -> tuple[list[tuple[str, str | None]], dict[str, str]]:
    """Label each sentence of ``text``: ``(spans, colour_map)`` for a highlighted-text view.

    Spans are ``(sentence, tag or None)`` covering the whole text; ``colour_map`` gives each tag
    the colour of its strongest status so positive findings stand out.
    """
    spans: list[tuple[str, str | None]] = []
    colours: dict[str, str] = {}
    for sentence in split_sentences(text):
        labels = instructions.label_report(sentence) if sentence.strip() else {}
        tag = sentence_tag(labels)
        spans.append((sentence, tag))
        if tag is not None:
            colours[tag] = STATUS_COLOURS[tag_status(labels)]
    return spans, colours


def label_rows(text: str) -> list[list[str]]:
    """Rows ``[finding, status]`` for the labels of the whole report, positives first."""
    labels = instructions.label_report(text)
    rank = {1: 0, -1: 1, 0: 2}
    return [
        [name, STATUS_NAMES[value]]
        for name, value in sorted(labels.items(), key=lambda item: (rank[item[1]], item[0]))
    ]
