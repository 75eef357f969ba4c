"""Patient-level train/val/test assignment: official splits when the corpus has them, else a stable
hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SPLITS = ("train", "val", "test")


def stable_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key`` (SHA-1; unlike ``hash()`` it does not change between
    runs)."""
    digest = hashlib.sha1(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of patients in val and test when the corpus has no official split (rest: train)."""

    val_fraction: float = 0.05
    test_fraction: float = 0.10
    salt: str = "llmcxr-split"

    def __post_init__(self) -> None:
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ValueError("split fractions must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "val_fraction + test_fraction must be < 1, got "
                f"{self.val_fraction + self.test_fraction}"
            )

    def assign(self, patient_id: str, official: str = "") -> str:
        """The split of a patient: ``official`` when given (``train``/``val``/``test``), else by
        hash."""
        if official:
            if official not in SPLITS:
                raise ValueError(f"unknown split {official!r} for patient {patient_id}")
            return official
        x = stable_fraction(patient_id, self.salt)
        if x < self.test_fraction:
            return "test"
        if x < self.test_fraction + self.val_fraction:
            return "val"
        return "train"


def patient_splits(patient_official: dict[str, set[str]], config: SplitConfig) -> dict[str, str]:
    """One split per patient. A patient whose studies carry different official splits (should not
    happen in MIMIC) goes to the first of test, val, train it has, so it never spans two splits."""
    result: dict[str, str] = {}
    for patient, officials in patient_official.items():
        chosen = next((s for s in ("test", "val", "train") if s in officials), "")
        result[patient] = config.assign(patient, chosen)
    return result
