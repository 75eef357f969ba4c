"""Model folder save/load: identical logits after a round trip, clear errors for bad paths."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from llm_fixtures import make_tiny_model_folder

from llmcxr.model_folder import LLMCXRComponents, load_model_folder, save_model_folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("llm") / "tiny")


def _resave(parts: LLMCXRComponents, path: Path, **options: object) -> Path:
    """Save loaded components again as a model folder."""
    return save_model_folder(
        path,
        model=parts.model,
        text_tokenizer=parts.text_tokenizer,
        image_tokenizer=parts.image_tokenizer,
        token_map=parts.token_map,
        prompt_format=parts.prompt_format,
        **options,
    )


def test_round_trip_identical_logits(tiny_folder: Path, tmp_path: Path) -> None:
    first = load_model_folder(tiny_folder)
    ids = torch.tensor([[5, 17, first.token_map.start_id, first.token_map.first_code_id + 3]])
    _resave(first, tmp_path / "again")
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


@pytest.mark.parametrize(
    ("change", "engine", "expected"),
    [
        ({"num_hidden_layers": 1}, "auto", r"names \d+ layers, but its weights hold \d+"),
        ({"num_hidden_layers": 1}, "transformers", r"names \d+ layers, but its weights hold"),
        ({"attention_bias": True}, "transformers", r"weights its config.json asks for are not"),
    ],
)
def test_a_config_asking_for_weights_the_files_lack_is_refused(
    tiny_folder: Path, tmp_path: Path, change: dict, engine: str, expected: str
) -> None:
    """A full-weights folder's config.json is its own word: more layers (or biases) than its
    files hold would be built and filled with random weights, so the folder is refused. A layer
    count is checked before anything is built (3,000 claimed layers of the default model would
    ask for ~40 GB)."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    config_file = folder / "llm" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(
        {
            k: config[k] + v if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in change.items()
        }
    )
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=expected):
        load_model_folder(folder, engine=engine)


def test_replaced_image_tokenizer_is_refused_naming_both_fingerprints(
    tiny_folder: Path, tmp_path: Path
) -> None:
    from llm_fixtures import tiny_vqgan_config

    from vqgan import CXRTokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    trained_with = json.loads((folder / "llmcxr.json").read_text())["image_tokenizer_fingerprint"]
    torch.manual_seed(1)
    other = CXRTokenizer(tiny_vqgan_config()).save_pretrained(folder / "image_tokenizer")
    found = CXRTokenizer.from_pretrained(other).fingerprint
    with pytest.raises(
        ValueError, match=f"fingerprint {found}, but the model was trained with {trained_with}"
    ):
        load_model_folder(folder)


def test_fp16_export_stores_the_fingerprint_of_what_it_stored(
    tiny_folder: Path, tmp_path: Path
) -> None:
    _resave(load_model_folder(tiny_folder), tmp_path / "half", dtype=torch.float16)
    loaded = load_model_folder(tmp_path / "half")  # the check passes on the rounded weights
    assert loaded.manifest["image_tokenizer_fingerprint"] == loaded.image_tokenizer.fingerprint


def test_model_folders_load_without_remote_code_and_from_safetensors_only(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    calls: list[dict] = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = auto.from_pretrained

        def spy(*args: object, _real=real, **kwargs: object) -> object:
            calls.append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    load_model_folder(tiny_folder)
    assert len(calls) == 2 and all(c.get("trust_remote_code") is False for c in calls)
    assert any(c.get("use_safetensors") is True for c in calls)


def test_model_folder_files_follow_the_umask(tiny_folder: Path, tmp_path: Path) -> None:
    """safetensors creates its files mode 0600; a model folder is meant to be shared."""
    parts = load_model_folder(tiny_folder)
    old = os.umask(0o022)
    try:
        folder = save_model_folder(
            tmp_path / "shared",
            model=parts.model,
            text_tokenizer=parts.text_tokenizer,
            image_tokenizer=parts.image_tokenizer,
            token_map=parts.token_map,
            prompt_format=parts.prompt_format,
        )
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert set(modes.values()) == {0o644}, modes


def test_model_parts_are_what_the_pipeline_and_the_saver_take(tiny_folder: Path) -> None:
    import inspect

    from llmcxr.pipeline import LLMCXR

    parts = load_model_folder(tiny_folder).model_parts()
    assert set(parts) == set(inspect.signature(LLMCXR.__init__).parameters) - {"self"}
    assert set(parts) <= set(inspect.signature(save_model_folder).parameters)
    assert parts["token_map"] is not None and "manifest" not in parts


def _with_new_decoder(folder: Path, out: Path, part: str = "decoder.") -> Path:
    """The folder's image tokenizer with the weights under `part` moved: a new decoder, or with
    ``part="encoder."`` a tokenizer that gives other codes."""
    from vqgan import CXRTokenizer

    tokenizer = CXRTokenizer.from_pretrained(folder / "image_tokenizer")
    state = tokenizer.model.state_dict()
    generator = torch.Generator().manual_seed(0)
    for name, tensor in state.items():
        if name.startswith(part) and tensor.is_floating_point():
            tensor += 0.05 * torch.randn(tensor.shape, generator=generator)
    tokenizer.model.load_state_dict(state)
    return tokenizer.save_pretrained(out)


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_export_decoder_swaps_the_pixels_and_keeps_the_codes_and_the_llm(
    tiny_folder: Path, tmp_path: Path, dtype: torch.dtype | None
) -> None:
    from llmcxr.cli import main

    source = tiny_folder
    if dtype is not None:
        source = _resave(load_model_folder(tiny_folder), tmp_path / "half", dtype=dtype)
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    decoder = _with_new_decoder(source, tmp_path / "tuned")
    out = tmp_path / "out"
    args = ["export", "decoder", "--model", str(source), "--checkpoint", str(decoder)]
    assert main([*args, "--out", str(out)]) == 0

    old, new = load_model_folder(source), load_model_folder(out)
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    images = torch.rand(3, 1, 64, 64)
    codes = old.image_tokenizer.encode(images)
    assert torch.equal(new.image_tokenizer.encode(images), codes)
    assert not torch.allclose(new.image_tokenizer.decode(codes), old.image_tokenizer.decode(codes))
    ids = torch.tensor([[5, 17, old.token_map.start_id, old.token_map.first_code_id + 3]])
    with torch.no_grad():
        assert torch.equal(new.model(ids).logits, old.model(ids).logits)
    assert new.manifest["image_decoder_from"] == str(decoder)
    # the fingerprint is of the code weights: unchanged, so token caches stay valid
    assert new.image_tokenizer.fingerprint == old.image_tokenizer.fingerprint
    assert new.manifest["image_tokenizer_fingerprint"] == new.image_tokenizer.fingerprint
    assert main([*args, "--out", str(out)]) == 2  # no silent overwrite


def test_export_decoder_refuses_a_tokenizer_that_moves_the_codes(
    tiny_folder: Path, tmp_path: Path
) -> None:
    from llmcxr.model_folder import replace_image_decoder

    other = _with_new_decoder(tiny_folder, tmp_path / "retrained", part="encoder.")
    with pytest.raises(ValueError, match="other image codes"):
        replace_image_decoder(tiny_folder, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not over it"):
        replace_image_decoder(tiny_folder, other, tiny_folder, overwrite=True)
