"""Rule-based visual-question-answer synthesis from a labelled report, answered in the report's own
words.

LLM-CXR generated its VQA data with Llama-2-13b-chat and never released it; this is the offline,
deterministic counterpart: presence (yes/no; negatives only where the report states them), location,
severity, devices, an open "what is abnormal" question and a plain "is this film normal?" yes/no
(one answer token that depends on the whole image, so that reading the film gets a direct training
signal besides the report's free text). Sentences about prior studies or plans
are never used. ``instructions.vqa_llm`` offers the LLM-based variant.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from instructions.filters import filter_cues
from instructions.labeler import (
    DATA_DIR,
    NEGATIVE,
    NOT_ABNORMAL,
    POSITIVE,
    UNCERTAIN,
    Finding,
    labels_from_findings,
)

QA_KINDS = ("presence", "location", "severity", "devices", "open", "normal")


@dataclass(frozen=True)
class QAPair:
    """One question and its answer; ``kind`` is one of ``QA_KINDS``, ``label`` the CheXpert class
    asked about."""

    question: str
    answer: str
    kind: str
    label: str = ""
    certain: bool = True
    """False when the answer relays the report's uncertainty ("Possibly ..."); stage 2 drops
    these."""


@cache
def _wording(path: str | None = None) -> dict[str, object]:
    return json.loads(Path(path or DATA_DIR / "vqa_questions.json").read_text(encoding="utf-8"))


def _usable(sentence: str) -> bool:
    cues = filter_cues()
    return not cues["prior_comparison"].search(sentence) and not cues["plans"].search(sentence)


def _sentence_answer(prefix: str, sentence: str) -> str:
    return f"{prefix} {sentence.strip()}" if sentence.strip() else prefix


def synthesize_vqa(
    findings: list[Finding], impression: str, rng: random.Random, max_pairs: int = 8
) -> list[QAPair]:
    """QA pairs for one report from its labelled ``findings`` (see ``extract_findings``).

    Presence questions are balanced: at most as many "no" questions as "yes" ones (at least two for
    a normal report), and a "no" is only asked when the report states the negative. The "normal"
    question is always kept (within ``max_pairs``) unless the report is only uncertain: "No." when
    it states a finding, "Yes." when it states none. Deterministic for a given ``rng`` state.
    """
    wording = _wording()
    phrases: dict[str, str] = wording["finding_phrases"]  # type: ignore[assignment]
    overall = labels_from_findings(findings)  # answers must agree with the report's own labels
    usable = [f for f in findings if _usable(f.sentence)]
    first: dict[str, Finding] = {}
    for finding in usable:
        if finding.status == overall.get(finding.label) and finding.label in phrases:
            first.setdefault(finding.label, finding)
    positives = [f for f in first.values() if f.status == POSITIVE]
    uncertain = [f for f in first.values() if f.status == UNCERTAIN]
    negatives = [f for f in first.values() if f.status == NEGATIVE]
    pairs: list[QAPair] = []

    def ask(kind: str, finding: Finding | None = None) -> str:
        template = rng.choice(wording[kind])  # type: ignore[arg-type]
        if finding is None:
            return template
        phrase = phrases[finding.label]
        if (
            kind != "presence"
        ):  # "the {finding}" reads wrong with an article: "the a pleural effusion"
            phrase = re.sub(r"^(?:a|an) ", "", phrase)
        return template.format(finding=phrase)

    budget = max(len(positives) + len(uncertain), 2)
    rng.shuffle(negatives)
    presence = [("Yes.", f, True) for f in positives] + [("Possibly.", f, False) for f in uncertain]
    presence += [("No.", f, True) for f in sorted(negatives[:budget], key=lambda f: f.label)]
    for prefix, finding, certain in presence:
        question = ask("presence", finding)
        pairs.append(
            QAPair(
                question,
                _sentence_answer(prefix, finding.sentence),
                "presence",
                finding.label,
                certain,
            )
        )
    for finding in positives:
        if finding.location or finding.laterality:
            where = finding.location or ""
            side = wording["location_phrases"].get(finding.laterality or "", "")  # type: ignore[union-attr]
            located = where and (finding.laterality or "") in where
            answer = (
                f"In the {where}."
                if located
                else " ".join(x for x in (side, f"Location: {where}." if where else "") if x)
            )
            pairs.append(QAPair(ask("location", finding), answer, "location", finding.label))
        if finding.severity:
            answer = f"{finding.severity.capitalize()}."
            pairs.append(QAPair(ask("severity", finding), answer, "severity", finding.label))
    devices = sorted(
        {f.mention for f in usable if f.label == "Support Devices" and f.status == POSITIVE}
    )
    if devices:
        pairs.append(
            QAPair(
                ask("devices"), f"{', '.join(devices).capitalize()}.", "devices", "Support Devices"
            )
        )
    abnormal_sentences = list(dict.fromkeys(f.sentence for f in positives + uncertain))
    if abnormal_sentences:
        pairs.append(QAPair(ask("open"), " ".join(abnormal_sentences), "open"))
    elif impression.strip() and not positives and not uncertain and _usable(impression):
        pairs.append(QAPair(ask("open"), impression.strip(), "open", "No Finding"))
    stated = {label for label, status in overall.items() if label not in NOT_ABNORMAL}
    abnormal = any(overall[label] == POSITIVE for label in stated)
    if max_pairs < 2 or (not abnormal and any(overall[label] == UNCERTAIN for label in stated)):
        return _cap(pairs, max_pairs, rng)
    # asked after the cap so that the other pairs draw the same random numbers as before
    kept = _cap(pairs, max_pairs - 1, rng)
    return kept + [QAPair(ask("normal"), "No." if abnormal else "Yes.", "normal", "No Finding")]


@cache
def _question_kinds() -> dict[str, tuple[str, str]]:
    wording = _wording()
    phrases: dict[str, str] = wording["finding_phrases"]  # type: ignore[assignment]
    kinds = {q: ("normal", "No Finding") for q in wording["normal"]}  # type: ignore[union-attr]
    for template in wording["presence"]:  # type: ignore[union-attr]
        kinds.update({template.format(finding=p): ("presence", c) for c, p in phrases.items()})
    return kinds


def question_kind(question: str) -> tuple[str, str] | None:
    """``(kind, label)`` of a question `synthesize_vqa` asks with a yes/no answer ("normal" or
    "presence"), None for any other question. The training loss uses it to know which other
    films would make an answer wrong."""
    return _question_kinds().get(question.strip())


def _cap(pairs: list[QAPair], max_pairs: int, rng: random.Random) -> list[QAPair]:
    """At most ``max_pairs`` pairs, keeping "no" answers no more numerous than "yes"/"possibly" (or
    2)."""
    if len(pairs) <= max_pairs:
        return pairs
    affirmed = [p for p in pairs if p.kind == "presence" and not p.answer.startswith("No.")]
    denied = [p for p in pairs if p.kind == "presence" and p.answer.startswith("No.")]
    others = [p for p in pairs if p.kind != "presence"]
    keep_affirmed = rng.sample(affirmed, min(len(affirmed), max(1, max_pairs // 2)))
    room = max_pairs - len(keep_affirmed)
    keep_denied = rng.sample(denied, min(len(denied), max(len(keep_affirmed), 2), room))
    room -= len(keep_denied)
    keep = set(map(id, keep_affirmed + keep_denied + rng.sample(others, min(room, len(others)))))
    return [p for p in pairs if id(p) in keep]
