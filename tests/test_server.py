"""The OpenAI-compatible server, run for real: uvicorn on loopback, the real default model, the official client."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields

import httpx
import openai
import pytest
import torch

from memory_inception.core.architecture import model_fingerprint
from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering
from memory_inception.hf.inject import Injection, inject
from memory_inception.serving.app import create_app
from memory_inception.serving.schemas import MemorySpec
from memory_inception.serving.vllm_engine import served_steering
from memory_inception.vllm.bankdir import BankDirectory, InlineBankStore, inline_name
from memory_inception.vllm.spec import BankUse, RequestSteering
from servers import PIRATE, RunningServer

pytestmark = pytest.mark.real_model

MODEL_ID = "smollm2-135m-instruct"
API_KEY = "test-key-123"
QUESTION = [{"role": "user", "content": "What is your favorite food?"}]


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("banks")


@pytest.fixture(scope="module")
def server(model_and_tok, bank_dir):
    model, tok = model_and_tok
    app = create_app(model, tok, bank_dir=bank_dir, model_id=MODEL_ID, max_tokens_limit=64, max_body_bytes=64 * 1024)
    running = RunningServer(app)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def locked_server(model_and_tok, tmp_path_factory):
    """A second app on the same model: API key required and a 1-byte session cache budget."""
    model, tok = model_and_tok
    app = create_app(model, tok, bank_dir=tmp_path_factory.mktemp("banks2"), model_id=MODEL_ID, api_key=API_KEY,
                     session_cache_bytes=1, max_tokens_limit=64)
    running = RunningServer(app)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def _chat(client, messages=QUESTION, max_tokens=8, memory=None, **kw):
    extra = {"memory": memory} if memory is not None else None
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=max_tokens, temperature=0,
                                       extra_body=extra, **kw)
    return r


# ---------------------------------------------------------------------------- basics


def test_health_models_and_request_log(http, client, caplog):
    with caplog.at_level(logging.INFO, logger="memory_inception.serving.app"):
        assert http.get("/health").json()["status"] == "ok"
        assert [m.id for m in client.models.list().data] == [MODEL_ID]
        deadline = time.monotonic() + 5
        while not any("GET /v1/models 200" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.02)
    line = next(r.getMessage() for r in caplog.records if "GET /health" in r.getMessage())
    assert line.startswith("GET /health 200 ") and line.endswith("ms")


def test_plain_completion_counts_visible_tokens(client, model_and_tok):
    _, tok = model_and_tok
    r = _chat(client)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    rendered = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert r.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_equals_plain(client, http):
    plain = _chat(client).choices[0].message.content
    stream = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8
    raw = http.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": QUESTION, "max_tokens": 4,
                                                  "temperature": 0, "stream": True})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_stop_sequence_cuts_the_reply(client):
    full = _chat(client, max_tokens=12).choices[0].message.content
    words = full.split()
    assert len(words) >= 3
    r = _chat(client, max_tokens=12, stop=[" " + words[2]])
    assert r.choices[0].message.content == full[: full.index(" " + words[2])]
    assert r.choices[0].finish_reason == "stop"


def test_memory_changes_the_greedy_reply(client):
    plain = _chat(client, max_tokens=12).choices[0].message.content
    steered = _chat(client, max_tokens=12, memory={"banks": [{"text": PIRATE, "role": "target"}], "rho": 3.0})
    assert steered.choices[0].message.content != plain
    # usage counts visible tokens only: the bank adds nothing to the prompt
    assert steered.usage.prompt_tokens == _chat(client, max_tokens=1).usage.prompt_tokens


# ---------------------------------------------------------------------------- banks


def test_banks_crud_and_restart(http, client, model_and_tok, bank_dir):
    r = http.post("/v1/banks", json={"name": "pirate-1", "text": PIRATE, "layers": "21-26"})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "pirate-1" and info["layers"] == list(range(21, 27)) and info["slots"] > 10
    assert info["bytes"] > 0 and info["text"] == PIRATE
    assert (bank_dir / "pirate-1.safetensors").is_file()
    assert http.post("/v1/banks", json={"name": "pirate-1", "text": PIRATE}).status_code == 409
    assert [b["name"] for b in http.get("/v1/banks").json()["data"]] == ["pirate-1"]
    assert http.get("/v1/banks/pirate-1").json() == info

    plain = _chat(client, max_tokens=12).choices[0].message.content
    named = _chat(client, max_tokens=12, memory={"banks": [{"name": "pirate-1"}], "layers": "21-26"})
    inline = _chat(client, max_tokens=12, memory={"banks": [{"text": PIRATE}], "layers": [21, 22, 23, 24, 25, 26]})
    assert named.choices[0].message.content == inline.choices[0].message.content != plain

    # a bank without the requested layers is refused with a clear message
    r = http.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": QUESTION, "max_tokens": 2,
                                                "memory": {"banks": [{"name": "pirate-1"}], "layers": [3]}})
    assert r.status_code == 400 and "layers" in r.json()["error"]["message"]

    # a restarted server (a new app on the same directory) sees the bank
    from fastapi.testclient import TestClient

    model, tok = model_and_tok
    with TestClient(create_app(model, tok, bank_dir=bank_dir, model_id=MODEL_ID)) as again:
        assert again.get("/v1/banks/pirate-1").json()["slots"] == info["slots"]

    assert http.delete("/v1/banks/pirate-1").status_code == 200
    assert http.get("/v1/banks/pirate-1").status_code == 404
    assert http.delete("/v1/banks/pirate-1").status_code == 404
    assert not (bank_dir / "pirate-1.safetensors").exists()


# ---------------------------------------------------------------------------- sessions


def test_session_two_turns_with_a_patch_between(http):
    http.post("/v1/banks", json={"name": "pirate-s", "text": PIRATE, "layers": "21-26"}).raise_for_status()
    s = http.post("/v1/sessions", json={"system": "You are helpful.", "memory": {"banks": [{"name": "pirate-s"}]}})
    assert s.status_code == 201, s.text
    sid = s.json()["id"]
    one = http.post(f"/v1/sessions/{sid}/messages", json={"content": "Hello!", "max_tokens": 6, "temperature": 0})
    assert one.status_code == 200, one.text
    assert one.json()["cache"] == "new"
    before = http.get(f"/v1/sessions/{sid}").json()
    assert [m["role"] for m in before["messages"]] == ["system", "user", "assistant"]

    patched = http.patch(f"/v1/sessions/{sid}", json={"memory": {"banks": [{"text": "Be terse and formal."}],
                                                                 "rho": 5}})
    assert patched.status_code == 200, patched.text
    after = http.get(f"/v1/sessions/{sid}").json()
    assert after["messages"] == before["messages"]  # the PATCH touched neither transcript nor cache
    assert after["cache"]["tokens"] == before["cache"]["tokens"] > 0
    assert after["memory"]["rho"] == 5

    two = http.post(f"/v1/sessions/{sid}/messages", json={"content": "And now?", "max_tokens": 6, "temperature": 0})
    assert two.status_code == 200, two.text
    body = two.json()
    assert body["cache"] == "reused" and body["cache_reused_tokens"] > 0
    assert body["usage"]["completion_tokens"] <= 6
    transcript = http.get(f"/v1/sessions/{sid}").json()["messages"]
    assert [m["role"] for m in transcript] == ["system", "user", "assistant", "user", "assistant"]
    assert transcript[-1]["content"] == body["choices"][0]["message"]["content"]
    assert not any("pirate" in m["content"].lower() for m in transcript if m["role"] != "assistant")

    assert http.delete(f"/v1/sessions/{sid}").status_code == 200
    assert http.get(f"/v1/sessions/{sid}").status_code == 404
    assert http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).status_code == 404


def test_evicted_session_cache_is_rebuilt(locked_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=locked_server.url, timeout=120, headers=headers) as http:
        a = http.post("/v1/sessions", json={}).json()["id"]
        b = http.post("/v1/sessions").json()["id"]  # no body: every field is optional
        turn = {"max_tokens": 4, "temperature": 0}
        assert http.post(f"/v1/sessions/{a}/messages", json={"content": "Hi!", **turn}).json()["cache"] == "new"
        assert http.post(f"/v1/sessions/{b}/messages", json={"content": "Yo!", **turn}).json()["cache"] == "new"
        view = http.get(f"/v1/sessions/{a}").json()
        assert view["cache"]["evicted"] and view["cache"]["bytes"] == 0  # over the 1-byte budget
        assert [m["role"] for m in view["messages"]] == ["user", "assistant"]  # the transcript stays
        again = http.post(f"/v1/sessions/{a}/messages", json={"content": "More?", **turn})
        assert again.status_code == 200 and again.json()["cache"] == "rebuilt"
        assert len(http.get(f"/v1/sessions/{a}").json()["messages"]) == 4


def test_a_budget_for_two_caches_evicts_the_least_recently_used_one_only(http, model_and_tok, tmp_path):
    """The budget is measured from a real cache: exactly two sessions' caches after one equal turn each. A third
    session's turn evicts the first one only; a later turn that outgrows the budget evicts the least recently used
    other cache (not its own)."""
    model, tok = model_and_tok
    turn = {"content": "Hi!", "max_tokens": 4, "temperature": 0}
    probe = http.post("/v1/sessions", json={}).json()["id"]  # the shared server: a large budget
    assert http.post(f"/v1/sessions/{probe}/messages", json=turn).status_code == 200
    one = http.get(f"/v1/sessions/{probe}").json()["cache"]["bytes"]
    assert one > 0
    http.delete(f"/v1/sessions/{probe}")

    running = RunningServer(create_app(model, tok, bank_dir=tmp_path, model_id=MODEL_ID, max_tokens_limit=64,
                                       session_cache_bytes=2 * one))
    try:
        with httpx.Client(base_url=running.url, timeout=120) as c:
            a, b, third = (c.post("/v1/sessions", json={}).json()["id"] for _ in range(3))

            def caches():
                return {sid: c.get(f"/v1/sessions/{sid}").json()["cache"] for sid in (a, b, third)}

            for sid in (a, b):
                assert c.post(f"/v1/sessions/{sid}/messages", json=turn).json()["cache"] == "new"
            assert [v["bytes"] for v in caches().values()] == [one, one, 0]  # two fit: nothing evicted
            assert c.post(f"/v1/sessions/{third}/messages", json=turn).json()["cache"] == "new"
            now = caches()
            assert now[a] == {"tokens": 0, "bytes": 0, "evicted": True}
            assert now[b]["bytes"] == now[third]["bytes"] == one and not now[b]["evicted"] and not now[third]["evicted"]

            again = c.post(f"/v1/sessions/{b}/messages", json={**turn, "content": "And you?"}).json()
            assert again["cache"] == "reused"
            now = caches()
            assert one < now[b]["bytes"] <= 2 * one and not now[b]["evicted"]  # b outgrew the budget with `third`
            assert now[third]["evicted"] and now[third]["bytes"] == 0 and now[a]["evicted"]
            assert c.post(f"/v1/sessions/{a}/messages", json=turn).json()["cache"] == "rebuilt"
            assert len(c.get(f"/v1/sessions/{a}").json()["messages"]) == 4  # the transcript stayed
    finally:
        running.stop()


# ---------------------------------------------------------------------------- bad input and auth


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    return err


def test_bad_input_is_refused_clearly(http, client):
    base = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 2}
    err = _error(http.post("/v1/chat/completions", json={**base, "frequency_penalty": 0.5}), 400)
    assert "frequency_penalty" in err["message"] and err["type"] == "invalid_request_error"
    err = _error(http.post("/v1/chat/completions", json={**base, "memory": {"banks": [{"text": "x", "colour": 1}]}}),
                 400)
    assert "colour" in err["message"]
    with pytest.raises(openai.BadRequestError):
        _chat(client, memory={"banks": [], "strength": 2})
    _error(http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(http.post("/v1/chat/completions", json={**base, "memory": {"layers": "a-b"}}), 400)
    _error(http.post("/v1/chat/completions", json={**base, "memory": {"banks": [{"text": PIRATE}], "layers": [99]}}),
           400)

    for bad in ("../etc", "a/b", "x" * 65, "", "bad name", "dot.dot"):
        _error(http.post("/v1/banks", json={"name": bad, "text": "hello"}), 400)
    _error(http.get("/v1/banks/..%2F..%2Fetc%2Fpasswd"), 400)
    _error(http.delete("/v1/banks/..%2Fsecret"), 400)

    err = _error(http.post("/v1/chat/completions", json={**base, "memory": {"banks": [{"name": "no-such-bank"}]}}),
                 404)
    assert "no-such-bank" in err["message"]
    with pytest.raises(openai.NotFoundError):
        _chat(client, memory={"banks": [{"name": "no-such-bank"}]})

    err = _error(http.post("/v1/chat/completions", json={**base, "max_tokens": 10_000}), 422)
    assert "64" in err["message"]
    _error(http.post("/v1/sessions/nope/messages", json={"content": "hi", "max_tokens": 10_000}), 404)

    err = _error(http.post("/v1/chat/completions", json={**base, "messages": [
        {"role": "user", "content": "x" * 100_000}]}), 413)
    assert "limit" in err["message"]
    _error(http.post("/v1/chat/completions", json={**base, "model": "gpt-4"}), 404)


def test_api_key(locked_server):
    url = locked_server.url
    assert httpx.get(url + "/health").status_code == 200
    err = _error(httpx.get(url + "/v1/models"), 401)
    assert err["type"] == "authentication_error"
    _error(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    r = good.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=2, temperature=0)
    assert r.choices[0].message.content


# ---------------------------------------------------------------------------- concurrency


def test_sixteen_simultaneous_requests_equal_their_solo_runs(http):
    memory = {"banks": [{"text": PIRATE}], "layers": "21-26"}
    variants = [
        {"messages": QUESTION},
        {"messages": QUESTION, "memory": memory},
        {"messages": [{"role": "user", "content": "How do I make tea?"}]},
        {"messages": [{"role": "user", "content": "How do I make tea?"}], "memory": memory},
    ]
    requests = [{"model": MODEL_ID, "max_tokens": 8, "temperature": 0, **v} for v in variants]

    def run(body):
        r = http.post("/v1/chat/completions", json=body)
        return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text

    solo = [run(body) for body in requests]
    assert all(status == 200 for status, _ in solo)
    assert solo[0][1] != solo[1][1]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(run, [requests[i % 4] for i in range(16)]))
    assert together == [solo[i % 4] for i in range(16)]


def test_a_seeded_sample_is_the_models_own_sample_with_that_seed(client, model_and_tok, bank_dir):
    """A seeded reply equals the model's own sampling (a plain `generate`, torch.manual_seed, the same
    temperature and top-p) run here, outside the server; two seeds give two samples; a restarted server (a new app
    on the model) gives the same sample for the same seed."""
    from fastapi.testclient import TestClient

    from memory_inception.serving.locks import model_lock

    model, tok = model_and_tok
    sampling = {"max_tokens": 6, "temperature": 1.2, "top_p": 0.95}

    def served(seed, via=None):
        if via is None:
            return client.chat.completions.create(model=MODEL_ID, messages=QUESTION, seed=seed,
                                                  **sampling).choices[0].message.content
        r = via.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": QUESTION, "seed": seed, **sampling})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    def own(seed):
        prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with model_lock(model), torch.no_grad():  # the server is idle; the lock only makes sure of it
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=1.2, top_p=0.95, max_new_tokens=6, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    greedy = _chat(client, max_tokens=6).choices[0].message.content
    samples = {seed: served(seed) for seed in (7, 8)}
    assert samples == {seed: own(seed) for seed in (7, 8)}
    assert samples[7] != samples[8] and greedy not in samples.values()
    with TestClient(create_app(model, tok, bank_dir=bank_dir, model_id=MODEL_ID)) as again:
        assert served(7, again) == samples[7]


def test_mi_serve_command_is_wired():
    from typer.testing import CliRunner

    from memory_inception.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--bank-dir", "--api-key", "--sessions-db", "--max-queue",
                   "--request-timeout", "--max-bank-tokens", "--max-memory-slots"):
        assert option in result.output


def test_json_without_a_json_content_type_is_accepted(http):
    """curl -d sends application/x-www-form-urlencoded; every body here is JSON, so it is read as JSON."""
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}'
    r = http.post("/v1/chat/completions", content=body % MODEL_ID.encode(),
                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    err = _error(http.post("/v1/chat/completions", content=b"x", headers={"content-type": "text/plain"}), 400)
    assert "JSON" in err["message"]


# ---------------------------------------------------------------------------- one mapping, one plan


def _same_bank(a, b):
    assert (a.name, a.text, a.token_ids, a.fingerprint, a.num_kv_heads, a.head_dim, a.layers) == (
        b.name, b.text, b.token_ids, b.fingerprint, b.num_kv_heads, b.head_dim, b.layers)
    for layer in a.layers:
        assert torch.equal(a.keys(layer), b.keys(layer)) and torch.equal(a.values(layer), b.values(layer))


def _same_steering(a, b):
    """Field by field (Banks hold tensors, so never `==` on the whole Steering)."""
    assert [role for role, _ in a.banks] == [role for role, _ in b.banks]
    for f in fields(Steering):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("target", "reference"):
            assert (x is None) == (y is None), f.name
            if x is not None:
                _same_bank(x, y)
        elif f.name == "auxiliary":
            assert [gain for _, gain in x] == [gain for _, gain in y]
            for (bank_x, _), (bank_y, _) in zip(x, y, strict=True):
                _same_bank(bank_x, bank_y)
        else:
            assert x == y, (f.name, x, y)


def test_both_engines_map_a_memory_spec_to_the_same_steering(model_and_tok, tmp_path):
    """The transformers engine's Steering and the vLLM engine's RequestSteering, resolved from the bank directory
    as the vLLM worker resolves it, agree field by field: one mapping from bank roles and gains to steering."""
    model, tok = model_and_tok
    service = create_app(model, tok, bank_dir=tmp_path, model_id=MODEL_ID).state.service
    texts = {"pirate-eq": PIRATE, "formal-eq": "You are a formal professor who speaks in long sentences.",
             "terse-eq": "Answer in as few words as you can."}
    for name, text in texts.items():
        service.banks.create(name, text, list(range(21, 27)))
    fingerprint = model_fingerprint(model)
    banks = [{"name": "pirate-eq", "role": "target", "gain": 1.5}, {"name": "formal-eq", "role": "reference",
             "gain": 0.5}, {"name": "terse-eq", "role": "auxiliary", "gain": -2.0}]
    uses = (BankUse("pirate-eq", "target", 1.5), BankUse("formal-eq", "reference", 0.5),
            BankUse("terse-eq", "auxiliary", -2.0))
    inline = {"text": "Speak in rhymes.", "role": "auxiliary", "gain": 0.25}
    inline_use = BankUse(inline_name(inline["text"], range(21, 27), fingerprint), "auxiliary", 0.25)
    seen = []
    for memory, request in [
        (MemorySpec(banks=banks, layers="21-23", rho=4.0), RequestSteering(banks=uses, rho=4.0, layers=(21, 22, 23))),
        (MemorySpec(banks=banks), RequestSteering(banks=uses)),  # the model's default sites and rho
        (MemorySpec(banks=banks[:1] + [inline]), RequestSteering(banks=(uses[0], inline_use))),  # a text bank
    ]:
        injection = service.steering(memory)  # the transformers engine plans it here, once
        assert isinstance(injection, Injection) and inject(model, injection) is injection
        mine = injection.steering
        served = served_steering(memory, service.banks, fingerprint=fingerprint)
        assert served.request == request
        files = InlineBankStore(tmp_path, max_files=4, max_bytes=1 << 30)
        with files.pinned([(bank.name, bank.build) for bank in served.inline]):  # as the vLLM engine writes them
            _same_steering(mine, request.resolve(BankDirectory(tmp_path), fingerprint))
        seen.append(mine)
    layered, default, with_text = seen
    assert (layered.positive_gain, layered.negative_gain, [g for _, g in layered.auxiliary]) == (1.5, 0.5, [-2.0])
    assert layered.sites == Sites({21: None, 22: None, 23: None}) and layered.rho == 4.0
    assert default.sites is None and default.rho is None  # resolved when planned, as on the vLLM worker
    assert with_text.auxiliary[0][0].layers == tuple(range(21, 27))  # the text bank: built at the default sites


def test_a_steered_request_is_planned_once(model_and_tok, tmp_path, monkeypatch):
    """Validating a request plans its injection; generation enters that one (a session's, every turn)."""
    from fastapi.testclient import TestClient

    import memory_inception.hf.inject as hf_inject

    planned = []
    plan_layers = hf_inject.plan_layers
    monkeypatch.setattr(hf_inject, "plan_layers", lambda *a, **kw: planned.append(1) or plan_layers(*a, **kw))
    model, tok = model_and_tok
    memory = {"banks": [{"text": PIRATE}], "layers": "21-26", "rho": 3}
    body = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 3, "temperature": 0, "memory": memory}
    with TestClient(create_app(model, tok, bank_dir=tmp_path, model_id=MODEL_ID)) as c:
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        assert len(planned) == 1
        assert c.post("/v1/chat/completions", json={**body, "stream": True}).status_code == 200
        assert len(planned) == 2
        sid = c.post("/v1/sessions", json={"memory": memory}).json()["id"]
        assert len(planned) == 3
        for content in ("Hello!", "And now?"):
            turn = c.post(f"/v1/sessions/{sid}/messages", json={"content": content, "max_tokens": 3, "temperature": 0})
            assert turn.status_code == 200, turn.text
        assert len(planned) == 3
        assert c.patch(f"/v1/sessions/{sid}", json={"memory": {**memory, "rho": 5}}).status_code == 200
        assert c.post(f"/v1/sessions/{sid}/messages", json={"content": "Hi", "max_tokens": 3}).status_code == 200
        assert len(planned) == 4


def test_text_banks_are_built_at_the_sites_a_tuned_target_bank_uses(model_and_tok, tmp_path):
    """Without layers, a named target bank's tuned sites are the steering's sites (`Steering.resolved`): both
    engines build the request's text banks there too, so they cover the sites."""
    model, tok = model_and_tok
    service = create_app(model, tok, bank_dir=tmp_path, model_id=MODEL_ID).state.service
    bank = service.banks.create("tuned-t", PIRATE, list(range(16, 27)))
    bank.options["tuned"] = {"sites": {"17": None, "18": None}, "rho": 2.0}
    bank.save(service.banks.path("tuned-t"))
    memory = MemorySpec(banks=[{"name": "tuned-t"}, {"text": "Speak in rhymes.", "role": "auxiliary"}])
    assert service.banks.inline_layers(memory) == [17, 18]
    injection = service.steering(memory)
    assert sorted(injection.plans) == [17, 18] and injection.steering.auxiliary[0][0].layers == (17, 18)
    served = served_steering(memory, service.banks, fingerprint=model_fingerprint(model))
    assert served.request.banks[1].name == inline_name("Speak in rhymes.", [17, 18], model_fingerprint(model))


def test_a_bank_posted_without_layers_has_every_layer(http, model_and_tok):
    """POST /v1/banks without `layers` builds every layer, so any request's layers can use the bank."""
    r = http.post("/v1/banks", json={"name": "every-layer", "text": "Be kind."})
    assert r.status_code == 201, r.text
    assert r.json()["layers"] == list(range(model_and_tok[0].config.num_hidden_layers))
    assert http.delete("/v1/banks/every-layer").status_code == 200
