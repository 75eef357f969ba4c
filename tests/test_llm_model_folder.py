"""Model folder save/load: identical logits after a round trip, clear errors for bad paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llm_fixtures import make_tiny_model_folder

from llmcxr.model_folder import load_model_folder, save_model_folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("llm") / "tiny")


def test_round_trip_identical_logits(tiny_folder: Path, tmp_path: Path) -> None:
    first = load_model_folder(tiny_folder)
    ids = torch.tensor([[5, 17, first.token_map.start_id, first.token_map.first_code_id + 3]])
    save_model_folder(
        tmp_path / "again",
        model=first.model,
        text_tokenizer=first.text_tokenizer,
        image_tokenizer=first.image_tokenizer,
        token_map=first.token_map,
        prompt_format=first.prompt_format,
    )
    second = load_model_folder(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)
    assert second.token_map == first.token_map
    assert second.prompt_format == first.prompt_format
    assert second.image_tokenizer.fingerprint == first.image_tokenizer.fingerprint
    assert second.text_tokenizer.get_vocab() == first.text_tokenizer.get_vocab()


def test_existing_folder_not_overwritten_by_default(tiny_folder: Path) -> None:
    parts = load_model_folder(tiny_folder)
    with pytest.raises(FileExistsError, match="already exists"):
        save_model_folder(
            tiny_folder,
            model=parts.model,
            text_tokenizer=parts.text_tokenizer,
            image_tokenizer=parts.image_tokenizer,
            token_map=parts.token_map,
            prompt_format=parts.prompt_format,
        )


def test_missing_and_wrong_paths_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_model_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an llmcxr model folder"):
        load_model_folder(tmp_path / "empty")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_model_folder(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not an llmcxr training checkpoint"):
        load_model_folder(other)
