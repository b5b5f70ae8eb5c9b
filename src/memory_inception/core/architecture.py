"""Geometry of a decoder-only transformers model: layers, heads, KV groups, rotary embedding, fingerprint."""

from __future__ import annotations

import hashlib
import inspect
import json
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from memory_inception.errors import SteeringError

# MI's attention functions are registered (hf/attention.py) under the stock implementation's name with this prefix.
STEERED_PREFIX = "mi_"


@dataclass(frozen=True)
class ModelGeometry:
    """What the library needs to know about a model's attention layout."""

    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The KV head (KV group) that query head `head` reads."""
        return head // self.group_size


def text_config(model: nn.Module):
    """The config that describes the decoder stack (the text config for composite models)."""
    config = model.config
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def geometry(model: nn.Module) -> ModelGeometry:
    """Read the attention geometry from the model's config."""
    return config_geometry(text_config(model))


def config_geometry(cfg) -> ModelGeometry:
    """The attention geometry described by a (text) config, without a model (the vLLM worker has none)."""
    num_heads = cfg.num_attention_heads
    num_kv = getattr(cfg, "num_key_value_heads", None) or num_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
    return ModelGeometry(
        model_type=str(getattr(cfg, "model_type", "unknown")),
        num_layers=cfg.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
    )


def is_steered(model: nn.Module) -> bool:
    """Whether an `inject` block is live on `model` (its attention implementation is one of MI's)."""
    return str(getattr(text_config(model), "_attn_implementation", None) or "").startswith(STEERED_PREFIX)


def cache_kwargs(model: nn.Module, cache) -> dict:
    """`{name: cache}` for a forward or generate call: transformers 5.20+ calls it `cache`, earlier `past_key_values`."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def output_cache(output):
    """The KV cache a forward returned (`output.cache` from transformers 5.20, `output.past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def attention_modules(model: nn.Module) -> dict[int, nn.Module]:
    """Map layer index -> self-attention module (modules that carry a `layer_idx` and q/k/v projections)."""
    found: dict[int, nn.Module] = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if idx is None or not hasattr(module, "q_proj") or not hasattr(module, "k_proj"):
            continue
        found.setdefault(int(idx), module)
    n = geometry(model).num_layers
    if sorted(found) != list(range(n)):
        raise SteeringError(
            f"could not find one attention module per layer (found layers {sorted(found)}, expected 0..{n - 1}); "
            "memory-inception supports decoder-only models whose attention modules follow transformers' "
            "AttentionInterface layout (Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE and their relatives)"
        )
    return found


def rotary_embedding(model: nn.Module) -> nn.Module:
    """The model's single rotary embedding module (it computes the cos/sin every layer applies)."""
    found = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    if len(found) != 1:
        raise SteeringError(
            f"expected exactly one rotary embedding module, found {len(found)}; canonical and prefix positions "
            "need the model's RoPE (models with several rotary modules or none are not supported yet)"
        )
    return found[0]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate half the hidden dims (the RoPE convention of transformers' Llama family)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """R(p) x for x [..., T, d] with cos/sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin


def undo_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """R(-p) x: the inverse rotation of `apply_rope` at the same positions (cos/sin from `inverse_tables`)."""
    return x * cos - rotate_half(x) * sin


def inverse_tables(rotary: nn.Module, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for `undo_rope`: scaled RoPE variants (YaRN, LongRoPE) multiply both by `attention_scaling`,
    so the inverse divides by its square; plain RoPE tables are returned as they are."""
    scale = float(getattr(rotary, "attention_scaling", 1.0) or 1.0)
    if scale == 1.0:
        return cos, sin
    return cos / scale**2, sin / scale**2


# Memo of `model_fingerprint` per layer-0 key projection module: a pure function of its weight, recomputed when
# the weight is replaced or changed in place (its version counter moves).
_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, tuple[int, int, str]] = weakref.WeakKeyDictionary()


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's geometry and of its first key projection (dtype-independent).

    Banks carry it so that a bank is never read by a model it was not built from. Hashed once per weight.
    """
    projection = attention_modules(model)[0].k_proj
    weight = projection.weight
    stamp = (id(weight), weight._version)
    hit = _FINGERPRINTS.get(projection)
    if hit is not None and hit[:2] == stamp:
        return hit[2]
    fingerprint = weights_fingerprint(geometry(model), weight)
    _FINGERPRINTS[projection] = (*stamp, fingerprint)
    return fingerprint


def weights_fingerprint(geo: ModelGeometry, first_key_projection: torch.Tensor) -> str:
    """`model_fingerprint` from the geometry and layer 0's key projection weight (e.g. read from a checkpoint)."""
    h = hashlib.sha256(json.dumps(geo.__dict__, sort_keys=True).encode())
    weight = first_key_projection.detach().to(device="cpu", dtype=torch.float32)
    # bfloat16 rounding makes fp32 and bf16 copies of one checkpoint agree.
    h.update(weight.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def decoder_layers(model: nn.Module) -> dict[int, nn.Module]:
    """Map layer index -> decoder layer (the module whose child is that layer's self-attention)."""
    attention = attention_modules(model)
    owner = {id(m): layer for layer, m in attention.items()}
    found: dict[int, nn.Module] = {}
    for module in model.modules():
        for child in module.children():
            if id(child) in owner:
                found.setdefault(owner[id(child)], module)
    if sorted(found) != sorted(attention):
        raise SteeringError("could not find the decoder layer that holds each attention module")
    return dict(sorted(found.items()))
