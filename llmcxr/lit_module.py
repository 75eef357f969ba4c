"""LightningModule for LLM-CXR instruction tuning: full fine-tune or LoRA over a causal LM.

The model is the base LM with image tokens added (or a stage-1 result via ``init_from``). With
LoRA the new token rows (input and output embeddings, tied or not) are trained through peft's
``trainable_token_indices``. Checkpoints carry a plain-data ``llmcxr`` entry so
`llmcxr.model_folder.load_model_folder` can load them with ``weights_only=True``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torchmetrics import MeanMetric

from llmcxr.base_model import BaseModelSpec, load_base_model
from llmcxr.data import RecordEncoder
from llmcxr.image_tokens import add_image_tokens, init_rows_from_codebook
from llmcxr.model_folder import (
    CHECKPOINT_KEY,
    GenerationDefaults,
    apply_lora,
    checkpoint_payload,
    load_model_folder,
    save_model_folder,
)


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft ``LoraConfig``); the image-token rows are always trained."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or ``all-linear``."""

    def to_peft_kwargs(self, new_token_ids: list[int]) -> dict[str, Any]:
        """Plain LoraConfig kwargs (JSON types, stored in checkpoints)."""
        return {
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "trainable_token_indices": {"embed_tokens": list(new_token_ids)},
        }


@dataclass
class OptimizerSettings:
    """AdamW with linear warm-up then cosine decay (per optimizer step)."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of ``lr``."""
    new_token_lr_scale: float = 1.0
    """Learning rate of the new image-token rows (peft ``trainable_token_indices``) as a multiple
    of ``lr``: the 1,026 rows start untrained while the LoRA only nudges a pretrained model, so
    they can take bigger steps. Needs LoRA (a full fine-tune cannot split the embedding)."""


@dataclass
class ModelSettings:
    """What to train."""

    base: BaseModelSpec = field(default_factory=BaseModelSpec)
    lora: LoraSettings | None = None
    """LoRA adapter; ``null`` for a full fine-tune."""
    gradient_checkpointing: bool = False
    new_token_noise_std: float = 0.1
    """Noise (relative to the existing rows' std) added to the mean-initialised image rows."""
    new_token_init: Literal["mean", "codebook"] = "mean"
    """How a new model's image-code rows start: ``mean`` (mean text row plus noise) or
    ``codebook`` (the image tokenizer's codebook projected to the LLM width, see
    `llmcxr.image_tokens.init_rows_from_codebook`). Ignored with ``init_from``."""
    new_token_init_scale: float = 0.5
    """Per-dimension spread of ``codebook`` rows, as a multiple of the text rows' std."""


@dataclass
class LossSettings:
    """How response tokens are weighted in the training loss.

    A written response's first tokens carry its decision ("No acute ...", "Right pleural
    effusion", "Yes"); the rest mostly follows the report prior. Under a plain mean those few
    tokens get a few percent of the gradient, and the shipped model's report likelihoods move by
    only 0.08 nats between films (benchmarks/results/report_sampling/README.md). Weighting them
    up asks the model to spend its updates on reading the film. Drawing responses (image codes)
    keep weight 1.
    """

    lead_text_tokens: int = 0
    """How many of the first supervised tokens of each written (not drawn) response to weight."""
    lead_text_weight: float = 1.0
    """Their weight; every other supervised token keeps 1. The weighted sum is divided by the
    supervised token count, so the other tokens' gradient is the same as with no weighting."""

    film_contrast_weight: float = 0.0
    """Weight of the film-contrast term (0: off). Each row that reads a pooled film
    (``film_group``) is scored again with the film of another row whose labels differ; the term
    is ``relu(film_contrast_margin - (NLL with the other film - NLL with its own))`` over the
    whole response, summed over rows and divided by the supervised token count (as the main
    term). It asks the response to be likelier under its own film, which a plain loss can meet
    from the report prior alone (the shipped model's reports move by 0.08 nats between films).
    It costs one more forward and backward pass over those rows."""
    film_contrast_margin: float = 1.0
    """Wanted gap, in nats over the whole response, between the other film's NLL and its own."""
    film_contrast_vqa: bool = False
    """Also contrast yes/no VQA rows (``contrast_abnormal``): each is scored again with the film of
    another row of the status its answer is wrong for ("Is this film normal? Yes." with an
    abnormal film; "Is there X? Yes." with a normal one). Report rows alone leave the answers free
    to follow the question's prior, and did: a report-only contrast run read the films better in
    its reports while P("Yes.") to "Is this film normal?" ran against the labels (AUROC 0.378,
    benchmarks/results/c20nih3_cpu/README.md). Needs ``film_contrast_weight`` > 0."""

    draw_contrast_weight: float = 0.0
    """Weight of the drawing-contrast term (0: off). Each report->CXR row with a pooled report
    (``draw_group``) has its image scored again under the prompt (report) of another drawing row
    of the batch whose pool differs; the term is ``relu(draw_contrast_margin - (NLL under the
    other report - NLL under its own))`` over the whole response, summed over rows and divided by
    the supervised token count. The film contrast's mirror: the plain loss lets the drawing
    follow the image prior whatever the report says, and the shipped model's drawings agree
    with their reports' labels barely above chance (macro AUROC 0.573, real films 0.708;
    benchmarks/results/vqac_cpu/README.md). Costs one more forward and backward pass over those
    rows."""
    draw_contrast_margin: float = 5.0
    """Wanted gap, in nats over the whole drawing (64 codes by default), between the other report's
    NLL and its own."""

    def __post_init__(self) -> None:
        if isinstance(self.lead_text_tokens, bool) or self.lead_text_tokens < 0:
            raise ValueError(f"loss.lead_text_tokens must be >= 0, got {self.lead_text_tokens!r}")
        if not self.lead_text_weight > 0:
            raise ValueError(f"loss.lead_text_weight must be above 0, got {self.lead_text_weight}")
        for kind in ("film", "draw"):
            weight, margin = f"{kind}_contrast_weight", f"{kind}_contrast_margin"
            if not getattr(self, weight) >= 0:
                raise ValueError(f"loss.{weight} must be >= 0, got {getattr(self, weight)}")
            if not getattr(self, margin) > 0:
                raise ValueError(f"loss.{margin} must be above 0, got {getattr(self, margin)}")
        if self.film_contrast_vqa and not self.film_contrast_weight > 0:
            raise ValueError("loss.film_contrast_vqa needs loss.film_contrast_weight above 0")

    @property
    def active(self) -> bool:
        """Whether the lead-token weighting changes the loss."""
        return self.lead_text_tokens > 0 and self.lead_text_weight != 1.0

    @property
    def contrast(self) -> bool:
        """Whether the film-contrast term is added."""
        return self.film_contrast_weight > 0

    @property
    def draw_contrast(self) -> bool:
        """Whether the drawing-contrast term is added."""
        return self.draw_contrast_weight > 0


class LLMCXRModule(L.LightningModule):
    """Trains the LLM on instruction sequences (loss on response tokens only)."""

    def __init__(
        self,
        image_tokenizer: str | None = None,
        model: ModelSettings | None = None,
        optimizer: OptimizerSettings | None = None,
        init_from: str | None = None,
        generation: GenerationDefaults | None = None,
        loss: LossSettings | None = None,
    ) -> None:
        """
        Args:
            image_tokenizer: CXRTokenizer folder or vqgan ``.ckpt``; optional with ``init_from``
                (then the stage-1 model's image tokenizer is used).
            model: base model, LoRA, gradient checkpointing.
            optimizer: learning rate schedule and AdamW settings.
            init_from: start from this model folder or llmcxr ``.ckpt`` (stage 2 from stage 1).
            generation: sampling defaults written into exported model folders.
            loss: response-token weighting of the training loss (plain mean by default).
        """
        super().__init__()
        self.settings = model or ModelSettings()
        self.optim = optimizer or OptimizerSettings()
        self.generation = generation or GenerationDefaults()
        self.loss_settings = loss or LossSettings()
        self.init_from = init_from
        self.lora_kwargs: dict[str, Any] | None = None
        self.continued_adapter = False
        if init_from:
            llm, tokenizer_path = self._continue(init_from, image_tokenizer)
        elif image_tokenizer:
            llm, tokenizer_path = self._new_llm(image_tokenizer), image_tokenizer
        else:
            raise ValueError("model.image_tokenizer is required unless init_from is set")
        self.image_tokenizer_path = str(Path(tokenizer_path).resolve())
        llm.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
        if self.settings.gradient_checkpointing:
            llm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            llm.config.use_cache = False
        if self.settings.lora is not None:
            new_ids = [
                *self.token_map.image_token_ids,
                self.token_map.start_id,
                self.token_map.end_id,
            ]
            self.lora_kwargs = self.settings.lora.to_peft_kwargs(new_ids)
            if not self.continued_adapter:
                llm = apply_lora(llm, self.lora_kwargs)
        self.model = llm
        self.val_loss_image = MeanMetric(nan_strategy="ignore")
        self.val_loss_text = MeanMetric(nan_strategy="ignore")
        self._batch_start = 0.0

    def _continue(self, init_from: str, image_tokenizer: str | None) -> tuple[Any, str]:
        """The LLM of a model folder or checkpoint (stage 2), and its image tokenizer's path.

        With LoRA, a LoRA model folder's adapter keeps training on the same base (not merged),
        so the stage-2 export is still adapter + base reference: small to ship. Weights are
        loaded in fp32.
        """
        from vqgan import CXRTokenizer

        # fp32 whatever the folder stores (an fp16 export would make a `32-true` CPU run compute
        # in fp16, many times slower); Lightning's precision setting lowers it where asked.
        parts = load_model_folder(
            init_from, dtype=torch.float32, merge_adapter=self.settings.lora is None
        )
        self.continued_adapter = hasattr(parts.model, "peft_config")
        if self.continued_adapter:
            self._check_same_lora(parts.model, init_from)
            self.settings.base = BaseModelSpec.from_dict(parts.manifest["base_model"])
        if image_tokenizer and (
            CXRTokenizer.from_pretrained(image_tokenizer).fingerprint
            != parts.image_tokenizer.fingerprint
        ):
            raise ValueError(
                f"image_tokenizer {image_tokenizer} differs from the one {init_from} was "
                "trained with; leave image_tokenizer unset to reuse it"
            )
        self.text_tokenizer, self.token_map = parts.text_tokenizer, parts.token_map
        self.prompt_format = parts.prompt_format
        self.image_tokenizer_fingerprint = parts.image_tokenizer.fingerprint
        return parts.model, image_tokenizer or _image_tokenizer_source(init_from, parts.manifest)

    def _new_llm(self, image_tokenizer: str) -> Any:
        """The base LLM with rows for the image tokens of `image_tokenizer` (stage 1)."""
        from instructions.prompt_format import PromptFormat
        from vqgan import CXRTokenizer

        cxr = CXRTokenizer.from_pretrained(image_tokenizer)
        llm, self.text_tokenizer = load_base_model(self.settings.base)
        self.token_map = add_image_tokens(
            llm,
            self.text_tokenizer,
            cxr.codebook_size,
            cxr.tokens_per_image,
            noise_std=self.settings.new_token_noise_std,
        )
        if self.settings.new_token_init == "codebook":
            init_rows_from_codebook(
                llm, self.token_map, cxr.codebook_vectors(), self.settings.new_token_init_scale
            )
        self.prompt_format = PromptFormat()
        self.image_tokenizer_fingerprint = cxr.fingerprint
        return llm

    def _check_same_lora(self, model: Any, init_from: str) -> None:
        """A continued adapter keeps its shape: this run's LoRA settings must match it."""
        saved = model.peft_config["default"]
        wanted = self.settings.lora
        assert wanted is not None
        if (saved.r, saved.lora_alpha) != (wanted.r, wanted.alpha):
            raise ValueError(
                f"init_from={init_from} holds a LoRA adapter with r={saved.r}, "
                f"alpha={saved.lora_alpha}; this run asks for r={wanted.r}, alpha={wanted.alpha}. "
                "Use the same LoRA settings to continue it, or model.lora: null to fine-tune fully"
            )

    # ------------------------------------------------------------------ data side
    def record_encoder(self) -> RecordEncoder:
        """How the datamodule turns records into this model's token ids."""
        return RecordEncoder(self.text_tokenizer, self.token_map, self.prompt_format)

    # ------------------------------------------------------------------ steps
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the supervised (response) tokens, weighted as `loss` says, plus
        the film- and drawing-contrast terms when `loss` asks for them."""
        return self._losses(batch)["loss"]

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training loss, and with a contrast its term and the rows' mean gaps."""
        settings = self.loss_settings
        if not settings.active and not settings.contrast and not settings.draw_contrast:
            out = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            )
            return {"loss": out.loss}
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        loss = weighted_token_loss(logits, batch["labels"], self.token_map, settings)
        out = {"loss": loss}
        if settings.draw_contrast:
            out.update(self._draw_contrast(batch, logits))
            out["loss"] = loss + settings.draw_contrast_weight * out["draw_contrast"]
        if not settings.contrast:
            return out
        loss = out["loss"]
        # a batch with no pair of films to swap logs 0 and NaN, not the last batch's values
        nan = loss.new_full((), float("nan"))
        out.update(contrast=loss.new_zeros(()), film_gap=nan)
        pairs = film_swap_pairs(batch.get("film_group"))
        answers: list[tuple[int, int]] = []
        if settings.film_contrast_vqa:
            out["vqa_gap"] = nan
            answers = status_swap_pairs(batch.get("film_abnormal"), batch.get("contrast_abnormal"))
        if pairs or answers:
            gap = self._film_gap(batch, logits, pairs + answers)
            term = contrast_hinge(gap, settings.film_contrast_margin, batch["labels"])
            out.update(loss=loss + settings.film_contrast_weight * term, contrast=term)
            if pairs:
                out["film_gap"] = gap[: len(pairs)].detach().mean()
            if answers:
                out["vqa_gap"] = gap[len(pairs) :].detach().mean()
        return out

    def _draw_contrast(
        self, batch: dict[str, torch.Tensor], logits: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The drawing-contrast hinge (before its weight) and the pairs' mean gap (NaN and 0
        without a pair: a batch with one drawing group logs no stale value)."""
        pairs = film_swap_pairs(batch.get("draw_group"))
        if not pairs:
            return {
                "draw_contrast": logits.new_zeros(()),
                "draw_gap": logits.new_full((), math.nan),
            }
        rows = [row for row, _ in pairs]
        ids, mask, labels = swap_prompts(
            batch["input_ids"], batch["labels"], batch["attention_mask"], pairs
        )
        other = self.model(input_ids=ids, attention_mask=mask).logits
        own = next_token_losses(logits[rows], batch["labels"][rows]).sum(dim=1)
        gap = next_token_losses(other, labels).sum(dim=1) - own
        margin = self.loss_settings.draw_contrast_margin
        return {
            "draw_contrast": contrast_hinge(gap, margin, batch["labels"]),
            "draw_gap": gap.detach().mean(),
        }

    def _film_gap(
        self, batch: dict[str, torch.Tensor], logits: torch.Tensor, pairs: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Per pair (row, other): the row's response NLL with the other row's film minus with its
        own (summed over the response's tokens)."""
        rows = [row for row, _ in pairs]
        swapped = swap_films(batch["input_ids"], batch["labels"], pairs, self.token_map)
        other = self.model(input_ids=swapped, attention_mask=batch["attention_mask"][rows]).logits
        own = next_token_losses(logits[rows], batch["labels"][rows]).sum(dim=1)
        return next_token_losses(other, batch["labels"][rows]).sum(dim=1) - own

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        size = batch["input_ids"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        for name in ("contrast", "film_gap", "vqa_gap", "draw_contrast", "draw_gap"):
            if name in losses:
                self.log(f"train/{name}", losses[name], batch_size=size)
        return losses["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        seconds = time.perf_counter() - self._batch_start
        tokens = batch["attention_mask"].sum().item()
        self.log("train/tokens_per_s", tokens / max(seconds, 1e-9), prog_bar=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        terms = split_token_losses(logits, batch["labels"], self.token_map)
        size = batch["input_ids"].shape[0]
        self.log("val/loss", terms["loss"], prog_bar=True, sync_dist=True, batch_size=size)
        # Image-code and text tokens apart: drawing and writing learn at different speeds, and the
        # mean over all tokens hides which one moved. Token-weighted means, updated on every rank
        # and batch (a batch without image targets adds weight 0), so DDP ranks always reduce the
        # same metrics together.
        for name, metric in (("image", self.val_loss_image), ("text", self.val_loss_text)):
            metric.update(terms[f"loss_{name}"], weight=terms[f"{name}_tokens"])
            self.log(f"val/loss_{name}", metric, on_step=False, on_epoch=True)
        return terms["loss"]

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        rows = [p for n, p in named if "trainable_tokens" in n]
        rest = [p for n, p in named if "trainable_tokens" not in n]
        if self.optim.new_token_lr_scale != 1.0 and not rows:
            raise ValueError(
                "optimizer.new_token_lr_scale needs LoRA (model.lora): a full fine-tune has no "
                "separate image-token rows to scale"
            )
        groups = [
            {"params": [p for p in rest if p.ndim >= 2], "weight_decay": self.optim.weight_decay},
            {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0},
            {
                "params": rows,
                "weight_decay": 0.0,
                "lr": self.optim.lr * self.optim.new_token_lr_scale,
            },
        ]
        opt = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=self.optim.lr, betas=tuple(self.optim.betas)
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = get_cosine_with_min_lr_schedule_with_warmup(
            opt,
            num_warmup_steps=min(self.optim.warmup_steps, total),
            num_training_steps=total,
            min_lr_rate=self.optim.min_lr_ratio,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------ persistence
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_payload(
            model=self.model,
            text_tokenizer=self.text_tokenizer,
            token_map=self.token_map,
            prompt_format=self.prompt_format,
            image_tokenizer_path=self.image_tokenizer_path,
            base_model=self.settings.base,
            lora=self.lora_kwargs,
            generation_defaults=self.generation,
            image_tokenizer_fingerprint=self.image_tokenizer_fingerprint,
        )

    def export(
        self,
        path: str | Path,
        overwrite: bool = True,
        dtype: torch.dtype | None = None,
        **training_info: Any,
    ) -> Path:
        """Write a model folder with the current weights (LoRA saved as adapter when possible);
        ``dtype`` casts the stored LLM weights (e.g. float16 to ship)."""
        from vqgan import CXRTokenizer

        reproducible_base = (
            self.init_from is None or self.continued_adapter
        ) and self.settings.base.reproducible
        return save_model_folder(
            path,
            model=self.model,
            text_tokenizer=self.text_tokenizer,
            image_tokenizer=CXRTokenizer.from_pretrained(self.image_tokenizer_path),
            token_map=self.token_map,
            prompt_format=self.prompt_format,
            base_model=self.settings.base if reproducible_base else None,
            generation_defaults=self.generation,
            training_info={
                "init_from": self.init_from,
                "lora": self.lora_kwargs is not None,
                "global_step": int(self.global_step),
                "settings": asdict(self.settings),
                "loss": asdict(self.loss_settings),
                **training_info,
            },
            overwrite=overwrite,
            dtype=dtype,
            new_token_noise_std=self.settings.new_token_noise_std,
        )


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each position's next-token target, in fp32 (0 where it is -100)."""
    targets = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view_as(targets)


def split_token_losses(
    logits: torch.Tensor, labels: torch.Tensor, token_map: Any
) -> dict[str, torch.Tensor]:
    """Next-token cross-entropy over all supervised tokens, and over image-code targets and text
    targets apart (sums divided by counts; counts returned as ``*_tokens``)."""
    targets = labels[:, 1:]
    supervised = targets != -100
    per_token = next_token_losses(logits, labels)
    is_image = token_map.is_code_id(targets) & supervised
    out: dict[str, torch.Tensor] = {}
    for name, mask in (("", supervised), ("_image", is_image), ("_text", supervised & ~is_image)):
        count = mask.sum()
        out[f"loss{name}"] = (per_token * mask).sum() / count.clamp(min=1)
        out[f"{name.lstrip('_') or 'all'}_tokens"] = count
    return out


def lead_text_weights(
    targets: torch.Tensor, token_map: Any, settings: LossSettings
) -> torch.Tensor:
    """Per-target weights: ``lead_text_weight`` on the first ``lead_text_tokens`` supervised
    targets of rows whose response is written (no image-code or image-start target), 1 on other
    supervised targets, 0 where the target is ignored (-100)."""
    supervised = targets != -100
    drawn = (token_map.is_code_id(targets) | (targets == token_map.start_id)) & supervised
    written_rows = ~drawn.any(dim=1, keepdim=True)
    lead = supervised & (supervised.cumsum(dim=1) <= settings.lead_text_tokens) & written_rows
    weights = supervised.float()
    return torch.where(lead, torch.full_like(weights, settings.lead_text_weight), weights)


def weighted_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, token_map: Any, settings: LossSettings
) -> torch.Tensor:
    """Next-token cross-entropy weighted by `lead_text_weights`, summed and divided by the number
    of supervised targets (so with all weights 1 it is the plain mean)."""
    targets = labels[:, 1:]
    weights = lead_text_weights(targets, token_map, settings)
    per_token = next_token_losses(logits, labels)
    return (per_token * weights).sum() / (targets != -100).sum().clamp(min=1)


def contrast_hinge(gap: torch.Tensor, margin: float, labels: torch.Tensor) -> torch.Tensor:
    """``relu(margin - gap)`` summed over the contrasted rows and divided by the batch's supervised
    token count, the main term's divisor (film and drawing contrasts alike)."""
    return torch.relu(margin - gap).sum() / (labels[:, 1:] != -100).sum().clamp(min=1)


def film_swap_pairs(groups: torch.Tensor | None) -> list[tuple[int, int]]:
    """(row, other) for each row with a group (>= 0; film or drawing groups): `other` is the next
    row, cyclically, whose group is another one (rows whose groups all match get none)."""
    if groups is None:
        return []
    values = groups.tolist()
    rows = [i for i, g in enumerate(values) if g >= 0]
    return _next_fitting_rows(rows, rows, lambda row, j: values[j] != values[row])


def status_swap_pairs(
    abnormal: torch.Tensor | None, wanted: torch.Tensor | None
) -> list[tuple[int, int]]:
    """(row, other) for each row that asks for a film status (``wanted`` >= 0): `other` is the next
    row, cyclically, whose film has that status (``abnormal``; rows with none found get none)."""
    if abnormal is None or wanted is None:
        return []
    status, wants = abnormal.tolist(), wanted.tolist()
    rows = [i for i, w in enumerate(wants) if w >= 0]
    return _next_fitting_rows(rows, range(len(status)), lambda row, j: status[j] == wants[row])


def _next_fitting_rows(
    rows: list[int], candidates: Iterable[int], fits: Callable[[int, int], bool]
) -> list[tuple[int, int]]:
    """(row, other) for each of `rows`: `other` is the first of `candidates` after it, cyclically
    in batch order, that ``fits(row, other)``; rows with none get none."""
    candidates = list(candidates)
    pairs = []
    for row in rows:
        later = [j for j in candidates if j > row] + [j for j in candidates if j < row]
        other = next((j for j in later if fits(row, j)), None)
        if other is not None:
            pairs.append((row, other))
    return pairs


def swap_films(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    pairs: list[tuple[int, int]],
    token_map: Any,
) -> torch.Tensor:
    """The ids of each pair's row with its prompt's image codes replaced by the other row's
    (one film each, so the same number of codes; the rest of the row is unchanged)."""
    prompt_codes = token_map.is_code_id(input_ids) & (labels == -100)
    out = input_ids[[row for row, _ in pairs]].clone()
    for k, (row, other) in enumerate(pairs):
        mine, theirs = prompt_codes[row], prompt_codes[other]
        if mine.sum() != theirs.sum() or not mine.any():
            raise ValueError(
                f"film contrast: rows {row} and {other} hold {int(mine.sum())} and "
                f"{int(theirs.sum())} prompt image codes; each must hold one film"
            )
        out[k, mine] = input_ids[other, theirs]
    return out


def swap_prompts(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    pairs: list[tuple[int, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, attention mask and labels, right-padded, of each pair's row with its prompt (every
    token before its first supervised one) replaced by the other row's prompt; the row's
    response and its labels follow unchanged. Prompts differ in length, so the rows are
    rebuilt rather than edited in place."""
    built = []
    for row, other in pairs:
        supervised = (labels[row] != -100).nonzero()
        if not len(supervised) or not (labels[other] != -100).any():
            raise ValueError(f"prompt swap: rows {row} and {other} must each have a response")
        start, end = int(supervised[0]), int(attention_mask[row].sum())
        prompt = int((labels[other] != -100).nonzero()[0])
        built.append((input_ids[other, :prompt], input_ids[row, start:end], labels[row, start:end]))
    width = max(len(p) + len(r) for p, r, _ in built)
    ids = input_ids.new_zeros((len(built), width))
    mask = attention_mask.new_zeros((len(built), width))
    out_labels = labels.new_full((len(built), width), -100)
    for k, (prompt, response, response_labels) in enumerate(built):
        n = len(prompt) + len(response)
        ids[k, :n] = torch.cat([prompt, response])
        mask[k, :n] = 1
        out_labels[k, len(prompt) : n] = response_labels
    return ids, mask, out_labels


def _image_tokenizer_source(init_from: str, manifest: dict[str, Any]) -> str:
    """Where the image tokenizer of a model folder or checkpoint lives."""
    path = Path(init_from)
    return str(path / "image_tokenizer") if path.is_dir() else str(manifest["image_tokenizer"])
