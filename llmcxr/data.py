"""Instruction-tuning data: built instruction records joined with cached image tokens.

A record becomes ``prompt + response + end marker + eos``; the prompt is rendered with the
model's `PromptFormat` and every ``<image>`` becomes ``<img_start> codes... <img_end>``. Labels
are -100 on every prompt token and on padding, so the loss covers only the response (LLM-CXR).
Records whose image is not in the token cache and records longer than ``max_length`` are dropped
and counted; nothing is truncated, so an image is never cut in half.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from llmcxr.image_tokens import ImageTokenMap, encode_text_with_images
from llmcxr.token_cache import ImageTokenCache, build_token_cache, default_cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from instructions.prompt_format import PromptFormat

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (Hugging Face / PyTorch cross-entropy convention)."""
SPLITS = ("train", "val", "test")


@dataclass
class EncodedExample:
    """One tokenised record: ids and labels of equal length."""

    input_ids: list[int]
    labels: list[int]
    task: str
    unconditional: EncodedExample | None = None
    """The same report->CXR record with its report dropped (the pipeline's unconditional prompt);
    `EncodedDataset` serves it instead with probability ``cfg_drop``."""


@dataclass
class DropCounts:
    """Records left out of one split, and why."""

    missing_image: int = 0
    too_long: int = 0
    kept: int = 0
    by_task: Counter = field(default_factory=Counter)


@dataclass
class RecordEncoder:
    """Turns instruction records into training sequences for one model's vocabulary."""

    text_tokenizer: PreTrainedTokenizerBase
    token_map: ImageTokenMap
    prompt_format: PromptFormat
    placeholder: str = "<image>"

    def encode(self, record: Mapping[str, Any], codes: torch.Tensor | None) -> EncodedExample:
        """Encode one record; `codes` are its image's VQ codes (None for text-only records)."""
        instruction, inp, response = record["instruction"], record["input"], record["response"]
        images_in_input = inp.count(self.placeholder)
        image_is_response = response.strip() == self.placeholder
        if (images_in_input + image_is_response) != (0 if codes is None else 1):
            raise ValueError(
                f"record {record.get('id')!r}: expected one {self.placeholder} when an image is "
                f"given and none otherwise (input has {images_in_input}, response {response!r:.40})"
            )
        prompt = self.prompt_format.render(instruction, inp)
        prompt_ids = encode_text_with_images(
            prompt,
            [codes] if images_in_input else [],
            self.text_tokenizer,
            self.token_map,
            self.placeholder,
        )
        tail = f"\n\n{self.prompt_format.end}"
        if image_is_response:
            response_ids = self.token_map.image_to_text_span(codes)
            response_ids += self.text_tokenizer(tail, add_special_tokens=False)["input_ids"]
        else:
            response_ids = self.text_tokenizer(response + tail, add_special_tokens=False)[
                "input_ids"
            ]
        response_ids.append(self.text_tokenizer.eos_token_id)
        return EncodedExample(
            input_ids=prompt_ids + response_ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
            task=str(record.get("task", "")),
        )

    def encode_unconditional(
        self, record: Mapping[str, Any], codes: torch.Tensor
    ) -> EncodedExample | None:
        """A report->CXR record with its report removed: the instruction alone, exactly the prompt
        the pipeline contrasts with under classifier-free guidance. None for other records."""
        if record["response"].strip() != self.placeholder or not record["input"].strip():
            return None
        return self.encode({**record, "input": ""}, codes)

    def encode_all(
        self,
        records: Iterable[Mapping[str, Any]],
        cache: ImageTokenCache | None,
        max_length: int,
        desc: str = "encoding",
        unconditional: bool = False,
    ) -> tuple[list[EncodedExample], DropCounts]:
        """Encode `records`, dropping (and counting) those without a cached image or too long.
        With `unconditional`, report->CXR examples also carry their report-dropped variant."""
        kept, counts = [], DropCounts()
        for record in tqdm(records, desc=desc, leave=False):
            image_id = record.get("image_id") or ""
            codes = None
            if image_id:
                if cache is None or image_id not in cache:
                    counts.missing_image += 1
                    continue
                codes = cache.get(image_id)
            example = self.encode(record, codes)
            if len(example.input_ids) > max_length:
                counts.too_long += 1
                continue
            if unconditional and codes is not None:
                example.unconditional = self.encode_unconditional(record, codes)
            kept.append(example)
            counts.by_task[example.task] += 1
        counts.kept = len(kept)
        return kept, counts


class EncodedDataset(Dataset):
    """A list of encoded examples as a torch Dataset.

    With ``cfg_drop`` > 0 an example that has an unconditional variant is served as that variant
    with probability ``cfg_drop``, drawn afresh at every access (so each epoch drops different
    reports): classifier-free guidance needs the model to have learnt the report-free prompt too.
    """

    def __init__(
        self, examples: list[EncodedExample], cfg_drop: float = 0.0, seed: int = 0
    ) -> None:
        if not 0.0 <= cfg_drop < 1.0:
            raise ValueError(f"cfg_drop must lie in [0, 1), got {cfg_drop}")
        self.examples = examples
        self.cfg_drop = cfg_drop
        self.seed = seed
        self._rngs: dict[int, random.Random] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        example = self.examples[index]
        if (
            self.cfg_drop
            and example.unconditional is not None
            and self._rng().random() < self.cfg_drop
        ):
            return example.unconditional
        return example

    def _rng(self) -> random.Random:
        """One generator per DataLoader worker (each worker holds a copy of this dataset, so a
        shared seed would repeat the same drops in every worker)."""
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        if worker not in self._rngs:
            self._rngs[worker] = random.Random(f"{self.seed}:{worker}")
        return self._rngs[worker]


@dataclass
class PadCollator:
    """Right-pads a batch; padding gets attention 0 and label -100."""

    pad_token_id: int

    def __call__(self, batch: list[EncodedExample]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            labels[row, :n] = torch.tensor(example.labels)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class InstructionDataModule(L.LightningDataModule):
    """Reads one stage (``stage1`` / ``stage2``) of a built instruction dataset.

    The text tokenizer, image-token mapping and prompt format come from the model being trained
    (``trainer.lightning_module``), or from `attach` when used on its own. The image token cache is
    built (or rebuilt on a new image tokenizer) in ``prepare_data`` when needed.
    """

    def __init__(
        self,
        dataset_dir: str,
        stage: str = "stage1",
        token_cache: str | None = None,
        max_length: int = 512,
        batch_size: int = 4,
        num_workers: int = 0,
        task_weights: dict[str, float] | None = None,
        build_cache: bool = True,
        cache_batch_size: int = 16,
        build_from_csv: str | None = None,
        cfg_drop: float = 0.0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            dataset_dir: folder written by ``python -m instructions build``.
            stage: ``stage1`` or ``stage2``.
            token_cache: image token cache folder (default ``DATASET/image_tokens``).
            max_length: longest sequence kept, in tokens; longer records are dropped and counted.
            batch_size: sequences per batch (per device).
            num_workers: DataLoader worker processes.
            task_weights: optional sampling weight per task (e.g. ``{"vqa": 2.0}``) on top of
                the mix already in the data; unnamed tasks weigh 1.
            build_cache: build or refresh the token cache when missing or stale.
            cache_batch_size: images per batch when building the token cache.
            build_from_csv: when ``dataset_dir`` holds no built dataset yet, build it first from
                this CSV (image path + report per row) with ``python -m instructions build
                --source csv``; used by the tiny configs.
            cfg_drop: share of report->CXR training examples served without their report (the
                pipeline's unconditional prompt), redrawn every epoch, so classifier-free
                guidance (``guidance_scale`` > 1) has a learnt unconditional branch; LLM-CXR-style
                recipes use about 0.1. Validation keeps every report.
            seed: seed of the ``cfg_drop`` draws.
        """
        super().__init__()
        if stage not in ("stage1", "stage2"):
            raise ValueError(f"data.stage must be 'stage1' or 'stage2', got {stage!r}")
        if max_length < 8:
            raise ValueError(f"data.max_length must be at least 8, got {max_length}")
        self.dataset_dir = Path(dataset_dir)
        self.stage = stage
        self.token_cache = Path(token_cache) if token_cache else default_cache_dir(self.dataset_dir)
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.task_weights = dict(task_weights or {})
        self.build_cache = build_cache
        self.cache_batch_size = cache_batch_size
        self.build_from_csv = build_from_csv
        if not 0.0 <= cfg_drop < 1.0:
            raise ValueError(f"data.cfg_drop must lie in [0, 1), got {cfg_drop}")
        self.cfg_drop = cfg_drop
        self.seed = seed
        self.encoder: RecordEncoder | None = None
        self.image_tokenizer_path: str | None = None
        self.fingerprint: str | None = None
        self.datasets: dict[str, EncodedDataset] = {}
        self.counts: dict[str, DropCounts] = {}

    def attach(
        self,
        encoder: RecordEncoder,
        image_tokenizer_path: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Give the vocabulary (and the image tokenizer the cache must match) without a trainer."""
        self.encoder, self.image_tokenizer_path = encoder, image_tokenizer_path
        self.fingerprint = fingerprint or _fingerprint_of(image_tokenizer_path)

    def _from_module(self) -> None:
        if self.encoder is not None:
            return
        module = self.trainer.lightning_module if self.trainer else None
        if module is None or not hasattr(module, "record_encoder"):
            raise RuntimeError("InstructionDataModule needs attach() or an LLMCXRModule trainer")
        self.attach(
            module.record_encoder(), module.image_tokenizer_path, module.image_tokenizer_fingerprint
        )

    def prepare_data(self) -> None:
        if self.build_from_csv and not (self.dataset_dir / self.stage).is_dir():
            _build_from_csv(Path(self.build_from_csv), self.dataset_dir)
        if not (self.dataset_dir / self.stage).is_dir():
            raise FileNotFoundError(
                f"{self.dataset_dir / self.stage} not found: build the dataset with "
                "`python -m instructions build` first"
            )
        self._from_module()
        if self.build_cache and self.image_tokenizer_path:
            build_token_cache(
                self.dataset_dir,
                self.image_tokenizer_path,
                self.token_cache,
                batch_size=self.cache_batch_size,
                devices=1,
            )

    def setup(self, stage: str | None = None) -> None:
        from datasets import load_from_disk

        if self.datasets:
            return
        self._from_module()
        cache = (
            ImageTokenCache.load(self.token_cache, self.fingerprint) if self._has_cache() else None
        )
        if cache is not None and cache.tokens_per_image != self.encoder.token_map.tokens_per_image:
            raise ValueError(
                f"token cache {self.token_cache} has {cache.tokens_per_image} tokens per image, "
                f"the model expects {self.encoder.token_map.tokens_per_image}"
            )
        splits = load_from_disk(str(self.dataset_dir / self.stage))
        for split in SPLITS:
            if split not in splits:
                continue
            drop = self.cfg_drop if split == "train" else 0.0
            examples, counts = self.encoder.encode_all(
                splits[split],
                cache,
                self.max_length,
                desc=f"{self.stage}/{split}",
                unconditional=drop > 0,
            )
            self.datasets[split] = EncodedDataset(examples, drop, self.seed)
            self.counts[split] = counts
            log.info(
                "%s/%s: kept %d records, dropped %d without a cached image and %d over %d tokens",
                self.stage,
                split,
                counts.kept,
                counts.missing_image,
                counts.too_long,
                self.max_length,
            )
        if not self.datasets.get("train"):
            raise ValueError(f"{self.dataset_dir / self.stage}: no usable training records")

    def _has_cache(self) -> bool:
        return (self.token_cache / "cache.json").is_file()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.datasets[split]
        sampler = None
        if shuffle and self.task_weights:
            weights = [self.task_weights.get(e.task, 1.0) for e in data.examples]
            sampler = WeightedRandomSampler(weights, num_samples=len(data), replacement=True)
            shuffle = False
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=PadCollator(self._pad_id()),
        )

    def _pad_id(self) -> int:
        tok = self.encoder.text_tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.datasets.get("val") else []

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", shuffle=False) if self.datasets.get("test") else []


def _fingerprint_of(image_tokenizer_path: str | None) -> str | None:
    """The fingerprint the cache must carry, read from the tokenizer itself."""
    if not image_tokenizer_path:
        return None
    from vqgan import CXRTokenizer

    return CXRTokenizer.from_pretrained(image_tokenizer_path).fingerprint


def _build_from_csv(table: Path, out: Path) -> None:
    """Build an instruction dataset from a report table with the instructions package's CLI."""
    from instructions.cli import main as build_instructions

    if not table.is_file():
        raise FileNotFoundError(f"data.build_from_csv: {table} not found")
    argv = ["--source", "csv", "--table", str(table.resolve()), "--out", str(out)]
    if build_instructions(argv) != 0:
        raise ValueError(f"building an instruction dataset from {table} failed (see above)")
