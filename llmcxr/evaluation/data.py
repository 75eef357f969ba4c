"""Read the evaluation records of a built instruction dataset (layout in docs/architecture.md)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cxrcommon.manifest import IMAGES_FILE, read_image_list

logger = logging.getLogger(__name__)

TASKS_WITH_IMAGE_INPUT = ("cxr_to_report", "vqa")


@dataclass(frozen=True)
class EvalRecord:
    """One test record: the prompt parts, the reference, and the real image when it exists."""

    id: str
    task: str
    instruction: str
    input: str
    response: str
    image_id: str
    image_path: Path | None
    report_pool: str = ""
    """The paired build's label-matched report pool of the record (empty for other sources)."""

    @property
    def report(self) -> str:
        """The report text of the record: the response (CXR->report) or the input (report->CXR)."""
        return self.input if self.task == "report_to_cxr" else self.response


class EvalSplit:
    """The records of one stage and split of a built dataset, with image paths resolved.

    ``data_dir`` is the dataset folder (holding ``stage1/``, ``stage2/`` and ``images.jsonl``).
    """

    def __init__(self, data_dir: str | Path, stage: int = 2, split: str = "test") -> None:
        from datasets import load_from_disk

        self.data_dir = Path(data_dir)
        self.stage = stage
        self.split = split
        stage_dir = self.data_dir / f"stage{stage}"
        if not stage_dir.is_dir():
            raise FileNotFoundError(
                f"{stage_dir} not found: --data must be a dataset built by `llmcxr data build`"
            )
        self._splits = load_from_disk(str(stage_dir))
        if split not in self._splits:
            raise ValueError(f"{stage_dir} has no split {split!r} (has {sorted(self._splits)})")
        self.image_paths, self.image_splits = _read_image_list(self.data_dir)
        self._records = [self._record(row) for row in self._splits[split]]

    def _record(self, row: dict) -> EvalRecord:
        return EvalRecord(
            id=row["id"],
            task=row["task"],
            instruction=row["instruction"],
            input=row["input"],
            response=row["response"],
            image_id=row["image_id"],
            image_path=self.image_paths.get(row["image_id"]) if row["image_id"] else None,
            report_pool=row.get("report_pool") or "",
        )

    def records(self, task: str, *, need_image: bool = False) -> list[EvalRecord]:
        """Records of ``task`` in dataset order; with ``need_image`` only those whose image
        exists."""
        rows = [r for r in self._records if r.task == task]
        if need_image:
            kept = [r for r in rows if r.image_path is not None]
            if len(kept) < len(rows):
                logger.warning(
                    "%s: %d of %d records skipped (image missing)",
                    task,
                    len(rows) - len(kept),
                    len(rows),
                )
            rows = kept
        return rows

    def images_of_split(self, prefix: str = "") -> list[tuple[str, Path]]:
        """``(image_id, path)`` of the available images of this split in ``images.jsonl`` (its
        ``split`` field), whatever records the stage holds for them; ``prefix`` selects a source
        (image ids are ``<source folder>/<file>``)."""
        return [
            (image_id, path)
            for image_id, path in self.image_paths.items()
            if self.image_splits.get(image_id) == self.split and image_id.startswith(prefix)
        ]

    def most_common_report(self) -> str:
        """The most frequent CXR->report reference text of the training split (baseline)."""
        train = self._splits.get("train", None)
        texts: Counter[str] = Counter()
        if train is not None:
            texts.update(
                row["response"]
                for row in train.select_columns(["task", "response"])
                if row["task"] == "cxr_to_report"
            )
        if not texts:
            raise ValueError(
                f"{self.data_dir}/stage{self.stage} has no training CXR->report records for the "
                "most-common-report baseline"
            )
        return texts.most_common(1)[0][0]

    def card(self) -> dict:
        """The dataset's card.json when present (counts, rules), for provenance in metrics.json."""
        path = self.data_dir / "card.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def _read_image_list(data_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """``image_id -> absolute path`` for the images of ``images.jsonl`` that exist on disk, and
    ``image_id -> split`` for those that name one."""
    paths: dict[str, Path] = {}
    splits: dict[str, str] = {}
    missing = 0
    for entry in read_image_list(data_dir):
        if entry.split:
            splits[entry.image_id] = entry.split
        path = entry.file(data_dir)
        if path is None:
            continue
        if path.is_file():
            paths[entry.image_id] = path
        else:
            missing += 1
    if missing:
        logger.warning("%s: %d listed image files do not exist", data_dir / IMAGES_FILE, missing)
    return paths, splits
