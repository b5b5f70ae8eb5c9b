"""The CPU attention backend with Memory Inception at the site layers (registered over vLLM's CPU_ATTN).

Every layer first runs the stock kernel. At a site layer, for each steered request in the batch, the selected
heads of its steered rows are then recomputed by the core operator (`site_attention`, spec section 3) from the
request's own copy of that layer's keys and values (the stock kernel returns no log-sum-exp and its paged
layout depends on the instruction set). Every other row, head and layer keeps the stock output.
"""

from __future__ import annotations

import re

import torch
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
)

from memory_inception.core.architecture import undo_rope
from memory_inception.core.operator import site_attention
from memory_inception.core.plan import LayerPlan
from memory_inception.errors import SteeringError
from memory_inception.vllm.state import WORKER, RequestState, SiteCopy

LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


class MIAttentionImpl(CPUAttentionBackendImpl):
    """`CPUAttentionBackendImpl` plus the steered rows of the requests that carry banks."""

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        out = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                              output_block_scale)
        if attn_metadata is None or not WORKER.active or key is None:
            return out
        index = _layer_index(layer)
        starts = attn_metadata.query_start_loc.tolist()
        seq_lens = attn_metadata.seq_lens.tolist()
        for row, state in enumerate(WORKER.rows[: len(seq_lens)]):
            if state is None or index not in state.plans:
                continue
            a, b = starts[row], starts[row + 1]
            if b > a:
                self._steer_request(state, state.plans[index], state.copies[index], query, key, value, output,
                                    a, b, seq_lens[row] - (b - a))
        return out

    def _steer_request(self, state: RequestState, plan: LayerPlan, copy: SiteCopy, query: torch.Tensor,
                       key: torch.Tensor, value: torch.Tensor, output: torch.Tensor, a: int, b: int,
                       start: int) -> None:
        """Record this request's new keys/values, then steer its steered rows at the plan's heads."""
        if self.sliding_window > 0 or self.alibi_slopes is not None or self.logits_soft_cap or self.sinks is not None:
            raise SteeringError("the vLLM plugin steers layers without sliding windows, ALiBi, soft caps or sinks")
        if query.shape[1] != WORKER.checkpoint.geometry.num_heads:
            raise SteeringError("the vLLM plugin needs every head on one rank (tensor parallelism is not supported)")
        copy.write(start, key[a:b], value[a:b])
        step = state.step_rows(start, b - a, WORKER.checkpoint, query.dtype)
        if step is None:
            return
        rows = a + step.local
        n_rows, dim = rows.numel(), query.shape[-1]
        q = query[rows].transpose(0, 1).unsqueeze(0)  # [1, H, R, d]
        if not plan.all_heads:
            q = q[:, plan.heads]
        bank_query = undo_rope(q, step.cos, step.sin)  # the pre-RoPE query q~_t
        keys = copy.keys[: step.length].transpose(0, 1).unsqueeze(0)  # [1, H_kv, S, d]
        values = copy.values[: step.length].transpose(0, 1).unsqueeze(0)
        mask, log_n = step.mask, step.log_visible
        if plan.all_heads and plan.group_size > 1:
            # fold each KV group's query heads into rows (as the transformers path does)
            g = plan.group_size
            q = q.reshape(1, -1, g * n_rows, dim)
            bank_query = bank_query.reshape(1, -1, g * n_rows, dim)
            mask = mask.repeat(1, 1, g, 1) if mask is not None else None
            log_n = log_n.repeat(1, 1, g, 1)
        elif not plan.all_heads:
            keys, values = keys[:, plan.kv_index], values[:, plan.kv_index]
        steered = site_attention(q, bank_query, keys, values, mask, log_n, self.scale, plan)
        steered = steered.reshape(-1, n_rows, dim).transpose(0, 1)  # [R, Hs, d]
        output[rows.view(-1, 1), plan.heads.view(1, -1)] = steered.to(output.dtype)


class MIAttentionBackend(CPUAttentionBackend):
    """vLLM's CPU attention backend whose implementation steers the site layers of steered requests."""

    @staticmethod
    def get_impl_cls() -> type[MIAttentionImpl]:
        return MIAttentionImpl


def _layer_index(layer: torch.nn.Module) -> int:
    found = LAYER_INDEX.search(getattr(layer, "layer_name", ""))
    if found is None:
        raise SteeringError(f"cannot read a decoder layer index from attention layer {layer.layer_name!r}")
    return int(found.group(1))


