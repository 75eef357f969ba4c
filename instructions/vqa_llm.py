"""Optional VQA synthesis with a local instruction-tuned causal LM (as LLM-CXR did with
Llama-2-13b-chat).

The model is given by path only (nothing is downloaded: ``local_files_only``); ``transformers`` is
imported inside ``load_generator`` so ``instructions`` needs no model package at import. The model's
output is parsed as a JSON list of {"question", "answer"} objects and validated: unparsable output,
empty pairs, questions about prior studies or plans, and pairs that say nothing about the chest are
dropped (and counted).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from instructions.filters import filter_cues
from instructions.labeler import default_labeler
from instructions.vqa import QAPair

logger = logging.getLogger(__name__)

Generator = Callable[[str], str]
"""Prompt text in, generated text out."""

PROMPT = (
    "You are an experienced radiologist. Read the chest X-ray report below and write up to {n} "
    "question-answer pairs that a person looking at the same X-ray could answer: whether a finding "
    "is present, where it is, how large or severe it is, which devices are visible. Answer only "
    "from the report. Do not ask about earlier studies, changes over time, or recommendations. "
    "Reply with a JSON "
    'list only, like [{{"question": "...", "answer": "..."}}].\n\nReport:\n{report}\n'
)
_ON_TOPIC = re.compile(
    r"\b(?:lungs?|heart|cardiac|chest|pleura\w*|mediastin\w*|thora\w*|rib|ribs|diaphragm\w*|hil(?:um|ar)|"
    r"lobes?|bases?|apex|apical|airspace|x-?ray|radiograph|normal|abnormal\w*|effusion|opacit\w+)\b",
    re.IGNORECASE,
)


@dataclass
class LLMQAStats:
    """Counts of what validation dropped, for the card."""

    reports: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def _first_json_list(text: str) -> list[object] | None:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text[match.start() :])
        except json.JSONDecodeError:
            continue
        if isinstance(value, list):
            return value
    return None


def parse_qa_output(text: str, stats: LLMQAStats | None = None) -> list[QAPair]:
    """Validated QA pairs from a model's raw output (see module docstring for what is dropped)."""
    stats = stats if stats is not None else LLMQAStats()
    items = _first_json_list(text)
    if items is None:
        stats.dropped["no JSON list"] += 1
        return []
    cues = filter_cues()
    labeler = default_labeler()
    pairs: list[QAPair] = []
    for item in items:
        if not isinstance(item, dict):
            stats.dropped["not an object"] += 1
            continue
        lowered = {str(k).lower(): v for k, v in item.items()}
        question = str(lowered.get("question", lowered.get("q", "")) or "").strip()
        answer = str(lowered.get("answer", lowered.get("a", "")) or "").strip()
        if not question or not answer:
            stats.dropped["empty question or answer"] += 1
            continue
        both = f"{question} {answer}"
        if cues["prior_comparison"].search(both) or cues["plans"].search(both):
            stats.dropped["about priors or plans"] += 1
            continue
        if not (_ON_TOPIC.search(both) or labeler.mentions_any(both)):
            stats.dropped["off topic"] += 1
            continue
        pairs.append(QAPair(question, answer, "llm"))
    stats.kept += len(pairs)
    return pairs


def llm_qa(
    report_text: str, generate: Generator, max_pairs: int = 6, stats: LLMQAStats | None = None
) -> list[QAPair]:
    """QA pairs for one report from ``generate`` (a local LM, or any callable in tests)."""
    stats = stats if stats is not None else LLMQAStats()
    stats.reports += 1
    return parse_qa_output(generate(PROMPT.format(n=max_pairs, report=report_text)), stats)[
        :max_pairs
    ]


def load_generator(
    model_path: str | Path, gguf_file: str | None = None, max_new_tokens: int = 384
) -> Generator:
    """A greedy text generator from a local Hugging Face model folder (or a GGUF file in it).

    Raises ``FileNotFoundError`` naming the path when it is missing; never downloads.
    """
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(
            f"LLM for VQA not found at {path}: pass a local model folder (e.g. an "
            "instruction-tuned causal LM)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: optional dependency path

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs).eval()

    def generate(prompt: str) -> str:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = prompt
        inputs = tokenizer(text, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return generate
