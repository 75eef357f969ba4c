"""Recipe pieces of the default model: report dropout for classifier-free guidance, a separate
learning rate for the new image-token rows, image and text validation losses apart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from llm_fixtures import make_tiny_model_folder

from instructions.prompt_format import IMAGE_PLACEHOLDER
from llmcxr.data import EncodedDataset, EncodedExample, PadCollator, RecordEncoder
from llmcxr.image_tokens import ImageTokenMap
from llmcxr.lit_module import (
    LLMCXRModule,
    LoraSettings,
    LossSettings,
    ModelSettings,
    OptimizerSettings,
    film_swap_pairs,
    lead_text_weights,
    split_token_losses,
    status_swap_pairs,
    swap_films,
    swap_prompts,
    weighted_token_loss,
)
from llmcxr.pipeline import LLMCXR

REPORT = "Small left pleural effusion. No pneumothorax."
INSTRUCTION = "Generate a chest X-ray image that matches this report."


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def llm(folder: Path) -> LLMCXR:
    return LLMCXR.from_pretrained(folder, device="cpu")


def _draw_record() -> dict[str, str]:
    return {
        "id": "r",
        "task": "report_to_cxr",
        "instruction": INSTRUCTION,
        "input": REPORT,
        "response": IMAGE_PLACEHOLDER,
        "image_id": "img",
    }


def test_dropped_report_encodes_to_the_pipelines_unconditional_prompt(llm: LLMCXR) -> None:
    encoder = RecordEncoder(llm.text_tokenizer, llm.token_map, llm.prompt_format)
    codes = torch.arange(llm.token_map.tokens_per_image)
    [example], _ = encoder.encode_all([_draw_record()], _OneImage(codes), 4096, unconditional=True)
    uncond = example.unconditional
    assert uncond is not None
    # generate_images(guidance_scale > 1) contrasts with exactly these ids (start marker forced)
    pipeline_ids = llm._image_prompt(llm.prompt_format.render(INSTRUCTION)).ids
    assert uncond.input_ids[: len(pipeline_ids)] == pipeline_ids
    # ... and the conditional example still holds the report, the image target is the same
    cond_ids = llm._image_prompt(llm.prompt_format.render(INSTRUCTION, REPORT)).ids
    assert example.input_ids[: len(cond_ids)] == cond_ids
    span = llm.token_map.image_to_text_span(codes)
    assert uncond.input_ids[len(pipeline_ids) - 1 :][: len(span)] == span
    assert [t for t in uncond.labels if t != -100] == [t for t in example.labels if t != -100]


def test_only_report_to_cxr_records_get_an_unconditional_variant(llm: LLMCXR) -> None:
    encoder = RecordEncoder(llm.text_tokenizer, llm.token_map, llm.prompt_format)
    codes = torch.arange(llm.token_map.tokens_per_image)
    read = {
        **_draw_record(),
        "task": "cxr_to_report",
        "input": IMAGE_PLACEHOLDER,
        "response": REPORT,
    }
    [example], _ = encoder.encode_all([read], _OneImage(codes), 4096, unconditional=True)
    assert example.unconditional is None


def test_dataset_serves_the_unconditional_variant_at_the_drop_rate() -> None:
    cond, uncond = EncodedExample([1, 2], [1, 2], "report_to_cxr"), EncodedExample([3], [3], "x")
    cond.unconditional = uncond
    data = EncodedDataset([cond] * 4000, cfg_drop=0.1, seed=0)
    dropped = sum(data[i] is uncond for i in range(len(data)))
    assert abs(dropped / 4000 - 0.1) < 0.015  # binomial sd 0.0047
    assert all(EncodedDataset([cond], cfg_drop=0.0)[0] is cond for _ in range(50))
    with pytest.raises(ValueError, match="cfg_drop"):
        EncodedDataset([cond], cfg_drop=1.0)


def test_split_token_losses_by_hand() -> None:
    token_map = ImageTokenMap(
        codebook_size=2, first_code_id=3, start_id=5, end_id=6, tokens_per_image=1
    )
    # vocabulary of 7; logits favour nothing except where set, so CE = log-sum-exp - logit
    logits = torch.zeros(1, 4, 7)
    logits[0, 0, 3] = math.log(6.0)  # target 3 (image code): p = 6/12 -> CE = log 2
    logits[0, 1, 1] = math.log(3.0)  # target 1 (text): p = 3/9 -> CE = log 3
    labels = torch.tensor([[-100, 3, 1, -100]])  # position 2's target is ignored
    terms = split_token_losses(logits, labels, token_map)
    assert terms["loss_image"].item() == pytest.approx(math.log(2))
    assert terms["loss_text"].item() == pytest.approx(math.log(3))
    assert terms["loss"].item() == pytest.approx((math.log(2) + math.log(3)) / 2)
    assert (terms["image_tokens"].item(), terms["text_tokens"].item()) == (1, 1)


def _two_code_map() -> ImageTokenMap:
    return ImageTokenMap(codebook_size=2, first_code_id=3, start_id=5, end_id=6, tokens_per_image=1)


def test_lead_text_weights_by_hand() -> None:
    targets = torch.tensor(
        [
            [-100, -100, 1, 2, 0, 1],  # written response: its first 2 targets weighted
            [-100, 5, 3, 6, 0, -100],  # drawn response (start, code, end): weights stay 1
            [-100, -100, -100, -100, 2, -100],  # one-token answer ("Yes"): weighted
        ]
    )
    weights = lead_text_weights(targets, _two_code_map(), LossSettings(2, 4.0))
    assert weights.tolist() == [
        [0, 0, 4, 4, 1, 1],
        [0, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 4, 0],
    ]


def test_weighted_token_loss_by_hand() -> None:
    token_map = _two_code_map()
    # vocabulary of 7, logits 0 except where set, so CE = log-sum-exp - logit
    logits = torch.zeros(1, 4, 7)
    logits[0, 0, 1] = math.log(3.0)  # target 1: p = 3/9, CE = log 3 (the first written target)
    logits[0, 1, 2] = math.log(6.0)  # target 2: p = 6/12, CE = log 2
    labels = torch.tensor([[-100, 1, 2, 0]])  # target 0 from uniform logits: CE = log 7
    loss = weighted_token_loss(logits, labels, token_map, LossSettings(1, 3.0))
    assert loss.item() == pytest.approx((3 * math.log(3) + math.log(2) + math.log(7)) / 3)
    plain = weighted_token_loss(logits, labels, token_map, LossSettings())
    assert plain.item() == pytest.approx(split_token_losses(logits, labels, token_map)["loss"])


def test_loss_settings_refuse_bad_values() -> None:
    assert not LossSettings().active and not LossSettings(8, 1.0).active
    assert LossSettings(8, 5.0).active
    assert not LossSettings().contrast and LossSettings(film_contrast_weight=0.5).contrast
    for bad in ({"lead_text_tokens": -1}, {"lead_text_tokens": True}, {"lead_text_weight": 0.0}):
        with pytest.raises(ValueError, match="loss.lead_text"):
            LossSettings(**bad)
    for bad in (
        {"film_contrast_weight": -1.0},
        {"film_contrast_margin": 0.0},
        {"film_contrast_vqa": True},
    ):
        with pytest.raises(ValueError, match="loss.film_contrast"):
            LossSettings(**bad)
    assert not LossSettings().draw_contrast and LossSettings(draw_contrast_weight=1.0).draw_contrast
    for bad in ({"draw_contrast_weight": -1.0}, {"draw_contrast_margin": 0.0}):
        with pytest.raises(ValueError, match="loss.draw_contrast"):
            LossSettings(**bad)


def test_film_swap_pairs_by_hand() -> None:
    # rows 0 and 1 share a group, row 3 reads no pooled film
    groups = torch.tensor([0, 0, 1, -1, 2])
    assert film_swap_pairs(groups) == [(0, 2), (1, 2), (2, 4), (4, 0)]
    assert film_swap_pairs(torch.tensor([3, 3, -1])) == []
    assert film_swap_pairs(None) == []


def test_status_swap_pairs_by_hand() -> None:
    # film status per row (-1: no film or unknown) and the status each row's answer is wrong for
    abnormal = torch.tensor([1, 0, -1, 1, 0])
    wanted = torch.tensor([1, -1, 0, 0, 1])
    assert status_swap_pairs(abnormal, wanted) == [(0, 3), (2, 4), (3, 4), (4, 0)]
    assert status_swap_pairs(torch.tensor([0, 0]), torch.tensor([1, -1])) == []
    assert status_swap_pairs(None, None) == []


def test_swap_films_by_hand() -> None:
    token_map = ImageTokenMap(
        codebook_size=4, first_code_id=3, start_id=7, end_id=8, tokens_per_image=2
    )
    ids = torch.tensor(
        [
            [1, 7, 3, 4, 8, 2, 6],  # prompt film (3, 4); the response's code 6 is not a film
            [1, 7, 5, 6, 8, 2, 0],  # prompt film (5, 6)
        ]
    )
    labels = torch.tensor([[-100] * 5 + [2, 6], [-100] * 5 + [2, 0]])
    swapped = swap_films(ids, labels, [(0, 1), (1, 0)], token_map)
    assert swapped.tolist() == [[1, 7, 5, 6, 8, 2, 6], [1, 7, 3, 4, 8, 2, 0]]
    assert swap_films(ids, labels, [(1, 0)], token_map).tolist() == [[1, 7, 3, 4, 8, 2, 0]]
    text_only = torch.tensor([[1, 1, 1, 1, 1, 2, 0]])
    with pytest.raises(ValueError, match="one film"):
        swap_films(
            torch.cat([ids, text_only]), torch.cat([labels, labels[:1]]), [(0, 2)], token_map
        )


def test_collator_numbers_film_groups_within_the_batch() -> None:
    rows = [EncodedExample([1], [1], "cxr_to_report", film_group=g) for g in ("b", "", "a", "b")]
    assert PadCollator(0)(rows)["film_group"].tolist() == [0, -1, 1, 0]
    rows = [EncodedExample([1], [1], "report_to_cxr", draw_group=g) for g in ("", "x", "x", "y")]
    batch = PadCollator(0)(rows)
    assert batch["draw_group"].tolist() == [-1, 0, 0, 1]
    assert batch["film_group"].tolist() == [-1, -1, -1, -1]


def test_swap_prompts_by_hand() -> None:
    # row 0: prompt (1, 5, 6), response (7, 8); row 1: prompt (1, 9), response (7, 4, 8), longest
    ids = torch.tensor([[1, 5, 6, 7, 8, 0], [1, 9, 7, 4, 8, 0]])
    labels = torch.tensor([[-100, -100, -100, 7, 8, -100], [-100, -100, 7, 4, 8, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    out_ids, out_mask, out_labels = swap_prompts(ids, labels, mask, [(0, 1), (1, 0)])
    assert out_ids.tolist() == [[1, 9, 7, 8, 0, 0], [1, 5, 6, 7, 4, 8]]
    assert out_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert out_labels.tolist() == [[-100, -100, 7, 8, -100, -100], [-100, -100, -100, 7, 4, 8]]
    with pytest.raises(ValueError, match="each have a response"):
        swap_prompts(ids, torch.full_like(labels, -100), mask, [(0, 1)])


def test_drawing_records_carry_their_report_pool_but_their_dropped_variant_does_not(
    llm: LLMCXR,
) -> None:
    encoder = RecordEncoder(llm.text_tokenizer, llm.token_map, llm.prompt_format)
    codes = torch.arange(llm.token_map.tokens_per_image)
    draw = {**_draw_record(), "report_pool": "test|effusion"}
    read = {**draw, "task": "cxr_to_report", "input": IMAGE_PLACEHOLDER, "response": REPORT}
    records = [draw, read, _draw_record()]
    rows, _ = encoder.encode_all(records, _OneImage(codes), 4096, unconditional=True)
    assert [r.draw_group for r in rows] == ["test|effusion", "", ""]
    assert [r.film_group for r in rows] == ["", "test|effusion", ""]
    assert rows[0].unconditional is not None and rows[0].unconditional.draw_group == ""


def _vqa_record(question: str, answer: str, labels: dict[str, int]) -> dict[str, str]:
    return {
        "id": question,
        "task": "vqa",
        "instruction": question,
        "input": IMAGE_PLACEHOLDER,
        "response": answer,
        "image_id": "img",
        "labels": json.dumps(labels),
    }


def test_reading_records_carry_their_films_status_and_what_makes_their_answer_wrong(
    llm: LLMCXR,
) -> None:
    encoder = RecordEncoder(llm.text_tokenizer, llm.token_map, llm.prompt_format)
    normal, effusion = {"No Finding": 1}, {"Pleural Effusion": 1, "No Finding": 0}
    records = [
        _vqa_record("Is this chest X-ray normal?", "Yes.", normal),
        _vqa_record("Is this chest X-ray normal?", "No.", effusion),
        _vqa_record("Is there a pleural effusion?", "Yes. Small left effusion.", effusion),
        _vqa_record("Is there a pleural effusion?", "No. No effusion.", normal),
        _vqa_record("Where is the pleural effusion located?", "On the left.", effusion),
        _vqa_record("Is this chest X-ray normal?", "Yes.", {"Edema": -1}),
        {**_reading_records()[1], "id": "rep", "task": "cxr_to_report", "image_id": "img"},
        _draw_record(),
    ]
    codes = torch.arange(llm.token_map.tokens_per_image)
    rows, _ = encoder.encode_all(records, _OneImage(codes), 4096)
    assert [r.film_abnormal for r in rows] == [False, True, True, False, True, None, None, None]
    # "normal? Yes." is wrong on an abnormal film, "normal? No." on a normal one, "effusion? Yes."
    # on a normal one; a "No." to a finding, an open question and a report say nothing of the kind
    assert [r.contrast_abnormal for r in rows] == [True, False, False, None, None, True, None, None]
    batch = PadCollator(0)(rows)
    assert batch["film_abnormal"].tolist() == [0, 1, 1, 0, 1, -1, -1, -1]
    assert batch["contrast_abnormal"].tolist() == [1, 0, 0, -1, -1, 1, -1, -1]
    for bad in ("not json", "[1, 2]"):
        broken = {**records[0], "labels": bad}
        with pytest.raises(ValueError, match="'Is this chest X-ray normal\\?': labels must be"):
            encoder.encode_all([broken], _OneImage(codes), 4096)


def _reading_records() -> list[dict[str, str]]:
    return [
        {"instruction": "Write the report.", "input": IMAGE_PLACEHOLDER, "response": text}
        for text in ("No acute findings.", REPORT)
    ]


def _contrast_setup(folder: Path, loss: LossSettings) -> tuple[LLMCXRModule, RecordEncoder, list]:
    """A tiny module in eval mode (no dropout: the hand computations run the same model again),
    its record encoder, and two different films."""
    module = LLMCXRModule(
        init_from=str(folder), model=ModelSettings(lora=LoraSettings(r=4, alpha=8)), loss=loss
    )
    module.eval()
    n = module.token_map.tokens_per_image
    return module, module.record_encoder(), [torch.arange(n) % 4, (torch.arange(n) + 2) % 4]


def test_film_contrast_adds_the_hinge_over_swapped_films(folder: Path) -> None:
    module, encoder, films = _contrast_setup(
        folder, LossSettings(film_contrast_weight=2.0, film_contrast_margin=50.0)
    )
    records = _reading_records()
    rows = [encoder.encode(r, f) for r, f in zip(records, films, strict=True)]
    for k, row in enumerate(rows):
        row.film_group = f"pool{k}"
    batch = PadCollator(0)(rows)
    # each report encoded again with the other film: what the swap must give
    crossed = PadCollator(0)(
        [encoder.encode(records[0], films[1]), encoder.encode(records[1], films[0])]
    )
    ids, labels = batch["input_ids"], batch["labels"]
    assert torch.equal(
        swap_films(ids, labels, [(0, 1), (1, 0)], module.token_map), crossed["input_ids"]
    )
    losses = module._losses(batch)
    plain, gap = _plain_loss_and_gap_by_hand(module, batch, crossed["input_ids"])
    assert losses["film_gap"].item() == pytest.approx(gap.mean().item(), rel=1e-4, abs=1e-5)
    losses["loss"].backward()
    # one film group for both rows: no pair, so the plain loss alone
    batch["film_group"] = torch.tensor([0, 0])
    same = module._losses(batch)
    assert same["contrast"].item() == 0.0 and same["film_gap"].isnan()
    assert same["loss"].item() == pytest.approx(plain.item(), rel=1e-4)


def test_vqa_film_contrast_scores_each_answer_with_a_film_it_is_wrong_for(folder: Path) -> None:
    settings = {"film_contrast_weight": 2.0, "film_contrast_margin": 50.0}
    module, encoder, films = _contrast_setup(
        folder, LossSettings(**settings, film_contrast_vqa=True)
    )
    records = [
        _vqa_record("Is this chest X-ray normal?", "Yes.", {"No Finding": 1}),
        _vqa_record("Is this chest X-ray normal?", "No.", {"Edema": 1}),
    ]
    rows = [encoder.encode_all([r], _OneImage(f), 4096)[0][0] for r, f in zip(records, films)]
    batch = PadCollator(0)(rows)
    crossed = PadCollator(0)(
        [encoder.encode(records[0], films[1]), encoder.encode(records[1], films[0])]
    )
    losses = module._losses(batch)
    plain, gap = _plain_loss_and_gap_by_hand(module, batch, crossed["input_ids"])
    assert losses["vqa_gap"].item() == pytest.approx(gap.mean().item(), rel=1e-4, abs=1e-5)
    assert losses["film_gap"].isnan()  # no report rows to swap
    # without the VQA switch the same batch has nothing to contrast
    module.loss_settings = LossSettings(**settings)
    off = module._losses(batch)
    assert off["contrast"].item() == 0.0 and "vqa_gap" not in off
    assert off["loss"].item() == pytest.approx(plain.item(), rel=1e-4)


def test_draw_contrast_adds_the_hinge_over_swapped_reports(folder: Path) -> None:
    module, encoder, films = _contrast_setup(
        folder, LossSettings(draw_contrast_weight=3.0, draw_contrast_margin=40.0)
    )
    reports = ["No acute findings.", REPORT]  # prompts of different lengths
    records = [{**_draw_record(), "input": r} for r in reports]
    rows = [encoder.encode(r, f) for r, f in zip(records, films, strict=True)]
    for k, row in enumerate(rows):
        row.draw_group = f"pool{k}"
    batch = PadCollator(0)(rows)
    # each drawing encoded again under the other report: what the swap must give
    crossed = PadCollator(0)(
        [encoder.encode(records[1], films[0]), encoder.encode(records[0], films[1])]
    )
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    swapped = swap_prompts(ids, labels, mask, [(0, 1), (1, 0)])
    for got, want in zip(swapped, ("input_ids", "attention_mask", "labels"), strict=True):
        assert torch.equal(got, crossed[want])
    losses = module._losses(batch)
    logits = module.model(input_ids=ids, attention_mask=mask).logits
    other = module.model(
        input_ids=crossed["input_ids"], attention_mask=crossed["attention_mask"]
    ).logits
    plain = split_token_losses(logits, labels, module.token_map)["loss"]
    gap = torch.stack(
        [
            _response_nll(other[k], crossed["labels"][k]) - _response_nll(logits[k], labels[k])
            for k in range(2)
        ]
    )
    hinge = torch.relu(40.0 - gap).sum() / (labels[:, 1:] != -100).sum()
    assert hinge > 0
    assert losses["draw_gap"].item() == pytest.approx(gap.mean().item(), rel=1e-4, abs=1e-5)
    assert losses["loss"].item() == pytest.approx((plain + 3.0 * hinge).item(), rel=1e-4)
    losses["loss"].backward()
    # one report pool for both rows: no pair, so the plain loss alone
    batch["draw_group"] = torch.tensor([0, 0])
    same = module._losses(batch)
    assert same["draw_contrast"].item() == 0.0 and same["draw_gap"].isnan()
    assert same["loss"].item() == pytest.approx(plain.item(), rel=1e-4)


def _plain_loss_and_gap_by_hand(
    module: LLMCXRModule, batch: dict[str, torch.Tensor], crossed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain loss of a two-row batch and each row's response NLL with the other row's film
    (`crossed`) minus with its own; checks that the module's loss adds the weight-2, margin-50
    hinge of those gaps."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    logits = module.model(input_ids=ids, attention_mask=mask).logits
    other = module.model(input_ids=crossed, attention_mask=mask).logits
    plain = split_token_losses(logits, labels, module.token_map)["loss"]
    gap = torch.stack(
        [_response_nll(other[k], labels[k]) - _response_nll(logits[k], labels[k]) for k in range(2)]
    )
    hinge = torch.relu(50.0 - gap).sum() / (labels[:, 1:] != -100).sum()
    assert hinge > 0
    loss = module._losses(batch)["loss"]
    assert loss.item() == pytest.approx((plain + 2.0 * hinge).item(), rel=1e-4)
    return plain, gap


def _response_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One row's summed next-token cross-entropy over its supervised targets, by hand."""
    targets = labels[1:]
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    keep = targets != -100
    return -logp[keep].gather(1, targets[keep].unsqueeze(1)).sum()


def test_weighted_loss_trains_the_module_and_is_recorded(folder: Path, tmp_path: Path) -> None:
    module = LLMCXRModule(
        init_from=str(folder),
        model=ModelSettings(lora=LoraSettings(r=4, alpha=8)),
        loss=LossSettings(lead_text_tokens=2, lead_text_weight=5.0),
    )
    example = module.record_encoder().encode(
        {"instruction": "Is there a pleural effusion?", "input": "", "response": "Yes."}, None
    )
    ids = torch.tensor([example.input_ids])
    labels = torch.tensor([example.labels])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    weighted = module(batch)
    logits = module.model(input_ids=ids).logits
    by_hand = weighted_token_loss(logits, labels, module.token_map, LossSettings(2, 5.0))
    assert weighted.item() == pytest.approx(by_hand.item(), rel=1e-4)
    module.loss_settings = LossSettings()
    plain = module(batch)  # the library's own loss path
    assert plain.item() == pytest.approx(
        split_token_losses(logits, labels, module.token_map)["loss"].item(), rel=1e-4
    )
    assert weighted.item() > plain.item()
    weighted.backward()
    module.loss_settings = LossSettings(2, 5.0)
    manifest = json.loads((module.export(tmp_path / "out") / "llmcxr.json").read_text())
    assert manifest["training"]["loss"] == {
        "lead_text_tokens": 2,
        "lead_text_weight": 5.0,
        "film_contrast_weight": 0.0,
        "film_contrast_margin": 1.0,
        "film_contrast_vqa": False,
        "draw_contrast_weight": 0.0,
        "draw_contrast_margin": 5.0,
    }


def test_new_token_rows_get_their_own_learning_rate(folder: Path) -> None:
    module = LLMCXRModule(
        init_from=str(folder),
        model=ModelSettings(lora=LoraSettings(r=4, alpha=8)),
        optimizer=OptimizerSettings(lr=1e-3, new_token_lr_scale=5.0),
    )
    module.trainer = _FakeTrainer()
    opt = module.configure_optimizers()["optimizer"]
    rows = [g for g in opt.param_groups if g["initial_lr"] == pytest.approx(5e-3)]
    assert len(rows) == 1
    n_rows = sum(p.numel() for p in rows[0]["params"])
    hidden = module.model.get_input_embeddings().weight.shape[1]
    new_ids = module.token_map.codebook_size + 2
    assert n_rows == new_ids * hidden  # exactly the new rows (tied embeddings: one copy)
    others = [g for g in opt.param_groups if g is not rows[0]]
    assert others and all(g["initial_lr"] == pytest.approx(1e-3) for g in others)


def test_new_token_lr_scale_needs_lora(folder: Path) -> None:
    module = LLMCXRModule(
        init_from=str(folder), optimizer=OptimizerSettings(new_token_lr_scale=5.0)
    )
    module.trainer = _FakeTrainer()
    with pytest.raises(ValueError, match="needs LoRA"):
        module.configure_optimizers()


class _OneImage:
    """A token cache holding one image, id ``img``."""

    def __init__(self, codes: torch.Tensor) -> None:
        self.codes = codes

    def __contains__(self, image_id: object) -> bool:
        return image_id == "img"

    def get(self, image_id: str) -> torch.Tensor:
        return self.codes


class _FakeTrainer:
    estimated_stepping_batches = 10


def test_codebook_rows_keep_the_codebooks_geometry() -> None:
    from llmcxr.base_model import TinyLMConfig, build_tiny_model
    from llmcxr.image_tokens import add_image_tokens, init_rows_from_codebook

    model, tok = build_tiny_model(TinyLMConfig())
    token_map = add_image_tokens(model, tok, codebook_size=32, tokens_per_image=4)
    embed = model.get_input_embeddings().weight
    markers = embed[[token_map.start_id, token_map.end_id]].clone()
    codebook = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    init_rows_from_codebook(model, token_map, codebook, scale=0.5)
    rows = embed[token_map.first_code_id : token_map.first_code_id + 32].detach()
    near = torch.pdist(codebook)
    far = torch.pdist(rows)
    corr = torch.corrcoef(torch.stack([near, far]))[0, 1]
    assert corr > 0.9  # pairwise distances survive the projection
    assert torch.equal(embed[[token_map.start_id, token_map.end_id]], markers)
    text_std = embed[: token_map.first_code_id].std(0)
    assert torch.allclose(rows.std(0), 0.5 * text_std, rtol=1e-3)
    with pytest.raises(ValueError, match="codebook has 31 entries"):
        init_rows_from_codebook(model, token_map, codebook[:31])


def test_new_model_starts_from_the_codebook_when_asked(folder: Path) -> None:
    from llmcxr.base_model import BaseModelSpec, TinyLMConfig

    tokenizer = str(folder / "image_tokenizer")
    kwargs = {"base": BaseModelSpec(tiny=TinyLMConfig())}
    mean = LLMCXRModule(image_tokenizer=tokenizer, model=ModelSettings(**kwargs))
    book = LLMCXRModule(
        image_tokenizer=tokenizer, model=ModelSettings(new_token_init="codebook", **kwargs)
    )
    ids = list(book.token_map.image_token_ids)
    rows = book.model.get_input_embeddings().weight[ids].detach()
    assert not torch.allclose(rows, mean.model.get_input_embeddings().weight[ids])
    codebook = _codebook(tokenizer)
    distances = torch.stack([torch.pdist(codebook), torch.pdist(rows)])
    assert torch.corrcoef(distances)[0, 1] > 0.8


def _codebook(path: str) -> torch.Tensor:
    from vqgan import CXRTokenizer

    return CXRTokenizer.from_pretrained(path).codebook_vectors()


@pytest.mark.parametrize(
    ("task", "instruction"),
    [
        ("cxr_to_report", "Write the radiology report for this chest X-ray."),
        ("vqa", "Is there a pleural effusion?"),
    ],
)
def test_training_prompt_ids_equal_inference_prompt_ids(
    llm: LLMCXR, task: str, instruction: str
) -> None:
    """What the model is trained to continue is exactly what inference feeds it."""
    encoder = RecordEncoder(llm.text_tokenizer, llm.token_map, llm.prompt_format)
    codes = torch.arange(llm.token_map.tokens_per_image)
    record = {
        "id": "r",
        "task": task,
        "instruction": instruction,
        "input": IMAGE_PLACEHOLDER,
        "response": "Yes." if task == "vqa" else REPORT,
        "image_id": "img",
    }
    example = encoder.encode(record, codes)
    prompt = [t for t, label in zip(example.input_ids, example.labels) if label == -100]
    inference = llm.encode_prompt(
        llm.prompt_format.render(instruction, IMAGE_PLACEHOLDER), [codes]
    ).ids
    assert prompt == inference


def test_each_dataloader_worker_draws_its_own_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers hold copies of the dataset: their report drops must not repeat one another."""
    cond, uncond = EncodedExample([1, 2], [1, 2], "report_to_cxr"), EncodedExample([3], [3], "x")
    cond.unconditional = uncond
    draws = []
    for worker in (0, 1):
        data = EncodedDataset([cond] * 200, cfg_drop=0.5, seed=0)
        info = type("Info", (), {"id": worker})()
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
        draws.append([data[i] is uncond for i in range(200)])
    assert draws[0] != draws[1]
