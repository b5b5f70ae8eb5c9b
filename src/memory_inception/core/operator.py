"""The Memory Inception operator at one site (spec section 3), written in the spec's order.

`site_attention` is the math: prompt scores, bank scores, gains and gate, mixture. `steer_attention` runs it on
the selected heads and steered rows of one layer and keeps the stock output everywhere else."""

from __future__ import annotations

import math

import torch

from memory_inception.core.architecture import undo_rope
from memory_inception.core.plan import LayerPlan


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


def steer_attention(module, plan: LayerPlan, query, key, value, attention_mask, scaling, stock, kwargs) -> torch.Tensor:
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








