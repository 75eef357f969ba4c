"""Constrained decoding: image tokens only where an image goes, never in a report.

Two ways to sample an image, both constrained to exactly `tokens_per_image` code tokens:

- `generate_image_codes_hf`: plain `transformers.generate` with `ImageTokenConstraint`, a
  `LogitsProcessor` that masks every id but the allowed ones at each step.
- `generate_image_codes`: a hand-written KV-cache loop (why: while an image is drawn only the
  `codebook_size` image rows of the output embedding can be chosen, so it computes logits for
  those rows only instead of the whole vocabulary, and it batches the classifier-free-guidance
  branch with the conditional one in a single forward instead of transformers' extra
  unbatched forward per step). `benchmarks/inference.py` compares the two.

The prompt handed to either must already end with the image start marker (`<img_start>`), a
forced prefix, so every sampled token is a code and the end marker is appended afterwards.

`generate_text` is the same KV-cache loop for answers (reports, VQA): image tokens banned, stop
at EOS or at a stop condition. Both loops drive a transformers model or the transformers-free
`llmcxr.lean_llama.LeanLlama` alike, so this module imports transformers only for
`generate_image_codes_hf`; temperature and top-p are applied here as transformers' warpers do.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F

from llmcxr import cpu_linear
from llmcxr.lean_llama import LeanCache, LeanDecoder

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


class ImageTokenLayout(Protocol):
    """Where the image tokens sit in the LM vocabulary (`llmcxr.image_tokens.ImageTokenMap`)."""

    codebook_size: int
    first_code_id: int
    start_id: int
    end_id: int
    tokens_per_image: int


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy, or sampled with temperature and nucleus (top-p);
    ``seed`` fixes the draw (None: a fresh one). The defaults are LLM-CXR's, the same as a model
    folder's `llmcxr.model_folder.GenerationDefaults` (top-p 0.92, temperature 1)."""

    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.92
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"Temperature must be above 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Top-p must be in (0, 1], got {self.top_p}.")
        if self.seed is not None and (int(self.seed) != self.seed or self.seed < 0):
            raise ValueError(f"Seed must be a whole number >= 0, got {self.seed}.")

    def as_kwargs(self) -> dict[str, object]:
        """Keyword arguments of `LLMCXR.generate_report`, `ask` and `generate_images`."""
        return {
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": None if self.seed is None else int(self.seed),
        }


def ban_image_tokens(scores: torch.Tensor, layout: ImageTokenLayout) -> torch.Tensor:
    """`scores` [B, V] with every image id set to -inf in place, for text answers."""
    first = layout.first_code_id
    scores[:, first : first + layout.codebook_size] = float("-inf")
    scores[:, [layout.start_id, layout.end_id]] = float("-inf")
    return scores


class ImageTokenConstraint:
    """A transformers logits processor: only code ids for the first `tokens_per_image` new
    tokens, then only the end marker.

    `prompt_length` is the (padded) prompt width, so the step is
    `input_ids.shape[1] - prompt_length`.
    """

    def __init__(self, layout: ImageTokenLayout, prompt_length: int) -> None:
        self.first = layout.first_code_id
        self.last = layout.first_code_id + layout.codebook_size
        self.end_id = layout.end_id
        self.tokens_per_image = layout.tokens_per_image
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        lo, hi = (
            (self.first, self.last)
            if step < self.tokens_per_image
            else (self.end_id, self.end_id + 1)
        )
        allowed = torch.full_like(scores, float("-inf"))
        allowed[:, lo:hi] = scores[:, lo:hi]
        return allowed


def _warp(scores: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, then nucleus (top-p) filtering of `scores` [B, V], exactly as transformers'
    `TemperatureLogitsWarper` and `TopPLogitsWarper` (which keep at least one token)."""
    scores = _tempered(scores, sampling)
    if sampling.top_p < 1.0:
        drop = _nucleus_drop_topk(scores, sampling.top_p)
        if drop is None:
            drop = _nucleus_drop(scores, sampling.top_p)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def _tempered(scores: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    return scores if sampling.temperature == 1.0 else scores / sampling.temperature


def _nucleus_drop(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Where `TopPLogitsWarper` drops a token of `scores` [B, V]: a full ascending sort, then
    every token whose cumulative probability from the bottom is <= 1 - top_p, but the top one."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1:] = False
    return drop_sorted.scatter(1, order, drop_sorted)


NUCLEUS_TOPK = (64, 1024)
"""The top-k sizes `_nucleus_drop_topk` tries before it gives way to the full sort."""
NUCLEUS_MARGIN = 1e-4
"""How far the probability mass at the nucleus edge must be from top_p for `_nucleus_drop_topk`
to decide the edge: the sort's float32 sums and the top-k's differ by ~1e-6, so within this
margin only the sort's own arithmetic can say which side a token falls."""


def _nucleus_topk(scores: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The nucleus of each row of `scores` [B, V] from a top-k instead of a full sort, as the
    top-k ids [B, k] and which of them are kept [B, k]; None where it cannot be sure to match
    `_nucleus_drop` bit for bit.

    Why: on the ~49k text rows of a report the sort takes ~3 ms of a ~15 ms decode step, a top-64
    ~0.05 ms (2-core EPYC, 2026-12-06). The nucleus is the top m tokens with m - 1 = the number
    of descending cumulative masses below top_p, the sort's rule seen from the top. None (use
    the sort) when the vocabulary is small (the sort is cheap there; drawings stay on it), when
    the nucleus does not fit the largest k, when a mass at the edge is within `NUCLEUS_MARGIN`
    of top_p, or when the edge splits two tokens of equal probability (the sort's tie order).
    """
    rows, vocab = scores.shape
    if vocab <= 4 * NUCLEUS_TOPK[-1]:
        return None
    probs = scores.softmax(dim=-1)
    index = torch.arange(rows, device=scores.device)
    for k in NUCLEUS_TOPK:
        top, order = probs.topk(k, dim=-1)
        mass = top.cumsum(dim=-1)
        kept = (mass < top_p).sum(dim=-1) + 1  # tokens kept per row, >= 1
        if bool((kept >= k).any()):
            continue  # the edge, and the first dropped token, must lie inside the top k
        after = mass[index, kept - 1]  # mass through the last kept token: >= top_p
        before = torch.where(kept > 1, mass[index, (kept - 2).clamp(min=0)], -math.inf)
        tie = top[index, kept - 1] == top[index, kept]
        if bool(
            ((after - top_p) < NUCLEUS_MARGIN).any()
            or ((top_p - before) < NUCLEUS_MARGIN).any()
            or tie.any()
        ):
            return None
        return order, torch.arange(k, device=scores.device) < kept[:, None]
    return None


def _nucleus_drop_topk(scores: torch.Tensor, top_p: float) -> torch.Tensor | None:
    """`_nucleus_drop`'s mask from `_nucleus_topk`, or None where that steps aside."""
    nucleus = _nucleus_topk(scores, top_p)
    if nucleus is None:
        return None
    order, keep = nucleus
    return torch.ones_like(scores, dtype=torch.bool).scatter_(1, order, ~keep)


def _candidates(scores: torch.Tensor, sampling: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens `_pick` may choose for each row of `scores` [B, V] and their probabilities,
    ids and probs [B, k]: greedy, the argmax at 1; sampled, the nucleus's top-k candidates where
    `_nucleus_topk` finds it, else the whole row after temperature and top-p.

    Why the candidates: the probabilities are those of the whole masked row (the dropped tokens
    have none), without a softmax, a draw and a fill over ~50k entries per report step (~1.2 ms
    of a ~11 ms step; 2-core EPYC, 2026-12-07). A seed's draws therefore differ (equally likely)
    from those of a whole-row draw."""
    if not sampling.do_sample:
        return scores.argmax(-1, keepdim=True), scores.new_ones(scores.shape[0], 1)
    scores = _tempered(scores.float(), sampling)
    if sampling.top_p < 1.0:
        nucleus = _nucleus_topk(scores, sampling.top_p)
        if nucleus is not None:
            order, keep = nucleus
            return order, scores.gather(1, order).masked_fill(~keep, float("-inf")).softmax(-1)
        scores = scores.masked_fill(_nucleus_drop(scores, sampling.top_p), float("-inf"))
    every = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    return every, scores.softmax(-1)


def _pick(
    scores: torch.Tensor, sampling: Sampling, generator: torch.Generator | None
) -> torch.Tensor:
    """Choose one column per row of `scores` [B, V] -> [B] (`_candidates`)."""
    ids, probs = _candidates(scores, sampling)
    if not sampling.do_sample:
        return ids[:, 0]
    return ids.gather(1, torch.multinomial(probs, 1, generator=generator)).squeeze(1)


def _verify(
    scores: torch.Tensor, draft: int, sampling: Sampling, generator: torch.Generator | None
) -> tuple[bool, int]:
    """Speculative sampling's test of a drafted token against one row of `scores` [1, V]:
    (True, draft) with the probability `_pick` gives it, else (False, a token drawn from the
    other candidates in proportion). Over both outcomes each token comes out exactly as often as
    `_pick` would choose it (Leviathan et al. 2023, with a draft that is certain)."""
    ids, probs = _candidates(scores, sampling)
    ids, probs = ids[0], probs[0]
    if not sampling.do_sample:
        return int(ids[0]) == draft, int(ids[0])
    hit = ids == draft
    chance = float(probs[hit].sum())
    if float(torch.rand((), generator=generator, device=probs.device)) < chance:
        return True, draft
    rest = probs.masked_fill(hit, 0.0)
    return False, int(ids[torch.multinomial(rest, 1, generator=generator)])


def _cache_argument(model: torch.nn.Module) -> str:
    """The KV-cache keyword of `model.forward` (and attribute of its output): ``cache`` from
    transformers 5.x (where ``past_key_values`` warns and is removed in 5.40), else
    ``past_key_values``."""
    forward = inspect.signature(model.forward).parameters
    return "cache" if "cache" in forward else "past_key_values"


def _has_plain_lm_head(model: torch.nn.Module) -> bool:
    """True when logits are exactly `decoder(x) @ W.T (+ b)`, so a row subset can be computed."""
    config = getattr(model, "config", None)
    scaled = any(
        getattr(config, name, None) not in (None, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )
    return not scaled and model.get_output_embeddings() is not None


def _head_rows(
    head: torch.nn.Module, first: int, k: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows `first:first + k` of an output layer's weight [K, H] and bias [K] (or None).

    A dynamically quantised int8 head (`llmcxr.devices.quantize_int8`) keeps its weight behind
    a method and its bias behind `bias()`; its rows are sliced, then dequantised.
    """
    if callable(head.weight):
        weight, bias = head.weight()[first : first + k].dequantize(), head.bias()
    else:
        weight, bias = head.weight[first : first + k], getattr(head, "bias", None)
    return weight, None if bias is None else bias[first : first + k]


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: positions count only real tokens; padded slots get 0 (they are masked anyway).
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class PromptPrefix:
    """The keys and values of the tokens a family of prompts opens with (the prompt format's
    text before its first variable part), computed once at batch 1.

    Why: a report prompt is 123 tokens, and its first 51 are the same for every film; running
    only the rest cuts the prefill by ~40 %. A prompt runs from its prefix whether or not the
    prefix was computed before, so an answer does not depend on what was asked earlier. Lean
    engine only (`llmcxr.lean_llama`: its cache can be copied per batch); elsewhere `compute`
    gives None and prompts run whole. Drawings do not use it: their prefill is a few per cent of
    64 decode steps, and running it in two parts would change every seeded drawing's rounding.
    """

    ids: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @classmethod
    @torch.inference_mode()
    def compute(cls, model: torch.nn.Module, ids: Sequence[int]) -> PromptPrefix | None:
        """Run `ids` through `model`'s decoder; None for a transformers model or an empty prefix."""
        if not runs_lean(model) or not ids:
            return None
        decoder = model.get_decoder()
        device = decoder.embed_tokens.weight.device
        row = torch.tensor([list(ids)], dtype=torch.long, device=device)
        width = len(ids)
        cache = decoder(row, torch.ones_like(row), torch.arange(width, device=device)[None]).cache
        return cls(
            tuple(ids),
            tuple(k[:, :, :width].clone() for k in cache.keys),
            tuple(v[:, :, :width].clone() for v in cache.values),
        )

    def cache_for(self, batch: int) -> LeanCache:
        """A fresh cache holding the prefix for `batch` rows (decoding writes into it)."""
        return LeanCache(
            keys=[k.expand(batch, -1, -1, -1).clone() for k in self.keys],
            values=[v.expand(batch, -1, -1, -1).clone() for v in self.values],
            length=len(self.ids),
        )


def runs_lean(model: torch.nn.Module) -> bool:
    """Whether `model` runs on the lean engine (`llmcxr.lean_llama`), whose cache can be copied
    and rolled back: prompt prefixes and drafted answers need that."""
    getter = getattr(model, "get_decoder", None)
    return isinstance(getter() if getter is not None else None, LeanDecoder)


def _after_prefix(
    prefix: PromptPrefix, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[LeanCache, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The prefix's cache and the rest of a left-padded batch [B, T] to run after it: ids [B,
    T - L], a mask [B, T] over the cached and new tokens (each row's padding now between its
    prefix and the rest) and the rest's positions. None when a row does not open with the
    prefix, has nothing after it, or is not left-padded."""
    batch, width = input_ids.shape
    opening = len(prefix.ids)
    lengths = attention_mask.long().sum(-1)
    if opening >= width or bool((lengths <= opening).any()):
        return None
    columns = torch.arange(width, device=input_ids.device)
    starts = width - lengths
    if not torch.equal(attention_mask.bool(), columns[None] >= starts[:, None]):
        return None
    head = input_ids.gather(1, starts[:, None] + columns[None, :opening])
    if not torch.equal(head, head.new_tensor(prefix.ids).expand(batch, -1)):
        return None
    rest_mask = attention_mask[:, : width - opening]  # row b's rest is real from its start on
    mask = torch.cat([torch.ones_like(attention_mask[:, :opening]), rest_mask], dim=1)
    positions = _position_ids(mask)[:, opening:]
    return prefix.cache_for(batch), input_ids[:, opening:], mask, positions


@torch.inference_mode()
def generate_image_codes(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layout: ImageTokenLayout,
    sampling: Sampling,
    *,
    generator: torch.Generator | None = None,
    guidance_scale: float | None = None,
    uncond_input_ids: torch.Tensor | None = None,
    uncond_attention_mask: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    restrict_logits: bool = True,
) -> torch.Tensor:
    """Sample `tokens_per_image` codes per prompt with a KV cache -> LongTensor [B, N] in [0, K).

    `input_ids`/`attention_mask` [B, T] are left-padded prompts ending with the image start
    marker. With `guidance_scale` (and an unconditional prompt batch of the same shape, e.g.
    the prompt with an empty report), logits follow classifier-free guidance on log-probs:
    `uncond + scale * (cond - uncond)` (Sanchez et al. 2023, as transformers'
    `UnbatchedClassifierFreeGuidanceLogitsProcessor`). `restrict_logits=False` computes the
    full-vocabulary logits and slices them (same result, slower; kept for benchmarking).
    """
    batch = input_ids.shape[0]
    n_tokens, first, k = layout.tokens_per_image, layout.first_code_id, layout.codebook_size
    guided, input_ids, attention_mask = _with_uncond(
        input_ids, attention_mask, guidance_scale, uncond_input_ids, uncond_attention_mask
    )
    step_logits = _Stepper(model, first, first + k, restrict=restrict_logits)
    position_ids = _position_ids(attention_mask)
    width = attention_mask.shape[1]
    # The mask of every step is a prefix of one buffer (no per-step allocation).
    full_mask = F.pad(attention_mask, (0, n_tokens), value=1)
    step_ids = input_ids
    codes = torch.empty(batch, n_tokens, dtype=torch.long, device=input_ids.device)
    for step in range(n_tokens):
        logits = step_logits(step_ids, attention_mask, position_ids)  # [B', K]
        if guided:
            logits = _guide(logits, guidance_scale)
        chosen = _pick(logits, sampling, generator)  # [B] codes in [0, K)
        codes[:, step] = chosen
        next_ids = (chosen + first).unsqueeze(1)
        step_ids = torch.cat([next_ids, next_ids]) if guided else next_ids
        attention_mask = full_mask[:, : width + step + 1]
        position_ids = position_ids[:, -1:] + 1
        if progress is not None:
            progress(step + 1, n_tokens)
    return codes


@torch.inference_mode()
def answer_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    answers: Sequence[Sequence[int]],
    layout: ImageTokenLayout,
    pad_id: int = 0,
) -> torch.Tensor:
    """Teacher-forced log-probability [B, R] of each of the `answers` (token ids) after each
    left-padded prompt [B, T], under the distribution `generate_text` samples from (image tokens
    banned, no warping). Each prompt runs once; its KV cache is repeated for the R answers."""
    batch, count = input_ids.shape[0], len(answers)
    width = max(len(a) for a in answers)
    cache_name = _cache_argument(model)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_position_ids(attention_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = getattr(out, cache_name)
    cache.batch_repeat_interleave(count)
    rows = torch.full((count, width), pad_id, dtype=torch.long, device=input_ids.device)
    real = torch.zeros((count, width), dtype=attention_mask.dtype, device=input_ids.device)
    for j, answer in enumerate(answers):
        rows[j, : len(answer)] = torch.tensor(answer, dtype=torch.long)
        real[j, : len(answer)] = 1
    rows, real = rows.repeat(batch, 1), real.repeat(batch, 1)
    mask = torch.cat([attention_mask.repeat_interleave(count, 0), real], 1)
    start = attention_mask.sum(1, keepdim=True).repeat_interleave(count, 0)
    positions = start + torch.arange(width, device=input_ids.device)
    rest = model(
        input_ids=rows,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_name: cache},
    ).logits
    logits = torch.cat([out.logits[:, -1:].repeat_interleave(count, 0), rest[:, :-1]], 1).float()
    logp = torch.log_softmax(ban_image_tokens(logits.flatten(0, 1), layout), -1)
    picked = logp.view(*logits.shape).gather(-1, rows.unsqueeze(-1)).squeeze(-1)
    return (picked * real).sum(-1).view(batch, count)


@torch.inference_mode()
def generate_text(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layout: ImageTokenLayout,
    sampling: Sampling,
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    stop: Callable[[list[int]], bool] | None = None,
    generator: torch.Generator | None = None,
    guidance_scale: float | None = None,
    uncond_input_ids: torch.Tensor | None = None,
    uncond_attention_mask: torch.Tensor | None = None,
    prefix: PromptPrefix | None = None,
    drafts: Drafter | None = None,
) -> list[list[int]]:
    """Sample an answer per left-padded prompt [B, T] with a KV cache; image tokens are never
    drawn. A row ends at one of `eos_ids` (not kept), when `stop(its new ids)` is true (e.g. the
    prompt format's end marker was written), or after `max_new_tokens`. -> the new ids per row.

    With `guidance_scale` and an unconditional prompt batch (e.g. the prompt without its image),
    log-probs follow classifier-free guidance as in `generate_image_codes`. With a `prefix` that
    every prompt (unconditional ones included) opens with, only the rest of each prompt runs.
    With `drafts` (`llmcxr.drafting.PhraseDrafts`), one unguided prompt on the lean engine is
    answered by speculative sampling (`_drafted_answer`): the same distribution, fewer steps."""
    batch = input_ids.shape[0]
    guided, input_ids, attention_mask = _with_uncond(
        input_ids, attention_mask, guidance_scale, uncond_input_ids, uncond_attention_mask
    )
    step_logits = _Stepper(model, 0, None)
    width = input_ids.shape[1]
    after = None if prefix is None else _after_prefix(prefix, input_ids, attention_mask)
    if after is None:
        position_ids = _position_ids(attention_mask)
    else:
        step_logits.cache, input_ids, attention_mask, position_ids = after
    eos = set(eos_ids)
    if drafts is not None and batch == 1 and not guided and bool(attention_mask.all()):
        logits = step_logits(input_ids, attention_mask, position_ids)
        if isinstance(step_logits.cache, LeanCache):
            start = int(position_ids[0, -1]) + 1
            answer = _drafted_answer(
                step_logits, logits, start, layout, sampling, generator, max_new_tokens, eos, stop,
                drafts,
            )  # fmt: skip
            return [answer]
        step_ids = None  # a transformers cache cannot be rolled back: decode one by one
    else:
        logits, step_ids = None, input_ids
    full_mask = F.pad(attention_mask, (0, max_new_tokens), value=1)
    answers: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        if step_ids is not None:
            logits = step_logits(step_ids, attention_mask, position_ids)
        if guided:
            logits = _guide(logits, guidance_scale)
        chosen = _pick(ban_image_tokens(logits, layout), sampling, generator)
        for row, token in enumerate(chosen.tolist()):
            if done[row]:
                continue
            if token in eos:
                done[row] = True
                continue
            answers[row].append(token)
            done[row] = stop is not None and stop(answers[row])
        if all(done):
            break
        # a finished row runs on unseen: its answer is fixed
        step_ids = (torch.cat([chosen, chosen]) if guided else chosen).unsqueeze(1)
        attention_mask = full_mask[:, : width + step + 1]
        position_ids = position_ids[:, -1:] + 1
    return answers


class Drafter(Protocol):
    """Guesses how an answer goes on (`llmcxr.drafting.PhraseDrafts`)."""

    def propose(self, answer: Sequence[int], limit: int) -> list[int]: ...


def _drafted_answer(
    step_logits: _Stepper,
    logits: torch.Tensor,
    position: int,
    layout: ImageTokenLayout,
    sampling: Sampling,
    generator: torch.Generator | None,
    max_new_tokens: int,
    eos: set[int],
    stop: Callable[[list[int]], bool] | None,
    drafts: Drafter,
) -> list[int]:
    """One answer by speculative sampling, after the prompt's prefill (`logits` [1, V] of its
    last position; the next token's `position`).

    Each round feeds the last chosen token with the tokens `drafts` guesses after it in one
    forward, keeps the guesses `_verify` accepts in order, and at the first refused one takes
    `_verify`'s replacement and rolls the lean cache back to the kept tokens; when all are kept,
    the forward's last position gives the next token. Every token is chosen with `_pick`'s
    probabilities, so answers follow the same distribution as one step per token."""
    cache = step_logits.cache
    answer: list[int] = []
    token = int(_pick(ban_image_tokens(logits, layout), sampling, generator))
    while True:
        if token in eos:
            return answer
        answer.append(token)
        if len(answer) >= max_new_tokens or (stop is not None and stop(answer)):
            return answer
        guess = drafts.propose(answer, max_new_tokens - len(answer) - 1)
        feed = torch.tensor([[token, *guess]], device=logits.device)
        kept = cache.length
        mask = torch.ones(1, kept + feed.shape[1], dtype=torch.long, device=feed.device)
        positions = torch.arange(position, position + feed.shape[1], device=feed.device)[None]
        rows = ban_image_tokens(step_logits(feed, mask, positions, every=True)[0], layout)
        for j, draft in enumerate(guess):
            accepted, token = _verify(rows[j : j + 1], draft, sampling, generator)
            if not accepted:
                cache.length, position = kept + 1 + j, position + 1 + j
                break
            if draft in eos:
                return answer
            answer.append(draft)
            if len(answer) >= max_new_tokens or (stop is not None and stop(answer)):
                return answer
        else:
            token = int(_pick(rows[-1:], sampling, generator))
            position += feed.shape[1]


class _Stepper:
    """One KV-cached forward per call -> the last position's logits over vocabulary rows
    [`lo`, `hi`) (all rows when `hi` is None), as fp32 [B, hi - lo].

    Why not `model(...).logits`: with a plain output layer (`_has_plain_lm_head`) only the
    decoder runs and only the wanted rows of the head are multiplied (an image needs 1,026 of
    ~50k rows); a model that scales its logits runs whole (`restrict=False` forces that too).
    """

    def __init__(
        self, model: torch.nn.Module, lo: int, hi: int | None, restrict: bool = True
    ) -> None:
        self.model, self.lo, self.hi = model, lo, hi
        self.restricted = restrict and _has_plain_lm_head(model)
        if self.restricted:
            self.decoder = model.get_decoder()
            head = model.get_output_embeddings()
            rows = _head_size(head) if hi is None else hi
            packed = getattr(model, "head_product", lambda *_: None)(lo, rows)
            weight, bias = _head_rows(head, lo, rows - lo) if packed is None else (None, None)
            self.head = packed or partial(cpu_linear.linear, weight=weight, bias=bias)
        elif restrict:
            logger.info("model scales its logits; computing full-vocabulary logits")
        self.cache_name = _cache_argument(self.decoder if self.restricted else model)
        self.cache = None

    def __call__(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, every: bool = False
    ) -> torch.Tensor:
        """Logits [B, rows] of the last new position; `every`: of each new position [B, T, rows]."""
        args = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        at = slice(None) if every else -1
        if self.restricted:
            out = self.decoder(**args, use_cache=True, **{self.cache_name: self.cache})
            logits = self.head(out.last_hidden_state[:, at])
        else:
            out = self.model(
                **args,
                use_cache=True,
                logits_to_keep=0 if every else 1,
                **{self.cache_name: self.cache},
            )
            logits = out.logits[:, at, self.lo : self.hi]
        self.cache = getattr(out, self.cache_name)
        return logits.float()


def _head_size(head: torch.nn.Module) -> int:
    weight = head.weight() if callable(head.weight) else head.weight
    return int(weight.shape[0])


def is_guided(guidance_scale: float | None) -> bool:
    """Whether a guidance scale turns classifier-free guidance on (None and 1.0 do not); a scale
    that `check_guidance_scale` refuses raises."""
    return guidance_scale is not None and check_guidance_scale(guidance_scale) != 1.0


def check_guidance_scale(scale: float) -> float:
    """`scale` if it is a finite number > 0, else ValueError. 1 turns guidance off; 0 would ignore
    the prompt's report or image altogether (an empty report draws from the bare instruction)
    and a negative scale would steer away from it, so neither is taken as a guidance setting."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(
            f"guidance scale must be a finite number > 0 (1 = off), got {scale!r}; to draw without "
            "a report, give an empty report"
        )
    return float(scale)


def _with_uncond(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    guidance_scale: float | None,
    uncond_input_ids: torch.Tensor | None,
    uncond_attention_mask: torch.Tensor | None,
) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """Whether guidance is on, and the batch to run: the prompts, then (when guided) the
    unconditional prompts below them, left-padded to one width."""
    if not is_guided(guidance_scale):
        return False, input_ids, attention_mask
    if uncond_input_ids is None or uncond_attention_mask is None:
        raise ValueError("guidance_scale needs uncond_input_ids and uncond_attention_mask")
    ids, mask = _stack_left_padded(
        (input_ids, attention_mask), (uncond_input_ids, uncond_attention_mask)
    )
    return True, ids, mask


def _guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on log-probs of a [2B, V] batch (conditional rows first):
    `uncond + scale * (cond - uncond)` -> [B, V]."""
    cond, uncond = logits.log_softmax(-1).chunk(2)
    return uncond + scale * (cond - uncond)


def _stack_left_padded(
    *pairs: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate left-padded (ids, mask) batches of different widths along the batch axis."""
    width = max(ids.shape[1] for ids, _ in pairs)
    all_ids, all_masks = [], []
    for ids, mask in pairs:
        pad = width - ids.shape[1]
        all_ids.append(F.pad(ids, (pad, 0), value=0))  # any id: the mask hides it
        all_masks.append(F.pad(mask, (pad, 0), value=0))
    return torch.cat(all_ids), torch.cat(all_masks)


@torch.inference_mode()
def generate_image_codes_hf(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layout: ImageTokenLayout,
    sampling: Sampling,
    *,
    pad_token_id: int,
    guidance_scale: float | None = None,
    uncond_input_ids: torch.Tensor | None = None,
    uncond_attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same constraint through `model.generate` (transformers' own loop) -> [B, N] codes."""
    from transformers import LogitsProcessorList

    constraint = ImageTokenConstraint(layout, prompt_length=input_ids.shape[1])
    extra = {}
    if is_guided(guidance_scale):
        extra = {
            "guidance_scale": guidance_scale,
            "negative_prompt_ids": uncond_input_ids,
            "negative_prompt_attention_mask": uncond_attention_mask,
        }
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_processor=LogitsProcessorList([constraint]),
        max_new_tokens=layout.tokens_per_image + 1,
        min_new_tokens=layout.tokens_per_image + 1,
        do_sample=sampling.do_sample,
        temperature=sampling.temperature if sampling.do_sample else None,
        top_p=sampling.top_p if sampling.do_sample else None,
        top_k=None,
        pad_token_id=pad_token_id,
        use_cache=True,
        **extra,
    )
    new = out[:, input_ids.shape[1] :]  # [B, N + 1]: the codes, then the end marker
    if new.shape[1] != layout.tokens_per_image + 1 or (new[:, -1] != layout.end_id).any():
        raise RuntimeError("constrained generation did not end with the image end marker")
    return new[:, : layout.tokens_per_image] - layout.first_code_id
