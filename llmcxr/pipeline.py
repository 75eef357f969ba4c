"""`LLMCXR`: the user-facing inference API (report, generate images, ask, chat).

One loaded model folder (or training checkpoint) answers all three LLM-CXR tasks:
- CXR -> report: the image's tokens go in the prompt's input; image tokens are banned from the
  answer, which stops at the prompt format's end marker or EOS.
- report -> CXR: the prompt ends with the image start marker (a forced prefix), then exactly
  `tokens_per_image` code tokens are sampled under a constraint (`llmcxr.decoding`) and decoded
  by the VQ-GAN.
- VQA / chat: the question is the instruction, the image the input (as LLM-CXR's VQA records).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from cxrcommon.batching import chunks
from instructions import IMAGE_PLACEHOLDER, default_instruction
from llmcxr.decoding import (
    ProgressCallback,
    PromptPrefix,
    Sampling,
    answer_logprobs,
    generate_image_codes,
    generate_text,
    is_guided,
    runs_lean,
)
from llmcxr.devices import (
    WEIGHT_MODES,
    quantize_fp16,
    quantize_int8,
    resolve_device,
    resolve_dtype,
    resolve_quantize,
    speed_mode,
)
from llmcxr.image_tokens import encode_text_with_images

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from instructions import PromptFormat
    from llmcxr.drafting import PhraseDrafts
    from llmcxr.image_tokens import ImageTokenMap
    from llmcxr.lean_llama import LeanLlama, LeanTokenizer
    from llmcxr.model_folder import GenerationDefaults
    from vqgan import CXRTokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
NO_DEFAULT_MODEL = (
    "no default model ships with llmcxr yet: pass --model PATH (a model folder or a training .ckpt "
    "from `llmcxr train llm -c configs/llmcxr/<name>.yaml`)"
)

ImageInput = str | Path | np.ndarray | torch.Tensor


class ModelNotFoundError(FileNotFoundError):
    """No model at the given path, or no default model shipped."""


class PromptTooLongError(ValueError):
    """A prompt plus its answer would not fit in the model's context."""


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one prompt, before padding."""

    ids: list[int]


def default_model_path() -> Path:
    """The embedded model folder, or `ModelNotFoundError` saying none ships and how to pass one."""
    if DEFAULT_MODEL_DIR.is_dir() and any(DEFAULT_MODEL_DIR.iterdir()):
        return DEFAULT_MODEL_DIR
    raise ModelNotFoundError(NO_DEFAULT_MODEL)


class LLMCXR:
    """A loaded LLM-CXR model: reads chest X-rays into reports and draws them from reports."""

    def __init__(
        self,
        model: PreTrainedModel | LeanLlama,
        text_tokenizer: PreTrainedTokenizerBase | LeanTokenizer,
        image_tokenizer: CXRTokenizer,
        token_map: ImageTokenMap,
        prompt_format: PromptFormat,
        generation_defaults: GenerationDefaults,
        drafts: PhraseDrafts | None = None,
    ) -> None:
        self.model = model.eval()
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer
        self.token_map = token_map
        self.prompt_format = prompt_format
        self.generation_defaults = generation_defaults
        self.device = next(model.parameters()).device
        pad = text_tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else text_tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("the text tokenizer has neither a pad nor an EOS token")
        self.context_length = _context_length(model)
        self.quantization = speed_mode(model)
        self._prefixes: dict[tuple[str, str], PromptPrefix | None] = {}
        self.drafts = drafts
        """Draft tokens for speculative decoding of single answers (`llmcxr.drafting`); None:
        one step per token. Either way an answer follows the model's distribution."""

    def quantize(self, mode: str = "auto") -> LLMCXR:
        """Apply a speed mode after loading and return self.

        CPU only: `"int8"` quantises the Linear layers but `llmcxr.devices.INT8_SKIP` to int8
        weights with dynamic activation quantisation (`llmcxr.devices.quantize_int8`); `"fp16"`
        stores them but the output head in fp16 and computes in fp32
        (`llmcxr.devices.quantize_fp16`). Both start from fp32 weights: a model loaded in bf16
        or fp16 is an error, since its weights are already rounded (`from_pretrained` with
        ``quantize`` loads fp32 for these modes). `"none"` keeps the model as loaded; `"auto"` is
        `llmcxr.devices.CPU_AUTO_QUANTIZE` on a CPU and `"none"` elsewhere. A quantised model
        stays as it is (its fp32 weights are gone); asking it for another mode is an error.
        """
        chosen = resolve_quantize(mode, self.device)
        if chosen == "none" or chosen == self.quantization:
            return self
        if self.quantization != "none":
            raise ValueError(
                f"the model is already in {self.quantization} mode; load it again for {chosen}"
            )
        if self.model.dtype != torch.float32:
            raise ValueError(
                f"{chosen} mode starts from fp32 weights, but the model was loaded in "
                f"{str(self.model.dtype).removeprefix('torch.')}: load it in float32"
            )
        (quantize_int8 if chosen == "int8" else quantize_fp16)(self.model)
        self.quantization = chosen
        logger.info("stored the LLM's Linear layers in %s", chosen)
        return self

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str | None = None,
        base_model: str | None = None,
        cache: bool = True,
        quantize: str = "auto",
        engine: str = "auto",
    ) -> LLMCXR:
        """Load a model folder or a training `.ckpt`; `None` = the embedded default model.

        `device` "auto" picks CUDA, then MPS, then CPU; `dtype` None picks bf16 where it is fast
        (CUDA, CPUs with native bf16) and fp32 otherwise (see `llmcxr.devices`), and fp32 for the
        int8 / fp16 speed modes, which are made from fp32 weights. `base_model` is
        the base LLM (a folder) of a LoRA model folder whose base does not ship on PyPI. A LoRA
        model is merged once and kept in the user cache (`llmcxr.merged_cache`); `cache` False
        merges it in memory instead. `quantize` is the speed mode (`LLMCXR.quantize`). `engine`
        "auto" runs a merged plain-Llama model on a CPU without importing transformers
        (`llmcxr.lean_llama`; the first load of a LoRA model merges it with transformers), and
        "transformers" always uses transformers.
        """
        from llmcxr.model_folder import load_model_folder

        path = default_model_path() if path is None else Path(path)
        if not path.exists():
            raise ModelNotFoundError(
                f"model not found: {path} (give a model folder or a training .ckpt)"
            )
        torch_device = resolve_device(device)
        chosen = resolve_quantize(quantize, torch_device)
        # int8 / fp16 weights are made from fp32 ones and compute in fp32: loading bf16 first
        # would round every weight to bf16 on the way
        weight_mode = chosen in WEIGHT_MODES
        torch_dtype = resolve_dtype(
            "float32" if weight_mode and dtype in (None, "auto") else dtype, torch_device
        )
        if weight_mode and torch_dtype != torch.float32:
            raise ValueError(
                f"--quantize {chosen} computes in float32 from float32 weights; "
                f"--dtype {dtype} would round them first: leave --dtype out or use float32"
            )
        parts = load_model_folder(
            path,
            device=torch_device,
            dtype=torch_dtype,
            base_model=base_model,
            trust_manifest_base=False,
            cache=cache,
            engine=engine,
        )
        logger.info("loaded %s on %s (%s)", path, torch_device, torch_dtype)
        llm = cls(**parts.model_parts()).quantize(chosen)
        if llm.quantization == "none" and hasattr(llm.model, "pack"):
            llm.model.pack()  # the lean engine's packed CPU weights (`LeanLlama.pack`)
        return llm

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, text: str, image_codes: Sequence[torch.Tensor] = ()) -> EncodedPrompt:
        """Tokenise prompt text with one `<img_start> codes <img_end>` span per `<image>`,
        exactly as training does (`llmcxr.image_tokens.encode_text_with_images`)."""
        return EncodedPrompt(
            encode_text_with_images(
                text, image_codes, self.text_tokenizer, self.token_map, IMAGE_PLACEHOLDER
            )
        )

    def _check_fits(self, prompt: EncodedPrompt, new_tokens: int) -> None:
        if self.context_length is not None and len(prompt.ids) + new_tokens > self.context_length:
            raise PromptTooLongError(
                f"prompt is too long: {len(prompt.ids)} tokens + {new_tokens} new tokens exceed "
                f"the model's context of {self.context_length} tokens"
            )

    def _pad(self, prompts: Sequence[EncodedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad (decoder-only models continue from the right edge) -> ids, mask [B, T]."""
        rows = [torch.tensor(p.ids, dtype=torch.long) for p in prompts]
        ids = pad_sequence(
            rows, batch_first=True, padding_value=self.pad_token_id, padding_side="left"
        )
        mask = pad_sequence(
            [torch.ones_like(r) for r in rows], batch_first=True, padding_side="left"
        )
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ images in
    def encode_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Paths or arrays -> VQ-GAN codes [B, N] (paths read with `vqgan.read_cxr`)."""
        pixels = torch.stack([self._prepare(image) for image in images])
        return self.image_tokenizer.encode(pixels.to(self.image_tokenizer.device)).cpu()

    def _prepare(self, image: ImageInput) -> torch.Tensor:
        from vqgan import prepare_image, read_cxr

        size = self.image_tokenizer.image_size
        if isinstance(image, (str, Path)):
            return prepare_image(read_cxr(image), size)
        array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else image
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise ValueError(
                f"an image array must be [H, W] or [1, H, W], got shape {list(array.shape)}"
            )
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"image values must be in [0, 1], got [{array.min():.3f}, {array.max():.3f}]"
            )
        return prepare_image(array, size)

    # ------------------------------------------------------------------ text out
    def generate_report(
        self,
        images: Sequence[ImageInput],
        *,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 8,
        instruction: str | None = None,
        guidance_scale: float | None = None,
        draft: bool = True,
    ) -> list[str]:
        """One report per image; image tokens are banned from the answer. `guidance_scale` > 1
        contrasts each step with the same instruction without the image (classifier-free
        guidance on log-probs), pushing the report toward what the image changes. `draft`:
        on the lean engine, unguided reports decode speculatively from the model's draft bank
        where it has one (`self.drafts`; the same distribution, other draws for a seed), each on
        its own after its batch is encoded; False: a batch decodes together, one step per
        token."""
        instruction = instruction or default_instruction("cxr_to_report")
        text = self.prompt_format.render(instruction, IMAGE_PLACEHOLDER)
        opening = self.prompt_format.opening(instruction)
        guided = is_guided(guidance_scale)
        # The unconditional branch: the instruction with no image (Alpaca's no-input form).
        uncond = self.encode_prompt(self.prompt_format.render(instruction)) if guided else None
        max_new = max_new_tokens or self.generation_defaults.report_max_new_tokens
        if temperature is None:
            temperature = self.generation_defaults.temperature_for_reports
        sampling = self._sampling(do_sample, temperature, top_p)
        # Drafted decoding beats decoding a batch together on a CPU: `llmcxr report` on 40 real
        # films took 4.7 s one by one against 5.6 s in batches of 8 (bf16; fp32 8.9 against
        # 10.0 s; 2-core EPYC, 2026-12-07), so a batch is encoded together and then, where
        # drafts apply, its reports are decoded one by one.
        alone = draft and self.drafts is not None and not guided and runs_lean(self.model)
        reports: list[str] = []
        with _seeded(seed, self.device):
            for _, chunk in chunks(list(images), batch_size):
                codes = self.encode_images(chunk)
                prompts = [self.encode_prompt(text, [c]) for c in codes]
                for group in [[p] for p in prompts] if alone else [prompts]:
                    reports += self._generate_text(
                        group,
                        max_new,
                        sampling,
                        guidance_scale=guidance_scale,
                        uncond=[uncond] * len(group) if uncond is not None else None,
                        opening=opening,
                        draft=draft,
                    )
        return reports

    def ask(
        self,
        image: ImageInput,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        *,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> str:
        """Answer `question` about `image`; `history` holds earlier (question, answer) turns.

        The first turn carries the image as its input (LLM-CXR's VQA layout); later turns are
        appended as instruction-only prompts after the previous answer and end marker, so the
        image's tokens appear once however long the conversation.
        """
        if not question.strip():
            raise ValueError("the question is empty")
        inputs = [IMAGE_PLACEHOLDER, *[""] * len(history)]  # the image goes in the first turn
        turns = [(q.strip(), x, a) for (q, a), x in zip(history, inputs[:-1], strict=True)]
        text = self.prompt_format.render_chat(turns, question.strip(), inputs[-1])
        prompt = self.encode_prompt(text, [self.encode_images([image])[0]])
        max_new = max_new_tokens or self.generation_defaults.answer_max_new_tokens
        with _seeded(seed, self.device):
            return self._generate_text(
                [prompt], max_new, self._sampling(do_sample, temperature, top_p)
            )[0]

    def score_responses(
        self,
        images: Sequence[ImageInput],
        responses: Sequence[str],
        *,
        instruction: str | None = None,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """Log-probability [len(images), len(responses)] of each response (with its end marker and
        EOS, as training scores it) after each image's prompt (`instruction`, by default the
        report one); `batch_size` counts image-response pairs. Deterministic: for ranking
        candidate answers and for measuring how much the image moves them
        (`benchmarks/report_reactivity.py`)."""
        if not responses:
            raise ValueError("no responses to score")
        text = self.prompt_format.render(
            instruction or default_instruction("cxr_to_report"), IMAGE_PLACEHOLDER
        )
        eos = self.text_tokenizer.eos_token_id
        answers = [
            self.text_tokenizer(self.prompt_format.render_response(r), add_special_tokens=False)[
                "input_ids"
            ]
            + ([] if eos is None else [eos])
            for r in responses
        ]
        scores = torch.empty(len(images), len(answers))
        per_batch = max(1, batch_size // len(answers))
        for at, chunk in chunks(list(images), per_batch):
            prompts = [self.encode_prompt(text, [c]) for c in self.encode_images(chunk)]
            width = max(len(a) for a in answers)
            for prompt in prompts:
                self._check_fits(prompt, width)
            ids, mask = self._pad(prompts)
            scores[at : at + len(chunk)] = answer_logprobs(
                self.model, ids, mask, answers, self.token_map, self.pad_token_id
            ).cpu()
        return scores

    def _sampling(
        self, do_sample: bool | None, temperature: float | None, top_p: float | None
    ) -> Sampling:
        defaults = self.generation_defaults
        return Sampling(
            do_sample=defaults.do_sample if do_sample is None else do_sample,
            temperature=defaults.temperature if temperature is None else temperature,
            top_p=defaults.top_p if top_p is None else top_p,
        )

    def _generate_text(
        self,
        prompts: Sequence[EncodedPrompt],
        max_new_tokens: int,
        sampling: Sampling,
        *,
        guidance_scale: float | None = None,
        uncond: Sequence[EncodedPrompt] | None = None,
        opening: str | None = None,
        draft: bool = True,
    ) -> list[str]:
        """Sample answers with a KV cache (`llmcxr.decoding.generate_text`), image tokens banned,
        stopping at EOS or once the prompt format's end marker is written; with `guidance_scale`,
        guided by the `uncond` prompts (one per prompt). Prompts that all open with `opening`
        (default: the prompt format's `opening()`) run from its cached keys and values. With
        `draft`, one unguided prompt decodes speculatively from `self.drafts` (if any)."""
        for prompt in prompts:
            self._check_fits(prompt, max_new_tokens)
        ids, mask = self._pad(prompts)
        uncond_ids, uncond_mask = self._pad(uncond) if uncond else (None, None)
        eos = [i for i in (self.text_tokenizer.eos_token_id,) if i is not None]
        end, decode = self.prompt_format.end, self.text_tokenizer.decode
        window = len(end) + 1  # tokens enough to hold the marker (each is >= 1 character)
        answers = generate_text(
            self.model,
            ids,
            mask,
            self.token_map,
            sampling,
            max_new_tokens=max_new_tokens,
            eos_ids=eos,
            stop=lambda new: end in decode(new[-window:], skip_special_tokens=True),
            guidance_scale=guidance_scale,
            uncond_input_ids=uncond_ids,
            uncond_attention_mask=uncond_mask,
            prefix=self._prefix(self.prompt_format.opening() if opening is None else opening),
            drafts=self.drafts if draft else None,
        )
        texts = self.text_tokenizer.batch_decode(answers, skip_special_tokens=True)
        return [self._strip_answer(t) for t in texts]

    def _prefix(self, text: str) -> PromptPrefix | None:
        """`text`'s keys and values (`llmcxr.decoding.PromptPrefix`), computed once per text and
        speed mode; a few are kept (one per instruction in use)."""
        key = (text, self.quantization)
        if key not in self._prefixes:
            if len(self._prefixes) >= 8:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[key] = PromptPrefix.compute(self.model, self.encode_prompt(text).ids)
        return self._prefixes[key]

    def _strip_answer(self, text: str) -> str:
        """Cut at the end marker (the stop may overshoot in a batch) and trim whitespace."""
        return text.split(self.prompt_format.end, 1)[0].strip()

    # ------------------------------------------------------------------ images out
    def generate_images(
        self,
        reports: Sequence[str],
        *,
        num_images: int = 1,
        seed: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
        instruction: str | None = None,
    ) -> list[list[np.ndarray]]:
        """`num_images` images per report: float32 [H, W] in [0, 1] at the model's image size.

        `guidance_scale` > 1 applies classifier-free guidance against the instruction-only
        prompt (no report), which is also what an empty report draws from;
        `progress(tokens_done, tokens_total)` is called after every token.
        """
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        instruction = instruction or default_instruction("report_to_cxr")
        defaults = self.generation_defaults
        guidance = defaults.guidance_scale if guidance_scale is None else guidance_scale
        sampling = self._sampling(True, temperature, top_p)
        n_tokens = self.token_map.tokens_per_image
        prompts = []
        for report in reports:
            if not report or not report.strip():
                # A generated report can be empty (round trips); draw from the instruction alone.
                logger.warning("empty report: drawing from the instruction alone")
            prompt = self._image_prompt(
                self.prompt_format.render(instruction, (report or "").strip())
            )
            self._check_fits(prompt, n_tokens + 1)
            prompts += [prompt] * num_images
        guided = is_guided(guidance)
        # The unconditional branch: the same instruction with no report (Alpaca's no-input form).
        uncond = self._image_prompt(self.prompt_format.render(instruction)) if guided else None
        generator = torch.Generator(self.device)
        if seed is None:
            generator.seed()  # a fresh random seed for this generator only, not the global RNG
        else:
            generator.manual_seed(seed)
        total = len(prompts) * n_tokens
        codes = []
        for start, chunk in chunks(prompts, batch_size):
            ids, mask = self._pad(chunk)
            uncond_ids, uncond_mask = self._pad([uncond] * len(chunk)) if guided else (None, None)
            step_progress = (
                None
                if progress is None
                else _BatchProgress(progress, start, len(chunk), total, n_tokens)
            )
            codes.append(
                generate_image_codes(
                    self.model,
                    ids,
                    mask,
                    self.token_map,
                    sampling,
                    generator=generator,
                    guidance_scale=guidance if guided else None,
                    uncond_input_ids=uncond_ids,
                    uncond_attention_mask=uncond_mask,
                    progress=step_progress,
                )
            )
        all_codes = torch.cat(codes)  # [R * num_images, N]
        pixels = self.decode_codes(all_codes)
        return [pixels[i * num_images : (i + 1) * num_images] for i in range(len(reports))]

    def _image_prompt(self, text: str) -> EncodedPrompt:
        """The prompt with the image start marker forced as the first response token."""
        prompt = self.encode_prompt(text)
        return EncodedPrompt([*prompt.ids, self.token_map.start_id])

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor, batch_size: int = 8) -> list[np.ndarray]:
        """VQ-GAN codes [B, N] -> B float32 arrays [H, W] in [0, 1], at the model's image size."""
        out: list[np.ndarray] = []
        size = self.generation_defaults.image_size
        for chunk in codes.split(batch_size):
            images = self.image_tokenizer.decode(chunk.to(self.image_tokenizer.device))
            if size is not None and size != images.shape[-1]:
                images = F.interpolate(images.float(), size=(size, size), mode="bicubic")
                images = images.clamp(0.0, 1.0)
            out += [img[0].float().cpu().numpy() for img in images]
        return out


@dataclass(frozen=True)
class _BatchProgress:
    """Turns one batch's per-step callback into whole-call progress (tokens done, tokens total)."""

    report: ProgressCallback
    first_row: int
    rows: int
    total: int
    tokens_per_image: int

    def __call__(self, step: int, _steps: int) -> None:
        self.report(self.first_row * self.tokens_per_image + step * self.rows, self.total)


def _context_length(model: torch.nn.Module) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for `generate` without changing the caller's RNG state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
