"""Bad requests fail clearly (naming the problem and the fix); `mi serve --engine vllm` serves the same API."""

from __future__ import annotations

import threading

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, LlamaConfig

import memory_inception as mi
from memory_inception.errors import BankError, MemoryInceptionError, SiteError, SteeringError
from memory_inception.server import create_app
from memory_inception.vllm import BankUse, RequestSteering, steering_params
from memory_inception.vllm.serving import VLLMService
from memory_inception.vllm.state import SiteCopy

from conftest import MAX_NEW_TOKENS


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_unknown_bank_names_the_bank_and_the_fix(engine):
    with pytest.raises(BankError, match=r"no bank named 'nope'.*mi bank build"):
        engine.chat([conv("Hi")], RequestSteering(banks=(BankUse("nope"),)))


def test_a_bank_of_another_model_is_refused(engine, bank_dir):
    torch.manual_seed(0)
    tiny = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                                        num_hidden_layers=30, num_attention_heads=4,
                                                        num_key_value_heads=2, head_dim=16)).eval()
    mi.Bank.from_token_ids(tiny, [1, 2, 3], name="foreign").save(bank_dir / "foreign.safetensors")
    with pytest.raises(BankError, match="built by another model.*rebuild the bank"):
        engine.chat([conv("Hi")], RequestSteering(banks=(BankUse("foreign"),)))


def test_bad_settings_are_refused_before_the_engine(engine):
    with pytest.raises(SteeringError, match="prefill='sometimes' is not one of last, all, none"):
        RequestSteering(banks=(BankUse("pirate"),), prefill="sometimes")
    with pytest.raises(SteeringError, match=r"unknown memory_inception setting\(s\) \['strength'\]"):
        RequestSteering.from_extra_args({"memory_inception": {"banks": ["pirate"], "strength": 3}})
    with pytest.raises(SteeringError, match="role 'boss'"):
        RequestSteering(banks=(BankUse("pirate", role="boss"),))
    with pytest.raises(SiteError, match="out of range: this model has layers 0..29"):
        engine.check(RequestSteering(banks=(BankUse("pirate"),), layers=(40,)))
    with pytest.raises(BankError, match="invalid bank name"):
        engine.check(RequestSteering(banks=(BankUse("../etc/passwd"),)))


def test_raw_vllm_requests_are_validated_at_admission_and_the_engine_lives_on(engine):
    """Hand-written extra_args go through the tracker's validate_params: a 400-style error, not a dead engine."""
    ids = [engine.tokenizer("Hello", add_special_tokens=False)["input_ids"]]
    bad = steering_params(None, max_tokens=4, temperature=0,
                          extra_args={"memory_inception": {"banks": [{"name": "pirate"}], "prefill": "bad"}})
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="prefill='bad' is not one of last, all, none"):
        engine.llm.generate([{"prompt_token_ids": ids[0]}], bad, use_tqdm=False)
    assert len(engine.generate(ids, None, max_tokens=4)[0].token_ids) == 4


def test_a_copy_with_missing_positions_refuses_instead_of_guessing():
    copy = SiteCopy()
    copy.write(0, torch.zeros(3, 1, 4), torch.zeros(3, 1, 4))
    copy.write(1, torch.ones(4, 1, 4), torch.ones(4, 1, 4))  # recomputed positions overwrite (preemption)
    assert copy.length == 5 and bool(copy.keys[1:5].eq(1).all())
    with pytest.raises(MemoryInceptionError, match="cache_salt"):
        copy.write(9, torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))


@pytest.fixture(scope="module")
def client(hf, bank_dir, engine):
    model, tokenizer = hf
    app = create_app(model, tokenizer, bank_dir=bank_dir, service_class=VLLMService,
                     service_options={"engine": engine})
    with TestClient(app) as c:
        yield c


def ask(client, text, memory=None, **extra):
    body = {"model": "smollm2-135m-instruct", "messages": conv(text), "temperature": 0,
            "max_tokens": MAX_NEW_TOKENS, **extra}
    if memory is not None:
        body["memory"] = memory
    return client.post("/v1/chat/completions", json=body)


def test_server_memory_extension_equals_the_engine(client, engine):
    memory = {"banks": [{"name": "pirate", "role": "target"}, {"name": "professor", "role": "reference"}],
              "layers": "20-25", "rho": 5}
    want = engine.chat([conv("How do I make tea?")],
                       RequestSteering(banks=(BankUse("pirate"), BankUse("professor", role="reference")),
                                       layers=tuple(range(20, 26)), rho=5.0),
                       max_tokens=MAX_NEW_TOKENS)[0]
    r = ask(client, "How do I make tea?", memory)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want.text.strip() or \
        r.json()["choices"][0]["message"]["content"] == engine.tokenizer.decode(want.token_ids, skip_special_tokens=True)
    plain = ask(client, "How do I make tea?").json()["choices"][0]["message"]["content"]
    assert plain != r.json()["choices"][0]["message"]["content"]


def test_server_concurrent_requests_share_batches_and_equal_solo_runs(client):
    memory = {"banks": [{"name": "poet"}]}
    solo = [ask(client, q, memory if i % 2 else None).json()["choices"][0]["message"]["content"]
            for i, q in enumerate(["Hi!", "What is rain?", "Name a colour.", "Why is the sky blue?"])]
    results: dict[int, str] = {}

    def run(i: int, q: str) -> None:
        results[i] = ask(client, q, memory if i % 2 else None).json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=run, args=(i, q))
               for i, q in enumerate(["Hi!", "What is rain?", "Name a colour.", "Why is the sky blue?"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == solo


def test_server_streams_and_refuses_what_it_cannot_serve(client):
    full = ask(client, "Name a colour.", {"banks": [{"name": "pirate"}]}).json()["choices"][0]["message"]["content"]
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "smollm2-135m-instruct", "messages": conv("Name a colour."), "temperature": 0,
        "max_tokens": MAX_NEW_TOKENS, "stream": True, "memory": {"banks": [{"name": "pirate"}]},
    }) as r:
        import json as _json
        chunks = [_json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]).strip() == full
    r = ask(client, "Hi", {"banks": [{"name": "missing"}]})
    assert r.status_code == 404 and "no bank named 'missing'" in r.json()["error"]["message"]
    r = ask(client, "Hi", {"banks": [{"text": "Be a cat."}]})
    assert r.status_code == 400 and "POST /v1/banks" in r.json()["error"]["message"]
    r = client.post("/v1/sessions", json={})
    assert r.status_code == 501 and "transformers engine" in r.json()["error"]["message"]
