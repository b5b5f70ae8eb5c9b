"""Tiny random models of the five supported architectures (no downloads, built from config classes)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=4096),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        **COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1
    ),
}
ARCHS = list(CONFIGS)


def make_tiny(arch: str, attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A tiny random model of `arch`, fp32, eval mode, with larger-than-default weights so steering shows."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0, 0.08)
    return model


@pytest.fixture(scope="session")
def tiny_models():
    cache: dict[tuple[str, str], torch.nn.Module] = {}

    def get(arch: str, attn: str = "sdpa") -> torch.nn.Module:
        if (arch, attn) not in cache:
            cache[(arch, attn)] = make_tiny(arch, attn)
        return cache[(arch, attn)]

    return get
