"""Do the image tokens carry what a report needs, and does the LLM's state? Linear probes.

    .venv/bin/python benchmarks/code_probe.py [--data runs/default_model/data] [--out F]
        [--model shipped --model runs/X/model --train-limit 600 --test-limit 200]

Fits a logistic regression, abnormal vs normal (the labels of `report_reactivity.py`), on the
train split and scores it on the test split (AUROC), for three kinds of features:
- ``bag``: how often each codebook entry occurs among an image's cached codes (`DATA/image_tokens`);
- ``onehot``: one-hot codes per position (64 x 1024 features);
- ``llm:<model>``: the LLM's last hidden state at the end of a CXR->report prompt holding those
  codes (the state its first report token is read from), for each ``--model``.
The code probes are a floor on what an LLM could read from the same 64 tokens. If the LLM's state
separates the films and its reports do not (`benchmarks/report_reactivity.py`), what is missing is
the mapping from what it sees to what it writes; if the state does not either, it is the reading.
``--train-limit`` / ``--test-limit`` take seeded subsets (the LLM's state costs a forward per
image); every kind of feature is scored on the same images.
"""

from __future__ import annotations

import argparse
import json
import random
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


def llm_states(model: str, codes: np.ndarray, batch: int = 8) -> np.ndarray:
    """The LLM's last hidden state at the end of the default CXR->report prompt, per image."""
    import torch

    from instructions import IMAGE_PLACEHOLDER, default_instruction
    from llmcxr.decoding import _position_ids
    from llmcxr.pipeline import LLMCXR

    llm = LLMCXR.from_pretrained(None if model == "shipped" else model, device="cpu")
    text = llm.prompt_format.render(default_instruction("cxr_to_report"), IMAGE_PLACEHOLDER)
    decoder = llm.model.get_decoder()
    out = []
    for at in range(0, len(codes), batch):
        prompts = [llm.encode_prompt(text, [torch.from_numpy(c)]) for c in codes[at : at + batch]]
        ids, mask = llm._pad(prompts)
        with torch.inference_mode():
            state = decoder(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask))
        out.append(state.last_hidden_state[:, -1].float().numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "default_model" / "data")
    parser.add_argument("--c", type=float, default=0.05, help="inverse L2 strength")
    parser.add_argument(
        "--model", action="append", default=[], help="also probe this LLM ('shipped': the default)"
    )
    parser.add_argument("--train-limit", type=int, default=None, help="seeded subset of train")
    parser.add_argument("--test-limit", type=int, default=None, help="seeded subset of test")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "code_probe.json"
    )
    args = parser.parse_args(argv)

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from llmcxr.token_cache import ImageTokenCache

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = ImageTokenCache.load(args.data / "image_tokens")
    split: dict[str, dict[str, np.ndarray]] = {}
    for name, limit in (("train", args.train_limit), ("test", args.test_limit)):
        items = [(i, a) for i, _, a in labelled_images(args.data, name) if i in cache]
        random.Random(0).shuffle(items)
        items = sorted(items[:limit])
        split[name] = {
            "codes": np.stack([cache.get(i).numpy() for i, _ in items]).astype(np.int64),
            "abnormal": np.array([int(a) for _, a in items]),
            "source": np.array([i.split("/", 1)[0] for i, _ in items]),
        }
    codebook = int(cache.meta["codebook_size"])
    train, test = split["train"], split["test"]
    kinds: dict[str, dict[str, np.ndarray]] = {
        kind: {k: features(v["codes"], codebook, kind) for k, v in split.items()}
        for kind in ("bag", "onehot")
    }
    for model in args.model:
        kinds[f"llm:{model}"] = {k: llm_states(model, v["codes"]) for k, v in split.items()}
    result: dict[str, Any] = {
        "data": str(args.data),
        "c": args.c,
        "images": {k: len(v["abnormal"]) for k, v in split.items()},
        "abnormal": {k: int(v["abnormal"].sum()) for k, v in split.items()},
        "test_auroc": {},
    }
    sources = ["all", *sorted(set(test["source"]))]
    for kind, feats in kinds.items():
        for source in sources:
            pick = {
                k: np.ones(len(v["abnormal"]), bool) if source == "all" else v["source"] == source
                for k, v in split.items()
            }
            probe = LogisticRegression(C=args.c, max_iter=3000).fit(
                feats["train"][pick["train"]], train["abnormal"][pick["train"]]
            )
            score = probe.predict_proba(feats["test"][pick["test"]])[:, 1]
            auroc = roc_auc_score(test["abnormal"][pick["test"]], score)
            result["test_auroc"][f"{kind}/{source}"] = round(float(auroc), 4)
            print(f"{kind:30s} {source:24s} test AUROC {auroc:.3f}", flush=True)
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
