"""A transformers-free inference engine for merged Llama models: the forward and the tokenizer.

Why hand-written: every `llmcxr` command is a cold start, and importing transformers' modelling
code pulls in `torch._dynamo` and torchvision (through `transformers.integrations` and
`transformers.utils.type_validators`): about 3.5 s of a 12 s `generate-image` on our 2-core CPUs
(`-X importtime`, 2026-11-29), before any weight is read. A merged model (`llmcxr.merged_cache`)
needs none of it: this module runs the Llama architecture as transformers implements it (RMSNorm,
rotary embeddings in the half-rotation layout, grouped-query attention, SwiGLU MLP, tied head)
over the same safetensors, read under the same parameter names, and reads the text tokenizer with
`tokenizers`. Tests check its logits and token ids against transformers' on the same files.

Three changes make a decode step faster on a CPU: the layers' projections that share an input are
fused after loading (`_fused`, same values), the KV cache is fp32 on a CPU
(`LeanDecoder.new_cache`, so bf16 attention runs in fp32), and every plain projection runs through
`llmcxr.cpu_linear` (fp32 products of few rows on every thread, one bf16 row on ATen's kernel).

Only plain Llama configs are accepted (`LeanConfig.from_dict` says why not); anything else, and
training, goes through transformers. The modules mimic the few methods `llmcxr.decoding` calls
(`get_decoder`, `get_output_embeddings`, a decoder that takes and returns a ``cache``), so both
engines share one decoding loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmcxr import cpu_linear

CONFIG_FILE = "config.json"


class UnsupportedModelError(ValueError):
    """The model is not a plain Llama this engine runs; load it with transformers instead."""


@dataclass(frozen=True)
class LeanConfig:
    """The shape of a plain Llama, read from its transformers `config.json`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> LeanConfig:
        """The config of a plain Llama; `UnsupportedModelError` naming what differs otherwise."""
        if not isinstance(config, dict):
            raise UnsupportedModelError(f"config is a {type(config).__name__}, not an object")
        if config.get("model_type") != "llama":
            raise UnsupportedModelError(f"model_type {config.get('model_type')!r}, not 'llama'")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        for name, value, plain in (
            ("hidden_act", config.get("hidden_act", "silu"), "silu"),
            ("rope_type", rope_type, "default"),
            ("attention_bias", bool(config.get("attention_bias")), False),
            ("mlp_bias", bool(config.get("mlp_bias")), False),
            ("pretraining_tp", config.get("pretraining_tp", 1), 1),
        ):
            if value != plain:
                raise UnsupportedModelError(f"{name} {value!r} (this engine runs {plain!r})")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        ):
            if not isinstance(config.get(name), int) or config[name] < 1:
                raise UnsupportedModelError(f"{name} {config.get(name)!r}: not a positive int")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


@dataclass
class LeanCache:
    """Per-layer keys and values [B, KV heads, capacity, D]; the first `length` slots are filled.

    Grown by doubling, so a decode step writes in place instead of concatenating every layer.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store `k`, `v` [B, KV, T, D] after the filled slots; return all keys and values so far
        (views). The caller advances `length` once per forward, after the last layer."""
        end = self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            self.keys[layer] = _grown(self.keys[layer], end)
            self.values[layer] = _grown(self.values[layer], end)
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row `repeats` times in a row (transformers' `Cache` method of the same name), so
        one prompt's cache serves several continuations."""
        self.keys = [k[:, :, : self.length].repeat_interleave(repeats, 0) for k in self.keys]
        self.values = [v[:, :, : self.length].repeat_interleave(repeats, 0) for v in self.values]


def _grown(buffer: torch.Tensor, needed: int) -> torch.Tensor:
    capacity = max(needed, 2 * buffer.shape[2], 64)
    grown = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    grown[:, :, : buffer.shape[2]] = buffer
    return grown


@dataclass
class DecoderOutput:
    """What `LeanDecoder.forward` returns (the attribute names of transformers' output)."""

    last_hidden_state: torch.Tensor
    cache: LeanCache


@dataclass
class CausalLMOutput:
    """What `LeanLlama.forward` returns (the attribute names of transformers' output)."""

    logits: torch.Tensor
    cache: LeanCache


class _Attention(nn.Module):
    def __init__(self, c: LeanConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        # Loaded under transformers' names, then fused into `qkv_proj` (`LeanLlama._fuse`).
        self.q_proj = nn.Linear(c.hidden_size, self.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * c.head_dim, c.hidden_size, bias=False)

    def _fuse(self) -> None:
        self.qkv_proj = _fused(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: LeanCache,
        layer: int,
    ) -> torch.Tensor:
        batch, width, _ = x.shape
        # [B, T, H + 2 KV, D]
        qkv = _project(self.qkv_proj, x).view(batch, width, -1, self.head_dim)
        cos, sin = rotary
        qk, v = qkv.split((self.heads + self.kv_heads, self.kv_heads), dim=2)
        q, k = _rotate(qk, cos, sin).transpose(1, 2).split((self.heads, self.kv_heads), dim=1)
        k, v = cache.append(layer, k, v.transpose(1, 2))
        out = F.scaled_dot_product_attention(
            q.to(k.dtype), k, v, attn_mask=mask, enable_gqa=self.kv_heads != self.heads
        ).to(x.dtype)
        return _project(self.o_proj, out.transpose(1, 2).reshape(batch, width, -1))


def _fused(*linears: nn.Linear) -> nn.Linear:
    """One Linear computing the bias-free `linears` on one input, outputs side by side.

    A decode step multiplies one row by each weight, and one larger product streams better than
    several small ones: on a 2-core EPYC (avx512_bf16, 2026-12-06, weights in cache) q, k and v
    as one bf16 product took 31 us instead of 79, gate and up 78 instead of 89 (fp16 weights:
    22 / 45 instead of 41 / 50; fp32 equal). Each output is still its own weights' dot product,
    so the values are those of the separate layers."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


class _PackedLinear(nn.Module):
    """A bias-free Linear whose weight is held only as oneDNN's packed copy (`cpu_linear.pack`)."""

    def __init__(self, packed: torch.Tensor) -> None:
        super().__init__()
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_linear.linear_packed(x, self.packed)

    def unpacked(self) -> nn.Linear:
        """The plain Linear again (the packed copy holds the same values)."""
        weight = self.packed.to_dense()
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        return linear

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Module:
        # oneDNN's opaque tensors cannot be copied as such: copy the values and pack again
        plain = self.unpacked()
        packed = cpu_linear.pack(plain.weight.detach())
        return plain if packed is None else _PackedLinear(packed)


class _PackedHeads(dict):
    """`LeanLlama.head_product`'s packed head rows by (lo, hi); a copy starts empty (it packs
    its own rows again at first use: opaque tensors cannot be copied)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _PackedHeads:
        return _PackedHeads()


_PROJECTIONS = (("self_attn", "qkv_proj"), ("self_attn", "o_proj"), ("mlp", "gate_up_proj"),
                ("mlp", "down_proj"))  # fmt: skip


def _project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a projection: a plain Linear through `cpu_linear.linear` (an fp32 CPU decode step
    then uses every thread), a quantised layer (`llmcxr.devices`) as itself."""
    if type(layer) is nn.Linear:
        return cpu_linear.linear(x, layer.weight, layer.bias)
    return layer(x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in transformers' Llama layout: the two halves of each head are a pair.

    transformers multiplies ``cat(-x2, x1)`` by ``sin``; this multiplies ``roll(x) = cat(x2, x1)``
    by ``signed_sin = cat(-sin1, sin2)`` (`LeanDecoder._rotary`), the same products since a sign
    flip is exact, in two ops fewer (5.4 instead of 8.7 us per layer and token on a 2-core EPYC,
    2026-12-07)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class _MLP(nn.Module):
    def __init__(self, c: LeanConfig) -> None:
        super().__init__()
        # Loaded under transformers' names, then fused into `gate_up_proj` (`LeanLlama._fuse`).
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def _fuse(self) -> None:
        self.gate_up_proj = _fused(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = _project(self.gate_up_proj, x).chunk(2, dim=-1)
        return _project(self.down_proj, F.silu(gate) * up)


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As transformers' LlamaRMSNorm: normalise in fp32, scale in the input's dtype.
        normed = F.rms_norm(x, (x.shape[-1],), eps=self.eps)
        return self.weight * normed


class _Layer(nn.Module):
    def __init__(self, c: LeanConfig) -> None:
        super().__init__()
        self.self_attn = _Attention(c)
        self.mlp = _MLP(c)
        self.input_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)


class LeanDecoder(nn.Module):
    """The Llama body (embeddings, layers, final norm); parameter names as transformers'."""

    def __init__(self, c: LeanConfig) -> None:
        super().__init__()
        self.config = c
        # Weights are given (not drawn): random init of a meta embedding imports torch's
        # reference ops, ~1.9 s of a cold start.
        weight = torch.empty(c.vocab_size, c.hidden_size)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        # On the CPU even while the weights are built on "meta" (a meta arange imports dynamo).
        steps = torch.arange(0, c.head_dim, 2, dtype=torch.float32, device="cpu")
        inv_freq = 1.0 / (c.rope_theta ** (steps / c.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def new_cache(self, batch: int) -> LeanCache:
        """An empty cache; in fp32 on a CPU whatever the weights' dtype.

        A decode step's one query against a bf16 cache takes CPU attention 83 us per layer at 150
        keys and 190 us at 400; in fp32 it takes 20 and 30 (2-core EPYC with avx512_bf16,
        2026-12-06). The keys and values are rounded to the weights' dtype before they are stored,
        so only the attention's arithmetic is wider."""
        c, p = self.config, self.embed_tokens.weight
        dtype = torch.float32 if p.device.type == "cpu" else p.dtype
        shape = (batch, c.num_key_value_heads, 0, c.head_dim)
        return LeanCache(
            keys=[p.new_empty(shape, dtype=dtype) for _ in range(c.num_hidden_layers)],
            values=[p.new_empty(shape, dtype=dtype) for _ in range(c.num_hidden_layers)],
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: LeanCache | None = None,
        use_cache: bool = True,
    ) -> DecoderOutput:
        """`input_ids` and `position_ids` [B, T] are the new tokens; `attention_mask` [B, S]
        covers the cached and the new ones (1 = a real token, 0 = left padding)."""
        del use_cache  # always cached: the argument exists for transformers' calling convention
        cache = cache if cache is not None else self.new_cache(input_ids.shape[0])
        x = self.embed_tokens(input_ids)
        rotary = self._rotary(position_ids, x.dtype)
        mask = _attention_mask(attention_mask, cache.length, input_ids.shape[1])
        for i, layer in enumerate(self.layers):
            x = x + layer.self_attn(layer.input_layernorm(x), rotary, mask, cache, i)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.length += input_ids.shape[1]
        return DecoderOutput(last_hidden_state=self.norm(x), cache=cache)

    def _rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """cos and signed sin (`_rotate`) [B, T, 1, D] of `positions` [B, T], in `dtype`."""
        freqs = positions[..., None].float() * self.inv_freq  # [B, T, D/2], in fp32 as HF
        cos, sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
        return torch.cat((cos, cos), dim=-1)[:, :, None], torch.cat((-sin, sin), dim=-1)[:, :, None]


def _attention_mask(attention_mask: torch.Tensor, past: int, width: int) -> torch.Tensor | None:
    """Boolean [B, 1, T, S] (True = may attend): causal, padding keys hidden. A query may always
    see itself, so a padding query's row is never empty (depending on the SDPA backend, an empty
    row gives zeros or NaN, and NaN would leak through the zero weights of later layers).

    None when one new token per row follows unpadded rows: it may attend to every key, and
    attention without a mask skips building one per step and runs faster (a decode step of one
    report: 12 instead of 15 us per layer; 2-core EPYC, 2026-12-07)."""
    if width == 1 and bool(attention_mask.all()):
        return None
    total = attention_mask.shape[1]
    query = torch.arange(past, past + width, device=attention_mask.device)[:, None]
    key = torch.arange(total, device=attention_mask.device)[None, :]
    allowed = (key <= query)[None] & attention_mask.bool()[:, None, :]
    allowed |= (key == query)[None]
    return allowed[:, None]


class LeanLlama(nn.Module):
    """A Llama causal LM for inference (`llmcxr.decoding` drives it with a KV cache)."""

    def __init__(self, c: LeanConfig, raw_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = LeanDecoder(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.packed = False
        self._heads = _PackedHeads()
        # The attributes `llmcxr` reads from a transformers config (context length, ids, scaling).
        self.config = SimpleNamespace(**(raw_config or {}))
        self.config.max_position_embeddings = c.max_position_embeddings

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype | None = None) -> LeanLlama:
        """Load `config.json` and the `*.safetensors` weights of a merged model folder; every
        parameter must be in the files (tied ones excepted). `UnsupportedModelError` for a model
        this engine does not run."""
        from safetensors.torch import load_file

        raw = json.loads((folder / CONFIG_FILE).read_text())
        config = LeanConfig.from_dict(raw)
        with torch.device("meta"):
            model = cls(config, raw)
        tensors: dict[str, torch.Tensor] = {}
        for path in sorted(folder.glob("*.safetensors")):
            tensors.update(load_file(path))
        expected = {name for name, _ in model.named_parameters()}
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        missing = expected - tensors.keys() - tied
        unexpected = tensors.keys() - expected - {"lm_head.weight"}
        if missing or unexpected:
            raise ValueError(
                f"{folder}: weights do not match a {config.num_hidden_layers}-layer Llama "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        for name, tensor in tensors.items():
            if name in expected and tensor.shape != model.get_parameter(name).shape:
                raise ValueError(
                    f"{folder}: {name} has shape {list(tensor.shape)}, expected "
                    f"{list(model.get_parameter(name).shape)}"
                )
        if config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        model.load_state_dict(tensors, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model = model.to(dtype) if dtype is not None else model
        model._fuse()
        return model.eval()

    def _fuse(self) -> None:
        """Fuse each layer's q, k, v and gate, up projections into one Linear each (`_fused`)."""
        for layer in self.model.layers:
            layer.self_attn._fuse()
            layer.mlp._fuse()

    def pack(self) -> bool:
        """Hold every layer's projections as oneDNN packed weights (`cpu_linear.pack`), and
        let `head_product` pack the head rows it serves. A prefill's and a multi-row forward's
        products then take ~60 % of their time in bf16 and ~50 % in fp32 (`llmcxr.cpu_linear`);
        the 10 new tokens of a warm report took 152 instead of 164 ms in bf16 and 275 instead of
        344 in fp32 (2-core EPYC, 2026-12-07, interleaved in one process). False, and nothing
        changed, where packing does not apply (not a CPU, another dtype, no such kernel) or was
        done already. `unpack` undoes it."""
        if self.packed:
            return False
        for layer in self.model.layers:
            for part, name in _PROJECTIONS:
                module = getattr(layer, part)
                projection = getattr(module, name)
                packed = (
                    None
                    if type(projection) is not nn.Linear
                    else cpu_linear.pack(projection.weight.detach())
                )
                if packed is None:
                    if not self.packed:
                        return False  # the first refusal: nothing packed, nothing changed
                    continue  # a later one keeps that plain Linear
                setattr(module, name, _PackedLinear(packed))
                self.packed = True
        return self.packed

    def unpack(self) -> None:
        """Plain Linears again (before a speed mode that quantises them, `llmcxr.devices`)."""
        for layer in self.model.layers:
            for part, name in _PROJECTIONS:
                module = getattr(layer, part)
                projection = getattr(module, name)
                if isinstance(projection, _PackedLinear):
                    setattr(module, name, projection.unpacked())
        self.packed = False
        self._heads.clear()

    def head_product(self, lo: int, hi: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Once `pack` ran, a function hidden [..., H] -> logits of vocabulary rows [`lo`, `hi`)
        on a packed copy of those head rows (packed at the first call, then kept); else None
        (multiply the head's weight as it is)."""
        head = self.lm_head
        if not self.packed or type(head) is not nn.Linear:
            return None
        if (lo, hi) not in self._heads:
            self._heads[(lo, hi)] = cpu_linear.pack(head.weight[lo:hi].detach().contiguous())
        packed = self._heads[(lo, hi)]
        if packed is None:
            return None
        bias = None if head.bias is None else head.bias[lo:hi].detach()
        return partial(cpu_linear.linear_packed, packed=packed, bias=bias)

    def _apply(self, fn: Any, recurse: bool = True) -> LeanLlama:
        """`to`, `float`, `cuda` ... on a packed model: unpacked, moved, packed again where it
        still applies (packed weights are not parameters, so torch would not move them)."""
        was = self.packed
        if was:
            self.unpack()
        super()._apply(fn, recurse)
        if was:
            self.pack()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def get_decoder(self) -> LeanDecoder:
        return self.model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, head: nn.Linear) -> None:
        self.lm_head = head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: LeanCache | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        """Logits [B, T, V] (the last `logits_to_keep` positions; 0 = all) of a left-padded
        batch, as ``.logits`` like transformers' output."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids, attention_mask, position_ids, cache, use_cache)
        hidden = out.last_hidden_state[:, -logits_to_keep:]
        return CausalLMOutput(logits=_project(self.lm_head, hidden), cache=out.cache)


class LeanTokenizer:
    """A saved transformers fast tokenizer (`tokenizer.json`) read with `tokenizers` alone: the
    calls `llmcxr` makes on a text tokenizer (encode, decode, pad / EOS ids, length)."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.eos_token_id = self._special_id(config.get("eos_token"))
        pad = self._special_id(config.get("pad_token"))
        self.pad_token_id = pad if pad is not None else self.eos_token_id
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces"))

    def _special_id(self, token: Any) -> int | None:
        if isinstance(token, dict):  # older files store an AddedToken's fields
            token = token.get("content")
        return None if not isinstance(token, str) else self._tok.token_to_id(token)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self.clean_up_tokenization_spaces else text

    def batch_decode(self, batch: Any, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]


def _clean_up(text: str) -> str:
    """transformers' `clean_up_tokenization` (spaces before punctuation and contractions)."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text


def supports(folder: Path) -> bool:
    """Whether `folder` (a merged model) is a plain Llama this engine runs."""
    try:
        LeanConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


__all__ = [
    "LeanCache",
    "LeanConfig",
    "LeanLlama",
    "LeanTokenizer",
    "UnsupportedModelError",
    "supports",
]
