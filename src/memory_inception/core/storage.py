"""KV storage accounting (spec section 7): what visible prompting caches versus what a bank stores."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from memory_inception.core.architecture import geometry
from memory_inception.core.banks import Bank


def prompt_kv_bytes(model: nn.Module, num_tokens: int, bytes_per_value: int | None = None) -> int:
    """Bytes a visible guidance text of `num_tokens` adds to the KV cache: `2 * L * H_kv * T * d * bytes`."""
    geo = geometry(model)
    width = bytes_per_value or next(model.parameters()).element_size()
    return 2 * geo.num_layers * geo.num_kv_heads * num_tokens * geo.head_dim * width


def bank_kv_bytes(bank: Bank, layers: Iterable[int] | None = None, kv_heads: int | None = None) -> int:
    """Bytes of a bank restricted to `layers` (default: all its layers) and `kv_heads` stored heads per layer."""
    layers = list(bank.layers if layers is None else layers)
    heads = kv_heads or bank.num_kv_heads
    return 2 * len(layers) * heads * bank.num_slots * bank.head_dim * bank.keys(layers[0]).element_size()
