"""Inference on the tiny model: constrained image decoding, reports without image tokens, the
API."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_cxr
from llm_fixtures import make_tiny_model_folder

from instructions import IMAGE_PLACEHOLDER, default_instruction
from llmcxr import pipeline
from llmcxr.decoding import (
    ImageTokenConstraint,
    Sampling,
    ban_image_tokens,
    generate_image_codes,
    generate_image_codes_hf,
    generate_text,
)
from llmcxr.devices import cpu_has_fast_bf16, resolve_device, resolve_dtype
from llmcxr.model_folder import GenerationDefaults
from llmcxr.pipeline import LLMCXR, ModelNotFoundError, PromptTooLongError


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> LLMCXR:
    folder = make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")
    # fp32 on every CPU: `auto` picks bf16 where the CPU has it natively (avx512_bf16), and these
    # tests compare decoding paths and log-prob formulas to fp32 tolerances
    return LLMCXR.from_pretrained(folder, device="cpu", engine="transformers", dtype="float32")


def _biased_copy(llm: LLMCXR, favour: str) -> LLMCXR:
    """A copy whose output layer strongly prefers text rows (or image rows) at every step."""
    clone = copy.copy(llm)
    model = copy.deepcopy(llm.model)
    model.config.tie_word_embeddings = False
    weight = model.get_input_embeddings().weight.detach().clone()
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    image_rows = torch.zeros(weight.shape[0], dtype=torch.bool)
    image_rows[llm.token_map.image_token_ids.start : llm.token_map.image_token_ids.stop] = True
    image_rows[[llm.token_map.start_id, llm.token_map.end_id]] = True
    scaled = image_rows if favour == "image" else ~image_rows
    with torch.no_grad():
        head.weight.copy_(torch.where(scaled[:, None], weight * 50.0, torch.zeros_like(weight)))
    model.set_output_embeddings(head)
    clone.model = model
    return clone


def _image_prompt(
    llm: LLMCXR, report: str = "Left pleural effusion."
) -> tuple[torch.Tensor, torch.Tensor]:
    text = llm.prompt_format.render("Draw this.", report)
    return llm._pad([llm._image_prompt(text)])


def test_text_favouring_model_really_prefers_text(llm: LLMCXR) -> None:
    biased = _biased_copy(llm, "text")
    ids, mask = _image_prompt(biased)
    out = biased.model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=biased.pad_token_id,
    )
    assert not biased.token_map.is_code_id(out[0, ids.shape[1] :]).any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_constrained_loop_yields_exactly_n_codes_even_when_text_is_favoured(
    llm: LLMCXR, seed: int
) -> None:
    biased = _biased_copy(llm, "text")
    ids, mask = _image_prompt(biased)
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    generator = torch.Generator().manual_seed(seed)
    codes = generate_image_codes(
        biased.model, ids, mask, biased.token_map, Sampling(True, 1.3, 0.92), generator=generator
    )
    assert codes.shape == (2, biased.token_map.tokens_per_image)
    assert codes.min() >= 0 and codes.max() < biased.token_map.codebook_size


@pytest.mark.parametrize("seed", [0, 1])
def test_constrained_generate_ends_with_marker_after_n_codes(llm: LLMCXR, seed: int) -> None:
    biased = _biased_copy(llm, "text")
    ids, mask = _image_prompt(biased)
    torch.manual_seed(seed)
    codes = generate_image_codes_hf(
        biased.model,
        ids,
        mask,
        biased.token_map,
        Sampling(True, 1.0, 0.92),
        pad_token_id=biased.pad_token_id,
    )
    assert codes.shape == (1, biased.token_map.tokens_per_image)
    assert codes.min() >= 0 and codes.max() < biased.token_map.codebook_size


@pytest.mark.parametrize("guidance", [None, 3.0])
def test_restricted_loop_matches_transformers_generate_greedy(
    llm: LLMCXR, guidance: float | None
) -> None:
    ids, mask = llm._pad(
        [
            llm._image_prompt(llm.prompt_format.render("Draw this.", r))
            for r in ("Cardiomegaly.", "Small left apical pneumothorax and a rib fracture.")
        ]
    )
    uncond_ids, uncond_mask = llm._pad(
        [llm._image_prompt(llm.prompt_format.render("Draw this."))] * 2
    )
    extra = {
        "guidance_scale": guidance,
        "uncond_input_ids": uncond_ids,
        "uncond_attention_mask": uncond_mask,
    }
    ours = generate_image_codes(
        llm.model, ids, mask, llm.token_map, Sampling(do_sample=False), **extra
    )
    reference = generate_image_codes_hf(
        llm.model,
        ids,
        mask,
        llm.token_map,
        Sampling(do_sample=False),
        pad_token_id=llm.pad_token_id,
        **extra,
    )
    assert torch.equal(ours, reference)


def test_constraint_processor_masks_by_step() -> None:
    class Layout:
        codebook_size, first_code_id, start_id, end_id, tokens_per_image = 4, 10, 14, 15, 2

    constraint = ImageTokenConstraint(Layout(), prompt_length=3)
    scores = torch.zeros(1, 20)
    during = constraint(torch.zeros(1, 4, dtype=torch.long), scores)
    after = constraint(torch.zeros(1, 5, dtype=torch.long), scores)
    assert torch.isfinite(during[0]).nonzero().flatten().tolist() == [10, 11, 12, 13]
    assert torch.isfinite(after[0]).nonzero().flatten().tolist() == [15]


def test_ban_image_tokens_removes_every_image_id(llm: LLMCXR) -> None:
    scores = torch.zeros(2, llm.model.get_output_embeddings().weight.shape[0])
    banned = ban_image_tokens(scores.clone(), llm.token_map)
    ids = torch.isinf(banned[0]).nonzero().flatten()
    expected = [*llm.token_map.image_token_ids, llm.token_map.start_id, llm.token_map.end_id]
    assert sorted(ids.tolist()) == sorted(expected)


def test_reports_contain_no_image_tokens_even_when_image_tokens_are_favoured(
    llm: LLMCXR, monkeypatch: pytest.MonkeyPatch
) -> None:
    biased = _biased_copy(llm, "image")
    generated: list[list[int]] = []
    original = pipeline.generate_text

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        generated.extend(out)
        return out

    monkeypatch.setattr(pipeline, "generate_text", spy)
    reports = biased.generate_report(
        [np.full((64, 64), 0.5, np.float32)] * 2, max_new_tokens=12, seed=0
    )
    assert len(reports) == 2 and all(isinstance(r, str) for r in reports)
    image_ids = {
        *biased.token_map.image_token_ids,
        biased.token_map.start_id,
        biased.token_map.end_id,
    }
    new = [token for answer in generated for token in answer]
    assert new and not set(new) & image_ids


def test_generate_images_shapes_progress_and_seed(llm: LLMCXR) -> None:
    calls: list[tuple[int, int]] = []
    images = llm.generate_images(
        ["Left pleural effusion.", "Normal chest."],
        num_images=2,
        seed=7,
        batch_size=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    size = llm.image_tokenizer.image_size
    assert [len(per_report) for per_report in images] == [2, 2]
    for image in (image for per_report in images for image in per_report):
        assert image.shape == (size, size) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
    total = 4 * llm.token_map.tokens_per_image
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    again = llm.generate_images(
        ["Left pleural effusion.", "Normal chest."], num_images=2, seed=7, batch_size=3
    )
    assert all(np.array_equal(a, b) for x, y in zip(images, again) for a, b in zip(x, y))


def test_generate_images_with_guidance_and_from_an_empty_report(llm: LLMCXR) -> None:
    images = llm.generate_images(["Cardiomegaly.", ""], seed=0, guidance_scale=2.5)
    assert [im[0].shape for im in images] == [(llm.image_tokenizer.image_size,) * 2] * 2


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_a_guidance_scale_is_a_finite_number_above_zero(llm: LLMCXR, scale: object) -> None:
    with pytest.raises(ValueError, match="guidance scale must be a finite number > 0"):
        llm.generate_images(["Cardiomegaly."], guidance_scale=scale)
    with pytest.raises(ValueError, match="generation defaults: guidance scale"):
        GenerationDefaults.from_dict({"guidance_scale": scale})
    assert GenerationDefaults(guidance_scale=0.5).guidance_scale == 0.5


def test_generate_report_accepts_paths_arrays_and_tensors(llm: LLMCXR, fixtures_dir: Path) -> None:
    from conftest import synthetic_cxr

    inputs = [
        fixtures_dir / "00000001_000.png",
        synthetic_cxr(80, 1),
        torch.from_numpy(synthetic_cxr(64, 2))[None],
    ]
    reports = llm.generate_report(inputs, max_new_tokens=4, seed=0, batch_size=2)
    assert len(reports) == 3 and all(isinstance(r, str) for r in reports)


def test_prompt_splices_one_image_span(llm: LLMCXR) -> None:
    codes = torch.arange(llm.token_map.tokens_per_image) % llm.token_map.codebook_size
    prompt = llm.encode_prompt(llm.prompt_format.render("Report.", "<image>"), [codes])
    span = llm.token_map.image_to_text_span(codes)
    starts = [i for i, t in enumerate(prompt.ids) if t == llm.token_map.start_id]
    assert len(starts) == 1 and prompt.ids[starts[0] : starts[0] + len(span)] == span
    with pytest.raises(ValueError, match="<image>"):
        llm.encode_prompt("no placeholder", [codes])


def test_ask_with_history_keeps_one_image(llm: LLMCXR, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    original = llm._generate_text
    monkeypatch.setattr(
        llm, "_generate_text", lambda prompts, *a: seen.extend(prompts) or original(prompts, *a)
    )
    answer = llm.ask(
        np.full((64, 64), 0.3, np.float32),
        "Is there an effusion?",
        history=[("Is the heart enlarged?", "No.")],
        max_new_tokens=4,
        seed=0,
    )
    assert isinstance(answer, str)
    assert seen[0].ids.count(llm.token_map.start_id) == 1
    with pytest.raises(ValueError, match="empty"):
        llm.ask(np.zeros((64, 64), np.float32), "   ")


def test_report_temperature_applies_to_reports_only(
    llm: LLMCXR, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = copy.copy(llm)
    clone.generation_defaults = replace(llm.generation_defaults, report_temperature=0.3)
    used: list[float] = []
    original = clone._sampling
    monkeypatch.setattr(
        clone, "_sampling", lambda *a: used.append(original(*a).temperature) or original(*a)
    )
    image = np.full((64, 64), 0.3, np.float32)
    clone.generate_report([image], max_new_tokens=2, seed=0)
    clone.generate_report([image], max_new_tokens=2, seed=0, temperature=0.9)
    clone.ask(image, "Is there an effusion?", max_new_tokens=2, seed=0)
    clone.generate_images(["Left pleural effusion."], seed=0)
    assert used == [0.3, 0.9, 1.0, 1.0]
    for bad in (0, -1.0, "0.3", True):
        with pytest.raises(ValueError, match="report_temperature"):
            GenerationDefaults.from_dict({"report_temperature": bad})


def test_bad_inputs_raise_clear_errors(llm: LLMCXR, tmp_path: Path) -> None:
    with pytest.raises(PromptTooLongError, match="context"):
        llm.generate_images(["effusion " * 5000])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        llm.generate_report([np.full((64, 64), 3.0, np.float32)])
    with pytest.raises(ModelNotFoundError, match="model not found"):
        LLMCXR.from_pretrained(tmp_path / "missing")


def test_device_and_dtype_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(None, torch.device("cpu")) == (
        torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    )
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")


def _report_prompts(llm: LLMCXR) -> tuple[torch.Tensor, ...]:
    codes = torch.arange(llm.token_map.tokens_per_image) % llm.token_map.codebook_size
    cond = llm.encode_prompt(llm.prompt_format.render("Report.", IMAGE_PLACEHOLDER), [codes])
    uncond = llm.encode_prompt(llm.prompt_format.render("Report."))
    return (*llm._pad([cond]), *llm._pad([uncond]), torch.tensor([cond.ids]))


def test_report_guidance_follows_the_log_prob_formula(llm: LLMCXR) -> None:
    """Greedy guided text: each token is the argmax, image tokens banned, of
    `uncond + s * (cond - uncond)` over the log-probs of whole forward passes (the tiny random
    model's image moves its log-probs by < 0.1, so the scale is large enough to matter)."""
    ids, mask, u_ids, u_mask, _ = _report_prompts(llm)
    answer = generate_text(
        llm.model,
        ids,
        mask,
        llm.token_map,
        Sampling(do_sample=False),
        max_new_tokens=6,
        guidance_scale=50.0,
        uncond_input_ids=u_ids,
        uncond_attention_mask=u_mask,
    )[0]
    cond_ids, uncond_ids, expected = ids[0].tolist(), u_ids[0].tolist(), []
    for _ in range(6):
        with torch.inference_mode():
            lc = llm.model(input_ids=torch.tensor([cond_ids])).logits[0, -1].log_softmax(-1)
            lu = llm.model(input_ids=torch.tensor([uncond_ids])).logits[0, -1].log_softmax(-1)
        token = int(ban_image_tokens((lu + 50.0 * (lc - lu))[None], llm.token_map).argmax())
        expected.append(token)
        cond_ids.append(token)
        uncond_ids.append(token)
    assert answer == expected
    unguided = generate_text(
        llm.model, ids, mask, llm.token_map, Sampling(do_sample=False), max_new_tokens=6
    )[0]
    assert unguided != expected  # guidance changed the text


def test_report_guidance_against_the_same_prompt_is_no_guidance(llm: LLMCXR) -> None:
    ids, mask, _, _, _ = _report_prompts(llm)
    runs = []
    for scale in (None, 3.0):
        generator = torch.Generator().manual_seed(0)
        runs.append(
            generate_text(
                llm.model,
                ids,
                mask,
                llm.token_map,
                Sampling(True, 1.0, 0.9),
                max_new_tokens=8,
                generator=generator,
                guidance_scale=scale,
                uncond_input_ids=ids,
                uncond_attention_mask=mask,
            )
        )
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="uncond_input_ids"):
        generate_text(
            llm.model, ids, mask, llm.token_map, Sampling(), max_new_tokens=2, guidance_scale=2.0
        )
    image = np.zeros((64, 64), dtype=np.float32)
    assert llm.generate_report([image], seed=0, guidance_scale=1.0) == llm.generate_report(
        [image], seed=0
    )
    (guided,) = llm.generate_report([image], seed=0, guidance_scale=2.0)
    assert isinstance(guided, str)


def test_score_responses_is_the_teacher_forced_log_prob_of_each_answer(llm: LLMCXR) -> None:
    """Each score is the sum, over the answer's tokens (end marker and EOS included), of the
    log-prob with image tokens banned from one unpadded forward pass; batching and padding do
    not change it, and the image moves it."""
    images = [synthetic_cxr(64, 0), synthetic_cxr(64, 5)]
    responses = ["No acute findings.", "Large left pleural effusion with adjacent atelectasis."]
    scores = llm.score_responses(images, responses, batch_size=3)
    assert scores.shape == (2, 2)
    text = llm.prompt_format.render(default_instruction("cxr_to_report"), IMAGE_PLACEHOLDER)
    codes = llm.encode_images(images)
    for i in range(2):
        prompt = llm.encode_prompt(text, [codes[i]]).ids
        for j, response in enumerate(responses):
            answer = llm.text_tokenizer(
                llm.prompt_format.render_response(response), add_special_tokens=False
            )["input_ids"] + [llm.text_tokenizer.eos_token_id]
            with torch.inference_mode():
                logits = llm.model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
            logits = logits.clone()
            logp = ban_image_tokens(logits, llm.token_map).log_softmax(-1)
            expected = sum(
                float(logp[len(prompt) - 1 + k, token]) for k, token in enumerate(answer)
            )
            assert float(scores[i, j]) == pytest.approx(expected, abs=1e-3)
    assert torch.allclose(llm.score_responses(images, responses, batch_size=1), scores, atol=1e-3)
    assert float((scores[0] - scores[1]).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="no responses"):
        llm.score_responses(images, [])
