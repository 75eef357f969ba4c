"""Natural-language generation metrics for reports: BLEU-1..4, ROUGE-L, CIDEr-D.

Offline choices: BLEU is nltk's corpus BLEU (no downloaded data needed), ROUGE-L is Google's
``rouge_score``. CIDEr-D is written here because pycocoevalcap, its usual home, is a 104 MB wheel
bundling Java jars; the code follows coco-caption's ``cider_scorer.py`` exactly, quirks included,
so figures stay comparable. METEOR is omitted: every implementation needs WordNet data or Java,
which cannot be fetched offline.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from nltk.translate.bleu_score import corpus_bleu
from rouge_score import rouge_scorer

from llmcxr.evaluation.metrics import answer_tokens

NLG_NOTES = {
    "tokenisation": (
        "lower-cased alphanumeric words; punctuation dropped (like coco-caption's PTB tokenizer)"
    ),
    "references": (
        "every reference report of the split whose labels equal the item's reference labels "
        "(its own reference included), not one random pick: the pairs are label-matched"
    ),
    "bleu": "nltk corpus_bleu over all references, uniform weights over 1..n-grams, no smoothing",
    "rouge_l": "rouge_score ROUGE-L F-measure, best reference per report, mean over reports",
    "cider_d": (
        "CIDEr-D (sigma 6, clipped, x10) as coco-caption computes it, but with document "
        "frequencies over the distinct reference texts (label-matched items share reference pools)"
    ),
    "meteor": "omitted: needs WordNet data or Java, not available offline",
}

_ROUGE = rouge_scorer.RougeScorer(["rougeL"])

References = Sequence[Sequence[str]] | Sequence[str]
"""One reference string or a list of reference strings per generated text."""


def _reference_lists(references: References) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def bleu(hypotheses: Sequence[str], references: References) -> dict[str, float]:
    """Corpus BLEU-1..4 of generated texts against their references (Papineni et al. 2002:
    n-gram counts clipped by the most in any one reference, brevity by the closest length)."""
    _check_pairs(hypotheses, references)
    hyps = [answer_tokens(h) for h in hypotheses]
    refs = [[answer_tokens(r) for r in rs] for rs in _reference_lists(references)]
    out = {}
    with warnings.catch_warnings():
        # nltk warns when an n-gram order has no overlap; the score is then 0, which we report.
        warnings.simplefilter("ignore", UserWarning)
        for n in range(1, 5):
            out[f"bleu_{n}"] = float(corpus_bleu(refs, hyps, weights=tuple([1.0 / n] * n)))
    return out


def rouge_l(hypotheses: Sequence[str], references: References) -> list[float]:
    """ROUGE-L F-measure of each generated text against its best-matching reference."""
    _check_pairs(hypotheses, references)
    return [
        _ROUGE.score_multi(rs, h)["rougeL"].fmeasure
        for h, rs in zip(hypotheses, _reference_lists(references))
    ]


def _ngrams(tokens: Sequence[str], n_max: int) -> Counter[tuple[str, ...]]:
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, n_max + 1) for i in range(len(tokens) - n + 1)
    )


def cider_d(
    hypotheses: Sequence[str],
    references: References,
    *,
    n_max: int = 4,
    sigma: float = 6.0,
) -> tuple[float, list[float]]:
    """CIDEr-D (Vedantam et al. 2015, coco-caption variant): corpus mean and per-item scores.

    ``references`` holds one string or a list of strings per hypothesis. Document frequencies
    count each distinct reference text once: coco-caption counts each item's reference set, which
    is the same when every item has its own references, but when label-matched items share one
    pool every pooled n-gram would be in every document and weigh nothing.
    """
    _check_pairs(hypotheses, references)
    refs = _reference_lists(references)
    counted = {text: _ngrams(answer_tokens(text), n_max) for rs in refs for text in rs}
    hyp_counts = [_ngrams(answer_tokens(h), n_max) for h in hypotheses]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for counts in counted.values():
        document_frequency.update(counts.keys())
    log_n_docs = math.log(float(len(counted))) if counted else 0.0

    def vectorise(counts: Counter) -> tuple[list[dict], np.ndarray, int]:
        vec: list[dict] = [{} for _ in range(n_max)]
        norm = np.zeros(n_max)
        length = 0
        for gram, tf in counts.items():
            order = len(gram) - 1
            vec[order][gram] = tf * (log_n_docs - math.log(max(1.0, document_frequency[gram])))
            norm[order] += vec[order][gram] ** 2
            # coco-caption counts the *bigrams* as the length (its `n == 1` test on the 0-based
            # order); kept so that scores match the published implementation.
            if order == 1:
                length += tf
        return vec, np.sqrt(norm), length

    ref_vectors = {text: vectorise(counts) for text, counts in counted.items()}
    scores = []
    for hyp, rs in zip(hyp_counts, refs):
        vh, nh, lh = vectorise(hyp)
        total = np.zeros(n_max)
        for text in rs:
            vr, nr, lr = ref_vectors[text]
            val = np.zeros(n_max)
            for order in range(n_max):
                for gram, weight in vh[order].items():
                    ref_weight = vr[order].get(gram, 0.0)
                    val[order] += min(weight, ref_weight) * ref_weight
                if nh[order] != 0 and nr[order] != 0:
                    val[order] /= nh[order] * nr[order]
                val[order] *= math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            total += val
        scores.append(float(total.mean() / len(rs) * 10.0))
    return (float(np.mean(scores)) if scores else math.nan), scores


def nlg_metrics(hypotheses: Sequence[str], references: References) -> dict[str, float]:
    """BLEU-1..4, mean ROUGE-L and CIDEr-D of generated reports against their references."""
    out = bleu(hypotheses, references)
    out["rouge_l"] = float(np.mean(rouge_l(hypotheses, references))) if hypotheses else math.nan
    out["cider_d"] = cider_d(hypotheses, references)[0]
    return out


def _check_pairs(hypotheses: Sequence, references: Sequence) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} generated texts for {len(references)} references")
