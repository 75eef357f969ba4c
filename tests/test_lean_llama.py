"""The transformers-free engine (`llmcxr.lean_llama`) against transformers on the same files:
logits, cached decoding, tokenizer ids, whole pipeline answers, and refusing what it cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_fixtures import make_tiny_model_folder
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmcxr.lean_llama import (
    LeanConfig,
    LeanLlama,
    LeanTokenizer,
    UnsupportedModelError,
    _attention_mask,
    supports,
)
from llmcxr.pipeline import LLMCXR


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama with grouped-query attention, a head size unlike hidden / heads, an untied
    head and a non-default rope theta, saved by transformers."""
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1, so a wrong norm would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("gqa") / "llm"
    model.save_pretrained(path)
    return path


def _padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :9] = 0
    return ids, mask


@pytest.mark.parametrize("which", ["gqa", "tiny_model_folder"])
def test_logits_match_transformers_on_a_left_padded_batch(
    which: str, gqa_llama: Path, folder: Path
) -> None:
    path = gqa_llama if which == "gqa" else folder / "llm"
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    lean = LeanLlama.from_folder(path)
    ids, mask = _padded_batch(reference.config.vocab_size)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = lean(ids, mask).logits
    real = mask.bool()
    assert got.shape == want.shape
    assert torch.allclose(got[real], want[real], atol=1e-5, rtol=1e-4)
    assert torch.isfinite(got).all()  # padding rows too: they must not poison later layers


@pytest.mark.parametrize("padded", [True, False])
def test_decoding_with_the_cache_matches_the_full_forward(gqa_llama: Path, padded: bool) -> None:
    """Prefill 70 tokens (past the cache's first capacity of 64), then 10 single-token steps:
    each step's logits equal the uncached forward over the whole sequence. Unpadded steps attend
    without a mask (`_attention_mask` gives None), padded ones with it."""
    lean = LeanLlama.from_folder(gqa_llama)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 97, (2, 80), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :6] = 0
    assert (_attention_mask(mask[:, :71], 70, 1) is None) is not padded
    assert _attention_mask(mask[:, :70], 0, 70) is not None  # a prefill is always causal
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = lean(ids, mask).logits
        out = lean.model(ids[:, :70], mask[:, :70], positions[:, :70])
        steps = [lean.lm_head(out.last_hidden_state[:, -1])]
        for t in range(70, 80):
            out = lean.model(
                ids[:, t : t + 1], mask[:, : t + 1], positions[:, t : t + 1], out.cache
            )
            steps.append(lean.lm_head(out.last_hidden_state[:, -1]))
    assert out.cache.length == 80
    assert torch.allclose(torch.stack(steps, 1), full[:, 69:80], atol=1e-5, rtol=1e-4)


def test_projections_are_fused_and_bf16_attends_in_fp32_on_the_cpu(gqa_llama: Path) -> None:
    """The loaded engine multiplies q, k, v and gate, up as one weight each; in bf16 its cache
    holds the bf16-rounded keys and values in fp32, and its logits stay within bf16 rounding of
    transformers' bf16 model and of its own fp32 logits."""
    fp32 = LeanLlama.from_folder(gqa_llama)
    bf16 = LeanLlama.from_folder(gqa_llama, torch.bfloat16)
    layer = bf16.model.layers[0]
    assert layer.self_attn.qkv_proj.weight.shape == (16 * (6 + 2 + 2), 48)
    assert layer.mlp.gate_up_proj.weight.shape == (2 * 80, 48)
    assert not hasattr(layer.self_attn, "q_proj") and not hasattr(layer.mlp, "up_proj")
    reference = AutoModelForCausalLM.from_pretrained(gqa_llama, dtype=torch.bfloat16).eval()
    ids, mask = _padded_batch(97)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = bf16.model(ids, mask, positions)
        got = bf16.lm_head(out.last_hidden_state).float()
        exact = fp32(ids, mask).logits
        want = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    keys = out.cache.keys[1][:, :, : out.cache.length]
    assert keys.dtype == torch.float32 and torch.equal(keys, keys.bfloat16().float())
    real = mask.bool()
    scale = exact[real].abs().max().item()
    assert (got[real] - want[real].float()).abs().max().item() < 0.02 * scale
    assert (got[real] - exact[real]).abs().max().item() < 0.02 * scale
    assert not torch.equal(got[real], exact[real])  # the bf16 weights really are in use


def test_tokenizer_ids_and_text_match_transformers(folder: Path) -> None:
    reference = AutoTokenizer.from_pretrained(folder / "tokenizer")
    lean = LeanTokenizer(folder / "tokenizer")
    image_tokens = json.loads((folder / "image_tokens.json").read_text())
    start = reference.convert_ids_to_tokens(image_tokens["start_id"])
    texts = ["Left pleural effusion.", "  No acute\ncardiopulmonary process!  ", f"x {start} y", ""]
    for text in texts:
        for special in (True, False):
            want = reference(text, add_special_tokens=special)["input_ids"]
            assert lean(text, add_special_tokens=special)["input_ids"] == want
            for skip in (True, False):
                assert lean.decode(want, skip) == reference.decode(want, skip_special_tokens=skip)
    assert (lean.eos_token_id, lean.pad_token_id, len(lean)) == (
        reference.eos_token_id,
        reference.pad_token_id,
        len(reference),
    )


def test_the_pipeline_answers_and_draws_the_same_on_both_engines(folder: Path) -> None:
    lean = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32")
    hf = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32", engine="transformers")
    assert isinstance(lean.model, LeanLlama) and not isinstance(hf.model, LeanLlama)
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    for seed in (0, 1):
        assert lean.generate_report([image], max_new_tokens=16, seed=seed) == hf.generate_report(
            [image], max_new_tokens=16, seed=seed
        )
        assert lean.ask(image, "Is there an effusion?", seed=seed) == hf.ask(
            image, "Is there an effusion?", seed=seed
        )
    drawn = [m.generate_images(["Cardiomegaly."], num_images=2, seed=4) for m in (lean, hf)]
    assert all(np.array_equal(a, b) for a, b in zip(drawn[0][0], drawn[1][0], strict=True))
    images, answers = [image, image[::-1].copy()], ["No.", "Left pleural effusion, small."]
    scores = [m.score_responses(images, answers, batch_size=3) for m in (lean, hf)]
    assert torch.allclose(scores[0], scores[1], atol=1e-3)
    assert lean.quantize("int8").quantization == "int8"
    assert len(lean.generate_images(["Cardiomegaly."], seed=4)[0]) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"hidden_size": "576"}, "hidden_size"),
    ],
)
def test_models_it_cannot_run_are_refused_and_left_to_transformers(
    gqa_llama: Path, tmp_path: Path, change: dict, reason: str
) -> None:
    config = {**json.loads((gqa_llama / "config.json").read_text()), **change}
    with pytest.raises(UnsupportedModelError, match=reason):
        LeanConfig.from_dict(config)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    assert supports(gqa_llama) and not supports(other)
    assert not supports(tmp_path / "missing")
    (other / "config.json").write_text("[1, 2]")
    assert not supports(other)


@pytest.mark.parametrize("damage", ["missing", "shape", "extra"])
def test_weights_that_do_not_fit_the_config_are_refused(
    gqa_llama: Path, tmp_path: Path, damage: str
) -> None:
    target = tmp_path / "llm"
    target.mkdir()
    (target / "config.json").write_text((gqa_llama / "config.json").read_text())
    tensors = load_file(gqa_llama / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    if damage == "missing":
        del tensors[name]
    elif damage == "shape":
        tensors[name] = tensors[name][:-1].clone()
    else:
        tensors["model.layers.9.mlp.up_proj.weight"] = tensors[name].clone()
    save_file(tensors, target / "model.safetensors")
    with pytest.raises(ValueError, match=r"layers\.[19]\.mlp\.up_proj"):
        LeanLlama.from_folder(target)


def test_engine_names_agree_and_a_wrong_one_is_refused(folder: Path) -> None:
    from llmcxr.cli import ENGINE_CHOICES
    from llmcxr.model_folder import ENGINES, load_model_folder

    assert ENGINE_CHOICES == ENGINES
    with pytest.raises(ValueError, match="engine must be one of"):
        load_model_folder(folder, engine="onnx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_give_the_plain_engines_logits_and_unpack_back(
    gqa_llama: Path, dtype: torch.dtype
) -> None:
    """`LeanLlama.pack` keeps each projection as oneDNN's packed copy: the same logits within
    the dtype's rounding, for a padded prefill and a decode step, through `head_product` too;
    `unpack` gives back plain Linears holding the very weights."""
    from llmcxr import cpu_linear

    if cpu_linear.pack(torch.ones(4, 8, dtype=dtype)) is None:
        pytest.skip(f"this torch has no oneDNN {dtype} kernel to pack for")
    plain = LeanLlama.from_folder(gqa_llama, dtype)
    packed = LeanLlama.from_folder(gqa_llama, dtype)
    weights = {n: p.detach().clone() for n, p in packed.named_parameters()}
    assert packed.head_product(0, 97) is None  # nothing packed yet
    assert packed.pack() and not packed.pack()
    assert type(packed.model.layers[1].mlp.down_proj).__name__ == "_PackedLinear"
    ids, mask = _padded_batch(97)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    real = mask.bool()
    with torch.no_grad():
        want = plain(ids, mask).logits.float()
        out = packed.model(ids[:, :-1], mask[:, :-1], positions[:, :-1])
        step = packed.model(ids[:, -1:], mask, positions[:, -1:], out.cache).last_hidden_state
        hidden = torch.cat([out.last_hidden_state, step], 1)
        got = packed.head_product(0, 97)(hidden).float()
        rows = packed.head_product(10, 40)(hidden).float()
    tolerance = 1e-4 if dtype == torch.float32 else 0.02
    scale = want[real].abs().max().item()
    assert (got[real] - want[real]).abs().max().item() < tolerance * scale
    assert torch.allclose(rows, got[..., 10:40], atol=tolerance * scale, rtol=0)
    packed.unpack()
    assert type(packed.model.layers[1].mlp.down_proj) is torch.nn.Linear
    again = dict(packed.named_parameters())
    assert weights.keys() == again.keys()
    assert all(torch.equal(weights[n], again[n]) for n in weights)
    assert packed.head_product(0, 97) is None
