"""Instruction sequences: loss only on response tokens, padding masked, drops counted."""

from __future__ import annotations

import pytest
import torch

from instructions.prompt_format import IMAGE_PLACEHOLDER, PromptFormat
from llmcxr.base_model import TinyLMConfig, build_tiny_model
from llmcxr.data import IGNORE_INDEX, PadCollator, RecordEncoder
from llmcxr.image_tokens import add_image_tokens

REPORT = "Small left pleural effusion. No pneumothorax."


@pytest.fixture(scope="module")
def encoder() -> RecordEncoder:
    model, tok = build_tiny_model(TinyLMConfig())
    token_map = add_image_tokens(model, tok, codebook_size=64, tokens_per_image=16)
    return RecordEncoder(tok, token_map, PromptFormat())


def _record(task: str, inp: str, response: str, image_id: str = "") -> dict[str, str]:
    return {
        "id": "r",
        "task": task,
        "instruction": "Describe the image.",
        "input": inp,
        "response": response,
        "image_id": image_id,
    }


class _Cache:
    """A stand-in for ImageTokenCache holding a few images."""

    def __init__(self, codes: dict[str, torch.Tensor]) -> None:
        self.codes = codes

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.codes

    def get(self, image_id: str) -> torch.Tensor:
        return self.codes[image_id]


def _split(example) -> tuple[list[int], list[int]]:
    n_prompt = sum(1 for label in example.labels if label == IGNORE_INDEX)
    return example.input_ids[:n_prompt], example.input_ids[n_prompt:]


def test_report_record_supervises_only_the_response(encoder: RecordEncoder) -> None:
    codes = torch.arange(16)
    ex = encoder.encode(_record("cxr_to_report", IMAGE_PLACEHOLDER, REPORT, "img"), codes)
    prompt_ids, response_ids = _split(ex)
    # every prompt token is -100, every response token is its own label
    assert all(label == IGNORE_INDEX for label in ex.labels[: len(prompt_ids)])
    assert ex.labels[len(prompt_ids) :] == response_ids
    # the image is in the prompt, and the response is report + end marker + eos
    span = encoder.token_map.image_to_text_span(codes)
    assert any(prompt_ids[i : i + len(span)] == span for i in range(len(prompt_ids)))
    assert response_ids[-1] == encoder.text_tokenizer.eos_token_id
    text = encoder.text_tokenizer.decode(response_ids[:-1])
    assert text == f"{REPORT}\n\n{encoder.prompt_format.end}"
    rendered = encoder.prompt_format.render("Describe the image.", IMAGE_PLACEHOLDER)
    assert encoder.text_tokenizer.decode(prompt_ids, skip_special_tokens=True) == rendered.replace(
        IMAGE_PLACEHOLDER, ""
    )


def test_image_response_supervises_the_whole_image(encoder: RecordEncoder) -> None:
    codes = torch.randint(0, 64, (16,))
    ex = encoder.encode(_record("report_to_cxr", REPORT, IMAGE_PLACEHOLDER, "img"), codes)
    prompt_ids, response_ids = _split(ex)
    span = encoder.token_map.image_to_text_span(codes)
    assert response_ids[: len(span)] == span
    assert not encoder.token_map.is_code_id(torch.tensor(prompt_ids)).any()


def test_collator_masks_padding(encoder: RecordEncoder) -> None:
    short = encoder.encode(_record("text", "", "Yes."), None)
    long = encoder.encode(_record("text", "", REPORT * 3), None)
    batch = PadCollator(pad_token_id=encoder.text_tokenizer.pad_token_id)([short, long])
    n = len(short.input_ids)
    assert batch["input_ids"].shape == (2, len(long.input_ids))
    assert batch["attention_mask"][0, :n].all() and not batch["attention_mask"][0, n:].any()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert batch["labels"][0, :n].tolist() == short.labels


def test_missing_images_and_over_length_dropped_with_counts(encoder: RecordEncoder) -> None:
    cache = _Cache({"a": torch.zeros(16, dtype=torch.long)})
    records = [
        _record("cxr_to_report", IMAGE_PLACEHOLDER, REPORT, "a"),
        _record("cxr_to_report", IMAGE_PLACEHOLDER, REPORT, "gone"),
        _record("report_to_cxr", REPORT, IMAGE_PLACEHOLDER, "gone"),
        _record("text", "", "word " * 400),
        _record("text", "", "Yes."),
    ]
    kept, counts = encoder.encode_all(records, cache, max_length=200)
    assert counts.missing_image == 2
    assert counts.too_long == 1
    assert counts.kept == len(kept) == 2
    assert all(len(e.input_ids) <= 200 for e in kept)


def test_record_with_unexpected_placeholders_is_rejected(encoder: RecordEncoder) -> None:
    with pytest.raises(ValueError, match="expected one <image>"):
        encoder.encode(
            _record("cxr_to_report", "no placeholder here", REPORT, "a"), torch.zeros(16)
        )
