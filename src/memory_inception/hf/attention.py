"""The attention functions registered with transformers' `AttentionInterface`: `mi_sdpa`, `mi_eager`,
`mi_flex_attention`, and `mi_flash_attention_2` where flash-attn is installed.

Each wraps the stock function of its implementation: unselected layers, heads and rows get the stock output with
the stock mask, so they compute exactly what the unmodified model computes; site layers run
`core.site_layer.steer_attention`, told how to read this implementation's mask (a tensor, flex attention's
BlockMask, or flash attention's 2-D padding mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask, flash_attention_mask, flex_attention_mask, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward
from transformers.utils import is_flash_attn_2_available

from memory_inception.core.architecture import STEERED_PREFIX
from memory_inception.core.plan import LayerPlan
from memory_inception.core.site_layer import Visibility, steer_attention


def block_mask_visibility(mask, batch: int, q_len: int, kv_len: int, rows: torch.Tensor | None) -> torch.Tensor:
    """Which keys each steered row sees under flex attention's BlockMask: its `mask_mod` at those positions."""
    device = mask.kv_num_blocks.device
    q = torch.arange(q_len, device=device).expand(batch, q_len) if rows is None else rows.to(device)
    b = torch.arange(batch, device=device).view(batch, 1, 1)
    h = torch.zeros((), dtype=torch.long, device=device)
    kv = torch.arange(kv_len, device=device).view(1, 1, kv_len)
    return mask.mask_mod(b, h, q.unsqueeze(-1), kv).expand(batch, q.shape[1], kv_len)


def padding_visibility(mask, batch: int, q_len: int, kv_len: int, rows: torch.Tensor | None) -> torch.Tensor:
    """Which keys each steered row sees under flash attention's 2-D padding mask `[B, S]`: causal, not padding."""
    device = mask.device
    q = torch.arange(q_len, device=device).expand(batch, q_len) if rows is None else rows.to(device)
    causal = torch.arange(kv_len, device=device).view(1, 1, kv_len) <= (kv_len - q_len + q).unsqueeze(-1)
    return causal & mask[:, -kv_len:].bool().unsqueeze(1)


def _steered(stock: Callable, visibility: Visibility | None) -> Callable:
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        plan: LayerPlan | None = getattr(module, "_mi_plan", None)
        if plan is None or plan.state.rows is None:
            return stock(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if scaling is None:
            scaling = 1.0 / math.sqrt(query.shape[-1])
        out = steer_attention(
            module, plan, query, key, value, attention_mask, scaling, stock, {"dropout": dropout, **kwargs}, visibility
        )
        return out, None

    attention.__name__ = f"memory_inception_{stock.__name__}"
    return attention


# stock implementation -> (its attention function, its mask function, how to read its mask at steered rows)
STOCK: dict[str, tuple[Callable, Callable, Visibility | None]] = {
    "sdpa": (sdpa_attention_forward, sdpa_mask, None),
    "eager": (eager_attention_forward, eager_mask, None),
    "flex_attention": (flex_attention_forward, flex_attention_mask, block_mask_visibility),
}
if is_flash_attn_2_available():  # pragma: no cover - needs flash-attn (a CUDA machine)
    from transformers.integrations.flash_attention import flash_attention_forward

    STOCK["flash_attention_2"] = (flash_attention_forward, flash_attention_mask, padding_visibility)


def steered_name(stock: str) -> str:
    """The name MI's attention function for the stock implementation `stock` is registered under."""
    return STEERED_PREFIX + stock


for _name, (_function, _mask, _visibility) in STOCK.items():
    AttentionInterface.register(steered_name(_name), _steered(_function, _visibility))
    AttentionMaskInterface.register(steered_name(_name), _mask)
