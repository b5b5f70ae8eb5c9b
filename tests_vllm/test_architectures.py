"""Tiny random Qwen2, Qwen3 and Mistral checkpoints (written from config classes) through raw `vllm.LLM` with the
plugin: the steered greedy tokens equal the transformers path (extra architecture coverage).

Each architecture starts its own engine (~30-60 s), so `make test-vllm` runs Qwen3 only (its key norm makes it
the layout furthest from Llama); MI_VLLM_ALL_ARCHS=1 runs all three (all passed when this was written)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config, Qwen3Config

import memory_inception as mi
from memory_inception.vllm import EXTRA_ARGS_KEY, BankUse, RequestSteering, steered_prompt, steering_params

COMMON = dict(vocab_size=256, hidden_size=128, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, max_position_embeddings=512, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
CONFIGS = {
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=None),
}
NEW_TOKENS = 12
ARCHS = list(CONFIGS) if os.environ.get("MI_VLLM_ALL_ARCHS") else ["qwen3"]


def tiny(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0, 0.08)  # larger than default: peaked logits, and steering shows
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_architecture_steered_equals_transformers(arch, tmp_path):
    from vllm import LLM

    model = tiny(arch)
    model.save_pretrained(tmp_path / "model")
    banks = tmp_path / "banks"
    gen = torch.Generator().manual_seed(1)
    target = mi.Bank.from_token_ids(model, torch.randint(3, 250, (9,), generator=gen), name="t")
    reference = mi.Bank.from_token_ids(model, torch.randint(3, 250, (5,), generator=gen), name="r")
    target.save(banks / "t.safetensors")
    reference.save(banks / "r.safetensors")
    prompts = [torch.randint(3, 250, (n,), generator=gen).tolist() for n in (7, 11, 16)]
    cases = [
        (None, None),
        (RequestSteering(banks=(BankUse("t"), BankUse("r", role="reference")), sites={1: None, 3: (1, 2)},
                         rho=4.0, prefill="all"),
         mi.Steering(target=target, reference=reference, sites=mi.Sites({1: None, 3: [1, 2]}), rho=4.0, prefill="all")),
        (RequestSteering(banks=(BankUse("t"),), layers=(0, 2), rho=-3.0, schedule="flat"),
         mi.Steering(target=target, sites=mi.Sites({0: None, 2: None}), rho=-3.0, schedule="flat")),
    ]
    want = []
    for _, core in cases:
        for ids in prompts:
            x = torch.tensor([ids])
            with torch.no_grad(), mi.inject(model, core):
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                     max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)
            want.append(out[0, len(ids):].tolist())
    llm = LLM(model=str(tmp_path / "model"), skip_tokenizer_init=True, dtype="float32", seed=0, max_model_len=512,
              enforce_eager=True, gpu_memory_utilization=0.25, kv_cache_memory_bytes=64 << 20,
              additional_config={EXTRA_ARGS_KEY: {"bank_dir": str(banks)}})
    try:
        inputs, params = [], []
        for rs, _ in cases:
            for ids in prompts:
                inputs.append(steered_prompt(ids, rs))
                params.append(steering_params(rs, temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True,
                                              detokenize=False))
        got = [list(o.outputs[0].token_ids) for o in llm.generate(inputs, params, use_tqdm=False)]
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert got == want
    assert want[3:6] != want[:3] and want[6:] != want[:3]  # the banks changed the tokens
