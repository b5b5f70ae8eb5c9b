"""The server as a service, on the real default model over real HTTP: the bounds (the 20,000-word inline bank refused
while the model is busy, the full queue, the deadline), sessions that survive a kill -9 of a real `mi serve`
process, streamed session turns, completions and log-probabilities against the model's own, metrics that move."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

from memory_inception.serving.app import create_app
from servers import PIRATE, RunningServer

pytestmark = pytest.mark.real_model

MODEL_ID = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is your favorite food?"}]
STORY = [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]
HUGE = " ".join(["treasure"] * 20_000)  # a 20,000-word inline bank: about 160 KB of JSON, under a 1 MiB body limit


@pytest.fixture(scope="module")
def server(model_and_tok, tmp_path_factory):
    model, tok = model_and_tok
    app = create_app(model, tok, bank_dir=tmp_path_factory.mktemp("banks"), model_id=MODEL_ID, max_tokens_limit=64,
                     max_queue=1)
    running = RunningServer(app)
    yield running, app
    running.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[0].url, timeout=300) as c:
        yield c


def body(messages=QUESTION, **extra):
    return {"model": MODEL_ID, "messages": messages, "max_tokens": 8, "temperature": 0, **extra}


def events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


class Busy:
    """A long streamed generation holding the model, read in a thread; `first` is set at its first token."""

    def __init__(self, url: str, **extra):
        self.first, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, extra), daemon=True)
        self.thread.start()
        assert self.first.wait(120), "the long generation did not start"

    def _run(self, url, extra):
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=300,
                          json=body(STORY, max_tokens=64, stream=True, **extra)) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    self.first.set()
        self.first.set()
        self.done.set()

    def join(self):
        self.thread.join(300)


# ---------------------------------------------------------------------------- bounds


def test_a_20000_word_inline_bank_is_refused_while_the_model_is_busy(server, http):
    running, _ = server
    busy = Busy(running.url)
    started = time.perf_counter()
    r = http.post("/v1/chat/completions", json=body(memory={"banks": [{"text": HUGE}]}))
    refused_in = time.perf_counter() - started
    still_busy = not busy.done.is_set()
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "bank_too_large" and "more than 1024 tokens" in err["message"]
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match="max_bank_tokens"):
        client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=2,
                                       extra_body={"memory": {"banks": [{"text": HUGE}]}})
    busy.join()
    print(f"\n20,000-word inline bank ({len(json.dumps(HUGE)) // 1000} KB) refused in {refused_in * 1000:.0f} ms "
          f"while a 64-token generation held the model")
    assert still_busy  # answered before the generation that held the model had finished: no model work, no wait


def test_a_full_queue_answers_503_with_retry_after(server, http):
    running, app = server
    busy = Busy(running.url)  # holds the engine; max_queue=1: one more may wait, the next is refused
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(http.post, "/v1/chat/completions", json=body(max_tokens=2))
        deadline = time.monotonic() + 60
        while app.state.service.admission.waiting < 1:
            assert time.monotonic() < deadline and not busy.done.is_set()
            time.sleep(0.01)
        refused = http.post("/v1/chat/completions", json=body(max_tokens=2))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "server_busy" and int(refused.headers["Retry-After"]) >= 1
        assert first.result().status_code == 200
    busy.join()


def test_the_deadline_stops_a_long_generation(model_and_tok, tmp_path):
    model, tok = model_and_tok
    running = RunningServer(create_app(model, tok, bank_dir=tmp_path, model_id=MODEL_ID, request_timeout_s=0.3))
    try:
        r = httpx.post(running.url + "/v1/chat/completions", json=body(STORY, max_tokens=128), timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
        assert "0.3 s" in r.json()["error"]["message"]
    finally:
        running.stop()


def test_a_corrupt_bank_file_is_named_not_located(server, http):
    _, app = server
    bank_dir = app.state.service.banks.bank_dir
    (bank_dir / "evil.safetensors").write_bytes(b"\x00" * 64)
    for r in (http.get("/v1/banks/evil"), http.post("/v1/chat/completions", json=body(
            memory={"banks": [{"name": "evil"}]}))):
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "'evil'" in message and str(bank_dir) not in message and "/tmp" not in message
    (bank_dir / "evil.safetensors").unlink()


# ---------------------------------------------------------------------------- sessions in a real process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """`mi serve` in its own process on a free port."""

    def __init__(self, bank_dir: Path, db: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mi = Path(sys.executable).with_name("mi")
        self.log = log.open("ab")
        self.proc = subprocess.Popen([str(mi), "serve", "--port", str(self.port), "--bank-dir", str(bank_dir),
                                      "--sessions-db", str(db), "--max-tokens-limit", "64"],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 300
        while True:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "mi serve did not come up"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.log.close()


def test_kill_9_mid_session_then_a_restart_keeps_the_transcript(tmp_path):
    bank_dir, db, log = tmp_path / "banks", tmp_path / "state" / "sessions.db", tmp_path / "serve.log"
    memory = {"banks": [{"name": "pirate"}, {"text": "Answer in one short sentence.", "role": "auxiliary",
                                             "gain": 0.5}], "rho": 2}
    turn = {"max_tokens": 8, "temperature": 0}
    first = Process(bank_dir, db, log)
    try:
        http = httpx.Client(base_url=first.url, timeout=300)
        assert http.post("/v1/banks", json={"name": "pirate", "text": PIRATE}).status_code == 201
        sid = http.post("/v1/sessions", json={"system": "You are helpful.", "memory": memory}).json()["id"]
        replies = [http.post(f"/v1/sessions/{sid}/messages", json={"content": text, **turn}).json()
                   for text in ("Hello!", "What is rain?")]
        assert [r["cache"] for r in replies] == ["new", "reused"]
        before = http.get(f"/v1/sessions/{sid}").json()
        # the third turn is being streamed when the server is killed
        with http.stream("POST", f"/v1/sessions/{sid}/messages",
                         json={"content": "Tell me a long story about ships.", "stream": True, "max_tokens": 64,
                               "temperature": 0}) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    first.kill9()
                    break
        http.close()
    finally:
        first.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    again = Process(bank_dir, db, log)
    try:
        http = httpx.Client(base_url=again.url, timeout=300)
        view = http.get(f"/v1/sessions/{sid}").json()
        assert view["messages"] == before["messages"]  # the two finished turns, not the killed one
        assert [m["role"] for m in view["messages"]] == ["system", "user", "assistant", "user", "assistant"]
        assert view["memory"] == before["memory"] and view["cache"]["tokens"] == 0
        user = {"role": "user", "content": "Tell me about ships."}
        third = http.post(f"/v1/sessions/{sid}/messages", json={"content": user["content"], **turn}).json()
        assert third["cache"] == "rebuilt"
        # rebuilt = recomputed from the stored transcript: the same reply as a chat completion of it
        alone = http.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": view["messages"] + [user],
                                                        "memory": memory, **turn}).json()
        assert third["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"].strip()
        assert third["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"]
        assert len(http.get(f"/v1/sessions/{sid}").json()["messages"]) == 7
        http.close()
    finally:
        again.stop()


def test_streamed_session_turns_equal_unstreamed_ones(http):
    create = {"system": "You are helpful.", "memory": {"banks": [{"text": PIRATE}], "layers": "21-26", "rho": 3}}
    plain, streamed = (http.post("/v1/sessions", json=create).json()["id"] for _ in range(2))
    for turn in ({"content": "Hello!", "max_tokens": 10, "temperature": 0},
                 {"content": "What is rain?", "max_tokens": 10, "temperature": 0, "stop": ["."]}):
        want = http.post(f"/v1/sessions/{plain}/messages", json=turn).json()
        r = http.post(f"/v1/sessions/{streamed}/messages", json={**turn, "stream": True})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = events(r.text)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
            want["choices"][0]["message"]["content"]
        assert chunks[-1]["cache"] == want["cache"] and chunks[-1]["choices"][0]["finish_reason"] == \
            want["choices"][0]["finish_reason"]
    assert http.get(f"/v1/sessions/{plain}").json()["messages"] == http.get(f"/v1/sessions/{streamed}").json()[
        "messages"]
    for sid in (plain, streamed):
        assert http.delete(f"/v1/sessions/{sid}").status_code == 200


# ---------------------------------------------------------------------------- completions, logprobs, metrics


def own_logprobs(model, ids: list[int], new: list[int]) -> torch.Tensor:
    """The model's log-probabilities at each new token's step: one plain forward over prompt + reply."""
    with torch.no_grad():
        logits = model(torch.tensor([ids + new])).logits[0, len(ids) - 1 : -1]
    return torch.log_softmax(logits.float(), -1)


def test_logprobs_equal_the_models_own(server, model_and_tok):
    running, _ = server
    model, tok = model_and_tok
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    r = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=8, temperature=0,
                                       logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert "".join(e.token for e in content) == r.choices[0].message.content
    prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    new = tok(r.choices[0].message.content, add_special_tokens=False)["input_ids"]
    assert [tok.decode([t]) for t in new] == [e.token for e in content]
    want = own_logprobs(model, ids, new)
    assert [e.logprob for e in content] == pytest.approx([float(want[i, t]) for i, t in enumerate(new)], abs=2e-4)
    for i, e in enumerate(content):
        top = torch.topk(want[i], 5)
        assert [x.token for x in e.top_logprobs] == [tok.decode([t]) for t in top.indices.tolist()]
        assert [x.logprob for x in e.top_logprobs] == pytest.approx(top.values.tolist(), abs=2e-4)
        assert int(top.indices[0]) == new[i]  # greedy

    # /v1/completions on the rendered prompt text: the same tokens, the same log-probabilities
    c = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    assert c.choices[0].text == r.choices[0].message.content and c.usage.prompt_tokens == len(ids)
    assert c.choices[0].logprobs.token_logprobs == pytest.approx([e.logprob for e in content], abs=1e-5)
    assert [list(d) for d in c.choices[0].logprobs.top_logprobs] == [
        [x.token for x in e.top_logprobs[:3]] for e in content]
    stream = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == c.choices[0].text

    # steered: the same memory extension; the reply changes, its logprobs are those of the steered model
    steered = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0, logprobs=0,
                                        extra_body={"memory": {"banks": [{"text": PIRATE}], "layers": "21-26",
                                                               "rho": 3}})
    assert steered.choices[0].text != c.choices[0].text
    assert all(lp <= 0 for lp in steered.choices[0].logprobs.token_logprobs)


def test_metrics_move_with_traffic(server, http):
    def scrape() -> dict[str, float]:
        r = http.get("/metrics")
        assert r.status_code == 200 and "# TYPE mi_requests_total counter" in r.text
        out = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    before = scrape()
    assert http.post("/v1/chat/completions", json=body(max_tokens=3)).status_code == 200
    assert http.post("/v1/chat/completions", json=body(max_tokens=3, memory={"banks": [{"text": PIRATE}]})
                     ).status_code == 200
    assert http.post("/v1/chat/completions", json=body(memory={"banks": [{"text": HUGE}]})).status_code == 422
    after = scrape()
    route = 'route="/v1/chat/completions"'
    assert after[f'mi_requests_total{{{route},status="200"}}'] - before.get(
        f'mi_requests_total{{{route},status="200"}}', 0) == 2
    assert after['mi_rejected_total{reason="bank_too_large"}'] - before.get(
        'mi_rejected_total{reason="bank_too_large"}', 0) == 1
    assert after['mi_generations_total{steered="true"}'] - before['mi_generations_total{steered="true"}'] == 1
    assert after['mi_tokens_total{kind="completion"}'] > before['mi_tokens_total{kind="completion"}']
    assert after['mi_tokens_total{kind="prompt"}'] > before['mi_tokens_total{kind="prompt"}']
    assert after[f"mi_request_duration_seconds_count{{{route}}}"] > before.get(
        f"mi_request_duration_seconds_count{{{route}}}", 0)
    assert 0 < after["mi_steered_share"] < 1 and after["mi_queue_depth"] == 0
