"""Which report decoding makes the reports read the film: guidance, temperature or reranking?

Guidance contrasts each step's log-probs with those after a "null" prompt:
`null + scale * (cond - null)`. `LLMCXR.generate_report(guidance_scale=...)` uses the
instruction without an image as the null; this script also tries an average film (the codes of
the pixel mean of 512 training images) and the same film with half its codes replaced at random
(as visual contrastive decoding, Leng et al. 2023, contrasts with a distorted image), which
amplify what this film changes rather than "an image is present". The last two need prompts the
public API does not build, so it drives `LLMCXR._generate_text` directly.

Lower temperatures (and greedy decoding) are the other lever: a sampled report names a finding
with the model's probability, so three samples of a probability that the film moves a little
read near chance, while a sharper distribution turns a small shift into a changed report.

Scored as `llmcxr evaluate`'s report task (`score_reports` with the split's label-matched
reference pool and `min_positives`: the labeler on 3 sampled reports per film), on the films of a
validation split, so a setting is chosen without the test split::

    python benchmarks/report_guidance.py --data runs/default_model/data --stage 2 \
        --settings default,t0.7,t0.5,t0.3,greedy \
        --out benchmarks/results/report_sampling_val.json

The third lever keeps the sampling and reranks: `CANDIDATES` reports are sampled per film and
the `SAMPLES` scored are those that best single out *this* film among the films of its group (a
pragmatic speaker: Andreas & Klein 2016, Vedantam et al. 2017): score
`log p(c | film) - contrast * log mean_j p(c | film j)` over the group's films, by teacher-forced
log-probability (`LLMCXR.score_responses`). `contrast` 0 keeps the most likely candidates (the
control). The first `SAMPLES` candidates use the default setting's seeds, so the default's reports
are among them; candidates are cached beside `--out`.

The fourth retrieves: `retrieve16` scores the `BANK` most frequent training reports after each
film, minus each one's mean over `CALIBRATION_FILMS` training films, and returns the best (a
fixed bank compared across films can use a likelihood shift too small to decide a sampled
report).

(`report_guidance_val.json` was written before `--stage` and the reference pool: `--stage 1`,
and each film's own reference alone for ROUGE-L; its `none` is today's `default`.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrcommon.batching import chunks
from instructions import IMAGE_PLACEHOLDER, default_instruction, label_report
from llmcxr.evaluation.data import EvalSplit
from llmcxr.evaluation.labelling import chexpert_classes
from llmcxr.evaluation.report_task import score_reports
from llmcxr.pipeline import LLMCXR, _seeded
from vqgan import prepare_image, read_cxr


@dataclass(frozen=True)
class Setting:
    """One decoding setting; None fields keep the model's defaults."""

    null: str | None = None
    scale: float | None = None
    temperature: float | None = None
    do_sample: bool = True
    contrast: float | None = None
    """Rerank `CANDIDATES` sampled reports per film with this contrast weight (None: no rerank)."""
    retrieve: bool = False
    """Return the bank report with the highest calibrated log-probability (`retrieve`)."""
    by_group: bool = False
    """With `retrieve`: first choose the normal or the abnormal half of the bank by its mean."""


SETTINGS = {
    "none": Setting(),
    "default": Setting(),
    "noimage_1.5": Setting("noimage", 1.5),
    "mean_1.5": Setting("mean", 1.5),
    "mean_2.5": Setting("mean", 2.5),
    "noised50_2": Setting("noised", 2.0),
    "t0.7": Setting(temperature=0.7),
    "t0.5": Setting(temperature=0.5),
    "t0.3": Setting(temperature=0.3),
    "greedy": Setting(do_sample=False),
    "pmi6": Setting(contrast=1.0),
    "lik6": Setting(contrast=0.0),
    "retrieve16": Setting(retrieve=True),
    "retrieve16g": Setting(retrieve=True, by_group=True),
}
SAMPLES = 3
CANDIDATES = 6
RERANK_GROUP = 8
"""Films whose candidates are pooled and scored under each other for the contrast."""
BANK = 16
"""Most frequent training reports that `retrieve` chooses among."""
CALIBRATION_FILMS = 128
"""Training films whose mean log-probability of each bank report is subtracted."""


def mean_film_codes(llm: LLMCXR, data: Path, count: int = 512) -> torch.Tensor:
    """Codes [N] of the pixel mean of `count` seeded random training images."""
    rows = [json.loads(line) for line in (data / "images.jsonl").open()]
    train = [r for r in rows if r["split"] == "train"]
    pick = np.random.default_rng(0).choice(len(train), count, replace=False)
    size = llm.image_tokenizer.image_size
    mean = torch.stack([prepare_image(read_cxr(train[i]["path"]), size) for i in pick]).mean(0)
    return llm.image_tokenizer.encode(mean[None].to(llm.image_tokenizer.device)).cpu()[0]


def noised(codes: torch.Tensor, fraction: float, k: int, generator: torch.Generator):
    """`codes` with about `fraction` of them replaced by random codes in [0, k)."""
    codes = codes.clone()
    replace = torch.rand(codes.shape, generator=generator) < fraction
    codes[replace] = torch.randint(0, k, (int(replace.sum()),), generator=generator)
    return codes


def sample_reports(
    llm: LLMCXR,
    text: str,
    codes: torch.Tensor,
    samples: int,
    setting: Setting,
    null_prompts: dict,
) -> list[list[str]]:
    """`samples` reports per film (seeded as the report task: one seed per sample and batch)."""
    k = llm.token_map.codebook_size
    temperature = setting.temperature or llm.generation_defaults.temperature_for_reports
    sampling = llm._sampling(setting.do_sample, temperature, None)
    generated: list[list[str]] = [[] for _ in codes]
    for sample in range(samples):
        for start, chunk in chunks(list(range(len(codes))), 8):
            prompts = [llm.encode_prompt(text, [codes[i]]) for i in chunk]
            if setting.null is None:
                null = None
            elif setting.null == "noised":
                g = torch.Generator().manual_seed(1000 * sample + start)
                null = [llm.encode_prompt(text, [noised(codes[i], 0.5, k, g)]) for i in chunk]
            else:
                null = [null_prompts[setting.null]] * len(chunk)
            with _seeded(1000 * sample + start, llm.device):
                out = llm._generate_text(
                    prompts, 128, sampling, guidance_scale=setting.scale, uncond=null
                )
            for i, report in zip(chunk, out, strict=True):
                generated[i].append(report)
    return generated


def score_groups(llm: LLMCXR, paths: list[str], candidates: list[list[str]]) -> list[dict]:
    """For each group of `RERANK_GROUP` films: its films, the pool of their distinct candidates and
    the log-probability [films, pool] of each candidate after each film (answers batched by length,
    so short ones are not padded to the longest)."""
    groups = []
    for _, group in chunks(list(range(len(paths))), RERANK_GROUP):
        pool = sorted({c for i in group for c in candidates[i]}, key=lambda c: (len(c), c))
        films = [paths[i] for i in group]
        parts = [
            llm.score_responses(films, part, batch_size=len(part)) for _, part in chunks(pool, 8)
        ]
        groups.append({"films": group, "pool": pool, "logp": torch.cat(parts, 1).tolist()})
    return groups


def rerank(groups: list[dict], candidates: list[list[str]], contrast: float) -> list[list[str]]:
    """The `SAMPLES` candidates of each film that score highest on
    `log p(c | film) - contrast * log mean_j p(c | film j)` within its group of films (fewer
    distinct candidates than `SAMPLES`: the best is repeated)."""
    chosen: dict[int, list[str]] = {}
    for g in groups:
        logp = torch.tensor(g["logp"])
        marginal = torch.logsumexp(logp, 0) - math.log(len(g["films"]))
        score = logp - contrast * marginal
        column = {c: j for j, c in enumerate(g["pool"])}
        for row, i in enumerate(g["films"]):
            own = sorted({column[c] for c in candidates[i]}, key=lambda j: -float(score[row, j]))
            best = [g["pool"][j] for j in own[:SAMPLES]]
            chosen[i] = best + [best[0]] * (SAMPLES - len(best))
    return [chosen[i] for i in range(len(candidates))]


def retrieve(
    llm: LLMCXR, data: Path, stage: int, paths: list[str], by_group: bool
) -> tuple[list[str], list]:
    """Per film, the `BANK` report with the highest log-probability minus its mean over
    `CALIBRATION_FILMS` seeded random training films; also the bank. `by_group`: first the
    film is called normal when the bank's "No Finding" reports (the project's labeler) score
    higher on average than the others, and the best report of that group is returned."""
    train = EvalSplit(data, stage, "train")
    bank = [
        t for t, _ in Counter(r.report for r in train.records("cxr_to_report")).most_common(BANK)
    ]
    films = sorted({str(r.image_path) for r in train.records("cxr_to_report", need_image=True)})
    pick = np.random.default_rng(0).choice(len(films), CALIBRATION_FILMS, replace=False)
    offset = llm.score_responses([films[i] for i in pick], bank, batch_size=len(bank)).mean(0)
    scores = llm.score_responses(paths, bank, batch_size=len(bank)) - offset
    if by_group:
        normal = torch.tensor([label_report(t).get("No Finding") == 1 for t in bank])
        calls_normal = scores[:, normal].mean(1) > scores[:, ~normal].mean(1)
        scores = scores.masked_fill(calls_normal[:, None] != normal[None, :], -math.inf)
    return [bank[int(j)] for j in scores.argmax(1)], bank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="built instruction dataset")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma list of SETTINGS")
    parser.add_argument("--stage", type=int, default=2, help="dataset stage (evaluate's is 2)")
    parser.add_argument("--split", default="val", help="dataset split (choose on val)")
    parser.add_argument("--limit", type=int, default=None, help="first N films")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (resumed)")
    args = parser.parse_args()

    torch.set_num_threads(2)
    llm = LLMCXR.from_pretrained(args.model)
    split = EvalSplit(args.data, args.stage, args.split)
    records = split.records("cxr_to_report", need_image=True)[: args.limit]
    pool = [r.report for t in ("cxr_to_report", "report_to_cxr") for r in split.records(t)]
    classes = chexpert_classes()
    instruction = default_instruction("cxr_to_report")
    text = llm.prompt_format.render(instruction, IMAGE_PLACEHOLDER)
    no_image = llm.encode_prompt(llm.prompt_format.render(instruction))
    mean_prompt = llm.encode_prompt(text, [mean_film_codes(llm, args.data)])
    paths = [str(r.image_path) for r in records]
    codes = torch.cat([llm.encode_images(paths[i : i + 16]) for i in range(0, len(paths), 16)])
    null_prompts = {"noimage": no_image, "mean": mean_prompt}
    cache = args.out.with_suffix(".candidates.json")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.settings.split(","):
        if name in results:
            continue
        setting = SETTINGS[name]
        start_time = time.time()
        extra: dict = {}
        if setting.retrieve:
            picked, bank = retrieve(llm, args.data, args.stage, paths, setting.by_group)
            generated = [[r] * SAMPLES for r in picked]
            extra = {"bank": bank, "bank_picks": dict(Counter(picked))}
        elif setting.contrast is not None:
            if not cache.is_file():
                sampled = sample_reports(llm, text, codes, CANDIDATES, Setting(), null_prompts)
                cache.write_text(json.dumps({"candidates": sampled}))
            cached = json.loads(cache.read_text())
            if len(cached["candidates"]) != len(records):
                raise SystemExit(
                    f"{cache} holds {len(cached['candidates'])} films, not {len(records)}"
                )
            if "groups" not in cached:
                cached["groups"] = score_groups(llm, paths, cached["candidates"])
                cache.write_text(json.dumps(cached))
            generated = rerank(cached["groups"], cached["candidates"], setting.contrast)
        elif setting.do_sample:
            generated = sample_reports(llm, text, codes, SAMPLES, setting, null_prompts)
        else:
            # Greedy decoding gives one report per film whatever the seed: decode it once.
            generated = [g * SAMPLES for g in sample_reports(llm, text, codes, 1, setting, {})]
        metrics = score_reports(
            [r.report for r in records],
            generated,
            classes,
            section="full",
            uncertain_as_positive=False,
            n_boot=300,
            seed=0,
            reference_pool=pool,
        )
        results[name] = {
            "setting": {
                "stage": args.stage,
                "split": args.split,
                **vars(setting),
                "top_p": llm.generation_defaults.top_p,
            },
            "films": len(records),
            "minutes": round((time.time() - start_time) / 60, 1),
            "macro_auroc": metrics["auroc"]["macro"],
            "micro_auroc": metrics["auroc"]["micro"],
            "macro_f1": metrics["f1"]["macro"],
            "rouge_l": metrics["nlg"]["rouge_l"],
            "ci95": metrics["ci95"],
            "first_reports": [g[0] for g in generated[:12]],
            **extra,
        }
        args.out.write_text(json.dumps(results, indent=1))
        print(name, json.dumps({k: results[name][k] for k in ("macro_auroc", "ci95")}))


if __name__ == "__main__":
    main()
