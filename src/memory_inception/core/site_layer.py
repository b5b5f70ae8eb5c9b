"""What one site layer does in a forward: the stock output where nothing is steered, the operator on the selected
heads of the steered rows, and the per-forward preparation every site layer of that forward shares.

The prompt part of the operator runs through a fused kernel that returns its log-sum-exp (`core.kernels`); the
bank part is explicit and small (`[R, M]`); `core.operator.mix_prompt_and_banks` merges them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from memory_inception.core.architecture import undo_rope
from memory_inception.core.kernels import attention_lse
from memory_inception.core.operator import mix_prompt_and_banks
from memory_inception.core.plan import ForwardState, LayerPlan

# visibility(attention_mask, batch, q_len, kv_len, rows) -> bool [B, R, S]: which keys each steered row sees, for
# attention implementations whose masks are not additive / boolean tensors (flex attention's BlockMask, ...)
Visibility = Callable[[object, int, int, int, "torch.Tensor | None"], torch.Tensor]


def gather_rows(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather per-batch rows `idx [B, R]` along `dim` (2 for [B, H, T, ...] tensors, 1 for [B, T, ...])."""
    shape = [1] * t.dim()
    shape[0], shape[dim] = idx.shape
    full = idx.view(shape).expand(*[t.shape[i] if i not in (0, dim) else shape[i] for i in range(t.dim())])
    return t.gather(dim, full)


@dataclass
class Prepared:
    """What every site layer of one forward shares for one attention mask: the prompt mask and log N_t of the
    steered rows (or `causal` when every row is steered and the mask is the plain causal one), their inverse
    RoPE tables, and the mask and log N repeated for grouped heads."""

    mask: torch.Tensor | None  # additive [B, 1, R, S]; None: causal, or every row sees every key
    causal: bool
    log_n: torch.Tensor | float  # [B or 1, 1, R, 1] or a float
    cos: torch.Tensor | None  # [B or 1, 1, R, d] (canonical positions)
    sin: torch.Tensor | None
    grouped: dict[int, tuple[torch.Tensor | None, torch.Tensor | float]]  # group size -> (mask, log N) repeated


def prepare(
    state: ForwardState, attention_mask, batch: int, q_len: int, kv_len: int, device, dtype,
    visibility: Visibility | None = None,
) -> Prepared:
    """This forward's `Prepared` for `attention_mask`, made at the first site layer that sees it.

    transformers builds one mask per layer type and forward and hands every layer of that type the same object,
    so identity finds it; `state.begin` drops what was prepared when the next forward starts.
    """
    for mask_obj, prepared in state.prepared:
        if mask_obj is attention_mask:
            return prepared
    idx = state.rows if isinstance(state.rows, torch.Tensor) else None
    causal = False
    if attention_mask is None and idx is None and q_len == kv_len and q_len > 1:
        mask, causal = None, True
        log_n = torch.arange(1, q_len + 1, device=device).to(dtype).log().view(1, 1, q_len, 1)
    elif attention_mask is None and q_len == 1:  # decode without padding: the one query sees every key
        mask, log_n = None, math.log(kv_len)
    else:
        mask, log_n = _prompt_mask(attention_mask, batch, q_len, kv_len, idx, device, dtype, visibility)
    cos = sin = None
    if state.cos is not None:
        cos, sin = state.cos, state.sin
        if idx is not None:
            cos, sin = gather_rows(cos.expand(batch, -1, -1), idx, 1), gather_rows(sin.expand(batch, -1, -1), idx, 1)
        cos, sin = cos.unsqueeze(1).to(dtype), sin.unsqueeze(1).to(dtype)
    prepared = Prepared(mask, causal, log_n, cos, sin, {})
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
    mask, batch: int, q_len: int, kv_len: int, rows: torch.Tensor | None, device, dtype,
    visibility: Visibility | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive prompt mask `[B, 1, R, S]` and log N_t (`[B, 1, R, 1]`) of the steered rows."""
    if mask is None:
        # stock sdpa used is_causal (or no mask): query t sees keys 0 .. (S - T) + t
        pos = torch.arange(q_len, device=device).expand(batch, q_len) if rows is None else rows
        limit = (kv_len - q_len) + pos  # [B, R]
        visible = torch.arange(kv_len, device=device).view(1, 1, kv_len) <= limit.unsqueeze(-1)
    elif visibility is not None:
        visible = visibility(mask, batch, q_len, kv_len, rows)
    else:
        m = mask if rows is None else gather_rows(mask.expand(batch, -1, -1, -1), rows, 2)
        visible = m[:, 0] if m.dtype == torch.bool else m[:, 0] > torch.finfo(m.dtype).min / 2
    log_n = visible.sum(-1, keepdim=True).clamp(min=1).to(dtype).log().unsqueeze(1)
    additive = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))
    return additive.unsqueeze(1), log_n


def steer_attention(
    module, plan: LayerPlan, query, key, value, attention_mask, scaling, stock, kwargs,
    visibility: Visibility | None = None,
) -> torch.Tensor:
    """Stock attention where nothing is steered, the operator on the selected heads and steered rows.

    query `[B, H, T, d]`, key / value `[B, H_kv, S, d]`; returns the attention output `[B, T, H, d]`.
    """
    state = plan.state
    rows = state.rows
    batch, num_heads, q_len, dim = query.shape
    kv_len = key.shape[-2]
    gather = isinstance(rows, torch.Tensor)
    need_stock = gather or not plan.all_heads
    out = stock(module, query, key, value, attention_mask, scaling=scaling, **kwargs)[0] if need_stock else None

    prepared = prepare(state, attention_mask, batch, q_len, kv_len, query.device, query.dtype, visibility)
    q = query if plan.all_heads else query[:, plan.heads]
    if gather:
        q = gather_rows(q, rows, 2)
    bank_query = undo_rope(q, prepared.cos, prepared.sin) if plan.canonical else q
    rows_n = q.shape[2]
    log_n = prepared.log_n
    if plan.all_heads and plan.group_size > 1:
        # grouped: each KV group's query heads are folded into rows for the banks (their keys are read, never
        # copied); the prompt kernel gets the same fold with a repeated mask, or, under a causal mask (which
        # folding would break), the keys and values expanded to every head
        g = plan.group_size
        folded = (batch, num_heads // g, g * rows_n, dim)
        mask, log_n = grouped(prepared, g)
        if prepared.causal:
            prompt_out, prompt_lse = attention_lse(
                q, key[:, plan.kv_index], value[:, plan.kv_index], None, True, scaling
            )
            prompt_out, prompt_lse = prompt_out.reshape(folded), prompt_lse.reshape(folded[:3])
        else:
            prompt_out, prompt_lse = attention_lse(q.reshape(folded), key, value, mask, False, scaling)
        bank_query = bank_query.reshape(folded)
    else:
        if not plan.all_heads:
            key, value = key[:, plan.kv_index], value[:, plan.kv_index]
        prompt_out, prompt_lse = attention_lse(q, key, value, prepared.mask, prepared.causal, scaling)
    steered = mix_prompt_and_banks(prompt_out, prompt_lse, bank_query, log_n, scaling, plan)
    steered = steered.reshape(batch, -1, rows_n, dim).transpose(1, 2)  # [B, R, Hs, d]

    if out is None:
        return steered.contiguous()
    if not gather:  # every row, a subset of heads
        out[:, :, plan.heads] = steered
        return out
    b = torch.arange(batch, device=out.device).view(batch, 1, 1)
    where = (b, rows.unsqueeze(-1), plan.heads.view(1, 1, -1))
    if state.row_valid is not None:  # padded row lists: padding entries write back the stock output
        steered = torch.where(state.row_valid.view(batch, rows_n, 1, 1), steered, out[where])
    out[where] = steered
    return out
