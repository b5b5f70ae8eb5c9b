"""`mi serve --engine vllm`: the server's API and `memory` extension, generating with one vLLM engine.

`VLLMEngine` is an `Engine` (protocol.py): requests run on one vLLM engine stepped by a background thread
(`EngineDriver`), so concurrent HTTP requests share its continuous batches. The transformers model still builds
banks: named ones (`POST /v1/banks`) and inline `text` ones, which are written as content-addressed files under
the bank directory's hidden `.inline/` for the worker (`bankdir.InlineBankStore`). Sessions keep their transcript
and memory in the service and send the whole conversation every turn; vLLM's prefix cache (not a per-session KV
cache) serves what it can, and steered turns, salted, recompute (docs/vllm.md).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from memory_inception.core.banks import Bank
from memory_inception.serving.bank_store import BankStore
from memory_inception.serving.schemas import MemorySpec
from memory_inception.serving.session_store import SessionState
from memory_inception.serving.streaming import TokenLogprob, TokenQueue
from memory_inception.vllm.bankdir import InlineBankStore, inline_name
from memory_inception.vllm.engine import MIEngine, steered_prompt, steering_params
from memory_inception.vllm.spec import BankUse, RequestSteering

logger = logging.getLogger(__name__)

INLINE_BANK_FILES = 256  # inline bank files kept in <bank_dir>/.inline (least recently used evicted)
INLINE_BANK_BYTES = 256 << 20


class EngineDriver:
    """Steps one vLLM `LLMEngine` in a background thread; callers in any thread `run` requests on it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[tuple[str, dict, Any]] = []
        self._aborts: list[str] = []
        self._queues: dict[str, queue.Queue] = {}
        self._sent: dict[str, int] = {}
        self._thread = threading.Thread(target=self._loop, name="mi-vllm-driver", daemon=True)
        self._thread.start()

    def run(self, prompt: dict, params: Any, on_tokens: Callable[[list[int], list[dict] | None], None],
            cancel: threading.Event | None = None) -> int:
        """Run one request until the engine is done with it, passing its new token ids to `on_tokens` as they come
        (with their log-probabilities, `{token id: vllm Logprob}` per token, when `params.logprobs` asks for them).

        Returns vLLM's prefix-cache hit count for the prompt (`RequestOutput.num_cached_tokens`). When `cancel` is
        set the request is aborted, and this returns once the engine has dropped it.
        """
        request_id = "mi-" + secrets.token_hex(8)
        sink: queue.Queue = queue.Queue()
        with self._lock:
            self._queues[request_id] = sink
            self._pending.append((request_id, prompt, params))
        self._wake.set()
        cached = 0
        aborting = False
        try:
            while True:
                if cancel is not None and cancel.is_set() and not aborting:  # checked between tokens too
                    aborting = True
                    with self._lock:
                        self._aborts.append(request_id)
                    self._wake.set()
                try:
                    kind, value = sink.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "tokens":
                    tokens, logprobs, cached = value
                    if not aborting:
                        on_tokens(tokens, logprobs)
                elif kind == "error":
                    raise value
                else:
                    return cached
        finally:
            with self._lock:
                self._queues.pop(request_id, None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
                aborts, self._aborts = self._aborts, []
                idle = not pending and not aborts and not self.engine.has_unfinished_requests()
                if idle:
                    self._wake.clear()
            if idle:
                self._wake.wait()
                continue
            for request_id, prompt, params in pending:
                try:
                    self.engine.add_request(request_id, prompt, params)
                    self._sent[request_id] = 0
                except Exception as exc:  # a refused request fails alone
                    self._deliver(request_id, "error", exc)
            if aborts:
                self.engine.abort_request(aborts)
                for request_id in aborts:
                    self._sent.pop(request_id, None)
                    self._deliver(request_id, "done", None)
            try:
                outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
            except Exception as exc:  # the engine died: every waiting request learns why
                logger.exception("the vLLM engine failed")
                for request_id in list(self._sent):
                    self._deliver(request_id, "error", exc)
                self._sent.clear()
                continue
            for out in outputs:
                tokens = list(out.outputs[0].token_ids) if out.outputs else []
                logprobs = out.outputs[0].logprobs if out.outputs else None
                sent = self._sent.get(out.request_id, 0)
                if len(tokens) > sent:
                    new = [logprobs[i] for i in range(sent, len(tokens))] if logprobs is not None else None
                    self._deliver(out.request_id, "tokens", (tokens[sent:], new, out.num_cached_tokens or 0))
                    self._sent[out.request_id] = len(tokens)
                if out.finished:
                    self._sent.pop(out.request_id, None)
                    self._deliver(out.request_id, "done", None)

    def _deliver(self, request_id: str, kind: str, value: Any) -> None:
        with self._lock:
            sink = self._queues.get(request_id)
        if sink is not None:
            sink.put((kind, value))


@dataclass(frozen=True)
class InlineBank:
    """An inline (`text`) bank of a request: its content-addressed name in the bank directory, and how to build it
    (again, if its file was evicted)."""

    name: str
    build: Callable[[], Bank]


@dataclass(frozen=True)
class ServedSteering:
    """A request's steering on the vLLM engine: the `RequestSteering` vLLM gets, and the inline banks whose files
    must be on disk while the request runs."""

    request: RequestSteering
    inline: tuple[InlineBank, ...] = ()


def served_steering(memory: MemorySpec, banks: BankStore, *, fingerprint: str) -> ServedSteering:
    """The `RequestSteering` a `memory` object asks for, banks by name (the worker's `resolve` maps roles to
    steering with `steering_from_roles`, as the transformers engine does).

    Named banks are loaded now (404 for an unknown bank, 400 for a foreign one); inline banks are named by
    content (`inline_name`, with the model `fingerprint`) and built as the transformers engine builds them (the
    same cache, at `banks.inline_layers(memory)`) when their files are written.
    """
    layers = tuple(banks.inline_layers(memory)) if any(ref.text is not None for ref in memory.banks) else ()
    uses, inline = [], []
    for ref in memory.banks:
        if ref.name is not None:
            banks.load(ref.name)
            name = ref.name
        else:
            name = inline_name(ref.text, layers, fingerprint)
            inline.append(InlineBank(name, partial(banks.text_bank, ref.text, list(layers))))
        uses.append(BankUse(name, ref.role, ref.gain))
    request = RequestSteering(banks=tuple(uses), rho=memory.rho,
                              layers=tuple(memory.layers) if memory.layers else None)
    return ServedSteering(request, tuple(inline))


def vllm_logprob(token: int, step: dict, top: int) -> TokenLogprob:
    """A `TokenLogprob` from vLLM's logprobs of one step (`{token id: Logprob}`: the sampled token and the top
    ranks; vLLM's default logprobs mode is the model's raw distribution, as the transformers engine reports)."""
    ranked = sorted(((lp.rank, t, lp.logprob) for t, lp in step.items() if lp.rank is not None and lp.rank <= top))
    return TokenLogprob(token, float(step[token].logprob), tuple((t, float(lp)) for _, t, lp in ranked))


class VLLMEngine:
    """Generates with vLLM: banks by name from the bank directory, inline banks as files in its `.inline/`,
    sessions as whole conversations sent every turn (no model lock: vLLM batches requests itself), logprobs
    through vLLM's `SamplingParams.logprobs`."""

    name = "vllm"

    def __init__(self, model: Any, *, bank_dir: str | Path, model_name: str | None = None,
                 engine: MIEngine | None = None, inline_bank_files: int = INLINE_BANK_FILES,
                 inline_bank_bytes: int = INLINE_BANK_BYTES) -> None:
        self.engine = engine if engine is not None else MIEngine(model_name, bank_dir=bank_dir)
        self.driver = EngineDriver(self.engine.llm.llm_engine)
        self.inline_banks = InlineBankStore(bank_dir, max_files=inline_bank_files, max_bytes=inline_bank_bytes)
        config = getattr(self.engine.llm.llm_engine, "vllm_config", None)
        self.concurrency = int(getattr(getattr(config, "scheduler_config", None), "max_num_seqs", 0) or 64)
        engine_context = int(self.engine.llm.llm_engine.model_config.max_model_len)
        model_context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.context_length = min(model_context, engine_context) if model_context else engine_context

    # ---- steering -----------------------------------------------------------------------------------
    def steering(self, memory: MemorySpec, banks: BankStore) -> ServedSteering:
        """The request's steering, checked now (with its inline files on disk) so a bad one is a 400."""
        steering = served_steering(memory, banks, fingerprint=self.engine.checkpoint.fingerprint)
        with self._inline_on_disk(steering):
            self.engine.check(steering.request)
        return steering

    @contextmanager
    def _inline_on_disk(self, steering: ServedSteering | None) -> Iterator[None]:
        """Keep `steering`'s inline bank files on disk (rewriting evicted ones) for the block."""
        banks = steering.inline if steering is not None else ()
        with self.inline_banks.pinned([(b.name, b.build) for b in banks]):
            yield

    # ---- generation ---------------------------------------------------------------------------------
    def generate(self, ids: list[int], steering: ServedSteering | None, options: dict[str, Any], seed: int | None,
                 stops: list[str] | None, streamer: TokenQueue, cancel: threading.Event | None = None) -> None:
        """One generation in the shared vLLM batch; tokens arrive through `streamer` (no model lock held)."""
        self._run(ids, steering, options, seed, stops, streamer, cancel)

    def _run(self, ids: list[int], steering: ServedSteering | None, options: dict[str, Any], seed: int | None,
             stops: list[str] | None, streamer: TokenQueue, cancel: threading.Event | None = None) -> int:
        """`generate`, returning vLLM's prefix-cache hit count for the prompt."""
        request = steering.request if steering is not None else None
        sampled = options.get("do_sample", False)
        top = streamer.top_logprobs
        params = steering_params(
            request, max_tokens=options["max_new_tokens"], temperature=options.get("temperature", 1.0) if sampled else 0.0,
            top_p=options.get("top_p", 1.0) if sampled else 1.0, seed=seed, stop=stops,
            **({"logprobs": top} if top is not None else {}),
        )
        pending: list[TokenLogprob] = []
        if top is not None:
            streamer.scorer = lambda token: pending.pop(0)

        def on_tokens(tokens: list[int], logprobs: list[dict] | None) -> None:
            if top is not None and logprobs is not None:
                pending.extend(vllm_logprob(t, step, top) for t, step in zip(tokens, logprobs, strict=True))
            streamer.put(torch.tensor(tokens))

        with self._inline_on_disk(steering):
            streamer.put(torch.tensor(ids))  # the prompt (a streamer skips it, as with transformers' generate)
            return self.driver.run(steered_prompt(ids, request), params, on_tokens, cancel)

    # ---- sessions -----------------------------------------------------------------------------------
    def open_session(self, session_id: str) -> None:
        """No per-session cache: vLLM's prefix cache is shared by every request."""
        return None

    def close_session(self, cache: None) -> None:
        pass

    def session_generate(self, state: SessionState, ids: list[int], options: dict[str, Any], seed: int | None,
                         stops: list[str] | None, streamer: TokenQueue,
                         cancel: threading.Event | None = None) -> dict[str, Any]:
        """The reply to the whole conversation `ids`, steered with the session's current memory.

        The report uses the transformers engine's words: "reused" when vLLM's prefix cache served part of the
        prompt (`cache_reused_tokens` = `RequestOutput.num_cached_tokens`, whole blocks), else "new" on the
        session's first turn and "rebuilt" on later ones (the conversation recomputed: steered prompts are salted,
        plain ones may have lost their blocks). `cache_tokens` is 0: the session holds no cache of its own.
        """
        cached = self._run(ids, state.steering, options, seed, stops, streamer, cancel)
        if cached > 0:
            cache_state = "reused"
        elif any(m["role"] == "assistant" for m in state.messages):
            cache_state = "rebuilt"
        else:
            cache_state = "new"
        return {"cache": cache_state, "cache_reused_tokens": cached, "cache_tokens": 0}

    def session_cache_view(self, state: SessionState) -> dict[str, Any]:
        return {"tokens": 0, "bytes": 0, "evicted": False}
