"""The Memory Inception operator at one site (spec section 3) and its attention-interface functions.

`site_attention` is the math, in the spec's order. `mi_sdpa` / `mi_eager` are the functions registered with
transformers' `AttentionInterface`: unselected layers, heads and rows go to the stock sdpa / eager function
with the stock mask, so they compute exactly what the unmodified model computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from .architecture import undo_rope

STOCK_TO_STEERED = {"sdpa": "mi_sdpa", "eager": "mi_eager"}


@dataclass
class ForwardState:
    """What one forward pass needs at every site: which rows are steered and the RoPE it applied.

    `rows` is None (no row steered), "all", a LongTensor `[B, R]` of steered positions per batch row,
    or a BoolTensor `[B, T]` mask (explicit positions, blended with the stock output).
    """

    rows: None | str | torch.Tensor = None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None


@dataclass
class LayerPlan:
    """Everything the operator needs at one layer, prepared once per `inject` (no work on the hot path)."""

    layer: int
    heads: torch.Tensor  # [Hs] selected query heads
    kv_index: torch.Tensor  # [Hs] KV head each selected head reads
    all_heads: bool
    group_size: int
    bank_keys: torch.Tensor  # [Hs or H_kv when all heads, M, d]: pre-RoPE (canonical) or at prefix positions
    bank_values: torch.Tensor  # [Hs or H_kv when all heads, M, d]
    slot_bias: torch.Tensor  # [M]: -log M_b (normalize="paper") plus every gain that does not depend on the gate
    target: slice | None  # slots of the target bank, when the gate applies
    reference: slice | None  # slots of the reference bank, when the gate applies
    positive: float  # rho_l * positive_gain
    negative: float  # rho_l * negative_gain
    gate_scale: float
    canonical: bool
    normalize: bool
    state: ForwardState = field(repr=False, default_factory=ForwardState)
    # diagnostics (site selection): called as trace(plan, bank_scores, probs, num_prompt_keys) after each mixture
    trace: Callable[[LayerPlan, torch.Tensor, torch.Tensor, int], None] | None = field(repr=False, default=None)


def site_attention(
    query: torch.Tensor,
    bank_query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    log_visible: torch.Tensor | float,
    scaling: float,
    plan: LayerPlan,
) -> torch.Tensor:
    """Steered output of selected heads: one softmax over prompt and bank slots (spec section 3).

    query / bank_query: `[B, Hs, R, d]` (bank_query is pre-RoPE in canonical mode); key / value: `[B, Hs, S, d]`
    (with grouped heads, Hs is the KV heads and R folds each group's query heads); prompt_mask: additive
    `[B, 1, R, S]` or None; log_visible: log N_t, the number of keys each row sees (`[B, 1, R, 1]` or a float).
    Returns `[B, Hs, R, d]`.
    """
    # prompt scores x_j = s <q_t, k_j> over visible keys
    x = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if prompt_mask is not None:
        x = x + prompt_mask
    # bank scores b_m = s <q~_t, k~_m>
    b = torch.matmul(bank_query, plan.bank_keys.transpose(-1, -2)) * scaling
    # bank evidence offsets: c_b - log M_b, shifted by + log N_t so the prompt scores need no offset:
    # softmax([x - log N ; b - log M + c]) == softmax([x ; b - log M + c + log N])
    offset = plan.slot_bias
    if plan.target is not None:
        # query gate u = gate_scale (max_m b_target - max_n b_reference), g+ = sigmoid(u), g- = sigmoid(-u)
        u = plan.gate_scale * (b[..., plan.target].amax(-1, keepdim=True) - b[..., plan.reference].amax(-1, keepdim=True))
        gains = torch.zeros_like(b)
        gains[..., plan.target] = plan.positive * torch.sigmoid(u)
        gains[..., plan.reference] = -plan.negative * torch.sigmoid(-u)
        offset = offset + gains
    if plan.normalize:
        offset = offset + log_visible
    # mixture: pi = softmax over sources == one softmax over the concatenated scores
    scores = torch.cat([x, b + offset], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    s = key.shape[-2]
    if plan.trace is not None:
        plan.trace(plan, b, probs, s)
    return torch.matmul(probs[..., :s], value) + torch.matmul(probs[..., s:], plan.bank_values)


def _rows_of(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather per-batch rows `idx [B, R]` along `dim` (2 for [B, H, T, ...] tensors, 1 for [B, T, ...])."""
    shape = [1] * t.dim()
    shape[0], shape[dim] = idx.shape
    full = idx.view(shape).expand(*[t.shape[i] if i not in (0, dim) else shape[i] for i in range(t.dim())])
    return t.gather(dim, full)


def _prompt_mask(
    mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int, rows: torch.Tensor | None, device, dtype
) -> tuple[torch.Tensor | None, torch.Tensor | float]:
    """Additive prompt mask `[B, 1, R, S]` (None: all visible) and log N_t (`[B, 1, R, 1]`, or a float)."""
    if mask is None:
        if q_len == 1:  # decode without padding: the one query sees every key
            return None, math.log(kv_len)
        # stock sdpa used is_causal: query t sees keys 0 .. (S - T) + t
        pos = torch.arange(q_len, device=device).expand(batch, q_len) if rows is None else rows
        limit = (kv_len - q_len) + pos  # [B, R]
        visible = torch.arange(kv_len, device=device).view(1, 1, kv_len) <= limit.unsqueeze(-1)
    else:
        m = mask if rows is None else _rows_of(mask.expand(batch, -1, -1, -1), rows, 2)
        visible = m[:, 0] if m.dtype == torch.bool else m[:, 0] > torch.finfo(m.dtype).min / 2
    log_n = visible.sum(-1, keepdim=True).clamp(min=1).to(dtype).log().unsqueeze(1)
    additive = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))
    return additive.unsqueeze(1), log_n


def _steer(module, plan: LayerPlan, query, key, value, attention_mask, scaling, stock, kwargs) -> torch.Tensor:
    """Stock attention where nothing is steered, the operator on the selected heads and steered rows."""
    state = plan.state
    rows = state.rows
    batch, num_heads, q_len, dim = query.shape
    kv_len = key.shape[-2]
    blend = isinstance(rows, torch.Tensor) and rows.dtype == torch.bool
    gather = isinstance(rows, torch.Tensor) and not blend
    need_stock = not plan.all_heads or gather or blend
    out = stock(module, query, key, value, attention_mask, scaling=scaling, **kwargs)[0] if need_stock else None

    q = query if plan.all_heads else query[:, plan.heads]
    idx = rows if gather else None
    if idx is not None:
        q = _rows_of(q, idx, 2)
    if plan.canonical:
        cos, sin = state.cos, state.sin
        if idx is not None:
            cos, sin = _rows_of(cos.expand(batch, -1, -1), idx, 1), _rows_of(sin.expand(batch, -1, -1), idx, 1)
        bank_query = undo_rope(q, cos.unsqueeze(1).to(q.dtype), sin.unsqueeze(1).to(q.dtype))
    else:
        bank_query = q
    mask, log_n = _prompt_mask(attention_mask, batch, q_len, kv_len, idx, query.device, query.dtype)
    rows_n = q.shape[2]
    if plan.all_heads and plan.group_size > 1:
        # grouped: fold each KV group's query heads into rows, so keys and values are read, never copied
        g = plan.group_size
        q = q.reshape(batch, num_heads // g, g * rows_n, dim)
        bank_query = bank_query.reshape(batch, num_heads // g, g * rows_n, dim)
        mask = mask.repeat(1, 1, g, 1) if mask is not None else None
        log_n = log_n.repeat(1, 1, g, 1) if isinstance(log_n, torch.Tensor) else log_n
    elif not plan.all_heads:
        key, value = key[:, plan.kv_index], value[:, plan.kv_index]
    steered = site_attention(q, bank_query, key, value, mask, log_n, scaling, plan)
    steered = steered.reshape(batch, -1, rows_n, dim).transpose(1, 2)

    if out is None:
        return steered.contiguous()
    if isinstance(rows, str):  # "all" rows, a subset of heads
        out[:, :, plan.heads] = steered
        return out
    if blend:
        sel = rows.view(batch, q_len, 1, 1)
        if plan.all_heads:
            return torch.where(sel, steered, out)
        out[:, :, plan.heads] = torch.where(sel, steered, out[:, :, plan.heads])
        return out
    b = torch.arange(batch, device=out.device).view(batch, 1, 1)
    out[b, idx.unsqueeze(-1), plan.heads.view(1, 1, -1)] = steered
    return out


def _make_attention(stock: Callable) -> Callable:
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        plan: LayerPlan | None = getattr(module, "_mi_plan", None)
        if plan is None or plan.state.rows is None:
            return stock(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if scaling is None:
            scaling = 1.0 / math.sqrt(query.shape[-1])
        return _steer(module, plan, query, key, value, attention_mask, scaling, stock, {"dropout": dropout, **kwargs}), None

    attention.__name__ = f"memory_inception_{stock.__name__}"
    return attention


mi_sdpa = _make_attention(sdpa_attention_forward)
mi_eager = _make_attention(eager_attention_forward)

AttentionInterface.register("mi_sdpa", mi_sdpa)
AttentionInterface.register("mi_eager", mi_eager)
AttentionMaskInterface.register("mi_sdpa", sdpa_mask)
AttentionMaskInterface.register("mi_eager", eager_mask)
