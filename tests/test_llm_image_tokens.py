"""ImageTokenMap: the id <-> code mapping and the vocabulary extension."""

from __future__ import annotations

import pytest
import torch

from llmcxr.base_model import TinyLMConfig, build_tiny_model
from llmcxr.image_tokens import ImageTokenMap, add_image_tokens, image_code_token


@pytest.fixture(scope="module")
def extended():
    model, tok = build_tiny_model(TinyLMConfig())
    old = model.get_input_embeddings().weight.detach().clone()
    token_map = add_image_tokens(model, tok, codebook_size=64, tokens_per_image=16)
    return model, tok, token_map, old


def test_codes_ids_round_trip(extended) -> None:
    _, _, token_map, _ = extended
    codes = torch.randint(0, 64, (3, 16))
    ids = token_map.codes_to_ids(codes)
    assert bool(token_map.is_code_id(ids).all())
    assert torch.equal(token_map.ids_to_codes(ids), codes)
    assert ImageTokenMap.from_dict(token_map.to_dict()) == token_map


def test_mapping_matches_tokenizer(extended) -> None:
    _, tok, token_map, _ = extended
    for code in (0, 17, 63):
        assert (
            tok.convert_tokens_to_ids(image_code_token(code))
            == token_map.codes_to_ids([code]).item()
        )
    span = token_map.image_to_text_span(list(range(16)))
    assert span[0] == token_map.start_id and span[-1] == token_map.end_id and len(span) == 18
    assert tok.decode(span, skip_special_tokens=True) == ""


def test_bad_ids_and_codes_raise(extended) -> None:
    _, _, token_map, _ = extended
    with pytest.raises(ValueError, match="not an image code token"):
        token_map.ids_to_codes([token_map.start_id])
    with pytest.raises(ValueError, match="must lie in"):
        token_map.codes_to_ids([64])
    with pytest.raises(ValueError, match="16 codes"):
        token_map.image_to_text_span([1, 2])


def test_new_rows_mean_initialised_old_rows_kept(extended) -> None:
    model, tok, token_map, old = extended
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == len(tok)
    assert torch.equal(weight[: old.shape[0]], old)
    new = weight[list(token_map.image_token_ids)]
    # near the old mean, at a scale well below the old rows' spread, and not all identical
    assert (new.mean(0) - old.mean(0)).abs().max() < 0.5 * old.std(0).max()
    assert new.std(0).mean() < 0.5 * old.std(0).mean()
    assert new.std(0).mean() > 0
    assert model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()


def test_adding_twice_is_refused(extended) -> None:
    model, tok, _, _ = extended
    with pytest.raises(ValueError, match="already holds image tokens"):
        add_image_tokens(model, tok, 64, 16)
