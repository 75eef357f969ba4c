"""Do the image tokens carry what a report needs? A linear probe on the cached codes.

    .venv/bin/python benchmarks/code_probe.py [--data runs/default_model/data] [--out F]

Fits a logistic regression, abnormal vs normal (the labels of `report_reactivity.py`), on the
train split's cached image codes (`DATA/image_tokens`) and scores it on the test split: once on a
bag of codes (how often each of the codebook's entries occurs) and once on one-hot codes per
position (64 x 1024 features). Its AUROC is a floor on what the LLM could read from the same 64
tokens: if the probe separates the films and the LLM's reports do not
(`benchmarks/report_reactivity.py`), the limit is the LLM's training, not the tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from report_reactivity import labelled_images

from cxrcommon.files import atomic_write

REPO = Path(__file__).resolve().parents[1]


def features(codes: np.ndarray, codebook: int, kind: str) -> np.ndarray:
    """``bag``: per-image counts of each code [N, K]; ``onehot``: one-hot per position
    [N, T * K]."""
    n, t = codes.shape
    if kind == "bag":
        out = np.zeros((n, codebook), dtype=np.float32)
        np.add.at(out, (np.repeat(np.arange(n), t), codes.ravel()), 1.0)
        return out
    out = np.zeros((n, t * codebook), dtype=np.float32)
    out[np.repeat(np.arange(n), t), (np.arange(t) * codebook + codes).ravel()] = 1.0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "default_model" / "data")
    parser.add_argument("--c", type=float, default=0.05, help="inverse L2 strength")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "code_probe.json"
    )
    args = parser.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from llmcxr.token_cache import ImageTokenCache

    cache = ImageTokenCache.load(args.data / "image_tokens")
    split: dict[str, dict[str, np.ndarray]] = {}
    for name in ("train", "test"):
        items = [(i, a) for i, _, a in labelled_images(args.data, name) if i in cache]
        split[name] = {
            "codes": np.stack([cache.get(i).numpy() for i, _ in items]).astype(np.int64),
            "abnormal": np.array([int(a) for _, a in items]),
            "source": np.array([i.split("/", 1)[0] for i, _ in items]),
        }
    codebook = int(cache.meta["codebook_size"])
    result: dict[str, Any] = {
        "data": str(args.data),
        "c": args.c,
        "images": {k: len(v["abnormal"]) for k, v in split.items()},
        "abnormal": {k: int(v["abnormal"].sum()) for k, v in split.items()},
        "test_auroc": {},
    }
    sources = ["all", *sorted(set(split["test"]["source"]))]
    for kind in ("bag", "onehot"):
        for source in sources:
            pick = {
                k: np.ones(len(v["abnormal"]), bool) if source == "all" else v["source"] == source
                for k, v in split.items()
            }
            train, test = split["train"], split["test"]
            probe = LogisticRegression(C=args.c, max_iter=2000).fit(
                features(train["codes"][pick["train"]], codebook, kind),
                train["abnormal"][pick["train"]],
            )
            score = probe.predict_proba(features(test["codes"][pick["test"]], codebook, kind))
            auroc = roc_auc_score(test["abnormal"][pick["test"]], score[:, 1])
            result["test_auroc"][f"{kind}/{source}"] = round(float(auroc), 4)
            print(f"{kind:7s} {source:24s} test AUROC {auroc:.3f}", flush=True)
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
