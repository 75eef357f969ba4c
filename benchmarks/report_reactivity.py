"""Do a model's reports react to the image? Abnormal vs normal real test images, by report.

    .venv/bin/python benchmarks/report_reactivity.py --model runs/X/model --limit 240 --out F
    .venv/bin/python benchmarks/report_reactivity.py --score likelihood --limit 400 --out F

For a seeded random ``--limit`` of the labelled real images in a built dataset's split (NIH
ChestX-ray14: any finding vs "No Finding"; COVID-19 Radiography: "COVID-19" vs "Normal"), the
model writes ``--samples`` sampled reports per image (its default sampling, seeds 0, 1, ...). An
image's score is the fraction of its reports that state a finding (the project's labeler: any
positive class but "No Finding" and "Support Devices"). Printed and written (JSON): the AUROC of
that score for abnormal vs normal images with a bootstrap 95 % interval (0.5: the reports ignore
the image), the finding rates on each group, per source and pooled.

Why beside ``llmcxr evaluate``: its NIH task holds ~80 images, 31 abnormal, so its intervals are
wide; this check pools the larger COVID-19 Radiography test images. It asks only whether a report
calls the film abnormal, not which finding it names: the COVID-19 images' label allows several
(pneumonia, opacity, consolidation). The COVID-19 and Normal images come from different
hospitals, so a model can also separate them by look rather than by disease: read it as a
lower bound on reading, not as diagnostic accuracy.

``--score likelihood`` asks the same without sampling, so that small changes show (a checkpoint
against another, minutes per model): an image's score is how much more likely the model finds
fixed abnormal impressions than fixed normal ones after it (mean log-probability of
``ABNORMAL_REFERENCES`` minus that of ``NORMAL_REFERENCES``: the most frequent stage-2 impressions
of each kind in the paired build's training split), and, for the VQA side, log P("No.") - log
P("Yes.") to "Is this chest X-ray normal?". Both are AUROC'd like the sampled score.

``--histogram-swap`` (with ``--score likelihood``) asks how much of that reading is the film's
overall brightness and contrast. The COVID-19 and Normal films come from different hospitals and
differ in their intensity histograms, so a model can read the label from them; the NIH films
differ the other way round. Each film is scored a second time with its pixel values mapped onto
the histogram of a seeded film of the same source and the other status
(`vqgan.match_histogram`): the spatial pattern stays, the intensity distribution is
the other group's. Printed beside the plain AUROCs: the AUROCs on the swapped films, their paired
change with a bootstrap interval, and each group's mean score shift. A model that reads the
pattern keeps its AUROC; one that reads the intensity loses it or reverses. The swap also moves
real intensity signs of disease (an opacity brightens the lungs), so read the swapped AUROC as a
floor on pattern reading, not as the model's skill. Also printed, per source: the AUROC that the
intensity histogram alone gives (a logistic regression on seven intensity statistics of each
film, 5-fold cross-validated), the shortcut the data offers.

``--score matching`` asks whether a film makes its own report likelier: for a seeded ``--limit``
of the split's paired CXR->report records (stage ``--stage``), each record's report is scored
after its own film and after the film of another seeded record whose report pool (label match)
differs. Printed: the mean gap, log P(report | own film) - log P(report | other film) in nats
over the whole report, and the fraction of records with a positive gap (0.5: the film is
ignored), each with a bootstrap 95 % interval. The film-contrast loss
(`llmcxr.lit_module.LossSettings.film_contrast_weight`) trains exactly this gap.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrcommon.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
NORMAL = {"No Finding", "Normal"}
NORMAL_REFERENCES = (
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary abnormalities.",
    "No active disease.",
    "No acute cardiopulmonary findings.",
    "No acute cardiopulmonary disease.",
    "No acute disease.",
)
ABNORMAL_REFERENCES = (
    "Right upper lobe pneumonia.",
    "Right lower lobe pneumonia.",
    "1. Left base airspace disease. 2. Left venous catheter with tip in the right atrium.",
    "opacity projecting over the left midlung.",
    "Patchy right middle lobe and lingular airspace disease compatible with multilobar pneumonia..",
    "The right lower lobe pneumonia",
    (
        "Emphysema. Recommend rib series to to establish that circular densities overlying ribs "
        "are in the ribs."
    ),
    (
        "1. 6 mm left lung nodular opacity. Old chest film from / from was reviewed and the "
        "questionable nodule was not seen."
    ),
)
NORMAL_QUESTION = "Is this chest X-ray normal?"


def labelled_images(data: Path, split: str) -> list[tuple[str, str, bool]]:
    """``(image_id, path, abnormal)`` for the split's images whose folder has a ``labels.csv``."""
    rows = [json.loads(line) for line in (data / "images.jsonl").read_text().splitlines() if line]
    labels: dict[Path, dict[str, str]] = {}
    out = []
    for row in rows:
        if row.get("split") != split:
            continue
        path = Path(row["path"])
        table = path.parent.parent / "labels.csv"
        if table not in labels:
            labels[table] = {}
            if table.is_file():
                with table.open(newline="") as handle:
                    labels[table] = {r["filename"]: r["labels"] for r in csv.DictReader(handle)}
        cell = labels[table].get(path.name)
        if cell is None:
            continue
        names = {part.split(" (")[0].strip() for part in cell.split("|") if part.strip()}
        out.append((row["image_id"], str(path), not names <= NORMAL))
    return out


def paired_reports(data: Path, split: str, stage: int) -> list[tuple[str, str, str, str]]:
    """``(image_id, path, report, pool)`` of the split's CXR->report records that name a report
    pool (paired films) and whose image exists, in the build's order."""
    from llmcxr.evaluation.data import EvalSplit

    records = EvalSplit(data, stage=stage, split=split).records("cxr_to_report", need_image=True)
    return [
        (r.image_id, str(r.image_path), r.response, r.report_pool) for r in records if r.report_pool
    ]


def matching_pairs(pools: list[str], limit: int, seed: int) -> list[tuple[int, int]]:
    """Seeded ``(record, other)`` index pairs: up to `limit` records, each with another record
    whose pool differs (records whose pool is the only one are skipped)."""
    rng = random.Random(seed)
    order = list(range(len(pools)))
    rng.shuffle(order)
    pairs = []
    for i in order[:limit]:
        others = [j for j in range(len(pools)) if pools[j] != pools[i]]
        if others:
            pairs.append((i, rng.choice(others)))
    return pairs


def matching_gaps(
    llm: Any, rows: list[tuple[str, str, str, str]], pairs: list[tuple[int, int]]
) -> np.ndarray:
    """log P(report | own film) - log P(report | other film) per pair, in nats."""
    from tqdm import tqdm

    gaps = []
    for i, j in tqdm(pairs, desc="matching", unit="record"):
        logp = llm.score_responses([rows[i][1], rows[j][1]], [rows[i][2]])
        gaps.append(float(logp[0, 0] - logp[1, 0]))
    return np.array(gaps)


def matching_summary(gaps: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean gap and fraction of positive gaps, each with a bootstrap 95 % interval."""
    from llmcxr.evaluation.metrics import bootstrap_ci

    def mean(idx: np.ndarray) -> float:
        return float(gaps[idx].mean())

    def positive(idx: np.ndarray) -> float:
        return float((gaps[idx] > 0).mean())

    return {
        "records": len(gaps),
        "mean_gap_nats": round(float(gaps.mean()), 4),
        "mean_gap_ci95": [
            round(v, 4) for v in bootstrap_ci(mean, len(gaps), n_boot=n_boot, seed=seed)
        ],
        "own_film_likelier": round(float((gaps > 0).mean()), 4),
        "own_film_likelier_ci95": [
            round(v, 4) for v in bootstrap_ci(positive, len(gaps), n_boot=n_boot, seed=seed)
        ],
    }


def states_finding(report: str) -> bool:
    """True when the labeler finds a positive class other than No Finding / Support Devices."""
    from instructions import label_report
    from instructions.labeler import NOT_ABNORMAL

    return any(v == 1 for k, v in label_report(report).items() if k not in NOT_ABNORMAL)


def summary(
    abnormal: np.ndarray, score: np.ndarray, n_boot: int, seed: int, what: str = "finding_rate"
) -> dict[str, Any]:
    """AUROC (with interval) of ``score`` for abnormal vs normal, and the groups' mean scores
    (named ``what``: finding rates for sampled reports)."""
    from llmcxr.evaluation.metrics import auroc_or_nan, bootstrap_ci

    def auc(idx: np.ndarray) -> float:
        return auroc_or_nan(abnormal[idx], score[idx])

    return {
        "images": len(abnormal),
        "abnormal": int(abnormal.sum()),
        "auroc": round(auroc_or_nan(abnormal, score), 4),
        "auroc_ci95": [
            round(v, 4) for v in bootstrap_ci(auc, len(abnormal), n_boot=n_boot, seed=seed)
        ],
        f"{what}_abnormal": round(float(score[abnormal == 1].mean()), 4)
        if abnormal.any()
        else None,
        f"{what}_normal": round(float(score[abnormal == 0].mean()), 4)
        if (abnormal == 0).any()
        else None,
    }


def likelihood_scores(
    llm: Any, images: Sequence[Any], batch: int, desc: str = "scoring"
) -> dict[str, np.ndarray]:
    """Per image (a path or an array, read one batch at a time): report score (abnormal minus
    normal references, mean log-prob) and question score (log P("No.") - log P("Yes.") to
    ``NORMAL_QUESTION``)."""
    from tqdm import tqdm

    report, question = [], []
    refs = [*ABNORMAL_REFERENCES, *NORMAL_REFERENCES]
    n_abnormal = len(ABNORMAL_REFERENCES)
    for at in tqdm(range(0, len(images), batch), desc=desc, unit="batch"):
        chunk = [images[i] for i in range(at, min(at + batch, len(images)))]
        logp = llm.score_responses(chunk, refs, batch_size=16)
        report += (logp[:, :n_abnormal].mean(1) - logp[:, n_abnormal:].mean(1)).tolist()
        answers = llm.score_responses(chunk, ["No.", "Yes."], instruction=NORMAL_QUESTION)
        question += (answers[:, 0] - answers[:, 1]).tolist()
    return {"report": np.array(report), "question": np.array(question)}


def swap_partners(source: Sequence[str], abnormal: Sequence[int], seed: int) -> list[int]:
    """For each image, the index of a seeded image of the same source and the other status, or
    -1 when its source has none."""
    rng = random.Random(seed)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(source, abnormal, strict=True)):
        groups.setdefault(key, []).append(i)
    return [
        rng.choice(groups[(s, 1 - a)]) if groups.get((s, 1 - a)) else -1
        for s, a in zip(source, abnormal, strict=True)
    ]


class HistogramSwapped:
    """The films of `paths`, each read and swapped onto the histogram of its partner's film
    (`swap_partners`; a film without one stays as it is) when indexed, so only a batch is held
    in memory."""

    def __init__(self, paths: Sequence[str], partners: Sequence[int]) -> None:
        self.paths, self.partners = list(paths), list(partners)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from vqgan import match_histogram, read_cxr

        image, partner = read_cxr(self.paths[i]), self.partners[i]
        return image if partner < 0 else match_histogram(image, read_cxr(self.paths[partner]))


INTENSITY_PERCENTILES = (5, 25, 50, 75, 95)


def intensity_features(image: np.ndarray) -> np.ndarray:
    """Seven statistics of a film's intensity histogram: mean, standard deviation and the
    `INTENSITY_PERCENTILES`."""
    values = np.asarray(image, dtype=np.float64).ravel()
    return np.array([values.mean(), values.std(), *np.percentile(values, INTENSITY_PERCENTILES)])


def intensity_predictions(features: np.ndarray, abnormal: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of abnormal from the intensity statistics alone (standardised
    logistic regression, 5-fold stratified cross-validation; fewer folds for few images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, int(np.bincount(abnormal, minlength=2).min()))
    if folds < 2:
        return np.full(len(abnormal), np.nan)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, abnormal, cv=split, method="predict_proba")[:, 1]


def swap_change(
    abnormal: np.ndarray, before: np.ndarray, after: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """AUROC on the swapped films minus on the originals (paired bootstrap interval over
    films), and each group's mean score shift (swapped minus original)."""
    from llmcxr.evaluation.metrics import auroc_or_nan, bootstrap_ci

    def change(idx: np.ndarray) -> float:
        return auroc_or_nan(abnormal[idx], after[idx]) - auroc_or_nan(abnormal[idx], before[idx])

    shift = after - before
    return {
        "images": len(abnormal),
        "auroc_change": round(change(np.arange(len(abnormal))), 4),
        "auroc_change_ci95": [
            round(v, 4) for v in bootstrap_ci(change, len(abnormal), n_boot=n_boot, seed=seed)
        ],
        "score_shift_abnormal": round(float(shift[abnormal == 1].mean()), 4)
        if abnormal.any()
        else None,
        "score_shift_normal": round(float(shift[abnormal == 0].mean()), 4)
        if (abnormal == 0).any()
        else None,
    }


def paired_swap_comparison(
    a: dict[str, Any],
    b: dict[str, Any],
    abnormal_by_id: dict[str, bool],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Model a's ``--histogram-swap`` run against model b's on the films both scored with the
    same partner: AUROC a - b on the original films, on the swapped films, and a's swap change
    minus b's, each with a paired bootstrap interval over films, per source and pooled."""
    partners_a, partners_b = a["histogram_swap"]["partners"], b["histogram_swap"]["partners"]
    ids = sorted(
        i for i in partners_a if partners_b.get(i) == partners_a[i] and i in abnormal_by_id
    )
    if not ids:
        raise ValueError("the two runs share no film scored with the same partner")
    y = np.array([int(abnormal_by_id[i]) for i in ids])
    source = np.array([i.split("/", 1)[0] for i in ids])
    out: dict[str, Any] = {"films": len(ids)}
    for name in ("report", "question"):
        # [model a / b, original / swapped, film]
        scores = np.array(
            [
                [
                    [run["per_image"][i][name] for i in ids],
                    [run["histogram_swap"]["per_image_swapped"][i][name] for i in ids],
                ]
                for run in (a, b)
            ]
        )
        out["report_references" if name == "report" else "normal_question"] = {
            group: _paired_swap_figures(y[rows], scores[:, :, rows], n_boot, seed)
            for group, rows in [
                ("pooled", np.arange(len(ids))),
                *((src, np.flatnonzero(source == src)) for src in sorted(set(source))),
            ]
        }
    return out


def _paired_swap_figures(
    y: np.ndarray, scores: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """`paired_swap_comparison`'s figures for one group of films; ``scores`` is [model a / b,
    original / swapped, film]."""
    from llmcxr.evaluation.metrics import auroc_or_nan, bootstrap_ci

    def auc(model: int, swapped: int, idx: np.ndarray) -> float:
        return auroc_or_nan(y[idx], scores[model, swapped][idx])

    def change(model: int, idx: np.ndarray) -> float:
        return auc(model, 1, idx) - auc(model, 0, idx)

    statistics = {
        "original_a_minus_b": lambda idx: auc(0, 0, idx) - auc(1, 0, idx),
        "swapped_a_minus_b": lambda idx: auc(0, 1, idx) - auc(1, 1, idx),
        "swap_change_a_minus_b": lambda idx: change(0, idx) - change(1, idx),
    }
    every = np.arange(len(y))
    return {"films": len(y)} | {
        key: {
            "value": round(float(stat(every)), 4),
            "ci95": [round(v, 4) for v in bootstrap_ci(stat, len(y), n_boot=n_boot, seed=seed)],
        }
        for key, stat in statistics.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "default_model" / "data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=240, help="images (seeded random subset)")
    parser.add_argument("--samples", type=int, default=3, help="sampled reports per image")
    parser.add_argument(
        "--score",
        choices=("sampled", "likelihood", "matching"),
        default="sampled",
        help="sampled reports (default), deterministic reference log-probs, or own-film matching",
    )
    parser.add_argument("--stage", type=int, default=2, help="records' stage (matching)")
    parser.add_argument(
        "--histogram-swap",
        action="store_true",
        help="likelihood: also score each film on another-status film's intensity histogram",
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="report guidance (none: the default)"
    )
    parser.add_argument(
        "--paired",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        default=None,
        help="compare two --histogram-swap result files film by film (A minus B) and stop",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    args = parser.parse_args(argv)

    if args.paired:
        runs = [json.loads(path.read_text()) for path in args.paired]
        labels = {
            image_id: abnormal for image_id, _, abnormal in labelled_images(args.data, args.split)
        }
        result = {"a": str(args.paired[0]), "b": str(args.paired[1])}
        result |= paired_swap_comparison(*runs, labels, args.bootstrap, args.seed)
        print(json.dumps(result, indent=2))
        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
        print(f"wrote {args.out}")
        return 0

    import torch
    from tqdm import tqdm

    from llmcxr.pipeline import LLMCXR

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.score == "matching":
        return _matching(args)
    if args.histogram_swap and args.score != "likelihood":
        parser.error("--histogram-swap needs --score likelihood")
    images = labelled_images(args.data, args.split)
    if not images:
        raise SystemExit(f"no labelled images in the {args.split} split of {args.data}")
    random.Random(args.seed).shuffle(images)
    images = sorted(images[: args.limit])
    llm = LLMCXR.from_pretrained(args.model, device="cpu")
    start = time.perf_counter()
    abnormal = np.array([int(a) for _, _, a in images])
    source = np.array([image_id.split("/", 1)[0] for image_id, _, _ in images])
    result: dict[str, Any] = {
        "model": str(args.model or "llmcxr/default_model"),
        "data": str(args.data),
        "split": args.split,
        "score": args.score,
        "seed": args.seed,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }

    def summaries(score: np.ndarray, what: str) -> dict[str, Any]:
        return {
            "pooled": summary(abnormal, score, args.bootstrap, args.seed, what),
            "by_source": {
                name: summary(
                    abnormal[source == name], score[source == name], args.bootstrap, args.seed, what
                )
                for name in sorted(set(source))
            },
        }

    if args.score == "likelihood":
        paths = [path for _, path, _ in images]
        scores = likelihood_scores(llm, paths, args.batch)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["report_references"] = summaries(scores["report"], "mean_score")
        result["normal_question"] = summaries(scores["question"], "mean_score")
        result["per_image"] = {
            image_id: {"report": round(float(r), 4), "question": round(float(q), 4)}
            for (image_id, _, _), r, q in zip(images, scores["report"], scores["question"])
        }
        if args.histogram_swap:
            result["histogram_swap"] = _histogram_swap(llm, images, scores, args)
            result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=2))
        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
        print(f"wrote {args.out}")
        return 0
    states = np.zeros((len(images), args.samples))
    reports: list[list[str]] = [[] for _ in images]
    batches = range(0, len(images), args.batch)
    for k in range(args.samples):
        for at in tqdm(batches, desc=f"reports, sample {k + 1}/{args.samples}", unit="batch"):
            chunk = images[at : at + args.batch]
            texts = llm.generate_report(
                [path for _, path, _ in chunk],
                seed=args.seed + k,
                guidance_scale=args.guidance_scale,
            )
            for i, text in enumerate(texts, start=at):
                reports[i].append(text)
                states[i, k] = states_finding(text)
    result["samples_per_image"] = args.samples
    result["guidance_scale"] = args.guidance_scale
    result["seconds"] = round(time.perf_counter() - start, 1)
    result.update(summaries(states.mean(axis=1), "finding_rate"))
    result["reports"] = {image_id: texts for (image_id, _, _), texts in zip(images, reports)}
    print(json.dumps({k: v for k, v in result.items() if k != "reports"}, indent=2))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


def _histogram_swap(
    llm: Any,
    images: list[tuple[str, str, bool]],
    scores: dict[str, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The ``--histogram-swap`` figures (module docstring) over the films that have a partner,
    with each film's partner and swapped scores."""
    from llmcxr.evaluation.metrics import auroc_or_nan
    from vqgan import read_cxr

    abnormal = np.array([int(a) for _, _, a in images])
    source = np.array([image_id.split("/", 1)[0] for image_id, _, _ in images])
    partners = swap_partners(source.tolist(), abnormal.tolist(), args.seed)
    kept = np.array([p >= 0 for p in partners])
    if not kept.any():
        raise SystemExit("--histogram-swap: no source holds films of both statuses")
    paths = [path for _, path, _ in images]
    swapped = likelihood_scores(llm, HistogramSwapped(paths, partners), args.batch, "swapped")
    features = np.stack([intensity_features(read_cxr(path)) for path in paths])
    out: dict[str, Any] = {
        "images_without_partner": int((~kept).sum()),
        "partners": {images[i][0]: images[p][0] for i, p in enumerate(partners) if p >= 0},
    }
    for name in ("report", "question"):
        after = np.where(kept, swapped[name], np.nan)
        key = "report_references" if name == "report" else "normal_question"
        by_source = {
            src: summary(
                abnormal[kept & (source == src)],
                after[kept & (source == src)],
                args.bootstrap,
                args.seed,
                "mean_score",
            )
            for src in sorted(set(source[kept]))
        }
        out[key] = {
            "swapped": {
                "pooled": summary(
                    abnormal[kept], after[kept], args.bootstrap, args.seed, "mean_score"
                ),
                "by_source": by_source,
            },
            "change_pooled": swap_change(
                abnormal[kept], scores[name][kept], after[kept], args.bootstrap, args.seed
            ),
            "change_by_source": {
                src: swap_change(
                    abnormal[kept & (source == src)],
                    scores[name][kept & (source == src)],
                    after[kept & (source == src)],
                    args.bootstrap,
                    args.seed,
                )
                for src in sorted(set(source[kept]))
            },
        }
    out["intensity_alone"] = {}
    for src in sorted(set(source)):
        mask = source == src
        predicted = intensity_predictions(features[mask], abnormal[mask], args.seed)
        out["intensity_alone"][src] = {
            "images": int(mask.sum()),
            "auroc_cv": round(auroc_or_nan(abnormal[mask], predicted), 4),
            "abnormal_minus_normal": {
                name: round(
                    float(col[abnormal[mask] == 1].mean() - col[abnormal[mask] == 0].mean()), 4
                )
                for name, col in zip(
                    ["mean", "std", *(f"p{q}" for q in INTENSITY_PERCENTILES)],
                    features[mask].T,
                    strict=True,
                )
            },
        }
    out["per_image_swapped"] = {
        images[i][0]: {"report": round(float(r), 4), "question": round(float(q), 4)}
        for i, (r, q) in enumerate(zip(swapped["report"], swapped["question"], strict=True))
        if partners[i] >= 0
    }
    return out


def _matching(args: argparse.Namespace) -> int:
    """The ``--score matching`` run: gaps, summary, JSON."""
    import torch

    from llmcxr.pipeline import LLMCXR

    rows = paired_reports(args.data, args.split, args.stage)
    pairs = matching_pairs([pool for *_, pool in rows], args.limit, args.seed)
    if not pairs:
        raise SystemExit(f"no paired records of two pools in stage {args.stage} {args.split}")
    llm = LLMCXR.from_pretrained(args.model, device="cpu")
    start = time.perf_counter()
    gaps = matching_gaps(llm, rows, pairs)
    result: dict[str, Any] = {
        "model": str(args.model or "llmcxr/default_model"),
        "data": str(args.data),
        "split": args.split,
        "stage": args.stage,
        "score": "matching",
        "seed": args.seed,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "seconds": round(time.perf_counter() - start, 1),
        **matching_summary(gaps, args.bootstrap, args.seed),
    }
    result["per_record"] = [
        {"image_id": rows[i][0], "other": rows[j][0], "gap": round(float(g), 4)}
        for (i, j), g in zip(pairs, gaps, strict=True)
    ]
    print(json.dumps({k: v for k, v in result.items() if k != "per_record"}, indent=2))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
