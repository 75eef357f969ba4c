"""Test helpers for the evaluation: a tiny built instruction dataset in the documented layout
(stage2/ DatasetDict with train/val/test, images.jsonl with splits, card.json) with synthetic CXR
PNGs. Test images sit in an NIH-like folder (``nih_chestxray14/images/`` + ``labels.csv``), and
one NIH test image has no stage record, as an image a stage leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import synthetic_cxr
from PIL import Image

REPORTS = [
    "Small left pleural effusion. No pneumothorax.",
    "No acute cardiopulmonary process.",
    "Cardiomegaly with mild pulmonary edema.",
    "Right lower lobe consolidation, concerning for pneumonia.",
    "Endotracheal tube in place. Stable cardiomegaly.",
    "No acute cardiopulmonary process.",
]
NIH_FINDINGS = [
    "Effusion",
    "No Finding",
    "Cardiomegaly|Edema",
    "Infiltration|Nodule",
    "Mass",
    "No Finding",
]
"""NIH labels of the test images, in order (the last one belongs to the record-less image)."""
QUESTIONS = [
    ("Is there a pleural effusion?", "effusion"),
    ("Is the heart enlarged?", "cardiomegaly"),
]


def _records(split: str, index: int, report: str, image_id: str) -> list[dict[str, str]]:
    base = {"image_id": image_id, "patient_id": f"p{index}", "labels": "{}", "source": "synthetic"}
    rows = [
        {
            **base,
            "id": f"{split}-{index}-r",
            "task": "cxr_to_report",
            "instruction": "Write the report.",
            "input": "<image>",
            "response": report,
        },
        {
            **base,
            "id": f"{split}-{index}-i",
            "task": "report_to_cxr",
            "instruction": "Draw this report.",
            "input": report,
            "response": "<image>",
        },
        {
            **base,
            "id": f"{split}-{index}-o",
            "task": "vqa",
            "instruction": "What abnormalities are seen?",
            "input": "<image>",
            "response": report,
        },
    ]
    for k, (question, word) in enumerate(QUESTIONS):
        rows.append(
            {
                **base,
                "id": f"{split}-{index}-q{k}",
                "task": "vqa",
                "instruction": question,
                "input": "<image>",
                "response": "Yes." if word in report.lower() else "No.",
            }
        )
    return rows


def make_tiny_dataset(path: Path, n_test: int = 4, image_size: int = 64) -> Path:
    """Write a dataset folder with ``n_test`` test images (and a few train/val ones) to ``path``."""
    from datasets import Dataset, DatasetDict

    listing, splits = [], {"train": [], "val": [], "test": []}
    layout = [("train", 3), ("val", 1), ("test", n_test), ("test-image-only", 1)]
    nih_rows = ["filename,labels"]
    index = 0
    for split, count in layout:
        for _ in range(count):
            report = REPORTS[index % len(REPORTS)] if split != "train" else REPORTS[1]
            folder = "nih_chestxray14" if split.startswith("test") else "other"
            image_id, name = f"{folder}/img{index}.png", f"img{index}.png"
            (path / folder / "images").mkdir(parents=True, exist_ok=True)
            pixels = (synthetic_cxr(image_size, seed=index) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(path / folder / "images" / name)
            listing.append(
                {
                    "image_id": image_id,
                    "path": f"{folder}/images/{name}",
                    "patient_id": f"p{index}",
                    "view": "PA",
                    "split": "test" if split.startswith("test") else split,
                }
            )
            if split in splits:
                splits[split] += _records(split, index, report, image_id)
            if folder == "nih_chestxray14":
                nih_rows.append(f"{name},{NIH_FINDINGS[len(nih_rows) - 1]}")
            index += 1
    (path / "nih_chestxray14" / "labels.csv").write_text("\n".join(nih_rows) + "\n")
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
        str(path / "stage2")
    )
    (path / "images.jsonl").write_text("".join(json.dumps(e) + "\n" for e in listing))
    (path / "card.json").write_text(json.dumps({"name": "tiny synthetic evaluation set"}))
    return path
