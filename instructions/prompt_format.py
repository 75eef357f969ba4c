"""The Alpaca/Dolly prompt as one object, shared by training and inference and saved in model folders."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
"""Marks where an image's tokens go in an instruction record (input or response)."""

_DEFAULT_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
_DEFAULT_PREAMBLE_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


@dataclass(frozen=True)
class PromptFormat:
    """Alpaca/Dolly prompt layout as LLM-CXR uses it.

    ``render`` gives the prompt up to and including the response header and its newline; the model's
    answer follows and ends with ``end``. Saved next to the weights so decoding never relies on constants.
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
        """Prompt text for one record; the input block is left out when ``input`` is empty (Alpaca style)."""
        if not instruction.strip():
            raise ValueError("PromptFormat.render: instruction is empty")
        if input:
            return (
                f"{self.preamble}\n\n{self.instruction_header}\n{instruction}\n\n"
                f"{self.input_header}\n{input}\n\n{self.response_header}\n"
            )
        return f"{self.preamble_no_input}\n\n{self.instruction_header}\n{instruction}\n\n{self.response_header}\n"

    def render_full(self, instruction: str, input: str, response: str) -> str:
        """Prompt plus response plus end marker: the whole training text of one record."""
        return f"{self.render(instruction, input)}{response}\n\n{self.end_marker}"

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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it into place, with
    the permissions a plain ``open()`` would give (``mkstemp`` makes files 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask
