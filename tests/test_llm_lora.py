"""LoRA: the new image-token rows train, the text rows stay frozen, the adapter folder reloads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from llm_fixtures import tiny_vqgan_config

from instructions.prompt_format import IMAGE_PLACEHOLDER
from llmcxr.base_model import BaseModelSpec, TinyLMConfig, build_tiny_model
from llmcxr.data import PadCollator
from llmcxr.lit_module import LLMCXRModule, LoraSettings, ModelSettings
from llmcxr.model_folder import load_model_folder
from vqgan import CXRTokenizer


@pytest.fixture(scope="module")
def lora_module(tmp_path_factory: pytest.TempPathFactory) -> LLMCXRModule:
    root = tmp_path_factory.mktemp("lora")
    base, tok = build_tiny_model(TinyLMConfig())
    base.save_pretrained(root / "base")  # a local base folder: reproducible, so saved as adapter
    tok.save_pretrained(root / "base")
    CXRTokenizer(tiny_vqgan_config()).save_pretrained(root / "image_tokenizer")
    return LLMCXRModule(
        image_tokenizer=str(root / "image_tokenizer"),
        model=ModelSettings(
            base=BaseModelSpec(name=str(root / "base")), lora=LoraSettings(r=4, alpha=8)
        ),
    )


def _merged(module: LLMCXRModule) -> torch.nn.Module:
    return copy.deepcopy(module.model).merge_and_unload()


def test_lora_trains_new_token_rows_only_among_embeddings(lora_module: LLMCXRModule) -> None:
    token_map = lora_module.token_map
    before = _merged(lora_module).get_input_embeddings().weight.detach().clone()
    encoder = lora_module.record_encoder()
    record = {
        "instruction": "Draw it.",
        "input": "Cardiomegaly.",
        "response": IMAGE_PLACEHOLDER,
        "task": "report_to_cxr",
    }
    batch = PadCollator(0)([encoder.encode(record, torch.randint(0, 64, (16,)))])
    trainable = [p for p in lora_module.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        lora_module(batch).backward()
        opt.step()
    after = _merged(lora_module).get_input_embeddings().weight.detach()
    new_rows = [*token_map.image_token_ids, token_map.start_id, token_map.end_id]
    text_rows = list(range(token_map.first_code_id))
    assert not torch.equal(after[new_rows], before[new_rows])
    assert torch.equal(after[text_rows], before[text_rows])


def test_lora_export_is_an_adapter_that_reloads_to_the_same_logits(
    lora_module: LLMCXRModule, tmp_path: Path
) -> None:
    folder = lora_module.export(tmp_path / "model")
    assert json.loads((folder / "llmcxr.json").read_text())["weights"] == "lora"
    assert (folder / "llm" / "adapter").is_dir() and not (
        folder / "llm" / "model.safetensors"
    ).exists()
    loaded = load_model_folder(folder)
    ids = torch.tensor(
        [[5, 9, lora_module.token_map.start_id, lora_module.token_map.first_code_id + 7]]
    )
    with torch.no_grad():
        expected = _merged(lora_module).eval()(ids).logits
        assert torch.allclose(loaded.model(ids).logits, expected, atol=1e-5)


def test_stage2_continues_the_stage1_adapter_and_exports_an_adapter(
    lora_module: LLMCXRModule, tmp_path: Path
) -> None:
    stage1 = lora_module.export(tmp_path / "stage1")
    stage2 = LLMCXRModule(
        init_from=str(stage1), model=ModelSettings(lora=LoraSettings(r=4, alpha=8))
    )
    assert stage2.continued_adapter
    ids = torch.tensor([[5, 9, stage2.token_map.start_id, stage2.token_map.first_code_id + 3]])
    with torch.no_grad():
        # it starts exactly where stage 1 ended
        assert torch.allclose(
            _merged(stage2).eval()(ids).logits, _merged(lora_module).eval()(ids).logits, atol=1e-5
        )
    lora_weight = next(p for n, p in stage2.model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_weight.add_(0.5)  # stands in for a stage-2 update
    folder = stage2.export(tmp_path / "stage2")
    manifest = json.loads((folder / "llmcxr.json").read_text())
    assert manifest["weights"] == "lora"
    assert manifest["base_model"]["name"] == lora_module.settings.base.name
    with torch.no_grad():
        expected = _merged(stage2).eval()(ids).logits
        assert torch.allclose(load_model_folder(folder).model(ids).logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match="r=4, alpha=8"):
        LLMCXRModule(init_from=str(stage1), model=ModelSettings(lora=LoraSettings(r=8, alpha=16)))


def test_a_run_continued_from_a_lora_checkpoint_keeps_training_the_adapter(
    lora_module: LLMCXRModule, tmp_path: Path
) -> None:
    """`init_from` a `.ckpt` of a LoRA run continues its adapter (and so exports an adapter, small
    enough to ship), starting from the same logits; loading it merged gives them too."""
    checkpoint: dict = {
        "state_dict": {f"model.{k}": v for k, v in lora_module.model.state_dict().items()}
    }
    lora_module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    continued = LLMCXRModule(
        init_from=str(tmp_path / "last.ckpt"), model=ModelSettings(lora=LoraSettings(r=4, alpha=8))
    )
    assert continued.continued_adapter
    ids = torch.tensor(
        [[5, 9, continued.token_map.start_id, continued.token_map.first_code_id + 3]]
    )
    with torch.no_grad():
        expected = _merged(lora_module).eval()(ids).logits
        assert torch.allclose(_merged(continued).eval()(ids).logits, expected, atol=1e-5)
        merged = load_model_folder(tmp_path / "last.ckpt").model
        assert not hasattr(merged, "peft_config")
        assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
    assert (
        json.loads((continued.export(tmp_path / "out") / "llmcxr.json").read_text())["weights"]
        == "lora"
    )


def test_a_lora_folder_loads_a_base_outside_pypi_only_when_the_user_names_it(
    lora_module: LLMCXRModule, tmp_path: Path
) -> None:
    from llmcxr.pipeline import LLMCXR

    folder = lora_module.export(tmp_path / "model")
    base = lora_module.settings.base.name  # a local folder, as a downloaded manifest could name
    with pytest.raises(
        ValueError, match="names base model .* not one that ships on PyPI.*--base-model"
    ):
        LLMCXR.from_pretrained(folder, device="cpu", dtype="float32")
    loaded = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32", base_model=base)
    assert loaded.token_map == lora_module.token_map


def test_merged_and_unmerged_lora_agree_on_a_tied_model(lora_module: LLMCXRModule) -> None:
    """Inference merges the adapter; training runs it unmerged. With trained LoRA weights and new
    token rows on a model whose input and output embeddings are tied, both give the same logits."""
    model = copy.deepcopy(lora_module.model)
    assert model.get_base_model().config.tie_word_embeddings
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    token_map = lora_module.token_map
    ids = torch.tensor([[5, 9, token_map.start_id, token_map.first_code_id + 7, 11]])
    model.eval()
    with torch.no_grad():
        unmerged = model(ids).logits
        merged = copy.deepcopy(model).merge_and_unload()(ids).logits
        base = model.get_base_model()
        with model.disable_adapter():
            plain = base(ids).logits
    assert not torch.allclose(unmerged, plain, atol=1e-3)  # the perturbation does matter
    assert torch.allclose(merged, unmerged, atol=1e-5)


def test_an_adapter_over_the_shard_size_ships_in_parts_and_reloads(
    lora_module: LLMCXRModule, tmp_path: Path
) -> None:
    """A rank-32 SmolLM2 adapter is ~20 MB in fp16, over the 16 MiB per-file budget: it is written
    in parts of whole tensors and joined again on load, to the same logits."""
    from llmcxr.model_folder import save_model_folder

    folder = save_model_folder(
        tmp_path / "split",
        model=lora_module.model,
        text_tokenizer=lora_module.text_tokenizer,
        image_tokenizer=CXRTokenizer.from_pretrained(lora_module.image_tokenizer_path),
        token_map=lora_module.token_map,
        prompt_format=lora_module.prompt_format,
        base_model=lora_module.settings.base,
        max_shard_size="20KB",
    )
    adapter = folder / "llm" / "adapter"
    parts = sorted(adapter.glob("adapter_model.part-*.safetensors"))
    assert len(parts) > 1 and not (adapter / "adapter_model.safetensors").exists()
    assert all(p.stat().st_size <= 20_000 for p in parts)
    ids = torch.tensor(
        [[5, 9, lora_module.token_map.start_id, lora_module.token_map.first_code_id]]
    )
    with torch.no_grad():
        expected = _merged(lora_module).eval()(ids).logits
        assert torch.allclose(load_model_folder(folder).model(ids).logits, expected, atol=1e-5)
        unmerged = load_model_folder(folder, merge_adapter=False).model.eval()
        assert torch.allclose(unmerged(ids).logits, expected, atol=1e-5)
    parts[0].write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="part-1.safetensors is corrupt"):
        load_model_folder(folder)


def test_an_adapter_config_asking_for_another_rank_is_refused_before_allocating_it(
    lora_module: LLMCXRModule, tmp_path: Path
) -> None:
    """A folder's adapter_config.json is its own word: a rank its weights do not hold is refused
    naming the adapter and the mismatch, without allocating the LoRA layers it asks for (rank
    2**40 would be terabytes; allocated first, the error would be the allocator's)."""
    folder = lora_module.export(tmp_path / "model")
    config_file = folder / "llm" / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["r"] = 2**40
    config_file.write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"llm/adapter/adapter_config.json: LoRA rank \[1099511627776\] does not match",
    ):
        load_model_folder(folder, cache=False)


@pytest.mark.parametrize(
    ("part", "key", "value", "expected"),
    [
        (
            "llm_config",
            "intermediate_size",
            2**34,
            "config does not match its weights.*17179869184",
        ),
        ("lora", "r", 2**40, "config does not match its weights.*1099511627776"),
        ("llm_config", "num_hidden_layers", 10**9, "names 1000000000 layers, but its weights hold"),
    ],
)
def test_a_checkpoint_whose_config_asks_for_other_weights_is_refused_before_building(
    lora_module: LLMCXRModule, tmp_path: Path, part: str, key: str, value: int, expected: str
) -> None:
    """The LLM config and LoRA settings saved in a `.ckpt` must describe the tensors it holds;
    they are compared on the meta device, so a config asking for terabytes allocates nothing,
    after the layer count is checked (a billion layers would be a billion Python objects)."""
    checkpoint: dict = {
        "state_dict": {f"model.{k}": v for k, v in lora_module.model.state_dict().items()}
    }
    lora_module.on_save_checkpoint(checkpoint)
    (entry,) = [v for v in checkpoint.values() if isinstance(v, dict) and "llm_config" in v]
    entry[part][key] = value
    torch.save(checkpoint, tmp_path / "hostile.ckpt")
    with pytest.raises(ValueError, match=expected):
        load_model_folder(tmp_path / "hostile.ckpt")
