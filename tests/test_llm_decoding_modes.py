"""Speed modes (fp32, int8, fp16 weights, bf16) keep the decoding contract: code counts, stops."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_fixtures import make_tiny_model_folder

from llmcxr import pipeline
from llmcxr.decoding import Sampling, generate_image_codes
from llmcxr.devices import (
    FP16_SKIP,
    INT8_SKIP,
    Fp16Linear,
    Int8Linear,
    cpu_has_fp16_gemm,
    quantize_int8,
    resolve_quantize,
)
from llmcxr.pipeline import LLMCXR

FP16 = pytest.param(
    "fp16",
    marks=pytest.mark.skipif(not cpu_has_fp16_gemm(), reason="no fbgemm fp16 GEMM on this CPU"),
)
MODES = ("fp32", "int8", "int8_all", FP16, "bf16")
"""int8 / fp16: the pipeline's modes (some layers kept in float); int8_all: every Linear, head
included."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module", params=["transformers", "auto"])
def llm(folder: Path, request: pytest.FixtureRequest) -> LLMCXR:
    """The tiny model on each engine ("auto": the transformers-free `llmcxr.lean_llama`)."""
    return LLMCXR.from_pretrained(folder, device="cpu", dtype="float32", engine=request.param)


def _favouring(llm: LLMCXR, token_ids: list[int], mode: str) -> LLMCXR:
    """A copy in `mode` whose output head always prefers `token_ids` (through its bias)."""
    clone = copy.copy(llm)
    model = copy.deepcopy(llm.model)
    model.config.tie_word_embeddings = False
    width, vocab = (
        model.get_input_embeddings().weight.shape[1],
        model.get_output_embeddings().out_features,
    )
    head = torch.nn.Linear(width, vocab, bias=True)
    with torch.no_grad():
        head.weight.mul_(0.01)
        head.bias.zero_()
        head.bias[token_ids] = 100.0
    model.set_output_embeddings(head)
    clone.model, clone.quantization = model, "none"
    if mode in ("int8", "fp16"):
        clone.quantize(mode)
    elif mode == "int8_all":
        quantize_int8(model, skip=())
    elif mode == "bf16":
        clone.model = model.to(torch.bfloat16)
    return clone


def _linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The plain Linear layers of a copy of `model` (the lean engine's packed projections, which
    the speed modes quantise, unpacked: `LeanLlama.unpack`)."""
    model = copy.deepcopy(model)
    if getattr(model, "packed", False):
        model.unpack()
    return {n: m for n, m in model.named_modules() if type(m) is torch.nn.Linear}


def _text_ids(llm: LLMCXR) -> list[int]:
    image = {*llm.token_map.image_token_ids, llm.token_map.start_id, llm.token_map.end_id}
    return [i for i in range(llm.model.get_output_embeddings().out_features) if i not in image][:50]


def test_int8_replaces_the_linears_but_the_skipped_and_stays_close_to_fp32(llm: LLMCXR) -> None:
    int8 = copy.copy(llm)
    int8.model = copy.deepcopy(llm.model)
    int8.quantization = "none"
    assert int8.quantize("int8") is int8 and int8.quantization == "int8"
    before = {n: type(m) for n, m in _linears(llm.model).items()}
    after = {n: type(m) for n, m in int8.model.named_modules() if n in before}
    skipped = {n for n in before if n.rsplit(".", 1)[-1] in INT8_SKIP}
    assert "lm_head" in skipped and any("down_proj" in n for n in skipped)
    assert all(after[n] is torch.nn.Linear for n in skipped)
    assert all(after[n] is Int8Linear for n in before.keys() - skipped) and before.keys() - skipped
    ids = torch.tensor([[1, 5, 9, 30, 41]])
    with torch.inference_mode():
        ref, out = llm.model(input_ids=ids).logits, int8.model(input_ids=ids).logits
    assert not torch.equal(ref, out)  # quantisation really happened
    assert torch.allclose(ref, out, atol=0.05 * ref.abs().max().item())


@pytest.mark.skipif(not cpu_has_fp16_gemm(), reason="no fbgemm fp16 GEMM on this CPU")
def test_fp16_stores_the_weights_in_fp16_and_computes_in_fp32(llm: LLMCXR) -> None:
    """fp16 mode replaces every Linear but the head; each computes exactly the product with its
    weights rounded to fp16 (so only the rounding differs from fp32), and a quantised model
    refuses to switch to the other mode."""
    fp16 = copy.copy(llm)
    fp16.model = copy.deepcopy(llm.model)
    fp16.quantization = "none"
    assert fp16.quantize("fp16") is fp16 and fp16.quantization == "fp16"
    before = _linears(llm.model)
    after = dict(fp16.model.named_modules())
    kept = {n for n in before if n.rsplit(".", 1)[-1] in FP16_SKIP}
    assert kept == {"lm_head"} and type(after["lm_head"]) is torch.nn.Linear
    assert all(type(after[n]) is Fp16Linear for n in before.keys() - kept)
    name = next(n for n in before if n.endswith("up_proj"))
    x = torch.randn(2, 5, before[name].in_features) * 4
    with torch.inference_mode():
        rounded = torch.nn.functional.linear(x, before[name].weight.half().float())
        out, exact = after[name](x), before[name](x)
    assert torch.allclose(out, rounded, atol=1e-5, rtol=1e-5)
    assert not torch.equal(out, exact)  # the weights really are fp16
    ids = torch.tensor([[1, 5, 9, 30, 41]])
    with torch.inference_mode():
        ref, got = llm.model(input_ids=ids).logits, fp16.model(input_ids=ids).logits
    assert torch.allclose(ref, got, atol=2e-3 * ref.abs().max().item())
    with pytest.raises(ValueError, match="already in fp16 mode"):
        fp16.quantize("int8")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("guidance", [None, 2.0])
def test_constrained_codes_in_every_mode(
    llm: LLMCXR, mode: str, batch: int, guidance: float | None
) -> None:
    biased = _favouring(llm, _text_ids(llm), mode)  # the head wants text: the constraint must win
    reports = ["Cardiomegaly.", "Small left apical pneumothorax and a rib fracture.", "Normal."][
        :batch
    ]
    ids, mask = biased._pad(
        [biased._image_prompt(biased.prompt_format.render("Draw this.", r)) for r in reports]
    )
    uncond_ids, uncond_mask = biased._pad(
        [biased._image_prompt(biased.prompt_format.render("Draw this."))] * batch
    )
    generator = torch.Generator().manual_seed(0)
    for restrict in (True, False):
        codes = generate_image_codes(
            biased.model,
            ids,
            mask,
            biased.token_map,
            Sampling(True, 1.0, 0.92),
            generator=generator,
            guidance_scale=guidance,
            uncond_input_ids=uncond_ids,
            uncond_attention_mask=uncond_mask,
            restrict_logits=restrict,
        )
        assert codes.shape == (batch, biased.token_map.tokens_per_image)
        assert codes.min() >= 0 and codes.max() < biased.token_map.codebook_size


def test_int8_pipeline_draws_images_and_greedy_codes_match_the_full_head(llm: LLMCXR) -> None:
    int8 = _favouring(llm, [], "int8_all")  # the image rows come from an int8 head
    images = int8.generate_images(
        ["Cardiomegaly.", "Normal."], num_images=2, seed=0, guidance_scale=2.0
    )
    size = int8.image_tokenizer.image_size
    assert [[im.shape for im in per] for per in images] == [[(size, size)] * 2] * 2
    ids, mask = int8._pad(
        [int8._image_prompt(int8.prompt_format.render("Draw this.", "Effusion."))]
    )
    greedy = Sampling(do_sample=False)
    restricted = generate_image_codes(int8.model, ids, mask, int8.token_map, greedy)
    full = generate_image_codes(
        int8.model, ids, mask, int8.token_map, greedy, restrict_logits=False
    )
    assert (restricted == full).float().mean() > 0.8  # same head rows; only rounding differs


@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_reports_stop_at_the_stop_string(
    llm: LLMCXR, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (letter,) = llm.text_tokenizer("a", add_special_tokens=False)["input_ids"]
    talker = _favouring(llm, [letter], mode)  # says "aaaa..." for ever
    talker.prompt_format = dataclasses.replace(llm.prompt_format, end_marker="aaaa")
    lengths: list[int] = []
    original = pipeline.generate_text

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        lengths.extend(len(answer) for answer in out)
        return out

    monkeypatch.setattr(pipeline, "generate_text", spy)
    reports = talker.generate_report(
        [np.full((64, 64), 0.5, np.float32)], max_new_tokens=40, seed=0
    )
    assert reports == [""]
    assert lengths[0] < 40  # stopped by the stop string, not by the length limit


def test_the_cli_quantize_option_reaches_the_loaded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--quantize int8` must quantise what the command loads, not only parse."""
    from llmcxr import cli

    folder = make_tiny_model_folder(tmp_path / "model")
    loaded: list[LLMCXR] = []
    real = LLMCXR.from_pretrained.__func__

    def spy(cls: type[LLMCXR], *args: object, **kwargs: object) -> LLMCXR:
        loaded.append(real(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(LLMCXR, "from_pretrained", classmethod(spy))
    modes = [("int8", "int8"), ("none", "none")] + [("fp16", "fp16")] * cpu_has_fp16_gemm()
    for mode, expected in modes:
        out = tmp_path / f"{mode}.png"
        argv = ["generate-image", "effusion", "-o", str(out), "--model", str(folder)]
        assert cli.main([*argv, "--quantize", mode, "--seed", "0"]) == 0
        assert loaded[-1].quantization == expected and out.is_file()


def test_quantize_mode_choice() -> None:
    assert resolve_quantize("int8", torch.device("cpu")) == "int8"
    assert resolve_quantize("none", torch.device("cpu")) == "none"
    assert resolve_quantize("auto", torch.device("cuda")) == "none"
    for mode in ("int8", "fp16"):
        with pytest.raises(ValueError, match="CPU only"):
            resolve_quantize(mode, torch.device("cuda"))
    with pytest.raises(ValueError, match="unknown quantize mode"):
        resolve_quantize("int4", torch.device("cpu"))


def test_quantize_int8_in_place_on_a_plain_module() -> None:
    shared = torch.nn.Linear(8, 8)
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), shared, shared)
    assert quantize_int8(net, skip=("1",)) is net and isinstance(net[0], Int8Linear)
    assert net[2] is net[3] and isinstance(net[2], Int8Linear)  # a shared Linear stays shared
    assert type(quantize_int8(torch.nn.Sequential(torch.nn.Linear(8, 4)), skip=("0",))[0]) is (
        torch.nn.Linear
    )
    with pytest.raises(TypeError, match="wrap it"):
        quantize_int8(torch.nn.Linear(8, 4))


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_computes_what_torch_ao_dynamic_quantisation_does(bias: bool) -> None:
    """`Int8Linear` is torch.ao's per-channel dynamic int8 Linear built with one weight pack:
    the same int8 weights and bit-identical outputs, on a batch of sequences."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = quantize_dynamic(
            torch.nn.Sequential(copy.deepcopy(linear)), {"0": per_channel_dynamic_qconfig}
        )[0]
    ours = Int8Linear(linear)
    assert isinstance(ref, DynamicLinear)
    assert torch.equal(ours.weight().int_repr(), ref.weight().int_repr())
    assert torch.equal(ours.weight().q_per_channel_scales(), ref.weight().q_per_channel_scales())
    x = torch.randn(2, 7, 96) * 3
    assert torch.equal(ours(x), ref(x))
    assert (ours.bias() is None) == (not bias)


def test_drawing_uses_the_kv_cache_argument_this_transformers_names(llm: LLMCXR) -> None:
    """transformers 5.x renamed past_key_values to cache (the old name warns, then goes away):
    neither decoding path may pass a deprecated name, and both give the same greedy codes."""
    import warnings

    ids, mask = llm._pad([llm._image_prompt(llm.prompt_format.render("Draw this.", "Effusion."))])
    greedy = Sampling(do_sample=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restricted = generate_image_codes(llm.model, ids, mask, llm.token_map, greedy)
        full = generate_image_codes(
            llm.model, ids, mask, llm.token_map, greedy, restrict_logits=False
        )
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert torch.equal(restricted, full)


def test_weight_modes_load_fp32_weights_even_where_auto_would_pick_bf16(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8 / fp16 weights are made from fp32 ones: with dtype auto on a CPU with native bf16
    the model is loaded in fp32 for them (not in bf16 and upcast, which rounds every weight),
    an explicit bf16 is refused, and quantising a bf16-loaded model is refused."""
    from llmcxr import devices

    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    plain = LLMCXR.from_pretrained(folder, device="cpu", quantize="none", cache=False)
    assert plain.model.dtype == torch.bfloat16  # what auto picks on such a CPU
    int8 = LLMCXR.from_pretrained(folder, device="cpu", quantize="int8", cache=False)
    assert int8.quantization == "int8"
    head = int8.model.get_output_embeddings().weight  # kept in float by int8 mode
    assert head.dtype == torch.float32
    exact = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32", cache=False)
    assert torch.equal(head, exact.model.get_output_embeddings().weight)  # never rounded
    with pytest.raises(ValueError, match="--dtype bfloat16 would round them"):
        LLMCXR.from_pretrained(folder, device="cpu", dtype="bfloat16", quantize="int8")
    with pytest.raises(ValueError, match="loaded in bfloat16: load it in float32"):
        plain.quantize("int8")
