"""On the real default model (SmolLM2-135M-Instruct): a hidden persona bank steers greedy replies."""

from __future__ import annotations

import re

import pytest
import torch

import memory_inception as mi

pytestmark = pytest.mark.real_model

PERSONA = (
    "You are a pirate captain. You always talk like a pirate, say 'Arr!' and 'matey', and bring every answer "
    "back to your ship, the sea and buried treasure."
)
PIRATE_WORDS = re.compile(r"\b(pirate|pirates|sea|seas|ship|ships|treasure|arr|matey|captain|sail\w*|aye)\b", re.I)
PROMPTS = ["How do I make a cup of tea?", "Give me one tip for a job interview."]


@pytest.fixture(scope="module")
def smollm():
    return mi.load_model(device="cpu")  # the fp32 CPU path the assertions were measured on


def test_persona_bank_steers_replies_and_leaves_no_trace(smollm):
    model, tok = smollm
    bank = mi.build_bank(model, tok, PERSONA, name="pirate", layers=list(range(21, 27)))
    # every head of layers 21-26 at rho 3 (the defaults before mi.tune): KV group 2 at rho 0, the shipped default,
    # stays fluent but moves these replies to no pirate word at all (README, Defaults)
    steering = mi.Steering(target=bank, sites=mi.Sites({layer: None for layer in range(21, 27)}), rho=3.0)
    for prompt in PROMPTS:
        plain = mi.Session(model, tok)
        steered = mi.Session(model, tok, steering)
        plain_reply = plain.send(prompt, max_new_tokens=40)
        steered_reply = steered.send(prompt, max_new_tokens=40)
        assert not PIRATE_WORDS.search(plain_reply), plain_reply
        assert len(PIRATE_WORDS.findall(steered_reply)) >= 2, steered_reply
        # the visible transcript and the cache hold only the conversation, never the persona text
        assert PERSONA not in steered.transcript()
        before_reply = tok.apply_chat_template(steered.messages[:1], add_generation_prompt=True, tokenize=False)
        assert not PIRATE_WORDS.search(before_reply)
        persona_ids = tok(PERSONA, add_special_tokens=False)["input_ids"]
        rendered_ids = steered.cache_ids
        assert not any(rendered_ids[i : i + 8] == persona_ids[:8] for i in range(len(rendered_ids)))
        assert steered.cache.get_seq_length() == len(steered.cache_ids)
        assert [m["role"] for m in steered.messages] == ["user", "assistant"]


def test_real_model_operator_matches_prefix_oracle(smollm):
    """Invariant 2 on the real model: a hidden prefix bank equals the visible prefix (fp32)."""
    model, tok = smollm
    prefix = tok("The secret word is banana. ", add_special_tokens=False)["input_ids"]
    prompt = tok("Repeat the secret word:", add_special_tokens=False)["input_ids"]
    bank = mi.Bank.from_token_ids(model, prefix)
    steering = mi.Steering(target=bank, sites=mi.Sites.all(model), positions="prefix", normalize="none", rho=0.0,
                           prefill="all")
    with torch.no_grad():
        want = model(torch.tensor([prefix + prompt])).logits[0, len(prefix) :]
        with mi.inject(model, steering):
            got = model(torch.tensor([prompt])).logits[0]
    assert (got - want).abs().max().item() < 2e-4  # observed 3.8e-5 (SmolLM2), 1.5e-5 (Qwen2.5)


def test_qwen_gqa_prefix_oracle_and_restoration():
    """Qwen2.5-Coder-0.5B (GQA 14:2): the prefix oracle holds and the model is exact after injection."""
    model, tok = mi.load_model("qwen2.5-coder-0.5b-instruct")
    prefix = tok("def add(a, b):\n    return a + b\n", add_special_tokens=False)["input_ids"]
    prompt = tok("# call add with 2 and 3\n", add_special_tokens=False)["input_ids"]
    bank = mi.Bank.from_token_ids(model, prefix, layers=None)
    steering = mi.Steering(target=bank, sites=mi.Sites.all(model), positions="prefix", normalize="none", rho=0.0,
                           prefill="all")
    with torch.no_grad():
        before = model(torch.tensor([prompt])).logits
        want = model(torch.tensor([prefix + prompt])).logits[0, len(prefix) :]
        with mi.inject(model, steering):
            got = model(torch.tensor([prompt])).logits[0]
        after = model(torch.tensor([prompt])).logits
    assert (got - want).abs().max().item() < 2e-4  # observed 3.8e-5 (SmolLM2), 1.5e-5 (Qwen2.5)
    assert torch.equal(before, after)


def test_default_bank_stores_what_mi_cost_reports(smollm, tmp_path):
    model, tok = smollm
    bank = mi.build_bank(model, tok, PERSONA, name="pirate")
    assert bank.layers == tuple(range(21, 27))  # the default sites: KV group 2 (query heads 6-8) of layers 21-26
    assert all(bank.stored_kv_heads(layer) == (2,) for layer in bank.layers)
    per_layer = 2 * 1 * bank.num_slots * 64 * 4  # keys and values, the 1 KV head the sites read, head_dim 64, fp32
    assert bank.nbytes == 6 * per_layer
    assert mi.MI(mi.Steering(target=bank)).cost(model, tok).stored_bytes == bank.nbytes
    raw = bank.save(tmp_path / "pirate.safetensors").read_bytes()
    assert len(raw) - 8 - int.from_bytes(raw[:8], "little") == bank.nbytes  # the file: these bytes + metadata
