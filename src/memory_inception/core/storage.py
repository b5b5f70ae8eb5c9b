"""KV storage accounting (spec section 7): the one byte formula, for what visible prompting caches and what a bank
stores.

`kv_bytes` is the formula for what is not stored yet (prompting's cache, published model sizes in the storage
report); what a bank stores is its tensors' bytes, `Bank.nbytes` (restricted to the sites: `Bank.for_sites`).
"""

from __future__ import annotations

from torch import nn

from memory_inception.core.architecture import ModelGeometry, geometry


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
