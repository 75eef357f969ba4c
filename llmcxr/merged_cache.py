"""A cache of merged LoRA models: base + image-token rows + adapter, merged once and stored.

Rebuilding the base, adding the new rows, importing peft and merging the adapter takes seconds on
every load; the merged model, stored as safetensors under the user cache (`llmcxr_cache_dir`),
loads in a fraction of that. An entry is named by the sha256 of the bytes it was made from (the
base's weight files, the adapter's files, the manifest and the image-token map), so a changed file
names a new entry; an entry that fails its size check or does not load is removed and rebuilt.
``LLMCXR_NO_MERGED_CACHE=1`` (or ``cache=False``) bypasses the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from cxrcommon.files import atomic_folder, atomic_write
from llmcxr import lean_llama
from llmcxr.base_model import llmcxr_cache_dir
from llmcxr.devices import is_out_of_memory

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from llmcxr.lean_llama import LeanLlama

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Part of every key: bump it when the way a merged model is built or stored changes."""
DISABLE_ENV = "LLMCXR_NO_MERGED_CACHE"
HASHES_FILE = "merged_base_hashes.json"
"""In the cache folder: each base weight file's sha256 with the size and mtime it was read at."""
ENTRY_FILE = "entry.json"
"""Written last into an entry: its version and the size of every file in it."""
MAX_ENTRIES = 3
"""Entries kept (the most recently used); each holds a whole fp32 model (~0.5 GB for SmolLM2)."""


def enabled(cache: bool = True) -> bool:
    """Whether to use the cache: ``cache`` and not turned off by ``$LLMCXR_NO_MERGED_CACHE``."""
    return cache and os.environ.get(DISABLE_ENV, "").strip().lower() in ("", "0", "false", "no")


def entry_for(
    base_files: Sequence[Path] | None, model_files: Sequence[Path], cache_dir: Path | None = None
) -> Path | None:
    """The entry folder of the model made from `base_files` and `model_files`, named by the sha256
    of their bytes; None when the base has no files to key it by (a tiny or hub model)."""
    if not base_files:
        return None
    root = (cache_dir or llmcxr_cache_dir()) / "merged"
    key = hashlib.sha256(f"llmcxr-merged-v{CACHE_VERSION}\n".encode())
    for role, files in (("base", base_files), ("model", model_files)):
        for path in files:
            digest = _base_digest(root, path) if role == "base" else _digest(path)
            key.update(f"{role} {path.name} {digest}\n".encode())
    return root / key.hexdigest()


def _digest(path: Path) -> str:
    from llmcxr.gpu_kit.parts import sha256_file  # standard library only

    return sha256_file(path) if path.is_file() else "missing"


def _base_digest(root: Path, path: Path) -> str:
    """The sha256 of a base weight file, re-read only when its size or mtime changed: hashing the
    93 MB SmolLM2 GGUF took 0.4-1.0 s of every load. Adapter files are small and always hashed."""
    if not path.is_file():
        return "missing"
    memo_file = root.parent / HASHES_FILE
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    stat = path.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    known = memo.get(str(path.resolve())) if isinstance(memo, dict) else None
    if isinstance(known, dict) and known.get("stamp") == stamp and known.get("sha256"):
        return str(known["sha256"])
    digest = _digest(path)
    memo = memo if isinstance(memo, dict) else {}
    memo[str(path.resolve())] = {"stamp": stamp, "sha256": digest}
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo_file, lambda tmp: tmp.write_text(json.dumps(memo, indent=1) + "\n"))
    except OSError:
        pass  # a read-only cache: hash again next time
    return digest


def load(
    entry: Path, lean: bool = False, dtype: torch.dtype | None = None
) -> PreTrainedModel | LeanLlama | None:
    """The merged model stored in `entry`, in `dtype` (None: as stored); None when there is none,
    or when it is damaged (then it is removed, to be rebuilt). ``lean`` reads a plain Llama with
    the transformers-free `llmcxr.lean_llama` (other architectures still load with transformers),
    which converts before it fuses its projections, so it copies the weights once."""
    if not (entry / ENTRY_FILE).is_file():
        return None
    try:
        info = _checked_info(entry)
        if lean and lean_llama.supports(entry):
            model = lean_llama.LeanLlama.from_folder(entry, dtype)
        else:
            model = _read(entry, info)
            model = model.to(dtype) if dtype is not None else model
    except Exception as err:  # json, safetensors and transformers raise many types
        if is_out_of_memory(err):
            raise
        log.warning("the merged-model cache %s is damaged (%s); rebuilding it", entry, err)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    try:
        os.utime(entry / ENTRY_FILE)  # recency, for pruning
    except OSError:
        pass
    return model


def store(entry: Path, model: PreTrainedModel) -> bool:
    """Write `model` (merged, full) to `entry` atomically; False, with a warning, when the cache
    cannot be written (read-only, full): the caller keeps the model merged in memory."""

    log.info("building the merged-model cache %s (once per model)", entry)
    try:
        with atomic_folder(entry) as tmp:
            model.save_pretrained(tmp)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            info = {"version": CACHE_VERSION, "files": files}
            (tmp / ENTRY_FILE).write_text(json.dumps(info, indent=2) + "\n")
    except OSError as err:
        log.warning(
            "cannot write the merged-model cache under %s (%s); the adapter is merged in memory "
            "on every load (set %s=1 to skip the cache)",
            entry.parent,
            err,
            DISABLE_ENV,
        )
        return False
    prune(entry.parent, keep=entry)
    return True


def prune(root: Path, keep: Path) -> None:
    """Remove all but the `MAX_ENTRIES` most recently used entries under `root` (never `keep`)."""
    entries = [p for p in root.iterdir() if (p / ENTRY_FILE).is_file() and p != keep]
    entries.sort(key=lambda p: (p / ENTRY_FILE).stat().st_mtime, reverse=True)
    for old in entries[MAX_ENTRIES - 1 :]:
        log.info("removing the least recently used merged-model cache %s", old)
        shutil.rmtree(old, ignore_errors=True)


def _checked_info(entry: Path) -> dict:
    """The entry's `ENTRY_FILE`; raises when its version or any file's size differs from what
    `store` wrote."""
    info = json.loads((entry / ENTRY_FILE).read_text())
    if info.get("version") != CACHE_VERSION:
        raise ValueError(f"version {info.get('version')!r}, expected {CACHE_VERSION}")
    for name, size in info["files"].items():
        found = (entry / name).stat().st_size
        if found != size:
            raise ValueError(f"{name} has {found} bytes, expected {size}")
    return info


def _read(entry: Path, info: dict) -> PreTrainedModel:
    """Build the model skeleton without initialising weights, then adopt the stored tensors."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(entry, local_files_only=True, trust_remote_code=False)
    with _no_init_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    tensors = {}
    for name in info["files"]:
        if name.endswith(".safetensors"):
            tensors.update(load_file(entry / name))
    result = model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    # A key the file lacks must be tied to one it has, or it would keep uninitialised memory.
    stored = {tensor.data_ptr() for tensor in tensors.values()}
    state = model.state_dict()
    untied = [key for key in result.missing_keys if state[key].data_ptr() not in stored]
    if untied or result.unexpected_keys:
        raise ValueError(f"missing {untied[:3]}, unexpected {result.unexpected_keys[:3]}")
    if (entry / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(entry, local_files_only=True)
    return model


def _no_init_weights() -> AbstractContextManager[None]:
    """transformers' context that skips random weight initialisation (moved in v5)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()
