"""A prompt's fixed opening runs once (`llmcxr.decoding.PromptPrefix`): the rest of each prompt,
run after its cached keys and values, continues as the whole prompt would, and answers do not
depend on what was asked before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from llm_fixtures import make_tiny_model_folder

from instructions import IMAGE_PLACEHOLDER, default_instruction
from instructions.prompt_format import PromptFormat
from llmcxr import decoding
from llmcxr.decoding import PromptPrefix
from llmcxr.lean_llama import LeanLlama
from llmcxr.pipeline import LLMCXR

IMAGE = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def lean(folder: Path) -> LeanLlama:
    return LeanLlama.from_folder(folder / "llm")


def _batch(opening: list[int], rests: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts: `opening` then each rest."""
    rows = [torch.tensor(opening + rest) for rest in rests]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    return ids, mask


def test_the_rest_after_the_prefix_continues_as_the_whole_prompt(lean: LeanLlama) -> None:
    """Rows of different lengths (so padding moves between prefix and rest): each row's last
    hidden state, and the next cached step's, match the whole prompt run at once."""
    gen = torch.Generator().manual_seed(0)
    opening = torch.randint(0, 400, (9,), generator=gen).tolist()
    rests = [torch.randint(0, 400, (n,), generator=gen).tolist() for n in (5, 1, 8)]
    ids, mask = _batch(opening, rests)
    prefix = PromptPrefix.compute(lean, opening)
    assert prefix is not None and prefix.ids == tuple(opening)
    decoder = lean.get_decoder()
    with torch.inference_mode():
        whole = decoder(ids, mask, decoding._position_ids(mask))
        after = decoding._after_prefix(prefix, ids, mask)
        assert after is not None
        cache, rest_ids, rest_mask, positions = after
        assert rest_ids.shape[1] == ids.shape[1] - len(opening) and cache.length == len(opening)
        part = decoder(rest_ids, rest_mask, positions, cache)
        torch.testing.assert_close(
            part.last_hidden_state[:, -1], whole.last_hidden_state[:, -1], atol=1e-5, rtol=1e-4
        )
        step = torch.tensor([[3], [7], [11]])
        whole_mask, part_mask = (
            torch.cat([m, torch.ones(3, 1, dtype=m.dtype)], 1) for m in (mask, rest_mask)
        )
        position = positions[:, -1:] + 1
        one = decoder(step, whole_mask, position, whole.cache).last_hidden_state
        two = decoder(step, part_mask, position, part.cache).last_hidden_state
    torch.testing.assert_close(two, one, atol=1e-5, rtol=1e-4)
    assert torch.equal(prefix.keys[0], PromptPrefix.compute(lean, opening).keys[0])  # unchanged


def test_batches_the_prefix_does_not_fit_run_whole(lean: LeanLlama) -> None:
    prefix = PromptPrefix.compute(lean, [5, 6, 7])
    assert prefix is not None
    ids, mask = _batch([5, 6, 7], [[1, 2], [3]])
    assert decoding._after_prefix(prefix, ids, mask) is not None
    other, other_mask = _batch([5, 6, 8], [[1, 2]])  # one token differs
    assert decoding._after_prefix(prefix, other, other_mask) is None
    bare, bare_mask = _batch([5, 6, 7], [[1, 2], []])  # a row that is only the prefix
    assert decoding._after_prefix(prefix, bare, bare_mask) is None
    right = torch.tensor([[5, 6, 7, 1, 0]]), torch.tensor([[1, 1, 1, 1, 0]])  # right-padded
    assert decoding._after_prefix(prefix, *right) is None
    assert PromptPrefix.compute(lean, []) is None


def test_openings_are_where_prompts_start() -> None:
    fmt = PromptFormat()
    instruction = default_instruction("cxr_to_report")
    assert fmt.render(instruction, IMAGE_PLACEHOLDER).startswith(fmt.opening(instruction))
    assert fmt.render("Is there an effusion?", IMAGE_PLACEHOLDER).startswith(fmt.opening())
    chat = fmt.render_chat([("Q1?", IMAGE_PLACEHOLDER, "No.")], "Q2?")
    assert chat.startswith(fmt.opening())
    assert not fmt.render(instruction).startswith(fmt.opening())  # no input: another preamble


def test_reports_and_answers_run_from_the_prefix_and_do_not_depend_on_history(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[int] = []
    real = decoding._after_prefix

    def spy(prefix: PromptPrefix, *args: torch.Tensor) -> object:
        out = real(prefix, *args)
        used.append(0 if out is None else len(prefix.ids))
        return out

    monkeypatch.setattr(decoding, "_after_prefix", spy)
    fresh = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32")
    report = fresh.generate_report([IMAGE], max_new_tokens=12, seed=3)
    fmt, instruction = fresh.prompt_format, default_instruction("cxr_to_report")
    assert used == [len(fresh.encode_prompt(fmt.opening(instruction)).ids)]
    answer = fresh.ask(IMAGE, "Is there an effusion?", seed=3)
    assert used[-1] == len(fresh.encode_prompt(fmt.opening()).ids) > 0

    warm = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32")
    warm.ask(IMAGE[::-1].copy(), "Is the heart enlarged?", seed=1)
    warm.generate_report([IMAGE[:, ::-1].copy(), IMAGE], max_new_tokens=12, seed=5)
    assert warm.generate_report([IMAGE], max_new_tokens=12, seed=3) == report
    assert warm.ask(IMAGE, "Is there an effusion?", seed=3) == answer

    hf = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32", engine="transformers")
    used.clear()
    hf.generate_report([IMAGE], max_new_tokens=12, seed=3)
    assert used == []  # transformers' cache is not copied: its prompts run whole


def test_a_quantised_model_runs_from_a_prefix_of_its_own(folder: Path) -> None:
    """`quantize` changes the weights in place: the opening computed before must not be reused."""
    llm = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32")
    llm.generate_report([IMAGE], max_new_tokens=8, seed=2)
    (opening, mode), fp32 = next(iter(llm._prefixes.items()))
    assert mode == "none" and fp32 is not None
    report = llm.quantize("int8").generate_report([IMAGE], max_new_tokens=8, seed=2)
    int8 = llm._prefixes[(opening, "int8")]
    assert int8 is not None and not torch.equal(int8.keys[0], fp32.keys[0])
    fresh = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32").quantize("int8")
    assert fresh.generate_report([IMAGE], max_new_tokens=8, seed=2) == report
