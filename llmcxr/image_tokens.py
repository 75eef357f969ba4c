"""The one place where VQ-GAN codes become LLM token ids and back.

LLM-CXR appends one token per codebook entry to the text vocabulary and wraps every image
between start/end markers. `ImageTokenMap` holds that mapping (saved with the model as
``image_tokens.json``); `add_image_tokens` extends a tokenizer and model to match it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IMAGE_START_TOKEN = "<img_start>"
IMAGE_END_TOKEN = "<img_end>"
IMAGE_TOKENS_FILE = "image_tokens.json"


def image_code_token(code: int) -> str:
    """The text form of one codebook entry, e.g. ``<img_0042>``."""
    return f"<img_{code:04d}>"


@dataclass(frozen=True)
class ImageTokenMap:
    """Id <-> code mapping: codes ``0..codebook_size-1`` are ids ``first_code_id..``."""

    codebook_size: int
    first_code_id: int
    start_id: int
    end_id: int
    tokens_per_image: int

    def __post_init__(self) -> None:
        if self.codebook_size <= 0 or self.tokens_per_image <= 0:
            raise ValueError(
                f"codebook_size and tokens_per_image must be positive, got "
                f"{self.codebook_size} and {self.tokens_per_image}"
            )
        codes = self.image_token_ids
        if self.start_id in codes or self.end_id in codes or self.start_id == self.end_id:
            raise ValueError("image start/end ids must differ and lie outside the code id range")

    @property
    def image_token_ids(self) -> range:
        """Token ids of the codebook entries (markers excluded)."""
        return range(self.first_code_id, self.first_code_id + self.codebook_size)

    @property
    def span_length(self) -> int:
        """Tokens one image occupies in a sequence, markers included."""
        return self.tokens_per_image + 2

    def is_code_id(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the ids that are codebook tokens."""
        return (ids >= self.first_code_id) & (ids < self.first_code_id + self.codebook_size)

    def codes_to_ids(self, codes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Map VQ codes (any shape) to token ids; raises on codes outside the codebook."""
        codes_t = torch.as_tensor(codes, dtype=torch.long)
        if codes_t.numel() and (codes_t.min() < 0 or codes_t.max() >= self.codebook_size):
            raise ValueError(
                f"image codes must lie in [0, {self.codebook_size}), got "
                f"[{int(codes_t.min())}, {int(codes_t.max())}]"
            )
        return codes_t + self.first_code_id

    def ids_to_codes(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Map token ids (any shape) back to VQ codes; raises if any id is not a code token."""
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        bad = ~self.is_code_id(ids_t)
        if bad.any():
            raise ValueError(
                f"token id {int(ids_t[bad][0])} is not an image code token "
                "(image codes are ids "
                f"{self.first_code_id}..{self.first_code_id + self.codebook_size - 1})"
            )
        return ids_t - self.first_code_id

    def image_to_text_span(self, codes: torch.Tensor | Sequence[int]) -> list[int]:
        """Token ids of one image in a sequence: ``<img_start> codes... <img_end>``."""
        ids = self.codes_to_ids(codes).reshape(-1)
        if ids.numel() != self.tokens_per_image:
            raise ValueError(f"an image has {self.tokens_per_image} codes, got {ids.numel()}")
        return [self.start_id, *ids.tolist(), self.end_id]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> ImageTokenMap:
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / IMAGE_TOKENS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ImageTokenMap:
        path = Path(folder) / IMAGE_TOKENS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not an llmcxr model folder")
        return cls.from_dict(json.loads(path.read_text()))


def add_image_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    codebook_size: int,
    tokens_per_image: int,
    noise_std: float = 0.1,
    seed: int = 0,
) -> ImageTokenMap:
    """Add code tokens and image markers to `tokenizer` and `model`; return their mapping.

    Tokens are added as special tokens so ``decode(skip_special_tokens=True)`` never lets image
    tokens leak into report text. New embedding rows (input and, if untied, output) are set to
    the mean of the existing rows plus Gaussian noise of ``noise_std`` times the per-dimension
    std of the existing rows: transformers' own mean_resizing uses a 1e-9-scaled covariance,
    which leaves all 1,026 rows practically identical, so we initialise them here instead.
    """
    vocab = tokenizer.get_vocab()
    names = [image_code_token(c) for c in range(codebook_size)]
    if any(n in vocab for n in (IMAGE_START_TOKEN, *names[:1])):
        raise ValueError("the tokenizer already holds image tokens; load its saved ImageTokenMap")
    old_rows = model.get_input_embeddings().weight.shape[0]
    text_vocab = len(tokenizer)
    tokenizer.add_tokens([*names, IMAGE_START_TOKEN, IMAGE_END_TOKEN], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids([*names, IMAGE_START_TOKEN, IMAGE_END_TOKEN])
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise RuntimeError("the tokenizer did not assign contiguous ids to the image tokens")
    new_rows = max(old_rows, len(tokenizer))
    model.resize_token_embeddings(new_rows, mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    new_ids = torch.tensor(ids)
    known_rows = min(text_vocab, old_rows)
    _init_rows(model.get_input_embeddings().weight, new_ids, known_rows, noise_std, generator)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        _init_rows(out.weight, new_ids, known_rows, noise_std, generator)
    token_map = ImageTokenMap(
        codebook_size=codebook_size,
        first_code_id=ids[0],
        start_id=ids[-2],
        end_id=ids[-1],
        tokens_per_image=tokens_per_image,
    )
    log.info("added %d image tokens (ids %d..%d)", len(ids), ids[0], ids[-1])
    return token_map


@torch.no_grad()
def _init_rows(
    weight: torch.Tensor,
    rows: torch.Tensor,
    known_rows: int,
    noise_std: float,
    gen: torch.Generator,
) -> None:
    """Set `rows` of `weight` to mean + noise_std * std * N(0, 1) of its first `known_rows` rows."""
    known = weight[:known_rows].float()
    mean, std = known.mean(0), known.std(0)
    noise = torch.randn(len(rows), weight.shape[1], generator=gen)
    weight[rows] = (mean + noise_std * std * noise).to(weight.dtype)


@torch.no_grad()
def init_rows_from_codebook(
    model: PreTrainedModel,
    token_map: ImageTokenMap,
    codebook: torch.Tensor,
    scale: float = 0.5,
    seed: int = 0,
) -> None:
    """Set the code rows to the mean text row plus the VQ-GAN codebook under a fixed random
    projection to the LLM width, scaled per dimension by ``scale`` times the text rows' std.

    A Gaussian projection keeps the codebook's geometry (Johnson-Lindenstrauss): codes that decode
    to similar patches start with similar embeddings, instead of 1,024 unrelated random rows, so
    the LLM does not have to discover that structure from scratch on little compute. Markers keep
    their mean-plus-noise rows. Output rows are set too when they are not tied to the input.
    """
    if codebook.shape[0] != token_map.codebook_size:
        raise ValueError(
            f"codebook has {codebook.shape[0]} entries, the model has "
            f"{token_map.codebook_size} image tokens"
        )
    generator = torch.Generator().manual_seed(seed)
    embed = model.get_input_embeddings().weight
    projection = torch.randn(codebook.shape[1], embed.shape[1], generator=generator)
    centred = codebook.float() - codebook.float().mean(0)
    directions = centred @ projection  # [codes, width]
    directions = directions / directions.std(0).clamp(min=1e-8)  # unit std per dimension
    rows = torch.as_tensor(token_map.image_token_ids)
    weights = [embed]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != embed.data_ptr():
        weights.append(out.weight)
    for weight in weights:
        known = weight[: token_map.first_code_id].float()
        values = known.mean(0) + scale * known.std(0) * directions
        weight[rows] = values.to(weight.dtype)


def encode_text_with_images(
    text: str,
    image_codes: Sequence[torch.Tensor | Sequence[int]],
    tokenizer: PreTrainedTokenizerBase,
    token_map: ImageTokenMap,
    placeholder: str = "<image>",
) -> list[int]:
    """Token ids of `text` with each `placeholder` replaced by one image's marker-wrapped codes.

    The text pieces around a placeholder are tokenised separately (special tokens such as BOS only
    on the first piece), so an image span is always exactly ``image_to_text_span(codes)``.
    Training and inference must both build prompts this way to see the same ids.
    """
    pieces = text.split(placeholder)
    if len(pieces) - 1 != len(image_codes):
        raise ValueError(
            f"text has {len(pieces) - 1} {placeholder} placeholder(s) but {len(image_codes)} "
            "image(s)"
        )
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if piece:
            ids += tokenizer(piece, add_special_tokens=i == 0)["input_ids"]
        if i < len(image_codes):
            ids += token_map.image_to_text_span(image_codes[i])
    return ids
