"""Paraphrased task instructions, kept as JSON data in ``instructions/templates/`` and sampled per
record."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

TEMPLATE_DIR = Path(str(resources.files("instructions") / "templates"))


@dataclass(frozen=True)
class InstructionTemplates:
    """Instruction paraphrases per task (``cxr_to_report``, ``report_to_cxr``, ``text_*``).

    Training samples one per record with a seeded RNG (LLM-CXR used ten per direction);
    inference uses the fixed ``default_instruction`` of the task.
    """

    paraphrases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | Path | None = None) -> InstructionTemplates:
        """Read every ``*.json`` template file of ``directory`` (default: the shipped ones)."""
        directory = Path(directory) if directory is not None else TEMPLATE_DIR
        files = sorted(directory.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no instruction template files (*.json) in {directory}")
        paraphrases: dict[str, tuple[str, ...]] = {}
        defaults: dict[str, str] = {}
        for path in files:
            data = json.loads(path.read_text(encoding="utf-8"))
            task = data.get("task")
            items = tuple(s.strip() for s in data.get("instructions", []) if s.strip())
            if not task or not items:
                raise ValueError(
                    f"template file {path} needs a 'task' and a non-empty 'instructions' list"
                )
            paraphrases[task] = items
            defaults[task] = data.get("default") or items[0]
        return cls(paraphrases, defaults)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names that have templates."""
        return tuple(sorted(self.paraphrases))

    def _check(self, task: str) -> None:
        if task not in self.paraphrases:
            raise KeyError(
                f"no instruction templates for task {task!r}; known: {', '.join(self.tasks)}"
            )

    def sample(self, task: str, rng: random.Random) -> str:
        """One paraphrase for ``task``, drawn with the caller's seeded RNG."""
        self._check(task)
        return rng.choice(self.paraphrases[task])

    def default(self, task: str) -> str:
        """The fixed instruction used at inference for ``task``."""
        self._check(task)
        return self.defaults[task]


def default_instruction(task: str) -> str:
    """The shipped fixed inference instruction for ``task`` (e.g. ``cxr_to_report``), used by the
    CLI."""
    return _shipped().default(task)


_SHIPPED: list[InstructionTemplates] = []


def _shipped() -> InstructionTemplates:
    # Cached on first use (not at import) so importing the package reads no files.
    if not _SHIPPED:
        _SHIPPED.append(InstructionTemplates.load())
    return _SHIPPED[0]
