"""The CPU attention backend with Memory Inception at the site layers (registered over vLLM's CPU_ATTN).

Every layer first runs the stock kernel. At a site layer, the new keys of the steered requests go to the key pool
and the selected heads of every steered row of the batch are recomputed by one batched operator call
(`batching.steer_layer`: the stock output and a log-sum-exp over the pooled keys for the prompt part, the requests'
banks stacked for the bank part). Every other row, head and layer keeps the stock output. Under tensor parallelism
each rank does this for its own heads (`shard.Shard`).
"""

from __future__ import annotations

import re

import torch
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
)

from memory_inception.errors import SteeringError
from memory_inception.vllm.batching import steer_layer
from memory_inception.vllm.state import WORKER

LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


class MIAttentionImpl(CPUAttentionBackendImpl):
    """`CPUAttentionBackendImpl` plus the steered rows of the requests that carry banks."""

    _mi_layer: int | None = None

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        out = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                              output_block_scale)
        if attn_metadata is None or not WORKER.active or key is None:
            return out
        if self._mi_layer is None:
            self._mi_layer = _layer_index(layer)
        index = self._mi_layer
        work = WORKER.step_for(attn_metadata).layer(index)
        if work is None:
            return out
        if self.sliding_window > 0 or self.alibi_slopes is not None or self.logits_soft_cap or self.sinks is not None:
            raise SteeringError("the vLLM plugin steers layers without sliding windows, ALiBi, soft caps or sinks")
        WORKER.shard.check(query.shape[1], key.shape[1])
        steer_layer(work, lambda rows, g: WORKER.stacked(index, rows, g), WORKER.pool, index, query, key,
                    output, self.scale)
        return out


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
