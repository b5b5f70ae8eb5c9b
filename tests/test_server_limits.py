"""The server's bounds, error redaction, stored sessions, log-probabilities and metrics on a tiny random model and a
word-level tokenizer (fast; FastAPI's TestClient, since these are about the app). The same behaviours on the real
model over real HTTP, a real process killed with -9 included: tests/test_server_service.py."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_tiny, make_tiny_tokenizer
from memory_inception.core.banks import build_bank
from memory_inception.serving.admission import Admission, Deadline
from memory_inception.serving.app import create_app
from memory_inception.serving.locks import model_lock
from memory_inception.serving.redact import Redactor
from memory_inception.serving.streaming import EventStream, Finished

MODEL_ID = "tiny"
HELLO = [{"role": "user", "content": "hello how is weather today"}]
PIRATE = "you are a cheerful pirate who loves the sea"


@pytest.fixture(scope="module")
def tiny():
    return make_tiny("llama"), make_tiny_tokenizer()


def make_app(tiny, tmp_path, **options):
    model, tok = tiny
    return create_app(model, tok, bank_dir=tmp_path / "banks", model_id=MODEL_ID, **options)


def chat(c, memory=None, **extra):
    body = {"model": MODEL_ID, "messages": HELLO, "max_tokens": 4, "temperature": 0, **extra}
    if memory is not None:
        body["memory"] = memory
    return c.post("/v1/chat/completions", json=body)


def error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if code is not None:
        assert err["code"] == code, err
    return err


def metrics(c) -> dict[tuple[str, tuple], float]:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


# ---------------------------------------------------------------------------- numbers and sizes


def test_gains_rho_and_numbers_are_bounded(tiny, tmp_path):
    with TestClient(make_app(tiny, tmp_path)) as c:
        err = error(chat(c, {"banks": [{"text": PIRATE, "gain": -1e30}]}), 400)
        assert "gain" in err["message"] and "-100" in err["message"]
        error(chat(c, {"banks": [{"text": PIRATE, "gain": 101}]}), 400)
        error(chat(c, {"banks": [{"text": PIRATE}], "rho": -1e30}), 400)
        for raw in (b'"rho": NaN', b'"rho": Infinity'):
            body = b'{"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "memory": {"banks": ' \
                   b'[{"text": "hello"}], ' + raw + b"}}"
            err = error(c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}),
                        400)
            assert "rho" in err["message"] and "finite" in err["message"]
        err = error(chat(c, {"banks": [{"text": PIRATE}], "layers": "0-999999999"}), 400)
        assert "9999" in err["message"]  # refused from the range itself (a billion layers are never listed)
        error(chat(c, seed=2**64), 400)
        error(chat(c, stop=["x" * 257]), 400)
        assert chat(c, {"banks": [{"text": PIRATE, "gain": -100}], "rho": 100}).status_code == 200


def test_an_oversized_inline_bank_is_refused_before_any_model_work(tiny, tmp_path):
    """While another request holds the model, a 20,000-word inline bank is refused (422, naming the limit): the
    check needs the tokenizer only, never the model or a place in the queue."""
    model, _ = tiny
    with TestClient(make_app(tiny, tmp_path, max_bank_tokens=64, max_body_bytes=1 << 20)) as c:
        huge = " ".join(["pirate"] * 20_000)
        with model_lock(model):
            started = time.perf_counter()
            err = error(chat(c, {"banks": [{"text": huge}]}), 422, "bank_too_large")
            refused_in = time.perf_counter() - started
            assert "more than 64 tokens" in err["message"] and "limit is 64 tokens" in err["message"]
            err = error(c.post("/v1/banks", json={"name": "huge", "text": huge}), 422, "bank_too_large")
            sid = c.post("/v1/sessions", json={}).json()["id"]
            error(c.patch(f"/v1/sessions/{sid}", json={"memory": {"banks": [{"text": huge}]}}), 422, "bank_too_large")
            err = error(chat(c, {"banks": [{"text": " ".join(["pirate"] * 70)}]}), 422, "bank_too_large")
            assert "has 70 tokens" in err["message"]  # a text not far over the limit: counted exactly
        print(f"20,000-word inline bank refused in {refused_in * 1000:.1f} ms while the model was held")
        assert c.get("/v1/banks/huge").status_code == 404


def test_a_requests_bank_slots_are_bounded_in_all(tiny, tmp_path):
    with TestClient(make_app(tiny, tmp_path, max_memory_slots=12)) as c:
        text = "you are a cheerful pirate who loves the sea"  # 9 tokens
        assert c.post("/v1/banks", json={"name": "p", "text": text}).status_code == 201
        assert c.get("/v1/banks/p").json()["slots"] == 9
        assert chat(c, {"banks": [{"name": "p"}]}).status_code == 200
        err = error(chat(c, {"banks": [{"name": "p"}, {"text": "be brief kind calm honest", "role": "auxiliary"}]}),
                    422, "memory_too_large")
        assert "14 slots" in err["message"] and "limit is 12" in err["message"]


def test_a_full_queue_is_refused_with_retry_after_and_the_line_is_served_in_order(tiny, tmp_path):
    app = make_app(tiny, tmp_path, max_queue=2)
    admission: Admission = app.state.service.admission
    with TestClient(app) as c:
        holder = admission.enter(Deadline(None))  # the engine is busy
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(chat, c) for _ in range(2)]
            deadline = time.monotonic() + 30
            while admission.waiting < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            r = chat(c)
            err = error(r, 503, "server_busy")
            assert int(r.headers["Retry-After"]) >= 1 and "max_queue 2" in err["message"]
            assert metrics(c)[("mi_queue_depth", ())] == 2
            holder.release()
            assert [f.result().status_code for f in waiting] == [200, 200]
        assert admission.running == 0 and admission.waiting == 0
        seen = metrics(c)
        assert seen[("mi_rejected_total", (("reason", "server_busy"),))] == 1
        assert seen[("mi_queue_depth", ())] == 0


def test_the_deadline_bounds_the_wait_and_the_generation(tiny, tmp_path):
    model, _ = tiny
    app = make_app(tiny, tmp_path, request_timeout_s=0.5)
    admission: Admission = app.state.service.admission
    with TestClient(app) as c:
        holder = admission.enter(Deadline(None))
        r = chat(c)
        err = error(r, 503, "queue_timeout")
        assert "deadline of 0.5 s" in err["message"] and "Retry-After" in r.headers
        holder.release()

        lock = model_lock(model)  # admitted at once, but the model is busy past the deadline
        lock.acquire()
        threading.Timer(1.0, lock.release).start()
        err = error(chat(c, max_tokens=64), 504, "deadline_exceeded")
        assert "0.5 s" in err["message"]
        lock.acquire()
        threading.Timer(1.0, lock.release).start()
        stream = chat(c, max_tokens=64, stream=True)
        assert stream.status_code == 200 and '"code": "deadline_exceeded"' in stream.text
        assert stream.text.rstrip().endswith("data: [DONE]")
        assert admission.running == 0 and not lock.locked()  # both freed the engine


def test_a_stream_closed_before_it_starts_frees_its_place():
    admission = Admission(1, 0)
    ticket = admission.enter(Deadline(None))
    ran = []
    stream = EventStream(generate=lambda s: ran.append(1), decode=str, finish=lambda t: Finished("", "stop", 0),
                         stops=None, shape=None, cancel=Deadline(None), on_end=ticket.release,
                         on_error=lambda e: ("", "", None))
    assert admission.running == 1
    stream.close()
    assert admission.running == 0 and list(stream) == [] and not ran
    stream.close()
    assert admission.running == 0  # released once


# ---------------------------------------------------------------------------- errors never name server paths


def test_bank_errors_name_the_bank_never_the_servers_paths(tiny, tmp_path, monkeypatch):
    _, tok = tiny
    app = make_app(tiny, tmp_path)
    bank_dir = tmp_path / "banks"
    roots = {str(tmp_path), str(tmp_path.resolve()), "/tmp", "safetensors"}

    def clean(message):
        assert not any(root in message for root in roots), message
        return message

    with TestClient(app, raise_server_exceptions=False) as c:
        (bank_dir / "evil.safetensors").write_bytes(b"not a bank at all")
        for r in (c.get("/v1/banks/evil"), chat(c, {"banks": [{"name": "evil"}]})):
            assert "'evil'" in clean(error(r, 400, "bank_unreadable")["message"])
        assert c.get("/v1/banks").json()["data"] == []  # skipped (and logged with its path for the operator)

        build_bank(make_tiny("llama", seed=1), tok, PIRATE, layers="all").save(bank_dir / "foreign.safetensors")
        err = error(chat(c, {"banks": [{"name": "foreign"}]}), 400)
        assert "another model" in clean(err["message"])

        def full(self, path):
            raise OSError(28, "No space left on device", str(path))

        monkeypatch.setattr("memory_inception.core.banks.Bank.save", full)
        err = error(c.post("/v1/banks", json={"name": "nospace", "text": PIRATE}), 507, "bank_not_saved")
        assert "'nospace'" in clean(err["message"]) and "No space left" in err["message"]
        monkeypatch.undo()

        def broken(*args, **kwargs):
            raise RuntimeError(f"cannot read {bank_dir.resolve()}/.inline/{'ab' * 16}.safetensors nor {bank_dir}")

        monkeypatch.setattr(app.state.service.engine, "generate", broken)
        err = error(chat(c), 500)
        assert "an inline bank" in clean(err["message"]) and "the bank directory" in err["message"]
        stream = chat(c, stream=True)
        assert "an inline bank" in clean(stream.text)


def test_the_redactor_rewrites_every_server_path(tmp_path):
    db = tmp_path / "s.db"
    redact = Redactor(tmp_path / "banks", db)
    base = str((tmp_path / "banks").resolve())
    assert redact(f"{base}/evil.safetensors is not a readable bank file") == "bank 'evil' is not a readable bank file"
    assert redact(f"no bank named 'x' in {base} (looked for x.safetensors); build it with `mi bank build TEXT -o "
                  f"{base}/x.safetensors`") == ("no bank named 'x' in the bank directory (looked for x.safetensors); "
                                                "build it with `mi bank build TEXT -o bank 'x'`")
    assert redact(f"the inline bank '.inline/{'0' * 32}' is no longer in {base}/.inline (evicted)") == (
        f"the inline bank '.inline/{'0' * 32}' is no longer in the inline bank store (evicted)")
    assert redact(f"disk I/O error on {db}") == "disk I/O error on the session store"
    assert redact(f"{base}2/other") == f"{base}2/other"  # another directory that merely starts alike


def test_session_store_failures_are_a_503_without_paths(tiny, tmp_path, monkeypatch):
    app = make_app(tiny, tmp_path, sessions_db=tmp_path / "private" / "sessions.db")
    store = app.state.service.sessions
    with TestClient(app) as c:
        sid = c.post("/v1/sessions", json={}).json()["id"]
        store._db.close()  # what a broken disk looks like to sqlite3: every statement fails
        for r in (c.get(f"/v1/sessions/{sid}"), c.post("/v1/sessions", json={})):
            err = error(r, 503, "session_store_failed")
            assert str(tmp_path) not in err["message"] and "private" not in err["message"]


# ---------------------------------------------------------------------------- stored sessions


def test_sessions_survive_a_new_app_on_the_same_database(tiny, tmp_path):
    """A restart (a new app on the same bank directory): transcript, memory and bank names as stored; the next turn
    rebuilds the cache and says so, and equals the same turn of a session that never restarted."""
    turn = {"max_tokens": 3, "temperature": 0}
    memory = {"banks": [{"name": "p"}, {"text": "be brief kind calm honest", "role": "auxiliary", "gain": 0.5}],
              "rho": 2}
    with TestClient(make_app(tiny, tmp_path)) as c:
        assert c.post("/v1/banks", json={"name": "p", "text": PIRATE}).status_code == 201
        sid = c.post("/v1/sessions", json={"system": "be brief", "memory": memory}).json()["id"]
        first = c.post(f"/v1/sessions/{sid}/messages", json={"content": "hello", **turn}).json()
        assert first["cache"] == "new"
        before = c.get(f"/v1/sessions/{sid}").json()
    assert (tmp_path / "banks.sessions.db").is_file()  # next to the bank directory
    with TestClient(make_app(tiny, tmp_path)) as again:
        view = again.get(f"/v1/sessions/{sid}").json()
        assert view["messages"] == before["messages"] and view["memory"] == before["memory"]
        assert view["memory"]["banks"][0]["name"] == "p" and view["cache"]["tokens"] == 0
        second = again.post(f"/v1/sessions/{sid}/messages", json={"content": "tell me about cats", **turn}).json()
        assert second["cache"] == "rebuilt" and second["cache_reused_tokens"] == 0
        assert [m["role"] for m in again.get(f"/v1/sessions/{sid}").json()["messages"]] == [
            "system", "user", "assistant", "user", "assistant"]
        assert again.get("/health").json()["sessions"] == 1
    with TestClient(make_app(tiny, tmp_path, sessions_db=tmp_path / "elsewhere.db")) as other:
        assert other.get(f"/v1/sessions/{sid}").status_code == 404  # another database: another set of sessions
    with TestClient(make_app(tiny, tmp_path, session_cache_bytes=1)) as rebuilt:  # every later turn recomputed
        sid2 = rebuilt.post("/v1/sessions", json={"system": "be brief", "memory": memory}).json()["id"]
        for content in ("hello", "tell me about cats"):
            last = rebuilt.post(f"/v1/sessions/{sid2}/messages", json={"content": content, **turn}).json()
        assert last["cache"] == "rebuilt" and last["choices"] == second["choices"]


def test_two_apps_on_one_database_see_each_others_turns(tiny, tmp_path):
    turn = {"max_tokens": 2, "temperature": 0}
    with TestClient(make_app(tiny, tmp_path)) as a, TestClient(make_app(tiny, tmp_path)) as b:
        sid = a.post("/v1/sessions", json={}).json()["id"]
        assert a.post(f"/v1/sessions/{sid}/messages", json={"content": "hello", **turn}).status_code == 200
        assert b.post(f"/v1/sessions/{sid}/messages", json={"content": "cats", **turn}).json()["cache"] == "rebuilt"
        assert a.post(f"/v1/sessions/{sid}/messages", json={"content": "dogs", **turn}).status_code == 200
        assert b.patch(f"/v1/sessions/{sid}", json={"memory": {"banks": [{"text": PIRATE}]}}).status_code == 200
        view = a.get(f"/v1/sessions/{sid}").json()
        assert [m["content"] for m in view["messages"] if m["role"] == "user"] == ["hello", "cats", "dogs"]
        assert view["memory"]["banks"][0]["text"] == PIRATE
        assert b.delete(f"/v1/sessions/{sid}").status_code == 200
        assert a.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).status_code == 404


def test_streamed_session_turns_equal_unstreamed_ones(tiny, tmp_path):
    turns = [{"content": "hello", "max_tokens": 5, "temperature": 0},
             {"content": "tell me about ships", "max_tokens": 5, "temperature": 0, "stop": ["sea"]}]
    with TestClient(make_app(tiny, tmp_path)) as c:
        create = {"system": "be brief", "memory": {"banks": [{"text": PIRATE}]}}
        plain, streamed = (c.post("/v1/sessions", json=create).json()["id"] for _ in range(2))
        for turn in turns:
            want = c.post(f"/v1/sessions/{plain}/messages", json=turn).json()
            r = c.post(f"/v1/sessions/{streamed}/messages", json={**turn, "stream": True,
                                                                   "stream_options": {"include_usage": True}})
            events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
            assert r.text.rstrip().endswith("data: [DONE]")
            text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
            assert text == want["choices"][0]["message"]["content"]
            last = [e for e in events if e["choices"]][-1]
            assert last["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
            assert (last["cache"], last["session_id"]) == (want["cache"], streamed)
            assert events[-1]["usage"] == want["usage"]
        assert c.get(f"/v1/sessions/{plain}").json()["messages"] == c.get(f"/v1/sessions/{streamed}").json()["messages"]


# ---------------------------------------------------------------------------- completions, logprobs, metrics


def greedy_with_logprobs(model, tok, ids, n):
    """The greedy continuation of `ids` by plain forwards (no cache, no server code) and each step's log-softmax."""
    new, steps = [], []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids + new])).logits[0, -1]
        steps.append(torch.log_softmax(logits.float(), -1))
        new.append(int(steps[-1].argmax()))
        if new[-1] == tok.eos_token_id:
            return new[:-1], steps[:-1]
    return new, steps


def test_logprobs_are_the_models_own(tiny, tmp_path):
    model, tok = tiny
    prompt = tok.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    new, steps = greedy_with_logprobs(model, tok, ids, 6)
    assert new
    with TestClient(make_app(tiny, tmp_path)) as c:
        r = chat(c, max_tokens=6, logprobs=True, top_logprobs=3).json()
        assert r["choices"][0]["message"] == chat(c, max_tokens=6).json()["choices"][0]["message"]
        content = r["choices"][0]["logprobs"]["content"]
        assert [e["token"] for e in content] == [tok.decode([t]) for t in new]
        assert [e["bytes"] for e in content] == [list(tok.decode([t]).encode()) for t in new]
        assert [e["logprob"] for e in content] == pytest.approx([float(s[t]) for s, t in zip(steps, new)], abs=1e-4)
        for e, step in zip(content, steps, strict=True):
            top = torch.topk(step, 3)
            assert [t["logprob"] for t in e["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=1e-4)
            assert [t["token"] for t in e["top_logprobs"]] == [tok.decode([i]) for i in top.indices.tolist()]

        # /v1/completions continues the text as it is: the same prompt tokens, the same continuation
        gen = c.post("/v1/completions", json={"model": MODEL_ID, "prompt": prompt, "max_tokens": 6,
                                              "temperature": 0, "logprobs": 2}).json()
        choice = gen["choices"][0]
        assert gen["object"] == "text_completion" and gen["usage"]["prompt_tokens"] == len(ids)
        assert choice["text"] == r["choices"][0]["message"]["content"]
        lp = choice["logprobs"]
        assert lp["tokens"] == [e["token"] for e in content]
        assert lp["token_logprobs"] == pytest.approx([e["logprob"] for e in content], abs=1e-6)
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
        assert [len(top) for top in lp["top_logprobs"]] == [len({tok.decode([i]) for i in torch.topk(s, 2).indices})
                                                            for s in steps]
        streamed = c.post("/v1/completions", json={"model": MODEL_ID, "prompt": prompt, "max_tokens": 6,
                                                   "temperature": 0, "logprobs": 2, "stream": True})
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert "".join(e["choices"][0]["text"] for e in events) == choice["text"]
        assert [t for e in events if e["choices"][0]["logprobs"] for t in e["choices"][0]["logprobs"]["tokens"]] == \
            lp["tokens"]
        chunks = c.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": HELLO, "max_tokens": 6,
                                                      "temperature": 0, "logprobs": True, "stream": True})
        events = [json.loads(line[6:]) for line in chunks.text.splitlines() if line.startswith("data: {")]
        assert [x["logprob"] for e in events if e["choices"][0]["logprobs"]
                for x in e["choices"][0]["logprobs"]["content"]] == [e["logprob"] for e in content]
        error(chat(c, top_logprobs=2), 400)  # top_logprobs needs logprobs
        error(chat(c, logprobs=True, top_logprobs=21), 400)
        error(c.post("/v1/completions", json={"model": MODEL_ID, "prompt": ["a", "b"]}), 400)
        error(c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hi", "echo": True}), 400)


def test_metrics_are_per_app_and_move_with_traffic(tiny, tmp_path):
    with TestClient(make_app(tiny, tmp_path)) as a, TestClient(make_app(tiny, tmp_path / "b")) as b:
        before_a, before_b = metrics(a), metrics(b)
        assert before_a[("mi_steered_share", ())] == 0
        assert chat(a).status_code == 200
        assert chat(a, {"banks": [{"text": PIRATE}]}).status_code == 200
        assert chat(a, {"banks": [{"text": PIRATE}]}, stream=True).status_code == 200
        assert a.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hello", "max_tokens": 2}).status_code == 200
        seen = metrics(a)
        route = (("route", "/v1/chat/completions"), ("status", "200"))
        assert seen[("mi_requests_total", route)] == 3
        assert seen[("mi_generations_total", (("steered", "true"),))] == 2
        assert seen[("mi_steered_share", ())] == pytest.approx(0.5)
        assert seen[("mi_tokens_total", (("kind", "completion"),))] >= 4
        assert seen[("mi_request_duration_seconds_count", (("route", "/v1/chat/completions"),))] == 3
        assert seen[("mi_time_to_first_token_seconds_count", ())] == 4
        def own(seen):  # leave out the scrapes themselves
            return {k: v for k, v in seen.items() if ("route", "/metrics") not in k[1] and "_created" not in k[0]}

        assert own(metrics(b)) == own(before_b)  # another app in the same process: its own registry
        a.get("/no/such/path")
        assert metrics(a)[("mi_requests_total", (("route", "other"), ("status", "404")))] == 1
