"""Nucleus (top-p) filtering: the top-k shortcut gives the full sort's mask bit for bit, or
steps aside; both equal transformers' `TopPLogitsWarper`."""

from __future__ import annotations

import pytest
import torch

from llmcxr import decoding
from llmcxr.decoding import Sampling

VOCAB = 50_178  # SmolLM2's 49,152 text rows plus LLM-CXR's 1,026 image rows


def _report_like_scores(rows: int, seed: int) -> torch.Tensor:
    """Logit rows from flat to sharply peaked, image rows banned as in a report."""
    generator = torch.Generator().manual_seed(seed)
    spread = torch.tensor([1.0, 4.0, 6.0, 8.0, 12.0, 16.0]).repeat(rows)[:rows, None]
    scores = torch.randn(rows, VOCAB, generator=generator) * spread
    scores[:, 49_152:] = float("-inf")
    return scores


@pytest.mark.parametrize("top_p", [0.5, 0.92, 0.99])
def test_topk_shortcut_matches_the_sort_and_runs_on_report_rows(top_p: float) -> None:
    sure = 0
    for seed in range(8):
        scores = _report_like_scores(12, seed)
        exact = decoding._nucleus_drop(scores, top_p)
        for row in range(scores.shape[0]):  # one row at a time, as a report decodes
            fast = decoding._nucleus_drop_topk(scores[row : row + 1], top_p)
            if fast is not None:
                sure += 1
                assert torch.equal(fast, exact[row : row + 1])
    assert sure >= 32  # of 96 rows: the shortcut is not a path that never runs


def test_warp_equals_transformers_top_p_warper() -> None:
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    scores = _report_like_scores(24, 99)
    for temperature, top_p in [(1.0, 0.92), (0.7, 0.8), (1.3, 0.95)]:
        expected = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores))
        ours = decoding._warp(scores, Sampling(True, temperature, top_p))
        assert torch.equal(ours, expected)


def test_a_tie_at_the_edge_goes_to_the_sort() -> None:
    """Two equally likely tokens straddling the edge: which one the sort keeps is its own tie
    order, so the shortcut must not guess."""
    scores = torch.full((1, VOCAB), -30.0)
    scores[0, :3] = torch.tensor([2.0, 1.0, 1.0])  # masses ~0.58, 0.21, 0.21
    assert decoding._nucleus_drop_topk(scores, 0.7) is None
    kept = ~decoding._nucleus_drop(scores, 0.7)
    assert int(kept.sum()) == 2  # the top token and one of the tied pair


def test_an_edge_within_the_margin_goes_to_the_sort() -> None:
    scores = torch.full((1, VOCAB), -40.0)
    scores[0, :2] = torch.tensor([0.0, 0.0]).log_softmax(-1) + torch.tensor([0.405465, 0.0])
    probs = scores.softmax(-1)[0, :2]  # ~0.6 and ~0.4
    top_p = float(probs[0])  # the edge lands exactly on the first token's mass
    assert decoding._nucleus_drop_topk(scores, top_p) is None
    assert decoding._nucleus_drop_topk(scores, top_p - 10 * decoding.NUCLEUS_MARGIN) is not None


def test_small_vocabularies_and_wide_nuclei_use_the_sort() -> None:
    drawing = torch.randn(2, 1026)  # an image step's code rows
    assert decoding._nucleus_drop_topk(drawing, 0.92) is None
    flat = torch.zeros(1, VOCAB)  # every token equally likely: the nucleus is ~46k wide
    assert decoding._nucleus_drop_topk(flat, 0.92) is None


def test_a_report_step_draws_among_the_nucleus_with_its_probabilities(monkeypatch) -> None:
    """`_pick` draws a report token among the top-k nucleus only: never a dropped token, and
    each kept one as often as the whole masked row's softmax gives it."""
    scores = torch.full((1, VOCAB), -20.0)
    scores[0, :4] = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()  # nucleus at 0.92: the top three
    scores[0, 49_152:] = float("-inf")
    want = decoding._warp(scores, Sampling(True, 1.0, 0.92)).softmax(-1)[0]
    shortcuts = []
    real = decoding._nucleus_topk
    monkeypatch.setattr(
        decoding, "_nucleus_topk", lambda *a: shortcuts.append(real(*a)) or shortcuts[-1]
    )
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat(
        [decoding._pick(scores, Sampling(True, 1.0, 0.92), generator) for _ in range(4000)]
    )
    assert all(s is not None for s in shortcuts) and len(shortcuts) == 4000
    counts = torch.bincount(draws, minlength=VOCAB).float() / len(draws)
    assert set(draws.unique().tolist()) == {0, 1, 2}
    assert torch.allclose(counts[:3], want[:3], atol=0.03)  # 0.526, 0.316, 0.158
    assert want[3] < 1e-6  # the fourth token is outside the nucleus


def test_a_drawing_step_keeps_the_whole_row_draw_bit_for_bit() -> None:
    """Image codes (1,026 rows) take the whole-row draw, so seeded drawings are unchanged."""
    scores = torch.randn(3, 1026, generator=torch.Generator().manual_seed(4)) * 3
    sampling = Sampling(True, 0.9, 0.92)
    ours = decoding._pick(scores, sampling, torch.Generator().manual_seed(11))
    probs = decoding._warp(scores, sampling).softmax(-1)
    want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(11)).squeeze(1)
    assert torch.equal(ours, want)
