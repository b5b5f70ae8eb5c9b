"""KV storage accounting (spec section 7): the one byte formula, for what visible prompting caches and what a bank
stores.

`kv_bytes` is the formula; every other count (prompting's cache, a bank at its sites, published model sizes in
the storage report) calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from memory_inception.core.architecture import ModelGeometry, geometry
from memory_inception.core.banks import Bank


def kv_bytes(layers: int, kv_heads: int, positions: int, head_dim: int, bytes_per_value: int) -> int:
    """Keys and values of `positions` tokens or slots at `layers` layers and `kv_heads` KV heads:
    `2 * layers * kv_heads * positions * head_dim * bytes_per_value`."""
    return 2 * layers * kv_heads * positions * head_dim * bytes_per_value


def prompt_kv_bytes(model: nn.Module | ModelGeometry, num_tokens: int, bytes_per_value: int | None = None) -> int:
    """Bytes a visible guidance text of `num_tokens` adds to the KV cache (every layer, every KV head).

    `bytes_per_value` defaults to the model's parameter size (needed when a geometry is given instead).
    """
    geo = model if isinstance(model, ModelGeometry) else geometry(model)
    if bytes_per_value is None:
        if isinstance(model, ModelGeometry):
            raise ValueError("prompt_kv_bytes of a geometry needs bytes_per_value")
        bytes_per_value = next(model.parameters()).element_size()
    return kv_bytes(geo.num_layers, geo.num_kv_heads, num_tokens, geo.head_dim, bytes_per_value)


def bank_bytes_at_sites(bank: Bank, heads_per_layer: Mapping[int, Sequence[int]], group_size: int) -> int:
    """Bytes of `bank` kept for these sites: per site layer, the KV groups its site heads read."""
    width = bank.keys(next(iter(heads_per_layer))).element_size() if heads_per_layer else 0
    return sum(
        kv_bytes(1, len({h // group_size for h in heads}), bank.num_slots, bank.head_dim, width)
        for heads in heads_per_layer.values()
    )
