"""Instruction-tuning data: built instruction records joined with cached image tokens.

A record becomes ``prompt + response + end marker + eos``; the prompt is rendered with the
model's `PromptFormat` and every ``<image>`` becomes ``<img_start> codes... <img_end>``. Labels
are -100 on every prompt token and on padding, so the loss covers only the response (LLM-CXR).
Records whose image is not in the token cache and records longer than ``max_length`` are dropped
and counted; nothing is truncated, so an image is never cut in half. Paired training records that
name a report pool (``instructions.report_pool``) get a report drawn from it afresh every epoch.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrcommon.resumable import EpochSampler, ResumableLoader, lightning_trained_batches
from instructions.labeler import film_abnormal
from instructions.report_pool import ReportPools
from instructions.vqa import question_kind
from llmcxr.image_tokens import ImageTokenMap, encode_text_with_images
from llmcxr.token_cache import (
    ImageTokenCache,
    StaleTokenCacheError,
    build_token_cache,
    default_cache_dir,
)

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
    source: str = ""
    """The record's ``source`` (e.g. ``paired:nih_chestxray14+openi``), for per-source sampling."""
    unconditional: EncodedExample | None = None
    """The same report->CXR record with its report dropped (the pipeline's unconditional prompt);
    `EncodedDataset` serves it instead with probability ``cfg_drop``."""
    draw: PoolDraw | None = None
    """What it takes to encode this record again with another report of its pool."""
    film_group: str = ""
    """For a record that reads a film (image in the prompt, written response) from a report pool:
    the pool's key (split and label match). Films of one group share interchangeable reports, so
    the film-contrast loss only swaps films between rows of different groups."""
    film_abnormal: bool | None = None
    """For a record that reads a film: whether its labels call the film abnormal (None: unknown or
    uncertain), so the VQA film contrast can pick a film that makes an answer wrong."""
    contrast_abnormal: bool | None = None
    """For a yes/no VQA record whose answer is wrong for any film of this status (True: abnormal):
    "Is this film normal? Yes." is wrong on every abnormal film, "Is there X? Yes." on every
    normal one. None for other records."""
    draw_group: str = ""
    """For a report->CXR record whose report comes from a report pool: the pool's key. The
    drawing-contrast loss scores its image again under the report of a row of another group. Its
    report-dropped variant has none (no report to contrast)."""
    film_variants: tuple[tuple[int, ...], ...] = ()
    """For a training record that reads a film: the token ids of the same film encoded on
    randomised histograms (one per ``film_histogram_seeds`` cache), which `EncodedDataset` serves
    in place of the film's own ids at ``film_start``, so the film's histogram carries no label."""
    film_start: int = -1
    """Where the film's code ids start in ``input_ids`` (with ``film_variants``)."""


@dataclass(frozen=True, eq=False)
class PoolDraw:
    """A paired record with its image codes and the report ids it may draw its text from."""

    record: dict[str, str]
    codes: torch.Tensor
    pool: tuple[str, ...]


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
        # The same text and encoding as inference (`LLMCXR.encode_prompt`): one prompt layout.
        prompt_ids = encode_text_with_images(
            self.prompt_format.render(instruction, inp),
            [codes] if images_in_input else [],
            self.text_tokenizer,
            self.token_map,
            self.placeholder,
        )
        # The response continues the prompt, so no special tokens (BOS) start it; an image
        # response is its marker-wrapped codes, then the rest of the rendered response.
        answer = self.prompt_format.render_response(
            self.placeholder if image_is_response else response
        )
        if image_is_response:
            response_ids = self.token_map.image_to_text_span(codes)
            answer = answer.removeprefix(self.placeholder)
        else:
            response_ids = []
        response_ids += self.text_tokenizer(answer, add_special_tokens=False)["input_ids"]
        response_ids.append(self.text_tokenizer.eos_token_id)
        return EncodedExample(
            input_ids=prompt_ids + response_ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
            task=str(record.get("task", "")),
            source=str(record.get("source") or ""),
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
        pools: ReportPools | None = None,
        film_caches: Sequence[ImageTokenCache] = (),
    ) -> tuple[list[EncodedExample], DropCounts]:
        """Encode `records`, dropping (and counting) those without a cached image or too long.
        With `unconditional`, report->CXR examples also carry their report-dropped variant; with
        `pools`, records naming a report pool carry its ids (`ReportRedraw` draws from them);
        with `film_caches`, records that read a film carry its codes from each cache that holds
        it (``film_variants``)."""
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
            key = record.get("report_pool") or ""
            if pools is not None and key and codes is not None:
                example.draw = _pool_draw(record, codes, pools, key)
            if codes is not None and record["response"].strip() != self.placeholder:
                example.film_group = key
                _mark_film_status(example, record)
                self._attach_film_variants(example, image_id, film_caches)
            elif codes is not None:
                example.draw_group = key
            kept.append(example)
            counts.by_task[example.task] += 1
        counts.kept = len(kept)
        return kept, counts

    def _attach_film_variants(
        self, example: EncodedExample, image_id: str, caches: Sequence[ImageTokenCache]
    ) -> None:
        """Give a film-reading example its film's ids from each of `caches` holding the film."""
        variants = tuple(
            tuple(self.token_map.codes_to_ids(cache.get(image_id)).tolist())
            for cache in caches
            if image_id in cache
        )
        if not variants:
            return
        is_code = self.token_map.is_code_id(torch.tensor(example.input_ids))
        positions = is_code.nonzero().flatten().tolist()
        start = positions[0]
        if positions != list(range(start, start + len(variants[0]))):
            raise ValueError(f"record for {image_id!r}: its film's codes are not one run of ids")
        example.film_variants, example.film_start = variants, start


def _mark_film_status(example: EncodedExample, record: Mapping[str, Any]) -> None:
    """Set a film-reading example's `film_abnormal` and, for a yes/no VQA record, the film status
    its answer is wrong for (`contrast_abnormal`)."""
    labels = record.get("labels") or "{}"
    try:
        labels = json.loads(labels) if isinstance(labels, str) else labels
        example.film_abnormal = film_abnormal(labels)
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"record {record.get('id')!r}: labels must be a JSON object of class -> 1/0/-1, "
            f"got {record.get('labels')!r:.80}"
        ) from err
    asked = question_kind(record["instruction"]) if example.task == "vqa" else None
    answer = record["response"].strip()
    if asked is None or not answer.startswith(("Yes.", "No.")):
        return
    if asked[0] == "normal":
        example.contrast_abnormal = answer.startswith("Yes.")
    elif answer.startswith("Yes."):
        example.contrast_abnormal = False


def _pool_draw(
    record: Mapping[str, Any], codes: torch.Tensor, pools: ReportPools, key: str
) -> PoolDraw | None:
    """The draw of a record naming pool `key` (None when the pool is empty)."""
    if key not in pools.pools:
        raise ValueError(f"record {record.get('id')!r} names report pool {key!r}, which is missing")
    fields = ("id", "task", "instruction", "input", "response", "image_id")
    pool = pools.pools[key]
    return PoolDraw({f: record[f] for f in fields}, codes, pool) if pool else None


@dataclass(frozen=True)
class ReportRedraw:
    """Re-encodes a paired record with a report drawn from its pool, fixed by (seed, epoch, record
    id) so every DataLoader worker and DDP rank draws the same. The text goes through the same
    `RecordEncoder.encode` (template, prompt format) as the frozen text; a draw longer than
    ``max_length`` keeps the frozen example."""

    encoder: RecordEncoder
    texts: Mapping[str, str]
    max_length: int
    seed: int = 0

    def __call__(self, example: EncodedExample, epoch: int) -> EncodedExample:
        """`example` with its report replaced by this epoch's draw."""
        draw = example.draw
        if draw is None:
            return example
        report_id = random.Random(f"{self.seed}:{epoch}:{draw.record['id']}").choice(draw.pool)
        image_out = draw.record["response"].strip() == self.encoder.placeholder
        field = "input" if image_out else "response"
        text = self.texts[report_id]
        if text == draw.record[field]:
            return example
        redrawn = self.encoder.encode({**draw.record, field: text}, draw.codes)
        redrawn.film_group = example.film_group
        redrawn.film_abnormal = example.film_abnormal
        redrawn.draw_group = example.draw_group
        redrawn.film_variants, redrawn.film_start = example.film_variants, example.film_start
        return redrawn if len(redrawn.input_ids) <= self.max_length else example


class EncodedDataset(Dataset):
    """A list of encoded examples as a torch Dataset.

    With ``cfg_drop`` > 0 an example that has an unconditional variant is served as that variant
    with probability ``cfg_drop``, drawn afresh at every access (so each epoch drops different
    reports): classifier-free guidance needs the model to have learnt the report-free prompt too.
    With ``redraw``, examples that carry a report pool are served with the report that
    ``set_epoch``'s epoch draws (`ReportRedraw`). An example with ``film_variants`` is served with
    its film's own ids or one of the variants, each equally likely, drawn afresh at every access.
    """

    def __init__(
        self,
        examples: list[EncodedExample],
        cfg_drop: float = 0.0,
        seed: int = 0,
        redraw: ReportRedraw | None = None,
    ) -> None:
        if not 0.0 <= cfg_drop < 1.0:
            raise ValueError(f"cfg_drop must lie in [0, 1), got {cfg_drop}")
        self.examples = examples
        self.cfg_drop = cfg_drop
        self.seed = seed
        self.redraw = redraw
        # shared memory: persistent DataLoader workers see the epoch the main process sets
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        self._rngs: dict[int, random.Random] = {}

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def epoch(self) -> int:
        """The epoch whose report draws are served."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Serve the report draws of `epoch` (Lightning's ``set_epoch`` convention)."""
        self._epoch.fill_(epoch)

    def __getitem__(self, index: int) -> EncodedExample:
        example = self.examples[index]
        if (
            self.cfg_drop
            and example.unconditional is not None
            and self._rng().random() < self.cfg_drop
        ):
            return example.unconditional
        served = self.redraw(example, self.epoch) if self.redraw is not None else example
        if served.film_variants:
            pick = self._rng().randrange(len(served.film_variants) + 1)
            if pick:
                ids = served.film_variants[pick - 1]
                start = served.film_start
                input_ids = [*served.input_ids[:start], *ids, *served.input_ids[start + len(ids) :]]
                served = replace(served, input_ids=input_ids)
        return served

    def _rng(self) -> random.Random:
        """One generator per DataLoader worker (each worker holds a copy of this dataset, so a
        shared seed would repeat the same drops in every worker)."""
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        if worker not in self._rngs:
            self._rngs[worker] = random.Random(f"{self.seed}:{worker}")
        return self._rngs[worker]


class RedrawEpoch(L.Callback):
    """Gives the training dataset each epoch as it starts, before the DataLoader workers for it
    start (Lightning creates them after ``on_train_epoch_start``), so report draws follow the
    epoch. `InstructionDataModule` adds it to its trainer itself."""

    def __init__(self, dataset: EncodedDataset) -> None:
        self.dataset = dataset

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dataset.set_epoch(trainer.current_epoch)


@dataclass
class PadCollator:
    """Right-pads a batch; padding gets attention 0 and label -100. ``film_group`` and
    ``draw_group`` number the rows' report pools within the batch (-1: the row reads no pooled
    film / draws from no pooled report); ``film_abnormal`` and ``contrast_abnormal`` hold the
    examples' fields as 1 / 0 (-1: None)."""

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
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "film_group": _numbered([e.film_group for e in batch]),
            "draw_group": _numbered([e.draw_group for e in batch]),
            "film_abnormal": _flags([e.film_abnormal for e in batch]),
            "contrast_abnormal": _flags([e.contrast_abnormal for e in batch]),
        }


def _numbered(keys: list[str]) -> torch.Tensor:
    """Each key's number in order of first appearance; -1 for an empty key."""
    numbers: dict[str, int] = {}
    return torch.tensor(
        [numbers.setdefault(k, len(numbers)) if k else -1 for k in keys], dtype=torch.long
    )


def _flags(values: list[bool | None]) -> torch.Tensor:
    return torch.tensor([-1 if v is None else int(v) for v in values], dtype=torch.long)


class InstructionDataModule(L.LightningDataModule):
    """Reads one stage (``stage1`` / ``stage2``) of a built instruction dataset.

    The text tokenizer, image-token mapping and prompt format come from the model being trained
    (``trainer.lightning_module``), or from `attach` when used on its own. The image token cache is
    built (or rebuilt on a new image tokenizer) in ``prepare_data`` when needed. Paired training
    records draw their report from their label-matched pool every epoch
    (``redraw_paired_reports``; the module adds a `RedrawEpoch` callback to its trainer for that).
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
        source_weights: dict[str, float] | None = None,
        build_cache: bool = True,
        cache_batch_size: int = 16,
        cfg_drop: float = 0.0,
        seed: int = 0,
        redraw_paired_reports: bool = True,
        film_histogram_seeds: list[int] | None = None,
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
            source_weights: optional sampling weight per record ``source`` (exact names, e.g.
                ``{"paired:nih_chestxray14+openi": 3.0}``), multiplied with the task weight, so a
                source that is a small share of the build (NIH films are ~15 % of the paired
                records) can be seen more often; unnamed sources weigh 1.
            build_cache: build or refresh the token cache when missing or stale.
            cache_batch_size: images per batch when building the token cache.
            cfg_drop: share of report->CXR training examples served without their report (the
                pipeline's unconditional prompt), redrawn every epoch, so classifier-free
                guidance (``guidance_scale`` > 1) has a learnt unconditional branch; LLM-CXR-style
                recipes use about 0.1. Validation keeps every report.
            seed: seed of the training order (fixed per epoch, so a stopped run resumes
                mid-epoch with the batches it had not trained), of the ``cfg_drop`` draws and of
                the paired-report draws.
            redraw_paired_reports: training records of a paired build (labelled images matched
                with label-matched OpenI reports) get a report drawn afresh from their pool every
                epoch, the same draw on every worker and rank for one (seed, epoch, record);
                False keeps the one report frozen at build time. Validation and test always use
                the frozen report; builds without report pools are read as before.
            film_histogram_seeds: for each seed, a token cache of every image on the histogram
                of a seeded random image of its source and split
                (``DATASET/image_tokens_histogram<seed>``, `llmcxr.token_cache`, built in
                ``prepare_data`` like the main cache); a training record that reads a film is
                served its own film or one of these, each equally likely, so that the film's
                histogram, which in the labelled sets here tells the hospital and so the label,
                carries nothing (benchmarks/results/intensity_shortcut/). Films that are drawn
                (report->CXR) and validation keep their own. Default: none.
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
        self.source_weights = dict(source_weights or {})
        for name, table in (
            ("task_weights", self.task_weights),
            ("source_weights", self.source_weights),
        ):
            bad = {k: v for k, v in table.items() if not v >= 0}
            if bad:
                raise ValueError(f"data.{name} must be non-negative numbers, got {bad}")
        self.build_cache = build_cache
        self.cache_batch_size = cache_batch_size
        if not 0.0 <= cfg_drop < 1.0:
            raise ValueError(f"data.cfg_drop must lie in [0, 1), got {cfg_drop}")
        self.cfg_drop = cfg_drop
        self.seed = seed
        self.redraw_paired_reports = redraw_paired_reports
        self.film_histogram_seeds = [int(seed) for seed in film_histogram_seeds or []]
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
            for seed in self.film_histogram_seeds:
                build_token_cache(
                    self.dataset_dir,
                    self.image_tokenizer_path,
                    batch_size=self.cache_batch_size,
                    devices=1,
                    histogram_seed=seed,
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
        film_caches = [self._histogram_cache(seed, cache) for seed in self.film_histogram_seeds]
        splits = load_from_disk(str(self.dataset_dir / self.stage))
        pools = self._report_pools(splits.get("train"))
        for split in SPLITS:
            if split not in splits:
                continue
            train = split == "train"
            drop = self.cfg_drop if train else 0.0
            examples, counts = self.encoder.encode_all(
                splits[split],
                cache,
                self.max_length,
                desc=f"{self.stage}/{split}",
                unconditional=drop > 0,
                pools=pools if train else None,
                film_caches=film_caches if train else (),
            )
            redraw = (
                ReportRedraw(self.encoder, pools.texts, self.max_length, self.seed)
                if train and pools is not None
                else None
            )
            self.datasets[split] = EncodedDataset(examples, drop, self.seed, redraw)
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
        known = {e.source for e in self.datasets["train"].examples}
        unknown = sorted(set(self.source_weights) - known)
        if unknown:
            raise ValueError(
                f"data.source_weights names {unknown}, not a source of "
                f"{self.dataset_dir / self.stage} train; its sources: {sorted(known)}"
            )

    def _report_pools(self, train: Any) -> ReportPools | None:
        """The stage's report pools when training redraws paired reports and records name one."""
        if not self.redraw_paired_reports or train is None:
            return None
        if "report_pool" not in train.column_names or not any(train["report_pool"]):
            return None  # not a paired build, or one made before report pools
        return ReportPools.load(self.dataset_dir / self.stage)

    def _histogram_cache(self, seed: int, main: ImageTokenCache | None) -> ImageTokenCache:
        """The film-histogram cache of `seed`, checked against the main cache's tokenizer."""
        folder = default_cache_dir(self.dataset_dir, seed)
        cache = ImageTokenCache.load(folder, self.fingerprint)
        if cache.meta.get("histogram_seed") != seed:
            raise StaleTokenCacheError(f"{folder} was not built with histogram seed {seed}")
        if main is not None and cache.tokens_per_image != main.tokens_per_image:
            raise ValueError(f"{folder} has {cache.tokens_per_image} tokens per image")
        return cache

    def _has_cache(self) -> bool:
        return (self.token_cache / "cache.json").is_file()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.datasets[split]
        collate = PadCollator(self._pad_id())
        if not shuffle:
            return DataLoader(
                data, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate
            )
        weights = None
        if self.task_weights or self.source_weights:
            weights = [
                self.task_weights.get(e.task, 1.0) * self.source_weights.get(e.source, 1.0)
                for e in data.examples
            ]
        # resumable: a run stopped mid-epoch (max_time) goes on with the batches it had not seen
        return ResumableLoader(
            data,
            sampler=EpochSampler(len(data), weights, seed=self.seed),
            trained_batches=lightning_trained_batches(self),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
        )

    def _pad_id(self) -> int:
        tok = self.encoder.text_tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def train_dataloader(self) -> DataLoader:
        data = self.datasets["train"]
        if data.redraw is not None and self.trainer is not None:
            # called once the trainer has restored its epoch (resuming a run draws on from there)
            data.set_epoch(self.trainer.current_epoch)
            if not any(isinstance(c, RedrawEpoch) for c in self.trainer.callbacks):
                self.trainer.callbacks.append(RedrawEpoch(data))
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
