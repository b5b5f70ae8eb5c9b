"""Serving past one process: tensor parallelism (2 ranks, one core each) and pipeline parallelism (2 stages).

fp32 greedy generations of a mixed batch (no bank; bank A; bank B; target + reference + auxiliary with the gate;
selected heads, some on one rank only) equal the transformers path token for token: on a tiny random Qwen3
(4 query / 2 KV heads) at TP 2 and at PP 2, and on Qwen2.5-Coder-0.5B-Instruct (14 / 2 heads) at TP 2.
Each rank keeps only the bank slots of its own KV heads and steers only its own heads (`vllm/shard.py`).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_architectures import NEW_TOKENS, tiny

import memory_inception as mi
from conftest import BANK_TEXTS, MAX_NEW_TOKENS, eos_ids, transformers_generate, until_eos
from memory_inception.errors import MemoryInceptionError, SteeringError
from memory_inception.vllm import EXTRA_ARGS_KEY, BankUse, MIEngine, RequestSteering, steered_prompt, steering_params
from memory_inception.vllm.engine import checkpoint_dir, worker_cores

QWEN = "qwen2.5-coder-0.5b-instruct"
CORES = "VLLM_CPU_OMP_THREADS_BIND"


def tiny_cases(banks):
    t, r, a = banks["t"], banks["r"], banks["a"]
    return [
        ("plain", None, None),
        ("A", RequestSteering(banks=(BankUse("t"),), layers=(1, 3), rho=4.0),
         mi.Steering(target=t, sites=mi.Sites({1: None, 3: None}), rho=4.0)),
        ("B", RequestSteering(banks=(BankUse("r"),), layers=(0, 2), rho=-3.0, schedule="flat", prefill="all"),
         mi.Steering(target=r, sites=mi.Sites({0: None, 2: None}), rho=-3.0, schedule="flat", prefill="all")),
        ("gated", RequestSteering(banks=(BankUse("t"), BankUse("r", role="reference"), BankUse("a", role="auxiliary", gain=0.5)),
                                  layers=(1, 2, 3), rho=6.0, schedule="late_heavy", gate_scale=2.0, prefill="none"),
         mi.Steering(target=t, reference=r, auxiliary=[(a, 0.5)], sites=mi.Sites({1: None, 2: None, 3: None}), rho=6.0,
                     schedule="late_heavy", gate_scale=2.0, prefill="none")),
        # layer 1: head 1 only (rank 0 of 2); layer 3: heads 0 and 3 (one on each rank)
        ("heads", RequestSteering(banks=(BankUse("a"),), sites={1: (1,), 3: (0, 3)}, rho=5.0, schedule="full_per_layer"),
         mi.Steering(target=a, sites=mi.Sites({1: [1], 3: [0, 3]}), rho=5.0, schedule="full_per_layer")),
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random Qwen3 checkpoint, three random-token banks and prompts of different lengths."""
    root = tmp_path_factory.mktemp("tiny-parallel")
    model = tiny("qwen3")
    model.save_pretrained(root / "model")
    gen = torch.Generator().manual_seed(1)
    banks = {name: mi.Bank.from_token_ids(model, torch.randint(3, 250, (m,), generator=gen), name=name)
             for name, m in (("t", 9), ("r", 5), ("a", 4))}
    for name, bank in banks.items():
        bank.save(root / "banks" / f"{name}.safetensors")
    prompts = [torch.randint(3, 250, (n,), generator=gen).tolist() for n in (7, 11, 16)]
    cases = tiny_cases(banks)
    want = {}
    for name, _, core in cases:
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids])
            with torch.no_grad(), mi.inject(model, core):
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                     max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)
            want[name, i] = out[0, len(ids):].tolist()
    return root, prompts, cases, want


def run_tiny(root, prompts, cases, **parallel):
    from vllm import LLM

    with worker_cores(parallel.get("tensor_parallel_size", 1) * parallel.get("pipeline_parallel_size", 1)):
        llm = LLM(model=str(root / "model"), skip_tokenizer_init=True, dtype="float32", seed=0, max_model_len=512,
                  gpu_memory_utilization=0.25, additional_config={EXTRA_ARGS_KEY: {"bank_dir": str(root / "banks")}},
                  **parallel)
    try:
        inputs, params, keys = [], [], []
        for name, rs, _ in cases:
            for i, ids in enumerate(prompts):
                inputs.append(steered_prompt(ids, rs))
                params.append(steering_params(rs, temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True,
                                              detokenize=False))
                keys.append((name, i))
        outs = llm.generate(inputs, params, use_tqdm=False)  # one mixed batch of 15 requests
        return {key: list(o.outputs[0].token_ids) for key, o in zip(keys, outs)}
    finally:
        llm.llm_engine.engine_core.shutdown()


def assert_equal(got, want):
    mismatches = {f"{k[0]}/{k[1]}": (want[k], got[k]) for k in want if got[k] != want[k]}
    assert not mismatches, json.dumps(mismatches, indent=1)
    for name in {k[0] for k in want} - {"plain"}:  # every steered case moved some tokens
        assert any(want[name, i] != want["plain", i] for i in range(3)), name


def test_tensor_parallel_2_equals_transformers_on_a_tiny_model(tiny_model, monkeypatch):
    root, prompts, cases, want = tiny_model
    monkeypatch.delenv(CORES, raising=False)
    assert_equal(run_tiny(root, prompts, cases, tensor_parallel_size=2, enforce_eager=True,
                          kv_cache_memory_bytes=64 << 20), want)
    assert CORES not in os.environ  # the binding was for that engine only


def test_pipeline_parallel_2_equals_transformers_on_a_tiny_model(tiny_model, monkeypatch):
    """Two stages (layers 0-1, 2-3), compiled: vllm-cpu 0.32's eager mode cannot run a second stage."""
    root, prompts, cases, want = tiny_model
    monkeypatch.delenv(CORES, raising=False)
    assert_equal(run_tiny(root, prompts, cases, pipeline_parallel_size=2, enforce_eager=False), want)


def test_parallel_settings_the_plugin_cannot_serve_are_refused_before_vllm_starts(bank_dir):
    with pytest.raises(SteeringError, match="does not divide the 9 query heads"):
        MIEngine(bank_dir=bank_dir, tensor_parallel_size=2)  # SmolLM2-135M: 9 query / 3 KV heads
    with pytest.raises(MemoryInceptionError, match="needs enforce_eager=False"):
        MIEngine(QWEN, bank_dir=bank_dir, pipeline_parallel_size=2)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """Qwen2.5-Coder-0.5B-Instruct on the transformers path and its banks (every layer)."""
    torch.set_num_threads(1)
    model, tokenizer = mi.load_model(str(checkpoint_dir(QWEN)))
    directory = tmp_path_factory.mktemp("qwen-banks")
    banks = {}
    for name, text in BANK_TEXTS.items():
        banks[name] = mi.build_bank(model, tokenizer, text, layers="all", name=name)
        banks[name].save(directory / f"{name}.safetensors")
    return (model, tokenizer), directory, banks


def test_tensor_parallel_2_equals_transformers_on_qwen2_5_coder_0_5b(qwen, monkeypatch):
    hf, directory, banks = qwen
    monkeypatch.delenv(CORES, raising=False)
    cases = [
        ("plain", None, None),
        ("A: default sites", RequestSteering(banks=(BankUse("pirate"),)), mi.Steering(target=banks["pirate"])),
        ("B: layers 12-17, flat, prefill all",
         RequestSteering(banks=(BankUse("professor"),), layers=tuple(range(12, 18)), schedule="flat", rho=4.0,
                         prefill="all"),
         mi.Steering(target=banks["professor"], sites=mi.Sites({layer: None for layer in range(12, 18)}),
                     schedule="flat", rho=4.0, prefill="all")),
        # at Qwen's default sites this gate moves no token of these prompts in 24 (checked); at layers 12-17 it does
        ("target + reference + auxiliary, layers 12-17",
         RequestSteering(banks=(BankUse("pirate"), BankUse("professor", role="reference"),
                                BankUse("poet", role="auxiliary", gain=0.5)),
                         layers=tuple(range(12, 18)), schedule="late_heavy", rho=6.0, gate_scale=2.0, prefill="none"),
         mi.Steering(target=banks["pirate"], reference=banks["professor"], auxiliary=[(banks["poet"], 0.5)],
                     sites=mi.Sites({layer: None for layer in range(12, 18)}), schedule="late_heavy", rho=6.0,
                     gate_scale=2.0, prefill="none")),
        # heads 0-6 are rank 0's, 7-13 rank 1's: every layer has heads on both (the tiny model's test has a layer
        # with heads on one rank only); two heads per layer at rho 3 moved no token of these prompts (checked)
        ("selected heads", RequestSteering(banks=(BankUse("poet"),), sites={13: (1, 5, 9), 15: (2, 9, 11),
                                                                             17: (0, 8, 12)},
                                           schedule="full_per_layer", rho=6.0),
         mi.Steering(target=banks["poet"], sites=mi.Sites({13: [1, 5, 9], 15: [2, 9, 11], 17: [0, 8, 12]}),
                     schedule="full_per_layer", rho=6.0)),
    ]
    prompts = ["How do I make tea?", "Describe your favourite place in two sentences."]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    want = {name: transformers_generate(hf, core, convs) for name, _, core in cases}
    engine = MIEngine(QWEN, bank_dir=directory, tensor_parallel_size=2)
    try:
        requests = [(name, rs, i) for name, rs, _ in cases for i in range(len(prompts))]
        got = engine.chat([convs[i] for *_, i in requests], [rs for _, rs, _ in requests], max_tokens=MAX_NEW_TOKENS)
    finally:
        engine.close()
    eos = eos_ids(*hf)
    mismatches = [(name, i, want[name][i], until_eos(g.token_ids, eos)) for (name, _, i), g in zip(requests, got)
                  if until_eos(g.token_ids, eos) != want[name][i]]
    assert not mismatches, json.dumps(mismatches, indent=1)
    for name, tokens in want.items():
        if name != "plain":
            assert tokens != want["plain"], name
