"""The Alpaca/Dolly prompt as one object, shared by training and inference and saved in model
folders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cxrcommon.files import atomic_write_text

IMAGE_PLACEHOLDER = "<image>"
"""Marks where an image's tokens go in an instruction record (input or response)."""

_DEFAULT_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
_DEFAULT_PREAMBLE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request."
)


@dataclass(frozen=True)
class PromptFormat:
    """Alpaca/Dolly prompt layout as LLM-CXR uses it.

    ``render`` gives the prompt up to and including the response header and its newline; the model's
    answer follows and ends with ``end``. Saved next to the weights so decoding never relies on
    constants.
    """

    preamble: str = _DEFAULT_PREAMBLE
    preamble_no_input: str = _DEFAULT_PREAMBLE_NO_INPUT
    instruction_header: str = "### Instruction:"
    input_header: str = "### Input:"
    response_header: str = "### Response:"
    end_marker: str = "### End"

    @property
    def end(self) -> str:
        """The marker that closes a response."""
        return self.end_marker

    def render(self, instruction: str, input: str = "") -> str:
        """Prompt text for one record; the input block is left out when ``input`` is empty (Alpaca
        style)."""
        if not instruction.strip():
            raise ValueError("PromptFormat.render: instruction is empty")
        if input:
            return (
                f"{self.preamble}\n\n{self.instruction_header}\n{instruction}\n\n"
                f"{self.input_header}\n{input}\n\n{self.response_header}\n"
            )
        return (
            f"{self.preamble_no_input}\n\n{self.instruction_header}\n{instruction}\n\n"
            f"{self.response_header}\n"
        )

    def opening(self, instruction: str | None = None) -> str:
        """The text every prompt with an input opens with (``render`` with a non-empty input, and
        so ``render_chat``): the preamble and the instruction header, and given ``instruction``,
        it and the input header too. Inference runs it once for many prompts
        (`llmcxr.decoding.PromptPrefix`)."""
        head = f"{self.preamble}\n\n{self.instruction_header}\n"
        return head if instruction is None else f"{head}{instruction}\n\n{self.input_header}\n"

    def render_response(self, response: str) -> str:
        """What follows ``render``: the response and the end marker that closes it."""
        return f"{response}\n\n{self.end_marker}"

    def render_full(self, instruction: str, input: str, response: str) -> str:
        """Prompt plus response plus end marker: the whole training text of one record."""
        return self.render(instruction, input) + self.render_response(response)

    def render_chat(
        self, turns: Sequence[tuple[str, str, str]], instruction: str, input: str = ""
    ) -> str:
        """Earlier ``(instruction, input, response)`` records in full, each followed by a blank
        line, then the prompt of the new ``instruction``: a conversation as one prompt."""
        done = "".join(f"{self.render_full(*turn)}\n\n" for turn in turns)
        return done + self.render(instruction, input)

    def to_dict(self) -> dict[str, str]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptFormat:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"PromptFormat.from_dict: unknown keys {sorted(unknown)}")
        return cls(**{k: str(v) for k, v in data.items()})

    def save(self, path: str | Path) -> None:
        """Write as JSON atomically (temp file, then os.replace)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> PromptFormat:
        """Read a file written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prompt format file not found: {path}")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
