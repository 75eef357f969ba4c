"""Speculative decoding of answers: the draft bank (`llmcxr.drafting`), the test that keeps each
token's probability (`decoding._verify`), and answers that do not depend on the drafts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llm_fixtures import make_tiny_model_folder

from instructions import IMAGE_PLACEHOLDER
from llmcxr import decoding, drafting, pipeline
from llmcxr.decoding import Sampling, generate_text
from llmcxr.drafting import BANK_FILE, PhraseDrafts, save_bank
from llmcxr.pipeline import LLMCXR


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def llm(folder: Path) -> LLMCXR:
    return LLMCXR.from_pretrained(folder, device="cpu", dtype="float32")


def test_drafts_follow_the_longest_known_context_and_the_most_common_continuation() -> None:
    drafts = PhraseDrafts([[1, 2, 3, 4], [1, 2, 3, 5], [9, 2, 3, 5], [7, 2, 6]])
    assert drafts.propose([1, 2], 8) == [3, 4]  # (1, 2) went on as 3 4 and 3 5: first seen
    assert drafts.propose([9, 2], 8) == [3, 5]
    assert drafts.propose([5, 2], 8) == [3, 5]  # unknown pair: after 2, 3 5 twice, 3 4 and 6 once
    assert drafts.propose([8, 2], 1) == [3]
    assert drafts.propose([2, 3], 8) == [5]  # the pair (2, 3): 4 once, 5 twice
    assert drafts.propose([42], 5) == [] and drafts.propose([], 5) == []
    assert drafts.propose([1, 2], 0) == []
    long = PhraseDrafts([list(range(1, 30))])
    assert long.propose([1], 50) == list(range(2, 2 + drafting.MAX_DRAFT))


def test_a_bank_file_round_trips_and_bad_files_are_refused(tmp_path: Path, monkeypatch) -> None:
    bank = tmp_path / BANK_FILE
    save_bank(bank, [[1, 2, 3], [4, 5]], "test")
    assert PhraseDrafts.load(bank, vocab_size=6).table == PhraseDrafts([[1, 2, 3], [4, 5]]).table
    with pytest.raises(ValueError, match=r"token ids in \[0, 5\)"):
        PhraseDrafts.load(bank, vocab_size=5)  # 5 is not a token of a 5-token vocabulary
    bad = {
        "not json": "{",
        "wrong format": json.dumps({"format": "other", "sequences": []}),
        "negative id": json.dumps({"format": drafting.FORMAT, "sequences": [[1, -1]]}),
        "bool id": json.dumps({"format": drafting.FORMAT, "sequences": [[1, True]]}),
        "float id": json.dumps({"format": drafting.FORMAT, "sequences": [[1.0]]}),
        "flat list": json.dumps({"format": drafting.FORMAT, "sequences": [1, 2]}),
        "a list": json.dumps([[1, 2]]),
    }
    for name, text in bad.items():
        bank.write_text(text)
        with pytest.raises(ValueError, match=str(bank)):
            PhraseDrafts.load(bank, vocab_size=10)
        assert name
    save_bank(bank, [[1, 2, 3]] * 10, "test")
    monkeypatch.setattr(drafting, "MAX_BANK_BYTES", 50)
    with pytest.raises(ValueError, match="bytes"):
        PhraseDrafts.load(bank, vocab_size=10)


@pytest.mark.parametrize("vocab", [1026, 50_178])  # the whole-row draw, and the top-k nucleus
def test_verify_gives_each_token_the_probability_pick_gives_it(vocab: int) -> None:
    scores = torch.full((1, vocab), -30.0)
    scores[0, :5] = torch.tensor([0.4, 0.3, 0.2, 0.08, 0.02]).log()
    sampling = Sampling(True, 1.0, 0.95)  # the nucleus: the top four
    ids, probs = decoding._candidates(scores, sampling)
    want = torch.zeros(vocab).index_add_(0, ids[0], probs[0])[:5]
    generator = torch.Generator().manual_seed(1)
    for draft in (1, 4, 3):  # likely, outside the nucleus, unlikely
        outs, accepted = [], 0
        for _ in range(6000):
            ok, token = decoding._verify(scores, draft, sampling, generator)
            accepted += ok
            assert ok == (token == draft) or not ok
            outs.append(token)
        freq = torch.bincount(torch.tensor(outs), minlength=vocab).float()[:5] / len(outs)
        assert torch.allclose(freq, want, atol=0.02), (draft, freq, want)
        assert abs(accepted / len(outs) - float(want[draft])) < 0.02
    assert decoding._verify(scores, 0, Sampling(do_sample=False), None) == (True, 0)
    assert decoding._verify(scores, 2, Sampling(do_sample=False), None) == (False, 0)


def _prompt(llm: LLMCXR) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.arange(llm.token_map.tokens_per_image) % llm.token_map.codebook_size
    prompt = llm.encode_prompt(llm.prompt_format.render("Report.", IMAGE_PLACEHOLDER), [codes])
    return llm._pad([prompt])


class _Counted:
    def __init__(self, drafts: PhraseDrafts) -> None:
        self.drafts, self.proposed = drafts, 0

    def propose(self, answer: list[int], limit: int) -> list[int]:
        guess = self.drafts.propose(answer, limit)
        self.proposed += len(guess)
        return guess


def test_drafted_greedy_answers_equal_step_by_step_ones_whatever_the_bank(
    llm: LLMCXR, monkeypatch
) -> None:
    """Right guesses are kept, wrong ones rolled back: the answer is the same either way, and
    every forward runs on a cache holding exactly the tokens before it (none refused)."""
    ids, mask = _prompt(llm)
    run = {"layout": llm.token_map, "sampling": Sampling(do_sample=False), "max_new_tokens": 14}
    plain = generate_text(llm.model, ids, mask, **run)[0]
    assert len(plain) == 14
    held: list[tuple[int, int]] = []
    real = decoding._Stepper.__call__

    def checked(self, ids, mask, positions, every=False):
        if self.cache is not None:  # after the prefill: cached tokens vs the first new position
            held.append((self.cache.length, int(positions[0, 0])))
        return real(self, ids, mask, positions, every)

    monkeypatch.setattr(decoding._Stepper, "__call__", checked)
    wrong = [[(t + 7) % 300 for t in plain], [plain[0], *[(t + 3) % 300 for t in plain[1:]]]]
    half = [plain[:6] + [(t + 1) % 300 for t in plain[6:]]]
    for bank in ([plain], wrong, half, [plain[:3], plain[2:9]]):
        counted, held[:] = _Counted(PhraseDrafts(bank)), []
        drafted = generate_text(llm.model, ids, mask, drafts=counted, **run)[0]
        assert drafted == plain, bank
        assert counted.proposed > 0 and held
        assert all(length == position for length, position in held), held
    bank = PhraseDrafts([plain])
    eos = plain[5]
    ended = generate_text(llm.model, ids, mask, eos_ids=[eos], drafts=bank, **run)[0]
    assert ended == plain[: plain.index(eos)]
    stopped = generate_text(
        llm.model, ids, mask, stop=lambda new: len(new) >= 4, drafts=bank, **run
    )
    assert stopped[0] == plain[:4]


def test_drafting_saves_forwards_and_sampled_answers_repeat_with_the_seed(llm: LLMCXR) -> None:
    ids, mask = _prompt(llm)
    plain = generate_text(
        llm.model, ids, mask, llm.token_map, Sampling(do_sample=False), max_new_tokens=14
    )[0]
    forwards = []
    real = decoding._Stepper.__call__

    def counting(self, *args, **kwargs):
        forwards.append(args[0].shape[1])
        return real(self, *args, **kwargs)

    decoding._Stepper.__call__ = counting
    try:
        generate_text(
            llm.model,
            ids,
            mask,
            llm.token_map,
            Sampling(do_sample=False),
            max_new_tokens=14,
            drafts=PhraseDrafts([plain]),
        )
    finally:
        decoding._Stepper.__call__ = real
    assert len(forwards) <= 3  # prefill, the first token with its 8-token draft, the rest
    sampled = [
        generate_text(
            llm.model,
            ids,
            mask,
            llm.token_map,
            Sampling(True, 1.0, 0.9),
            max_new_tokens=10,
            generator=torch.Generator().manual_seed(3),
            drafts=PhraseDrafts([plain]),
        )[0]
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 10


def test_a_model_folder_brings_its_bank_and_a_broken_bank_is_refused(
    folder: Path, tmp_path: Path, monkeypatch
) -> None:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    plain = LLMCXR.from_pretrained(copy, device="cpu", dtype="float32")
    assert plain.drafts is None
    image = torch.zeros(64, 64)
    greedy = {"do_sample": False, "max_new_tokens": 10}
    want = plain.generate_report([image], **greedy)
    ids = plain.text_tokenizer(want[0], add_special_tokens=False)["input_ids"]
    save_bank(copy / BANK_FILE, [ids], "test")
    drafted = LLMCXR.from_pretrained(copy, device="cpu", dtype="float32")
    assert drafted.drafts is not None and len(drafted.drafts.sequences) == 1
    assert drafted.generate_report([image], **greedy) == want
    assert drafted.generate_report([image], draft=False, **greedy) == want
    rows: list[int] = []
    real = pipeline.generate_text

    def counting(model, input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(pipeline, "generate_text", counting)
    films = [torch.zeros(64, 64), torch.ones(64, 64) * 0.5, torch.eye(64)]
    alone = [drafted.generate_report([film], **greedy)[0] for film in films]
    rows.clear()
    assert drafted.generate_report(films, batch_size=8, **greedy) == alone
    assert rows == [1, 1, 1]  # encoded together, decoded one by one from the bank
    rows.clear()
    assert drafted.generate_report(films, batch_size=8, draft=False, **greedy) == alone
    assert rows == [3]
    (copy / BANK_FILE).write_text('{"format": "llmcxr-drafts", "sequences": [[-3]]}')
    with pytest.raises(ValueError, match=BANK_FILE):
        LLMCXR.from_pretrained(copy, device="cpu", dtype="float32")
