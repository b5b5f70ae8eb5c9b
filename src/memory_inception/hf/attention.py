"""The attention functions registered with transformers' `AttentionInterface` (`mi_sdpa`, `mi_eager`).

Unselected layers, heads and rows go to the stock sdpa / eager function with the stock mask, so they compute
exactly what the unmodified model computes; site layers run `core.operator.steer_attention`."""

from __future__ import annotations

import math
from typing import Callable

from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from memory_inception.core.architecture import STOCK_TO_STEERED
from memory_inception.core.plan import LayerPlan
from memory_inception.core.site_layer import steer_attention


def _make_attention(stock: Callable) -> Callable:
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        plan: LayerPlan | None = getattr(module, "_mi_plan", None)
        if plan is None or plan.state.rows is None:
            return stock(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if scaling is None:
            scaling = 1.0 / math.sqrt(query.shape[-1])
        return steer_attention(module, plan, query, key, value, attention_mask, scaling, stock, {"dropout": dropout, **kwargs}), None

    attention.__name__ = f"memory_inception_{stock.__name__}"
    return attention


mi_sdpa = _make_attention(sdpa_attention_forward)


mi_eager = _make_attention(eager_attention_forward)

for _stock, _function, _mask in (("sdpa", mi_sdpa, sdpa_mask), ("eager", mi_eager, eager_mask)):
    AttentionInterface.register(STOCK_TO_STEERED[_stock], _function)
    AttentionMaskInterface.register(STOCK_TO_STEERED[_stock], _mask)
