"""The Memory Inception operator at one site (spec section 3), written in the spec's order.

`site_attention` is the math: prompt scores, bank scores, gains and gate, mixture. `steer_attention` runs it on
the selected heads and steered rows of one layer and keeps the stock output everywhere else."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from memory_inception.core.architecture import undo_rope
from memory_inception.core.plan import ForwardState, LayerPlan


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
        on_target, on_reference = plan.gate_masks
        gains = (plan.positive * torch.sigmoid(u)) * on_target - (plan.negative * torch.sigmoid(-u)) * on_reference
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


def gather_rows(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather per-batch rows `idx [B, R]` along `dim` (2 for [B, H, T, ...] tensors, 1 for [B, T, ...])."""
    shape = [1] * t.dim()
    shape[0], shape[dim] = idx.shape
    full = idx.view(shape).expand(*[t.shape[i] if i not in (0, dim) else shape[i] for i in range(t.dim())])
    return t.gather(dim, full)


@dataclass
class Prepared:
    """What every site layer of one forward shares for one attention mask: the prompt mask and log N_t of the
    steered rows, their inverse RoPE tables, and the same mask and log N repeated for grouped heads."""

    mask: torch.Tensor | None  # additive [B, 1, R, S]; None when every row sees every key
    log_n: torch.Tensor | float  # [B, 1, R, 1] or a float
    cos: torch.Tensor | None  # [B, 1, R, d] (canonical positions)
    sin: torch.Tensor | None
    grouped: dict[int, tuple[torch.Tensor | None, torch.Tensor | float]]  # group size -> (mask, log N) repeated


def prepare(state: ForwardState, attention_mask, batch: int, q_len: int, kv_len: int, device, dtype) -> Prepared:
    """This forward's `Prepared` for `attention_mask`, made at the first site layer that sees it.

    transformers builds one mask per layer type and forward and hands every layer of that type the same tensor,
    so identity finds it; `state.begin` drops what was prepared when the next forward starts.
    """
    for mask_obj, prepared in state.prepared:
        if mask_obj is attention_mask:
            return prepared
    rows = state.rows
    idx = rows if isinstance(rows, torch.Tensor) and rows.dtype != torch.bool else None
    mask, log_n = _prompt_mask(attention_mask, batch, q_len, kv_len, idx, device, dtype)
    cos = sin = None
    if state.cos is not None:
        cos, sin = state.cos, state.sin
        if idx is not None:
            cos, sin = gather_rows(cos.expand(batch, -1, -1), idx, 1), gather_rows(sin.expand(batch, -1, -1), idx, 1)
        cos, sin = cos.unsqueeze(1).to(dtype), sin.unsqueeze(1).to(dtype)
    prepared = Prepared(mask, log_n, cos, sin, {})
    state.prepared.append((attention_mask, prepared))
    return prepared


def grouped(prepared: Prepared, group_size: int) -> tuple[torch.Tensor | None, torch.Tensor | float]:
    """The prepared mask and log N with each row repeated for the `group_size` query heads folded into rows."""
    if group_size not in prepared.grouped:
        mask, log_n = prepared.mask, prepared.log_n
        prepared.grouped[group_size] = (
            mask.repeat(1, 1, group_size, 1) if mask is not None else None,
            log_n.repeat(1, 1, group_size, 1) if isinstance(log_n, torch.Tensor) else log_n,
        )
    return prepared.grouped[group_size]


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
        m = mask if rows is None else gather_rows(mask.expand(batch, -1, -1, -1), rows, 2)
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

    prepared = prepare(state, attention_mask, batch, q_len, kv_len, query.device, query.dtype)
    q = query if plan.all_heads else query[:, plan.heads]
    if gather:
        q = gather_rows(q, rows, 2)
    bank_query = undo_rope(q, prepared.cos, prepared.sin) if plan.canonical else q
    mask, log_n = prepared.mask, prepared.log_n
    rows_n = q.shape[2]
    if plan.all_heads and plan.group_size > 1:
        # grouped: fold each KV group's query heads into rows, so keys and values are read, never copied
        g = plan.group_size
        q = q.reshape(batch, num_heads // g, g * rows_n, dim)
        bank_query = bank_query.reshape(batch, num_heads // g, g * rows_n, dim)
        mask, log_n = grouped(prepared, g)
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
    out[b, rows.unsqueeze(-1), plan.heads.view(1, 1, -1)] = steered
    return out
