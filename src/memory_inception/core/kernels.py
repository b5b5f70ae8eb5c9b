"""Prompt attention that also returns its log-sum-exp, through the fused kernels torch ships.

The operator merges the prompt part (this kernel) with the bank part (explicit, `[R, M]`) exactly, so the
prompt scores `[R, S]` of steered rows are never materialized: on the CPU through the flash-attention kernel
for CPUs, on CUDA through the memory-efficient kernel (which takes an additive mask); elsewhere (MPS) rows are
processed in chunks with explicit scores, so memory stays bounded.
"""

from __future__ import annotations

import torch

# Rows per chunk of the explicit fallback: bounds its scores to CHUNK_ROWS x S per head.
CHUNK_ROWS = 256


def attention_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`softmax(s q k^T + mask) v` and its log-sum-exp over keys, `[B, H, R, d]` and `[B, H, R]` (fp32).

    query `[B, H, R, d]`, key / value `[B, H, S, d]` (same heads), mask additive `[B, 1, R, S]` or None,
    `causal`: query r sees keys 0..r (only with R == S and no mask).
    """
    if mask is not None:
        mask = mask.to(query.dtype)
    if query.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, causal, attn_mask=mask, scale=scale
        )
        return out, lse.float()
    if query.device.type == "cuda":
        bias = mask.expand(-1, query.shape[1], -1, -1) if mask is not None else None
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, bias, True, 0.0, causal, scale=scale
        )
        return out, lse[..., : query.shape[-2]].float()
    return explicit_attention_lse(query, key, value, mask, causal, scale)


def explicit_attention_lse(query, key, value, mask, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention_lse` with explicit scores, `CHUNK_ROWS` query rows at a time (devices without a fused kernel)."""
    outs, lses = [], []
    rows, keys = query.shape[-2], key.shape[-2]
    for start in range(0, rows, CHUNK_ROWS):
        q = query[..., start : start + CHUNK_ROWS, :]
        scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale
        if mask is not None:
            scores = scores + mask[..., start : start + CHUNK_ROWS, :].float()
        elif causal:
            r = torch.arange(start, start + q.shape[-2], device=q.device).view(-1, 1)
            scores = scores.masked_fill(torch.arange(keys, device=q.device).view(1, -1) > r, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse.unsqueeze(-1)).to(value.dtype), value))
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)
