"""`mi serve --engine vllm` serves the transformers server's API: real uvicorn servers on loopback, real HTTP.

One vLLM server (the shared engine) and two transformers servers on the same model and bank directory: the
default one, and one whose session cache budget is a byte, so every later session turn is "rebuilt" (recomputed
from the transcript with the current guidance) — the way the vLLM engine runs every turn.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import BANK_TEXTS, MAX_NEW_TOKENS
from memory_inception.serving.app import create_app
from memory_inception.serving.streaming import TokenQueue
from memory_inception.serving.vllm_engine import VLLMEngine
from memory_inception.vllm import BankUse, RequestSteering
from memory_inception.vllm.bankdir import INLINE_DIR, InlineBankStore, inline_name
from servers import RunningServer

MODEL_ID = "smollm2-135m-instruct"
LIMITS = dict(model_id=MODEL_ID, max_tokens_limit=64, max_sessions=3)
TURN = {"max_tokens": 8, "temperature": 0}
# a system message longer than one vLLM CPU block (128 tokens), so a plain session's second turn can hit the cache
LIBRARIAN = (
    "You are the assistant of a small seaside library. The library opens at nine and closes at six, except on "
    "Sundays, when it is closed. Members may borrow up to five books for three weeks and renew them twice. "
    "Children under twelve need a parent to sign their card. The reading room on the first floor is quiet; the "
    "café on the ground floor is not. Printing costs ten cents a page. Lost cards cost two dollars to replace. "
    "Answer briefly and politely, and when you do not know something, say so and suggest asking at the front "
    "desk. Never invent opening hours, prices or rules that are not listed here."
)


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def apps(hf, bank_dir, engine):
    model, tokenizer = hf
    db = bank_dir.parent  # each server its own sessions database (they share the bank directory)
    return {
        "vllm": create_app(model, tokenizer, bank_dir=bank_dir, sessions_db=db / "vllm.sessions.db",
                           engine=VLLMEngine(model, bank_dir=bank_dir, engine=engine, inline_bank_files=2), **LIMITS),
        "transformers": create_app(model, tokenizer, bank_dir=bank_dir, sessions_db=db / "hf.sessions.db", **LIMITS),
        "rebuilt": create_app(model, tokenizer, bank_dir=bank_dir, session_cache_bytes=1,
                              sessions_db=db / "rebuilt.sessions.db", **LIMITS),
    }


@pytest.fixture(scope="module")
def servers(apps):
    running = {name: RunningServer(app) for name, app in apps.items()}
    clients = {name: httpx.Client(base_url=r.url, timeout=300) for name, r in running.items()}
    yield clients
    for name in apps:
        clients[name].close()
        running[name].stop()


@pytest.fixture(scope="module")
def client(servers):
    return servers["vllm"]


def ask(client, text, memory=None, **extra):
    body = {"model": MODEL_ID, "messages": conv(text), "temperature": 0, "max_tokens": MAX_NEW_TOKENS, **extra}
    if memory is not None:
        body["memory"] = memory
    return client.post("/v1/chat/completions", json=body)


def reply(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


# ---------------------------------------------------------------------------- chat completions


def test_server_memory_extension_equals_the_engine(client, engine):
    memory = {"banks": [{"name": "pirate", "role": "target"}, {"name": "professor", "role": "reference"}],
              "layers": "20-25", "rho": 5}
    want = engine.chat([conv("How do I make tea?")],
                       RequestSteering(banks=(BankUse("pirate"), BankUse("professor", role="reference")),
                                       layers=tuple(range(20, 26)), rho=5.0),
                       max_tokens=MAX_NEW_TOKENS)[0]
    got = reply(ask(client, "How do I make tea?", memory))
    assert got == engine.tokenizer.decode(want.token_ids, skip_special_tokens=True).strip()
    assert reply(ask(client, "How do I make tea?")) != got


def test_server_concurrent_requests_share_batches_and_equal_solo_runs(client):
    memory = {"banks": [{"name": "poet"}]}
    questions = ["Hi!", "What is rain?", "Name a colour.", "Why is the sky blue?"]
    solo = [reply(ask(client, q, memory if i % 2 else None)) for i, q in enumerate(questions)]
    results: dict[int, str] = {}

    def run(i: int, q: str) -> None:
        results[i] = reply(ask(client, q, memory if i % 2 else None))

    threads = [threading.Thread(target=run, args=(i, q)) for i, q in enumerate(questions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == solo


def test_server_streams_and_refuses_an_unknown_bank(client):
    full = reply(ask(client, "Name a colour.", {"banks": [{"name": "pirate"}]}))
    with client.stream("POST", "/v1/chat/completions", json={
        "model": MODEL_ID, "messages": conv("Name a colour."), "temperature": 0, "max_tokens": MAX_NEW_TOKENS,
        "stream": True, "memory": {"banks": [{"name": "pirate"}]},
    }) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]).strip() == full
    r = ask(client, "Hi", {"banks": [{"name": "missing"}]})
    assert r.status_code == 404 and "no bank named 'missing'" in r.json()["error"]["message"]


def test_a_cancelled_generation_is_aborted_and_the_engine_serves_on(apps, client):
    """What a streaming client's disconnect does: the request is aborted within a step or two."""
    service = apps["vllm"].state.service  # the Service renders; its engine (VLLMEngine) generates
    cancel = threading.Event()

    class CancelAfterFirstToken(TokenQueue):
        def put(self, value) -> None:
            super().put(value)
            if self.tokens:
                cancel.set()

    streamer = CancelAfterFirstToken()
    service.engine.generate(service.render(conv("Tell me a long story about a dragon.")), None,
                            {"max_new_tokens": 64}, None, None, streamer, cancel)
    assert 1 <= len(streamer.tokens) < 8
    assert reply(ask(client, "Hi!", max_tokens=2))


# ---------------------------------------------------------------------------- inline text banks


def test_inline_bank_equals_the_named_bank_and_the_transformers_engine(servers, bank_dir, engine):
    vllm, transformers = servers["vllm"], servers["transformers"]
    text = BANK_TEXTS["poet"]
    vllm.post("/v1/banks", json={"name": "poet-named", "text": text}).raise_for_status()
    memory = {"layers": "20-25", "rho": 4}
    question, short = "What is rain?", {"max_tokens": 12}
    inline = ask(vllm, question, {"banks": [{"text": text}], **memory}, **short)
    named = ask(vllm, question, {"banks": [{"name": "poet-named"}], **memory}, **short)
    reference = ask(transformers, question, {"banks": [{"text": text}], **memory}, **short)
    assert reply(inline) == reply(named) == reply(reference)
    assert inline.json()["usage"] == named.json()["usage"] == reference.json()["usage"]
    assert reply(inline) != reply(ask(vllm, question, **short))  # the bank steered
    # stored for the worker under its content address, hidden from the bank listing
    name = inline_name(text, range(20, 26), engine.checkpoint.fingerprint)
    assert (bank_dir / INLINE_DIR / f"{name.split('/')[1]}.safetensors").is_file()
    assert {b["name"] for b in vllm.get("/v1/banks").json()["data"]} == set(BANK_TEXTS) | {"poet-named"}
    assert vllm.get(f"/v1/banks/{name}").status_code == 400  # not a user bank name: not reachable by the API


def test_inline_banks_are_bounded_and_safe_under_concurrent_requests(client, bank_dir):
    """The server keeps at most 2 inline files here: 6 concurrent requests over 3 texts evict and rewrite them
    while the others run, and every reply equals its solo run."""
    texts = [BANK_TEXTS["pirate"], BANK_TEXTS["professor"], "Answer like a sleepy cat who loves naps and fish."]
    short = {"max_tokens": 4}
    solo = [reply(ask(client, "Hi!", {"banks": [{"text": t}]}, **short)) for t in texts]
    assert len(list((bank_dir / INLINE_DIR).glob("*.safetensors"))) <= 2
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda i: reply(ask(client, "Hi!", {"banks": [{"text": texts[i % 3]}]}, **short)),
                                 range(6)))
    assert together == [solo[i % 3] for i in range(6)]
    assert len(list((bank_dir / INLINE_DIR).glob("*.safetensors"))) <= 2


def test_inline_store_pins_evicts_and_rewrites(tmp_path, banks):
    """The store alone: bounds by count and bytes, never evicts a pinned file, rewrites an evicted one."""
    built: list[str] = []

    def source(key: str):
        return lambda: built.append(key) or banks[key]

    names = {key: f"{INLINE_DIR}/{i:032x}" for i, key in enumerate(BANK_TEXTS)}
    store = InlineBankStore(tmp_path, max_files=2, max_bytes=1 << 30)
    with store.pinned([(names["pirate"], source("pirate"))]):
        for key in ("professor", "poet"):
            with store.pinned([(names[key], source(key))]):
                pass
        assert names["pirate"] in store.names and len(store.names) == 2  # pinned: professor went instead
    with store.pinned([(names["professor"], source("professor"))]):  # evicted: written again
        pass
    assert built == ["pirate", "professor", "poet", "professor"]
    assert sorted(p.stem for p in (tmp_path / INLINE_DIR).glob("*")) == sorted(n[-32:] for n in store.names)
    largest = max(p.stat().st_size for p in (tmp_path / INLINE_DIR).glob("*.safetensors"))
    again = InlineBankStore(tmp_path, max_files=2, max_bytes=largest)  # a restart with a smaller byte bound
    assert again.names == store.names[1:]  # the files found count toward the bounds; the oldest went


# ---------------------------------------------------------------------------- sessions


def run_session(client, create: dict, turns: list[dict | tuple[str, dict]]) -> tuple[list[dict], dict]:
    """Open a session, send `turns` (a message body, or ("patch", body)); return the replies and the final view."""
    created = client.post("/v1/sessions", json=create)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    replies = []
    for turn in turns:
        if isinstance(turn, tuple):
            before = client.get(f"/v1/sessions/{sid}").json()
            patched = client.patch(f"/v1/sessions/{sid}", json=turn[1])
            assert patched.status_code == 200, patched.text
            assert patched.json()["messages"] == before["messages"]  # guidance only: the transcript stays
            continue
        r = client.post(f"/v1/sessions/{sid}/messages", json=turn)
        assert r.status_code == 200, r.text
        replies.append(r.json())
    view = client.get(f"/v1/sessions/{sid}").json()
    assert client.delete(f"/v1/sessions/{sid}").status_code == 200
    return replies, view


def same_turns(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x["choices"], x["usage"]) == (y["choices"], y["usage"])


def test_plain_session_equals_the_transformers_session_and_reuses_the_prefix_cache(servers):
    turns = [{"content": "Hello!", **TURN}, {"content": "When do you open on Monday?", "stop": ["."], **TURN}]
    want, want_view = run_session(servers["transformers"], {"system": LIBRARIAN}, turns)
    got, got_view = run_session(servers["vllm"], {"system": LIBRARIAN}, turns)
    same_turns(got, want)
    assert got_view["messages"] == want_view["messages"]
    assert [m["role"] for m in got_view["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert got[0]["usage"]["prompt_tokens"] > 128 and "." not in got[1]["choices"][0]["message"]["content"]
    assert [t["cache"] for t in want] == ["new", "reused"]
    assert got[1]["cache"] == "reused" and 0 < got[1]["cache_reused_tokens"] < got[1]["usage"]["prompt_tokens"]
    assert got[1]["cache_tokens"] == 0 and got_view["cache"] == {"tokens": 0, "bytes": 0, "evicted": False}


def test_steered_session_with_a_bank_swap_equals_the_transformers_session(servers):
    """Named bank for two turns, then a PATCH to an inline bank: each turn equals the transformers engine's turn
    recomputed from the transcript (its "rebuilt" turns), cache states included; no bank text in the transcript."""
    create = {"system": "You are helpful.", "memory": {"banks": [{"name": "pirate"}]}}
    turns = [{"content": "Hello!", **TURN}, {"content": "What is rain?", **TURN},
             ("patch", {"memory": {"banks": [{"text": BANK_TEXTS["poet"]}], "rho": 4}}),
             {"content": "Tell me about ships.", **TURN}]
    want, want_view = run_session(servers["rebuilt"], create, turns)
    got, got_view = run_session(servers["vllm"], create, turns)
    same_turns(got, want)
    assert [t["cache"] for t in got] == [t["cache"] for t in want] == ["new", "rebuilt", "rebuilt"]
    assert got_view["messages"] == want_view["messages"]
    assert got_view["memory"] == want_view["memory"] and got_view["memory"]["rho"] == 4
    assert [m["role"] for m in got_view["messages"]] == ["system"] + ["user", "assistant"] * 3
    assert not any(text in m["content"] for m in got_view["messages"] for text in BANK_TEXTS.values())


def test_session_errors_equal_the_transformers_engine(servers):
    """Unknown session 404, bad PATCH 400, too large max_tokens 422, too many sessions 429: same status, code and
    message on both engines."""
    def errors(client) -> list[tuple[int, dict]]:
        out = []
        sid = client.post("/v1/sessions", json={}).json()["id"]
        for method, path, body in [
            ("GET", "/v1/sessions/nope", None),
            ("POST", "/v1/sessions/nope/messages", {"content": "hi"}),
            ("PATCH", "/v1/sessions/nope", {"memory": None}),
            ("DELETE", "/v1/sessions/nope", None),
            ("PATCH", f"/v1/sessions/{sid}", {"memory": {"banks": [{"name": "pirate", "text": "x"}]}}),
            ("PATCH", f"/v1/sessions/{sid}", {"memory": {"banks": [{"name": "pirate"}], "layers": [99]}}),
            ("PATCH", f"/v1/sessions/{sid}", {"memory": {"banks": [{"name": "no-such-bank"}]}}),
            ("PATCH", f"/v1/sessions/{sid}", {}),
            ("POST", f"/v1/sessions/{sid}/messages", {"content": "hi", "max_tokens": 10_000}),
            ("POST", f"/v1/sessions/{sid}/messages", {"content": "hi", "colour": 1}),
        ]:
            r = client.request(method, path, json=body)
            out.append((r.status_code, r.json()["error"]))
        opened = [sid] + [client.post("/v1/sessions", json={}).json()["id"] for _ in range(2)]
        r = client.post("/v1/sessions", json={})
        out.append((r.status_code, r.json()["error"]))
        assert client.get(f"/v1/sessions/{sid}").json()["messages"] == []  # nothing above touched it
        for s in opened:
            assert client.delete(f"/v1/sessions/{s}").status_code == 200
        return out

    got, want = errors(servers["vllm"]), errors(servers["transformers"])
    assert got == want
    assert [status for status, _ in got] == [404, 404, 404, 404, 400, 400, 404, 400, 422, 400, 429]
    assert got[-1][1]["code"] == "too_many_sessions" and "DELETE" in got[-1][1]["message"]


# ---------------------------------------------------------------------------- completions, logprobs, streamed turns


def test_logprobs_and_completions_equal_the_transformers_engine(servers):
    """vLLM returns logprobs through SamplingParams (its raw log-probabilities): the same tokens, the same values
    within fp32 tolerance, the same alternatives, as the transformers engine's, in chat and text completions."""
    vllm, transformers = servers["vllm"], servers["transformers"]
    memory = {"banks": [{"name": "pirate"}], "layers": "20-25", "rho": 4}
    for extra in ({}, {"memory": memory}):
        got = ask(vllm, "What is rain?", logprobs=True, top_logprobs=3, max_tokens=8, **extra).json()
        want = ask(transformers, "What is rain?", logprobs=True, top_logprobs=3, max_tokens=8, **extra).json()
        assert got["choices"][0]["message"] == want["choices"][0]["message"]
        a, b = got["choices"][0]["logprobs"]["content"], want["choices"][0]["logprobs"]["content"]
        assert [e["token"] for e in a] == [e["token"] for e in b] and len(a) == got["usage"]["completion_tokens"]
        assert [e["logprob"] for e in a] == pytest.approx([e["logprob"] for e in b], abs=2e-3)
        assert [[t["token"] for t in e["top_logprobs"]] for e in a] == [[t["token"] for t in e["top_logprobs"]]
                                                                        for e in b]
        body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0,
                "logprobs": 2, **extra}
        got_c = vllm.post("/v1/completions", json=body).json()["choices"][0]
        want_c = transformers.post("/v1/completions", json=body).json()["choices"][0]
        assert got_c["text"] == want_c["text"] and got_c["finish_reason"] == want_c["finish_reason"]
        assert got_c["logprobs"]["tokens"] == want_c["logprobs"]["tokens"]
        assert got_c["logprobs"]["token_logprobs"] == pytest.approx(want_c["logprobs"]["token_logprobs"], abs=2e-3)
        streamed = vllm.post("/v1/completions", json={**body, "stream": True})
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == got_c["text"]


def test_streamed_session_turns_equal_unstreamed_on_vllm(servers):
    client = servers["vllm"]
    create = {"system": "You are helpful.", "memory": {"banks": [{"name": "poet"}]}}
    plain, streamed = (client.post("/v1/sessions", json=create).json()["id"] for _ in range(2))
    for content in ("Hello!", "What is rain?"):
        want = client.post(f"/v1/sessions/{plain}/messages", json={"content": content, **TURN}).json()
        r = client.post(f"/v1/sessions/{streamed}/messages", json={"content": content, "stream": True, **TURN})
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
            want["choices"][0]["message"]["content"]
        assert chunks[-1]["cache"] == want["cache"]
    assert client.get(f"/v1/sessions/{plain}").json()["messages"] == client.get(f"/v1/sessions/{streamed}").json()[
        "messages"]
    for sid in (plain, streamed):
        assert client.delete(f"/v1/sessions/{sid}").status_code == 200
