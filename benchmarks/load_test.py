"""A bounded load test of `mi serve` over loopback: a real uvicorn server process on the default model, 64 concurrent
clients sending a fixed mix of requests (plain, steered, streamed, text completions, session turns, and a few
oversized inline banks that must be refused), p50 / p99 latencies, errors, and every accepted reply compared with
the same request run alone afterwards (greedy, so they must be equal).

    python benchmarks/load_test.py [--clients 64] [--requests 196] [--max-tokens 8] [--max-queue 32] [--threads 1]

Writes reports/load_test.json and reports/load_test.md. A 503 (the queue is full) is an intended refusal: the client
waits the Retry-After it was given and sends the request again; any other non-2xx status (besides the intended 422
for the oversized banks) counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "smollm2-135m-instruct"
SERVED_PATHS = ("src/memory_inception/serving", "src/memory_inception/cli/serve_cmd.py", "benchmarks/load_test.py")
PIRATE = ("You are a pirate captain. You always talk like a pirate, say 'Arr!' and 'matey', and bring every answer "
          "back to your ship, the sea and buried treasure.")
POET = "You are a poet. You answer in rhymes and speak of the moon, the wind and the seasons."
QUESTIONS = ["What is your favorite food?", "How do I make tea?", "What is rain?", "Name a colour.",
             "Why is the sky blue?", "Tell me about ships.", "What do cats like?", "How far is the moon?"]
HUGE = " ".join(["treasure"] * 20_000)  # refused before any model work (max_bank_tokens)
MEMORIES = [None, {"banks": [{"name": "pirate"}]}, {"banks": [{"text": POET}], "rho": 3},
            {"banks": [{"name": "pirate"}, {"text": POET, "role": "auxiliary", "gain": 0.5}], "layers": "21-26"}]


@dataclass
class Job:
    """One request of the mix: `kind`, what it sends, and (for a session) which session and turn."""

    kind: str  # chat, chat-steered, stream, completion, session, session-stream, oversized
    body: dict
    key: str  # requests with the same key must give the same reply
    session: int | None = None
    turn: int = 0


@dataclass
class Result:
    job: Job
    status: int
    text: str | None
    latency: float  # the accepted attempt, send to last byte
    end_to_end: float  # first send to last byte, retries included
    refusals: int  # 503s before it was accepted
    cache: str | None = None


@dataclass
class Sessions:
    """Session ids on the server (made when a session's first turn is due), by the job's session index."""

    ids: dict[int, str] = field(default_factory=dict)
    turns: dict[int, asyncio.Event] = field(default_factory=dict)


def mix(requests: int, max_tokens: int) -> list[Job]:
    """A deterministic mix, in blocks of 14 until there are at least `requests`: 3 plain chats, 3 steered (a named
    bank, an inline bank, target + auxiliary), 2 streamed (plain, steered), 1 text completion, 1 oversized inline
    bank, and two sessions of two turns (the second streamed; four memories in turn, none included)."""
    jobs: list[Job] = []
    session = 0
    i = 0
    while len(jobs) < requests:
        q = QUESTIONS[i % len(QUESTIONS)]
        memory = MEMORIES[1 + i % 3]
        base = {"model": MODEL_ID, "max_tokens": max_tokens, "temperature": 0}
        block = [
            *[Job("chat", {**base, "messages": [{"role": "user", "content": QUESTIONS[(i + k) % 8]}]},
                  f"chat:{(i + k) % 8}") for k in range(3)],
            *[Job("chat-steered", {**base, "messages": [{"role": "user", "content": QUESTIONS[(i + k) % 8]}],
                                   "memory": MEMORIES[1 + (i + k) % 3]}, f"steered:{(i + k) % 8}:{1 + (i + k) % 3}")
              for k in range(3)],
            Job("stream", {**base, "messages": [{"role": "user", "content": q}], "stream": True}, f"chat:{i % 8}"),
            Job("stream", {**base, "messages": [{"role": "user", "content": q}], "memory": memory, "stream": True},
                f"steered:{i % 8}:{1 + i % 3}"),
            Job("completion", {**base, "prompt": f"Q: {q}\nA:"}, f"completion:{i % 8}"),
            Job("oversized", {**base, "messages": [{"role": "user", "content": q}],
                              "memory": {"banks": [{"text": HUGE}]}}, "oversized"),
        ]
        for _ in range(2):
            s_memory = MEMORIES[session % 4]
            create = {"system": "You are helpful."} | ({"memory": s_memory} if s_memory else {})
            block += [Job("session", {"content": QUESTIONS[session % 8], "max_tokens": max_tokens,
                                      "temperature": 0, "create": create}, f"session:{session}:0", session, 0),
                      Job("session-stream", {"content": QUESTIONS[(session + 3) % 8], "max_tokens": max_tokens,
                                             "temperature": 0, "stream": True}, f"session:{session}:1", session, 1)]
            session += 1
        jobs += block
        i += 1
    return jobs


def read_events(text: str) -> tuple[str, dict]:
    """A streamed reply's text and its last chunk."""
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    if any("error" in c for c in chunks):
        raise RuntimeError(f"stream error: {chunks}")
    content = "".join(c["choices"][0].get("delta", {}).get("content", "") or c["choices"][0].get("text", "")
                      for c in chunks if c.get("choices"))
    last = [c for c in chunks if c.get("choices")][-1]
    return content, last


async def send(client: httpx.AsyncClient, job: Job, sessions: Sessions) -> tuple[int, str | None, str | None]:
    """One attempt: status, reply text (None unless 2xx), cache report of a session turn."""
    if job.session is not None:
        if job.turn == 0 and job.session not in sessions.ids:
            r = await client.post("/v1/sessions", json=job.body["create"])
            if r.status_code != 201:
                return r.status_code, r.headers.get("Retry-After"), None
            sessions.ids[job.session] = r.json()["id"]
        url = f"/v1/sessions/{sessions.ids[job.session]}/messages"
        payload = {k: v for k, v in job.body.items() if k != "create"}
    else:
        url = "/v1/completions" if job.kind == "completion" else "/v1/chat/completions"
        payload = job.body
    r = await client.post(url, json=payload)
    if r.status_code != 200:
        return r.status_code, r.headers.get("Retry-After"), None
    if payload.get("stream"):
        text, last = read_events(r.text)
        return 200, text, last.get("cache")
    data = r.json()
    choice = data["choices"][0]
    text = choice["text"] if job.kind == "completion" else choice["message"]["content"]
    return 200, text, data.get("cache")


async def run_one(client: httpx.AsyncClient, job: Job, sessions: Sessions, max_refusals: int = 40) -> Result:
    if job.session is not None and job.turn > 0:
        await sessions.turns.setdefault(job.session, asyncio.Event()).wait()  # after the session's first turn
    first = time.perf_counter()
    refusals = 0
    while True:
        started = time.perf_counter()
        status, text, cache = await send(client, job, sessions)
        if status == 503 and refusals < max_refusals:
            refusals += 1
            await asyncio.sleep(float(text or 1))  # the Retry-After the server gave
            continue
        now = time.perf_counter()
        if job.session is not None and job.turn == 0:
            sessions.turns.setdefault(job.session, asyncio.Event()).set()
        return Result(job, status, text if status == 200 else None, now - started, now - first, refusals, cache)


async def load(url: str, jobs: list[Job], clients: int) -> tuple[list[Result], float]:
    queue: asyncio.Queue[Job] = asyncio.Queue()
    # a session's second turn waits for its first: put every first turn ahead of the second turns
    for job in sorted(jobs, key=lambda j: j.turn):
        queue.put_nowait(job)
    results: list[Result] = []
    sessions = Sessions()
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker() -> None:
            while True:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await run_one(client, job, sessions))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    return results, wall


async def solo(url: str, jobs: list[Job]) -> dict[str, str]:
    """Each distinct request alone, one at a time (sessions replayed turn by turn in fresh sessions)."""
    want: dict[str, str] = {}
    sessions = Sessions()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for job in sorted(jobs, key=lambda j: (j.session is not None, j.session or 0, j.turn)):
            if job.key in want or job.kind == "oversized":
                continue
            plain = Job(job.kind, {k: v for k, v in job.body.items() if k != "stream"}, job.key, job.session,
                        job.turn)
            status, text, _ = await send(client, plain, sessions)
            if status != 200:
                raise RuntimeError(f"solo {job.key} failed: {status}")
            want[job.key] = text
    return want


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path, port: int, threads: int, max_queue: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mi")), "serve", "--port", str(port), "--bank-dir",
                             str(workdir / "banks"), "--max-queue", str(max_queue), "--max-tokens-limit", "64"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mi serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("mi serve did not start")
        time.sleep(0.3)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(results: list[Result], want: dict[str, str], wall: float, args: argparse.Namespace,
              scraped: dict[str, float], load_avg: tuple[list[float], list[float]]) -> dict:
    accepted = [r for r in results if r.status == 200]
    intended = [r for r in results if r.job.kind == "oversized" and r.status == 422]
    # an oversized bank accepted is an error too: the limit did not hold
    errors = [r for r in results if (r.status != 422 if r.job.kind == "oversized" else r.status != 200)]
    mismatches = [r for r in accepted if r.job.kind != "oversized" and r.text != want.get(r.job.key)]
    kinds = sorted({r.job.kind for r in results})

    def stats(rs: list[Result], attr: str = "latency") -> dict:
        values = [getattr(r, attr) for r in rs]
        return {"n": len(values), "p50_s": round(percentile(values, 0.5), 3), "p99_s": round(percentile(values, 0.99), 3),
                "max_s": round(max(values), 3) if values else None}

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", *SERVED_PATHS], check=False, cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return {
        "commit": commit, "serving_modified": dirty, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_average_before_after": load_avg, "server_threads": args.threads, "clients": args.clients, "requests": len(results),
        "max_tokens": args.max_tokens, "max_queue": args.max_queue, "wall_s": round(wall, 1),
        "accepted": len(accepted), "refused_503": sum(r.refusals for r in results),
        "requests_refused_at_least_once": sum(r.refusals > 0 for r in results),
        "oversized_refused_422": len(intended), "errors": len(errors),
        "error_detail": [(r.job.key, r.status) for r in errors][:20],
        "compared": len([r for r in accepted if r.job.kind != "oversized"]), "mismatches": len(mismatches),
        "mismatch_detail": [(r.job.key, r.text, want.get(r.job.key)) for r in mismatches][:10],
        "throughput_rps": round(len(accepted) / wall, 2),
        "latency_accepted_attempt": {"all": stats([r for r in accepted if r.job.kind != "oversized"]),
                                     **{k: stats([r for r in accepted if r.job.kind == k]) for k in kinds
                                        if k != "oversized"}},
        "latency_end_to_end": {"all": stats([r for r in accepted if r.job.kind != "oversized"], "end_to_end")},
        "oversized_refusal_latency": stats(intended),
        "session_caches": {c: sum(r.cache == c for r in accepted) for c in ("new", "reused", "rebuilt")},
        "server_metrics": scraped,
    }


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    keep = ("mi_generations_total", "mi_tokens_total", "mi_rejected_total", "mi_steered_share",
            "mi_queue_wait_seconds_sum", "mi_queue_wait_seconds_count")
    out = {}
    for line in text.splitlines():
        if line.startswith(keep):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def markdown(report: dict) -> str:
    lat = report["latency_accepted_attempt"]
    rows = "\n".join(f"| {kind} | {s['n']} | {s['p50_s']} | {s['p99_s']} | {s['max_s']} |" for kind, s in lat.items())
    e2e = report["latency_end_to_end"]["all"]
    over = report["oversized_refusal_latency"]
    metrics = report["server_metrics"]
    waits = metrics.get("mi_queue_wait_seconds_count") or float("nan")
    mean_wait = metrics.get("mi_queue_wait_seconds_sum", float("nan")) / waits
    before, after = report["load_average_before_after"]
    return f"""# Load test: `mi serve` under {report['clients']} concurrent clients

`python benchmarks/load_test.py --clients {report['clients']} --requests {report['requests']} --max-tokens \
{report['max_tokens']} --max-queue {report['max_queue']} --threads {report['server_threads']}`, commit
`{report['commit'][:12]}`{' (serving code modified)' if report['serving_modified'] else ''}, Python {report['python']},
{report['cpus']} CPUs shared with other work (1-minute load average {before[0]} before the load, {after[0]} after),
server torch threads {report['server_threads']}; a real uvicorn server process (`mi serve`, the
transformers engine, SmolLM2-135M-Instruct fp32 CPU) over loopback, greedy, max_tokens {report['max_tokens']}.

The mix: plain and steered chat completions (named bank, inline bank, target + auxiliary), streamed ones, text
completions, sessions of two turns (the second streamed; with and without memory) and 20,000-word inline banks that
must be refused. A 503 (queue full, max_queue {report['max_queue']}) is the intended refusal: the client waits the
Retry-After it got and sends again.

| result | count |
| --- | --- |
| requests | {report['requests']} |
| accepted (200) | {report['accepted']} |
| 503 refusals (queue full; retried after Retry-After) | {report['refused_503']} over {report['requests_refused_at_least_once']} requests |
| oversized inline banks refused (422) | {report['oversized_refused_422']} |
| errors (any other status) | **{report['errors']}** |
| accepted replies compared with the same request alone | {report['compared']} |
| mismatches | **{report['mismatches']}** |
| wall time | {report['wall_s']} s ({report['throughput_rps']} accepted requests/s) |
| session turns by cache | {report['session_caches']} |

Latency of the accepted attempt (send to last byte, queue wait included), seconds:

| kind | n | p50 | p99 | max |
| --- | --- | --- | --- | --- |
{rows}

The model serves one request at a time, so the latency is mostly the wait in the queue: the server's mean queue
wait was {mean_wait:.1f} s over {int(waits)} admissions (`mi_queue_wait_seconds`). A session's first turn
(`session`) includes `POST /v1/sessions`, which is admitted once itself when the session has memory (its banks are
prepared then), so it waits in the queue twice.

End to end (first send, retries after 503 included): p50 {e2e['p50_s']} s, p99 {e2e['p99_s']} s. The 20,000-word
inline bank was refused in p50 {over['p50_s']} s, max {over['max_s']} s while the model was busy with the others
(checked with the tokenizer only; it never waits in the queue). A refused request waits its Retry-After and
tries again while others keep arriving; retries get no priority, so the few refused several times make the end to
end p99.

Server counters at the end (`/metrics`): `{json.dumps(report['server_metrics'])}`
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=196)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "load_test")
    args = parser.parse_args()

    jobs = mix(args.requests, args.max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        workdir, port = Path(tmp), free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(workdir, port, args.threads, args.max_queue, workdir / "serve.log")
        try:
            httpx.post(url + "/v1/banks", json={"name": "pirate", "text": PIRATE}, timeout=300).raise_for_status()
            warm = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            for memory in MEMORIES:  # warm up every configuration (and build the inline banks once)
                httpx.post(url + "/v1/chat/completions", json={**warm, **({"memory": memory} if memory else {})},
                           timeout=300).raise_for_status()
            print(f"load: {len(jobs)} requests from {args.clients} clients ...", flush=True)
            before = [round(x, 2) for x in os.getloadavg()]
            results, wall = asyncio.run(load(url, jobs, args.clients))
            scraped = scrape(url)
            after = [round(x, 2) for x in os.getloadavg()]
            print(f"load done in {wall:.1f} s; running each distinct request alone ...", flush=True)
            want = asyncio.run(solo(url, jobs))
        finally:
            proc.terminate()
            proc.wait(60)
    report = summarize(results, want, wall, args, scraped, (before, after))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if report["errors"] or report["mismatches"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
