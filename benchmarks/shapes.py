"""Random-weight models with the per-layer shapes of published models, for the scale benchmark and the GPU check.

`llama8b` has Llama-3.1-8B's layer (hidden 4096, 32 query / 8 KV heads, head_dim 128, MLP 14336); `qwen3_30b_a3b`
has Qwen3-30B-A3B's (hidden 2048, 32 / 4 heads, head_dim 128, QK-norm, 128 experts of 768, top-8). Fewer layers
than the real models where asked; the vocabulary is small (it changes no layer's shape). The sites keep the
library's default share: the defaults rule (`core.defaults`), six layers of thirty-two on the full models, and
the same fraction (rounded, at least one layer) on shortened ones.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3MoeConfig

import memory_inception as mi
from memory_inception.core.defaults import rule_layers

VOCAB = 2048
FULL_LAYERS = {"llama8b": 32, "qwen3_30b_a3b": 48}


def config(shape: str, num_layers: int, tiny: bool = False):
    """The layer shapes of `shape`; `tiny` divides every width by 32 and the experts by 16 (heads kept), for a
    quick run of the same code on a CPU."""
    w = 32 if tiny else 1
    if shape == "llama8b":
        return LlamaConfig(
            hidden_size=4096 // w, num_attention_heads=32, num_key_value_heads=8, head_dim=128 // w,
            intermediate_size=14336 // w, num_hidden_layers=num_layers, vocab_size=VOCAB,
            max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False,
        )
    if shape == "qwen3_30b_a3b":
        return Qwen3MoeConfig(
            hidden_size=2048 // w, num_attention_heads=32, num_key_value_heads=4, head_dim=128 // w,
            intermediate_size=6144 // w, moe_intermediate_size=768 // w, num_experts=128 // (16 if tiny else 1),
            num_experts_per_tok=8 // (4 if tiny else 1), decoder_sparse_step=1, num_hidden_layers=num_layers,
            vocab_size=VOCAB, max_position_embeddings=131072, tie_word_embeddings=False,
        )
    raise ValueError(f"unknown shape {shape!r}; use llama8b or qwen3_30b_a3b")


def build(shape: str, num_layers: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0,
          tiny: bool = False) -> torch.nn.Module:
    """A random model of `shape` with `num_layers` layers (weights ~ N(0, 0.02), as at initialization)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config(shape, num_layers, tiny), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def site_layers(shape: str, num_layers: int) -> tuple[int, ...]:
    """The default sites' share of layers, kept on a model of `num_layers` layers."""
    full = rule_layers(FULL_LAYERS[shape])
    count = max(1, round(len(full) * num_layers / FULL_LAYERS[shape]))
    start = min(int(round(0.7 * num_layers)), num_layers - count)
    return tuple(range(start, start + count))


def guidance_bank(model: torch.nn.Module, layers: tuple[int, ...], tokens: int, seed: int = 1) -> tuple[mi.Bank, list[int]]:
    """A bank of `tokens` random token ids at `layers` (every head), and the ids (the same guidance as a prompt)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (tokens,), generator=generator).tolist()
    return mi.Bank.from_token_ids(model, ids, layers=list(layers), name="guidance"), ids
