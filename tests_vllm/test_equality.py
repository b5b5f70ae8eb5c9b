"""vLLM with the plugin equals the transformers path, token for token (fp32, greedy, the default model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import memory_inception as mi
from conftest import MAX_NEW_TOKENS, eos_ids, transformers_generate, until_eos
from memory_inception.methods.mi import MI
from memory_inception.methods.runners import generate
from memory_inception.vllm import BankUse, RequestSteering

PROMPTS = [
    "How do I make tea?",
    "What should I do this weekend?",
    "Describe your favourite place in two sentences.",
]


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def settings(banks):
    """(name, vLLM request steering, the same steering for the transformers path): no bank, bank A, bank B,
    target + reference + auxiliary with the gate, and a selected-heads site case."""
    return [
        ("plain", None, None),
        ("A: target, default sites, prefill last",
         RequestSteering(banks=(BankUse("pirate"),)),
         mi.Steering(target=banks["pirate"])),
        ("B: target, layers 18-23, flat, rho 4, prefill all",
         RequestSteering(banks=(BankUse("professor"),), layers=tuple(range(18, 24)), schedule="flat", rho=4.0,
                         prefill="all"),
         mi.Steering(target=banks["professor"], sites=mi.Sites({layer: None for layer in range(18, 24)}),
                     schedule="flat", rho=4.0, prefill="all")),
        ("target + reference + auxiliary, gate, late_heavy, prefill none",
         RequestSteering(banks=(BankUse("pirate"), BankUse("professor", role="reference"),
                                BankUse("poet", role="auxiliary", gain=0.5)),
                         schedule="late_heavy", rho=6.0, gate_scale=2.0, prefill="none"),
         mi.Steering(target=banks["pirate"], reference=banks["professor"], auxiliary=[(banks["poet"], 0.5)],
                     schedule="late_heavy", rho=6.0, gate_scale=2.0, prefill="none")),
        ("selected heads (not all), full_per_layer",
         RequestSteering(banks=(BankUse("poet"),), sites={22: (0, 4), 24: (2, 3, 8)}, schedule="full_per_layer",
                         rho=2.0),
         mi.Steering(target=banks["poet"], sites=mi.Sites({22: [0, 4], 24: [2, 3, 8]}), schedule="full_per_layer",
                     rho=2.0)),
    ]


def test_mixed_batch_equals_transformers_token_for_token(hf, banks, engine):
    cases = settings(banks)
    requests = [(name, rs, core, p) for name, rs, core in cases for p in PROMPTS]  # 15 requests, one batch
    assert len(requests) >= 8
    got = engine.chat([conv(p) for *_, p in requests], [rs for _, rs, _, _ in requests], max_tokens=MAX_NEW_TOKENS)
    eos = eos_ids(*hf)
    by_case = {name: transformers_generate(hf, core, [conv(p) for p in PROMPTS]) for name, _, core in cases}
    mismatches = []
    for i, (name, _, _, prompt) in enumerate(requests):
        want = by_case[name][PROMPTS.index(prompt)]
        have = until_eos(got[i].token_ids, eos)
        if have != want:
            mismatches.append((name, prompt, want, have))
    assert not mismatches, json.dumps(mismatches, indent=1)
    # steering did something: every steered case differs from plain on at least one prompt
    for name in by_case:
        if name != "plain":
            assert by_case[name] != by_case["plain"], name


def test_the_reference_is_methods_generate(hf, banks, engine):
    """The helper above is `methods.generate`: same replies as text."""
    model, tokenizer = hf
    steering = mi.Steering(target=banks["pirate"])
    texts = generate(model, tokenizer, MI(steering), [conv(p) for p in PROMPTS], max_new_tokens=MAX_NEW_TOKENS)
    ids = transformers_generate(hf, steering, [conv(p) for p in PROMPTS])
    assert texts == [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
    got = engine.chat([conv(p) for p in PROMPTS], RequestSteering(banks=(BankUse("pirate"),)), max_tokens=MAX_NEW_TOKENS)
    assert [g.text.strip() for g in got] == texts


def test_every_prefill_mode_alone(hf, banks, engine):
    """Prefill last / all / none, each in its own batch (one request per prompt)."""
    for mode in ("last", "all", "none"):
        rs = RequestSteering(banks=(BankUse("professor"),), prefill=mode, rho=5.0)
        core = mi.Steering(target=banks["professor"], prefill=mode, rho=5.0)
        want = transformers_generate(hf, core, [conv(p) for p in PROMPTS[:2]])
        got = engine.chat([conv(p) for p in PROMPTS[:2]], rs, max_tokens=MAX_NEW_TOKENS)
        assert [until_eos(g.token_ids, eos_ids(*hf)) for g in got] == want, mode


def test_long_prompts_in_chunks_share_a_prefix_with_prefix_caching_on(hf, banks, engine):
    """Prompts of ~300 tokens (prefilled in chunks of 256) sharing a 2-block prefix: a plain request reuses the
    cached prefix, steered requests never do (their own cache salt), and all equal the transformers path."""
    system = " ".join(f"Rule {i}: be kind, be clear and keep the answer short." for i in range(28))
    convs = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in PROMPTS[:2]]
    steer = RequestSteering(banks=(BankUse("pirate"),), prefill="all")
    core = mi.Steering(target=banks["pirate"], prefill="all")
    eos = eos_ids(*hf)
    first = engine.chat([convs[0]], None, max_tokens=MAX_NEW_TOKENS)  # fills the prefix cache
    second = engine.chat([convs[1], convs[1], convs[0]], [None, steer, steer], max_tokens=MAX_NEW_TOKENS)
    plain_want = transformers_generate(hf, None, convs)
    steer_want = transformers_generate(hf, core, [convs[1], convs[0]])
    assert until_eos(first[0].token_ids, eos) == plain_want[0]
    assert until_eos(second[0].token_ids, eos) == plain_want[1]
    assert second[0].cached_tokens >= 128  # the plain request hit the shared prefix
    assert [until_eos(g.token_ids, eos) for g in second[1:]] == steer_want
    assert second[1].cached_tokens == 0 and second[2].cached_tokens == 0
    # a plain request after the steered ones still equals the plain model (steered blocks never leak)
    again = engine.chat([convs[0]], None, max_tokens=MAX_NEW_TOKENS)
    assert until_eos(again[0].token_ids, eos) == plain_want[0]


STOCK = r"""
import json, sys
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    path, prompts, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    llm = LLM(model=path, dtype="float32", seed=0, max_model_len=2048, enforce_eager=True,
              gpu_memory_utilization=0.25, kv_cache_memory_bytes=512 << 20)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=n),
                        use_tqdm=False)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
"""


def test_no_bank_requests_equal_stock_vllm(hf, engine, tmp_path):
    """Plain requests through the plugin equal a stock vLLM engine (plugins off: VLLM_PLUGINS='')."""
    prompts = [engine.tokenizer.apply_chat_template(conv(p), add_generation_prompt=True, tokenize=False)
               for p in PROMPTS]
    ids = [engine.tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts]
    script = tmp_path / "stock.py"
    script.write_text(STOCK)
    env = {**os.environ, "VLLM_PLUGINS": ""}
    run = subprocess.run([sys.executable, str(script), str(engine.path), json.dumps(ids), str(MAX_NEW_TOKENS)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    stock = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    got = engine.generate(ids, None, max_tokens=MAX_NEW_TOKENS)
    assert [list(g.token_ids) for g in got] == stock
