"""Tokenise every image of a built instruction dataset once and cache the codes as Arrow.

LLM training then reads codes from the cache and never runs the VQ-GAN. The cache records the
tokenizer's ``fingerprint``; a different tokenizer (or a changed image list) rebuilds it.

Large corpora (MIMIC-CXR: 377k images) are tokenised by a Lightning ``predict`` job: images are
cut into shards of ``shard_size``; each device takes every ``world_size``-th pending shard, and a
shard is written (atomically) as soon as all its images are encoded, so an interrupted job
resumes where it stopped. Command line::

    python -m llmcxr.token_cache --dataset DIR --tokenizer PATH [--cache DIR] [--devices N]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrcommon import manifest
from cxrcommon.files import atomic_folder, atomic_write_text

if TYPE_CHECKING:
    from vqgan import CXRTokenizer

log = logging.getLogger(__name__)

CACHE_META_FILE = "cache.json"
SHARDS_DIR = "shards"
DEFAULT_CACHE_NAME = "image_tokens"


class StaleTokenCacheError(RuntimeError):
    """The cache was built with another image tokenizer, or is incomplete."""


@dataclass(frozen=True)
class ImageEntry:
    """One image of the dataset's ``images.jsonl`` with a resolved path. With ``histogram_of``
    it is encoded with that image's intensity histogram (`vqgan.match_histogram`)."""

    image_id: str
    path: Path
    split: str = ""
    histogram_of: Path | None = None


def read_image_list(dataset_dir: str | Path) -> tuple[list[ImageEntry], int]:
    """Entries with a path from ``images.jsonl`` (sorted by id) and the count without one."""
    entries, unavailable = [], 0
    for listed in manifest.read_image_list(dataset_dir):
        path = listed.file(dataset_dir)
        if path is None:
            unavailable += 1
        else:
            entries.append(ImageEntry(listed.image_id, path, listed.split))
    entries.sort(key=lambda e: e.image_id)
    return entries, unavailable


def default_cache_dir(dataset_dir: str | Path, histogram_seed: int | None = None) -> Path:
    """``<dataset>/image_tokens``, or ``<dataset>/image_tokens_histogram<seed>`` for the films
    with randomised histograms (`with_random_histograms`)."""
    suffix = "" if histogram_seed is None else f"_histogram{histogram_seed}"
    return Path(dataset_dir) / f"{DEFAULT_CACHE_NAME}{suffix}"


def with_random_histograms(entries: Sequence[ImageEntry], seed: int) -> list[ImageEntry]:
    """Each entry paired with the histogram of a seeded random other image of the same source
    (the image id's first path part) and split, of any label: its histogram then says nothing of
    its label. An image alone in its group keeps its own.

    Why: the labelled CXR sets take normal and abnormal films from different hospitals, and a
    model trained on them reads the label from the intensity histogram, backwards on other sets
    (benchmarks/results/intensity_shortcut/). Films encoded this way, read in training beside
    the originals (``InstructionDataModule(film_histogram_seeds=...)``), carry no such cue."""
    groups: dict[tuple[str, str], list[ImageEntry]] = {}
    place: list[int] = []  # each entry's index in its group
    for entry in entries:
        group = groups.setdefault((entry.image_id.split("/", 1)[0], entry.split), [])
        place.append(len(group))
        group.append(entry)
    out = []
    for entry, own in zip(entries, place, strict=True):
        group = groups[(entry.image_id.split("/", 1)[0], entry.split)]
        partner = entry
        if len(group) > 1:  # a seeded index among the others (linear in the list, not quadratic)
            other = random.Random(f"{seed}:{entry.image_id}").randrange(len(group) - 1)
            partner = group[other + (other >= own)]
        out.append(dataclasses.replace(entry, histogram_of=partner.path))
    return out


# ----------------------------------------------------------------------------- reading the cache


class ImageTokenCache:
    """Codes of every cached image, held in memory as one ``[N, tokens_per_image]`` array."""

    def __init__(self, image_ids: Sequence[str], codes: np.ndarray, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.codes = codes
        self._row = {image_id: i for i, image_id in enumerate(image_ids)}

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def tokens_per_image(self) -> int:
        return int(self.meta["tokens_per_image"])

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    def get(self, image_id: str) -> torch.Tensor:
        """Codes of one image as a LongTensor ``[tokens_per_image]``; KeyError if not cached."""
        return torch.from_numpy(self.codes[self._row[image_id]].astype(np.int64))

    @classmethod
    def load(cls, cache_dir: str | Path, fingerprint: str | None = None) -> ImageTokenCache:
        """Load a complete cache; with `fingerprint`, refuse one built by another tokenizer."""
        from datasets import concatenate_datasets, load_from_disk

        cache_dir = Path(cache_dir)
        meta_file = cache_dir / CACHE_META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"no image token cache at {cache_dir}; build it with "
                "`python -m llmcxr.token_cache --dataset DIR --tokenizer PATH`"
            )
        meta = json.loads(meta_file.read_text())
        if fingerprint is not None and meta["fingerprint"] != fingerprint:
            raise StaleTokenCacheError(
                f"{cache_dir} was built with tokenizer {meta['fingerprint']}, not {fingerprint}; "
                "rebuild it with `python -m llmcxr.token_cache`"
            )
        if not meta.get("complete"):
            raise StaleTokenCacheError(f"{cache_dir} is incomplete; rerun the token cache job")
        shards = [s for s in sorted((cache_dir / SHARDS_DIR).iterdir()) if _shard_has_rows(s)]
        width = int(meta["tokens_per_image"])
        if not shards:
            return cls([], np.zeros((0, width), np.int16), meta)
        table = concatenate_datasets([load_from_disk(str(s)) for s in shards]).with_format("numpy")
        codes = np.asarray(table["codes"]).reshape(-1, width)
        return cls(list(table["image_id"]), codes, meta)


# ----------------------------------------------------------------------------- the predict job


class _ImageReadDataset(Dataset):
    """Reads and prepares the images of the pending shards; unreadable ones are flagged."""

    def __init__(self, items: list[tuple[int, ImageEntry]], size: int) -> None:
        self.items = items
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from vqgan import CXRReadError, prepare_image, read_cxr

        shard, entry = self.items[index]
        try:
            pixels = read_cxr(entry.path)
            if entry.histogram_of is not None:
                pixels = _on_histogram_of(entry, pixels)
            image, ok = prepare_image(pixels, self.size), True
        except (CXRReadError, OSError) as err:
            log.warning("skipping image %s: %s", entry.image_id, err)
            image, ok = torch.zeros(1, self.size, self.size), False
        return {"image": image, "ok": ok, "shard": shard, "image_id": entry.image_id}


def _on_histogram_of(entry: ImageEntry, pixels: np.ndarray) -> np.ndarray:
    """`pixels` on the histogram of ``entry.histogram_of``; as they are (with a warning) when
    that image cannot be read, so a bad partner never drops a good film."""
    from vqgan import CXRReadError, match_histogram, read_cxr

    try:
        reference = read_cxr(entry.histogram_of)
    except (CXRReadError, OSError) as err:
        log.warning("%s keeps its own histogram: %s", entry.image_id, err)
        return pixels
    return match_histogram(pixels, reference)


class TokenizeModule(L.LightningModule):
    """Wraps a CXRTokenizer for ``Trainer.predict``: one batch of images -> their codes."""

    def __init__(self, tokenizer: CXRTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        codes = self.tokenizer.encode(batch["image"])  # [B, tokens_per_image]
        return {**{k: batch[k] for k in ("ok", "shard", "image_id")}, "codes": codes.cpu()}


class TokenizeDataModule(L.LightningDataModule):
    """Gives each device its own pending shards (every world_size-th one)."""

    def __init__(
        self, shards: dict[int, list[ImageEntry]], size: int, batch_size: int, num_workers: int
    ) -> None:
        super().__init__()
        self.shards, self.size = shards, size
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        items = [
            (shard, entry)
            for shard, entries in sorted(self.shards.items())
            if shard % world == rank
            for entry in entries
        ]
        return DataLoader(
            _ImageReadDataset(items, self.size),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle=False,
        )


class ShardWriter(L.Callback):
    """Collects predictions per shard and writes each shard as Arrow once it is complete."""

    def __init__(self, cache_dir: Path, shard_sizes: dict[int, int], code_dtype: str) -> None:
        self.shards_dir = cache_dir / SHARDS_DIR
        self.expected = shard_sizes
        self.code_dtype = code_dtype
        self.pending: dict[int, dict[str, list]] = {}
        self.unreadable = 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        for i, shard in enumerate(outputs["shard"].tolist()):
            buf = self.pending.setdefault(shard, {"ids": [], "codes": [], "seen": 0})
            buf["seen"] += 1
            if bool(outputs["ok"][i]):
                buf["ids"].append(outputs["image_id"][i])
                buf["codes"].append(outputs["codes"][i].numpy())
            else:
                self.unreadable += 1
            if buf["seen"] == self.expected[shard]:
                self._write(shard, self.pending.pop(shard))

    def _write(self, shard: int, buf: dict[str, list]) -> None:
        from datasets import Dataset as ArrowDataset
        from datasets import Features, Sequence, Value

        features = Features(
            {"image_id": Value("string"), "codes": Sequence(Value(self.code_dtype))}
        )
        table = ArrowDataset.from_dict(
            {"image_id": buf["ids"], "codes": [c.tolist() for c in buf["codes"]]}, features=features
        )
        with atomic_folder(self.shards_dir / f"{shard:05d}") as tmp:
            table.save_to_disk(str(tmp))


def build_token_cache(
    dataset_dir: str | Path,
    tokenizer_path: str | Path,
    cache_dir: str | Path | None = None,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    shard_size: int = 2048,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress: bool = True,
    histogram_seed: int | None = None,
) -> Path:
    """Build (or resume, or keep if already complete) the token cache of a dataset's images;
    with `histogram_seed`, of its images on randomised histograms (`with_random_histograms`)."""
    from vqgan import CXRTokenizer

    dataset_dir = Path(dataset_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(dataset_dir, histogram_seed)
    tokenizer = CXRTokenizer.from_pretrained(tokenizer_path)
    entries, unavailable = read_image_list(dataset_dir)
    if histogram_seed is not None:
        entries = with_random_histograms(entries, histogram_seed)
    list_hash = hashlib.sha256("\n".join(f"{e.image_id}\t{e.path}" for e in entries).encode())
    meta = {
        "fingerprint": tokenizer.fingerprint,
        "codebook_size": tokenizer.codebook_size,
        "tokens_per_image": tokenizer.tokens_per_image,
        "image_size": tokenizer.image_size,
        "tokenizer": str(tokenizer_path),
        "shard_size": shard_size,
        "image_list_sha256": list_hash.hexdigest()[:16],
        "num_listed": len(entries) + unavailable,
        "num_unavailable": unavailable,
        "histogram_seed": histogram_seed,
    }
    old = _read_meta(cache_dir)
    same = old is not None and all(
        old.get(k) == meta[k]
        for k in ("fingerprint", "shard_size", "image_list_sha256", "histogram_seed")
    )
    if same and old.get("complete"):
        log.info("token cache %s is up to date (%d images)", cache_dir, old["num_cached"])
        return cache_dir
    if old is not None and not same:
        log.warning(
            "token cache %s is stale (tokenizer or image list changed): rebuilding", cache_dir
        )
        shutil.rmtree(cache_dir / SHARDS_DIR, ignore_errors=True)
    (cache_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    _write_meta(cache_dir, {**meta, "complete": False})

    shards = {
        i // shard_size: entries[i : i + shard_size] for i in range(0, len(entries), shard_size)
    }
    done = {int(p.name) for p in (cache_dir / SHARDS_DIR).iterdir() if p.name.isdigit()}
    pending = {k: v for k, v in shards.items() if k not in done}
    log.info(
        "tokenising %d images in %d shards (%d already done)", len(entries), len(pending), len(done)
    )
    code_dtype = "int16" if tokenizer.codebook_size <= np.iinfo(np.int16).max else "int32"
    writer = ShardWriter(cache_dir, {k: len(v) for k, v in pending.items()}, code_dtype)
    if pending:
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            callbacks=[writer],
            logger=False,
            use_distributed_sampler=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
        )
        trainer.predict(
            TokenizeModule(tokenizer),
            datamodule=TokenizeDataModule(pending, tokenizer.image_size, batch_size, num_workers),
            return_predictions=False,
        )
        if trainer.world_size > 1:
            trainer.strategy.barrier()
        if trainer.global_rank != 0:
            return cache_dir
    missing = sorted(
        set(shards) - {int(p.name) for p in (cache_dir / SHARDS_DIR).iterdir() if p.name.isdigit()}
    )
    if missing:
        raise StaleTokenCacheError(f"shards {missing[:5]} of {cache_dir} were not written")
    from datasets import load_from_disk

    shard_dirs = [cache_dir / SHARDS_DIR / f"{k:05d}" for k in shards]
    cached = sum(len(load_from_disk(str(d))) for d in shard_dirs if _shard_has_rows(d))
    _write_meta(cache_dir, {**meta, "complete": True, "num_cached": cached})
    log.info(
        "token cache %s: %d images cached, %d unreadable, %d without a file",
        cache_dir,
        cached,
        len(entries) - cached,
        unavailable,
    )
    return cache_dir


def _shard_has_rows(shard_dir: Path) -> bool:
    """A shard whose images were all unreadable is saved without any Arrow file."""
    return any(shard_dir.glob("*.arrow"))


def _read_meta(cache_dir: Path) -> dict[str, Any] | None:
    path = cache_dir / CACHE_META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(cache_dir / CACHE_META_FILE, json.dumps(meta, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: build the token cache of one dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m llmcxr.token_cache", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", required=True, help="built instruction dataset folder")
    parser.add_argument("--tokenizer", required=True, help="CXRTokenizer folder or vqgan .ckpt")
    parser.add_argument(
        "--cache", default=None, help="cache folder (default: DATASET/image_tokens)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=2048)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto")
    parser.add_argument(
        "--histogram-seed",
        type=int,
        default=None,
        help="encode each image on the histogram of a seeded random image of its source and "
        "split (default cache: DATASET/image_tokens_histogram<SEED>)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    try:
        out = build_token_cache(
            args.dataset,
            args.tokenizer,
            args.cache,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            shard_size=args.shard_size,
            accelerator=args.accelerator,
            devices=devices,
            histogram_seed=args.histogram_seed,
        )
    except (FileNotFoundError, ValueError, StaleTokenCacheError) as err:
        print(f"error: {err}")
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
