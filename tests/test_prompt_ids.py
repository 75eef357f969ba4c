"""Training and inference see the same prompt ids: a training record's prompt (what the encoder and
collator give, loss masked) equals what `LLMCXR` feeds the model for the same instruction and input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from llm_fixtures import make_tiny_model_folder

from instructions import IMAGE_PLACEHOLDER, default_instruction
from llmcxr import pipeline
from llmcxr.data import IGNORE_INDEX, PadCollator, RecordEncoder
from llmcxr.pipeline import LLMCXR

REPORT = "Small left pleural effusion. No pneumothorax."
QUESTION = "Is there a pleural effusion?"


class _Captured(Exception):
    """Stops a generate call once the model's inputs are known."""


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> LLMCXR:
    folder = make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")
    return LLMCXR.from_pretrained(folder, device="cpu", quantize="none")


@pytest.fixture(scope="module")
def encoder(llm: LLMCXR) -> RecordEncoder:
    return RecordEncoder(llm.text_tokenizer, llm.token_map, llm.prompt_format)


@pytest.fixture
def image(fixtures_dir: Path) -> Path:
    return fixtures_dir / "00000001_000.png"


def _training_batch(
    encoder: RecordEncoder, record: dict[str, str], codes: torch.Tensor, **kw: Any
) -> dict[str, torch.Tensor]:
    """One record through the encoder and the training collator."""
    [example], counts = encoder.encode_all([record], _Cache(codes), 4096, **kw)
    assert counts.kept == 1
    return PadCollator(0)([example])


def _prompt_ids(batch: dict[str, torch.Tensor]) -> list[int]:
    """The part of row 0 that carries no loss before the first supervised token."""
    labels = batch["labels"][0]
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    return batch["input_ids"][0, :first].tolist()


class _Cache:
    """A token cache holding one image."""

    def __init__(self, codes: torch.Tensor) -> None:
        self.codes = codes

    def __contains__(self, image_id: str) -> bool:
        return True

    def get(self, image_id: str) -> torch.Tensor:
        return self.codes


def _record(task: str, instruction: str, input: str, response: str) -> dict[str, str]:
    return {
        "id": "r",
        "task": task,
        "instruction": instruction,
        "input": input,
        "response": response,
        "image_id": "img",
    }


def _text_model_inputs(llm: LLMCXR, monkeypatch: pytest.MonkeyPatch, call: Any) -> list[int]:
    """The ids `call` hands to the text decoder (answers: reports, VQA)."""
    seen: dict[str, Any] = {}

    def generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, *args: Any, **kw: Any) -> None:
        seen.update(ids=ids, mask=mask)
        raise _Captured

    monkeypatch.setattr(pipeline, "generate_text", generate)
    with pytest.raises(_Captured):
        call()
    assert bool(seen["mask"].all())  # one prompt: no padding
    return seen["ids"][0].tolist()


def _image_model_inputs(
    llm: LLMCXR, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> tuple[list[int], list[int] | None]:
    """The (conditional, unconditional) ids `generate_images` hands to the image decoder."""
    seen: dict[str, Any] = {}

    def decode(model: Any, ids: torch.Tensor, mask: torch.Tensor, *args: Any, **kw: Any) -> None:
        seen.update(kw, ids=ids, mask=mask)
        raise _Captured

    monkeypatch.setattr(pipeline, "generate_image_codes", decode)
    with pytest.raises(_Captured):
        llm.generate_images([REPORT], **kwargs)
    cond = seen["ids"][0][seen["mask"][0].bool()].tolist()
    uncond = seen.get("uncond_input_ids")
    if uncond is not None:
        uncond = uncond[0][seen["uncond_attention_mask"][0].bool()].tolist()
    return cond, uncond


def test_cxr_to_report_prompt_ids_match(
    llm: LLMCXR, encoder: RecordEncoder, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = llm.encode_images([image])[0]
    instruction = default_instruction("cxr_to_report")
    record = _record("cxr_to_report", instruction, IMAGE_PLACEHOLDER, REPORT)
    trained = _prompt_ids(_training_batch(encoder, record, codes))
    served = _text_model_inputs(llm, monkeypatch, lambda: llm.generate_report([image]))
    assert served == trained
    span = llm.token_map.image_to_text_span(codes)
    assert any(trained[i : i + len(span)] == span for i in range(len(trained)))


def test_vqa_prompt_ids_match(
    llm: LLMCXR, encoder: RecordEncoder, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = llm.encode_images([image])[0]
    record = _record("vqa", QUESTION, IMAGE_PLACEHOLDER, "Yes, on the left.")
    trained = _prompt_ids(_training_batch(encoder, record, codes))
    served = _text_model_inputs(llm, monkeypatch, lambda: llm.ask(image, f" {QUESTION} "))
    assert served == trained


def test_report_to_cxr_prompt_ids_match(
    llm: LLMCXR, encoder: RecordEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = torch.arange(llm.token_map.tokens_per_image) % llm.token_map.codebook_size
    instruction = default_instruction("report_to_cxr")
    record = _record("report_to_cxr", instruction, REPORT, IMAGE_PLACEHOLDER)
    batch = _training_batch(encoder, record, codes, unconditional=True)
    trained = _prompt_ids(batch)
    served, uncond = _image_model_inputs(llm, monkeypatch, guidance_scale=2.0, seed=0)
    # the image start marker is forced at inference and is the first supervised token in training
    assert served == [*trained, llm.token_map.start_id]
    assert batch["input_ids"][0, : len(served)].tolist() == served
    # classifier-free guidance contrasts with the report-dropped training variant
    [example], _ = encoder.encode_all([record], _Cache(codes), 4096, unconditional=True)
    assert example.unconditional is not None
    assert uncond == example.unconditional.input_ids[: len(uncond)]
    assert uncond[-1] == llm.token_map.start_id


def test_training_text_is_the_formats_full_record(llm: LLMCXR, encoder: RecordEncoder) -> None:
    """The whole training sequence is `PromptFormat.render_full` (then EOS), whatever part of
    the record holds the image."""
    fmt = llm.prompt_format
    codes = torch.arange(llm.token_map.tokens_per_image) % llm.token_map.codebook_size
    span = llm.token_map.image_to_text_span(codes)
    tok = llm.text_tokenizer
    for instruction, input, response in [
        (QUESTION, IMAGE_PLACEHOLDER, "Yes."),
        ("Draw this.", REPORT, IMAGE_PLACEHOLDER),
    ]:
        example = encoder.encode(_record("t", instruction, input, response), codes)
        ids = example.input_ids
        assert ids[-1] == tok.eos_token_id
        start = next(i for i in range(len(ids)) if ids[i : i + len(span)] == span)
        text = tok.decode(ids[:start]) + IMAGE_PLACEHOLDER + tok.decode(ids[start + len(span) : -1])
        assert text == fmt.render_full(instruction, input, response)
        supervised = [i for i, label in zip(ids, example.labels, strict=True) if label != -100]
        answer = fmt.render_response(response)
        if response == IMAGE_PLACEHOLDER:
            assert supervised[: len(span)] == span
        else:
            assert tok.decode(supervised[:-1]) == answer


def test_chat_prompt_is_records_in_full(llm: LLMCXR) -> None:
    fmt = llm.prompt_format
    text = fmt.render_chat([("Q1?", IMAGE_PLACEHOLDER, "A1.")], "Q2?")
    assert text == fmt.render_full("Q1?", IMAGE_PLACEHOLDER, "A1.") + "\n\n" + fmt.render("Q2?")
    assert fmt.render_chat([], "Q1?", IMAGE_PLACEHOLDER) == fmt.render("Q1?", IMAGE_PLACEHOLDER)
