"""Synthetic image-report pairs: each labelled image matched with a real OpenI report whose labels
agree.

Paired CXR image-report data is scarce offline (MIMIC-CXR needs credentials; the OpenI images are
not here). This pairs every image of local labelled folders (``labels.csv`` + ``images/``, e.g. NIH
ChestX-ray14, the COVID-19 sets) with an OpenI report whose labeler positives fit the image's
labels, both in the whole report (stage 1's text) and in its impression alone (stage 2's). The
pairs are synthetic matches, not real paired data; the card says so. Splits stay consistent: OpenI
reports are split by their own hashed id with the same fractions, and an image only gets a report
from its patient's split, so no report text crosses splits. Each study also carries its whole
label-matched pool (``Report.pool``, shared by all images with the same labels in a split) so
training can draw another report of the pool each epoch instead of the one frozen pick.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from instructions.corpora.csvfiles import iter_csv_rows
from instructions.corpora.openi import read_openi
from instructions.filters import StripDeidMarks
from instructions.labeler import DATA_DIR, NOT_ABNORMAL, POSITIVE, UNCERTAIN, label_report
from instructions.near_duplicates import MAX_DISTANCE, assign_patients, hash_files
from instructions.reports import ImageRef, ReadStats, Report, ReportPool
from instructions.splits import SplitConfig

PAIRED_NOTE = (
    "SYNTHETIC PAIRS: each image comes from a labelled image set and its report is a real OpenI "
    "report chosen because the rule-based labeler's findings, on the whole report and on its "
    "impression alone, match the image's labels. Image and report are NOT from the same patient "
    "or study; use these pairs for bootstrapping, not as "
    "paired ground truth. Each image's direction records name its whole label-matched pool "
    "(report_pool); training may draw a report from it each epoch."
)


def load_label_map(path: str | Path | None = None) -> dict[str, list[str]]:
    """Image label (lower-cased) -> acceptable CheXpert classes (``data/paired_label_map.json``)."""
    data = json.loads(Path(path or DATA_DIR / "paired_label_map.json").read_text(encoding="utf-8"))
    return {k.lower(): v for k, v in data.items() if not k.startswith("_")}


def parse_image_labels(cell: str) -> list[str]:
    """``"Effusion|Mass"`` / ``"COVID-19 (folder covid19)"`` -> ``["effusion", "mass"]`` /
    ``["covid-19"]``."""
    return [part.split(" (")[0].strip().lower() for part in cell.split("|") if part.strip()]


def report_matches(positives: frozenset[str], normal: bool, wanted: list[list[str]]) -> bool:
    """True when a report's positives fit the image: normal with normal, else every image label met
    by an acceptable class and no positive outside the acceptable ones."""
    if not wanted or all(not classes for classes in wanted):
        return normal and not positives
    allowed = {c for classes in wanted for c in classes}
    return (
        bool(positives)
        and positives <= allowed
        and all(positives & set(classes) for classes in wanted if classes)
    )


_Fit = tuple[frozenset[str], bool]
"""What one text states, for matching: its definite positive classes and whether it is normal."""


def _fit(labels: dict[str, int]) -> _Fit | None:
    """A text's positives and normality from its labels, or None when it states a finding as
    uncertain (which cannot be matched to an image label either way)."""
    if any(v == UNCERTAIN for k, v in labels.items() if k not in NOT_ABNORMAL):
        return None
    positives = frozenset(k for k, v in labels.items() if v == POSITIVE and k not in NOT_ABNORMAL)
    return positives, "No Finding" in labels


def text_fits(text: str, wanted: list[list[str]]) -> bool:
    """True when the labeler's findings on ``text`` fit an image with these acceptable classes
    per label (``report_matches``); a finding stated as uncertain never fits."""
    fit = _fit(label_report(text))
    return fit is not None and report_matches(*fit, wanted)


def pool_key(split: str, wanted: list[list[str]]) -> str:
    """Name of the report pool of images in ``split`` with these acceptable classes per label (the
    match depends on nothing else), e.g. ``train:[["Cardiomegaly"]]``."""
    classes = sorted({tuple(sorted(c)) for c in wanted})
    return f"{split}:{json.dumps([list(c) for c in classes])}"


def _view(raw: str) -> str:
    text = raw.strip().upper()
    for view in ("PA", "AP"):
        if text.startswith(view):
            return view
    return "FRONTAL" if "FRONTAL" in text else text


def _openi_pool(
    reports: Iterable[Report], split: SplitConfig
) -> dict[str, dict[tuple[_Fit, _Fit | None], list[Report]]]:
    """OpenI reports with findings or impression, by split and by what the whole text and the
    impression alone state (None: no impression).

    Both texts must fit an image: stage 1 trains on findings + impression, stage 2 on the
    impression alone, and an impression such as "No focal airspace consolidation." under findings
    that describe an opacity would teach stage 2 a normal report for an abnormal image.
    """
    pool: dict[str, dict[tuple[_Fit, _Fit | None], list[Report]]] = defaultdict(
        lambda: defaultdict(list)
    )
    strip = StripDeidMarks()
    for report in reports:
        cleaned, _ = strip.apply(report)
        assert cleaned is not None
        text = cleaned.text()
        if not text:
            continue
        labels = label_report(text)
        whole = _fit(labels)
        impression = cleaned.text(("IMPRESSION",))
        alone = _fit(label_report(impression)) if impression else None
        if whole is None or (impression and alone is None):
            continue
        cleaned.reference_labels = labels
        pool[split.assign(report.report_id, "")][(whole, alone)].append(cleaned)
    return pool


@dataclass
class _Candidate:
    """An image that passed the file, duplicate and label checks, waiting for its patient and
    report."""

    folder: Path
    row: dict[str, str]
    path: Path
    wanted: list[list[str]]
    patient: str = ""

    @property
    def name(self) -> str:
        return f"{self.folder.name}:{Path(self.row['filename']).stem}"


def _candidates(
    folder: Path,
    label_map: dict[str, list[str]],
    seen_hashes: set[str],
    counts: Counter[str],
    seed: int,
    limit: int | None,
) -> list[_Candidate]:
    """A folder's images with a readable file, not seen before (by content) and mappable labels."""
    rows = list(iter_csv_rows(folder / "labels.csv", ("filename", "labels")))
    if limit is not None and limit < len(rows):
        # label tables are often sorted by class: a seeded sample keeps the label mix
        rows = random.Random(f"{seed}:{folder.name}").sample(rows, limit)
    found = []
    for row in tqdm(rows, desc=f"reading {folder.name}", unit="image", leave=False):
        path = folder / "images" / row["filename"]
        if not path.is_file():
            counts["image file missing"] += 1
            continue
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest in seen_hashes:  # the COVID-19 sets overlap: keep each image once
            counts["duplicate image"] += 1
            continue
        seen_hashes.add(digest)
        names = parse_image_labels(row["labels"])
        if not names or any(n not in label_map for n in names):
            counts["label without a CheXpert class"] += 1
            continue
        found.append(_Candidate(folder, row, path, [label_map[n] for n in names]))
    return found


def _assign_patients(candidates: list[_Candidate], max_distance: int | None) -> int:
    """Set each candidate's patient: its folder's id, else its near-duplicate group (None: its
    name).

    Returns how many images without an id joined a group of two or more.
    """
    own = [
        f"{c.folder.name}:{c.row['patient_id']}" if c.row.get("patient_id") else ""
        for c in candidates
    ]
    names = [c.name for c in candidates]
    if max_distance is None or all(own):
        patients = [o or n for o, n in zip(own, names, strict=True)]
    else:
        hashes = hash_files([c.path for c in candidates], desc="near-duplicate hashes")
        patients = assign_patients(names, own, hashes, max_distance)
    for candidate, patient in zip(candidates, patients, strict=True):
        candidate.patient = patient
    sizes = Counter(patients)
    return sum(1 for o, p in zip(own, patients, strict=True) if not o and sizes[p] > 1)


def _matches(
    by_fit: dict[tuple[_Fit, _Fit | None], list[Report]], wanted: list[list[str]]
) -> tuple[Report, ...]:
    """The reports of one split whose whole text and impression both fit an image's labels,
    sorted by id."""
    return tuple(
        sorted(
            (
                r
                for (whole, alone), reports in by_fit.items()
                if report_matches(*whole, wanted)
                and (alone is None or report_matches(*alone, wanted))
                for r in reports
            ),
            key=lambda r: r.report_id,
        )
    )


def pair_labelled_images(
    folders: list[Path],
    openi_archive: str | Path | None = None,
    seed: int = 0,
    stats: ReadStats | None = None,
    limit_per_folder: int | None = None,
    split: SplitConfig | None = None,
    openi_reports: Iterable[Report] | None = None,
    near_duplicate_distance: int | None = MAX_DISTANCE,
) -> tuple[list[Report], dict[str, object]]:
    """One synthetic study per pairable image; returns the studies and per-folder pairing counts.

    Images without a patient id are split as pseudo-patients: groups of near-duplicate images
    (``instructions.near_duplicates``, Hamming bits ``near_duplicate_distance``; None turns it off).
    ``openi_reports`` replaces reading ``openi_archive`` (e.g. a subset, for tests).
    """
    stats = stats if stats is not None else ReadStats()
    split = split or SplitConfig()
    label_map = load_label_map()
    pool = _openi_pool(
        openi_reports if openi_reports is not None else read_openi(openi_archive), split
    )
    seen_hashes: set[str] = set()
    counts = {Path(f).name: Counter[str]() for f in folders}
    candidates = [
        c
        for f in folders
        for c in _candidates(
            Path(f), label_map, seen_hashes, counts[Path(f).name], seed, limit_per_folder
        )
    ]
    grouped = _assign_patients(candidates, near_duplicate_distance)
    studies: list[Report] = []
    pools: dict[str, ReportPool] = {}
    for candidate in candidates:
        folder, row = candidate.folder, candidate.row
        split_name = split.assign(candidate.patient)
        key = pool_key(split_name, candidate.wanted)
        if key not in pools:
            pools[key] = ReportPool(
                key,
                split_name,
                _matches(pool[split_name], candidate.wanted),
                fits=partial(text_fits, wanted=candidate.wanted),
            )
        matches = pools[key].reports
        if not matches:
            counts[folder.name]["no matching report"] += 1
            continue
        chosen = random.Random(f"{seed}:{folder.name}/{row['filename']}").choice(matches)
        image = ImageRef(
            f"{folder.name}/{row['filename']}",
            str(candidate.path.resolve()),
            _view(row.get("view", "")),
        )
        studies.append(
            Report(
                report_id=f"{folder.name}/{Path(row['filename']).stem}~{chosen.report_id}",
                patient_id=candidate.patient,
                source=f"paired:{folder.name}+openi",
                sections=dict(chosen.sections),
                images=[image],
                reference_labels=None,
                pool=pools[key],
            )
        )
        counts[folder.name]["paired"] += 1
        stats.read += 1
    summary: dict[str, object] = {}
    for name, folder_counts in counts.items():
        for reason, count in folder_counts.items():
            if reason != "paired":
                stats.skip(f"{name}: {reason}", count)
        summary[name] = dict(sorted(folder_counts.items()))
    summary["near_duplicates"] = {
        "max_distance": near_duplicate_distance,
        "images_without_patient_id_in_groups": grouped,
    }
    return studies, summary
