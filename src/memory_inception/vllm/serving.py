"""`mi serve --engine vllm`: the transformers server's API and `memory` extension, generating with vLLM.

`VLLMService` is the server's `Service` with generation handed to one vLLM engine, stepped by a background
thread (`EngineDriver`), so concurrent HTTP requests share its continuous batches. The transformers model still
builds banks (`POST /v1/banks`) and checks them. Sessions keep a transformers KV cache, so they stay with
the transformers engine: here they answer 501.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import torch

from ..server import ApiError, MemorySpec, Service, SessionCreate, _SessionState, _TokenQueue
from .engine import MIEngine, steered_prompt, steering_params
from .spec import BankUse, RequestSteering

logger = logging.getLogger(__name__)


class EngineDriver:
    """Steps one vLLM `LLMEngine` in a background thread; callers in any thread submit and read tokens."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[tuple[str, dict, Any]] = []
        self._aborts: list[str] = []
        self._queues: dict[str, queue.Queue] = {}
        self._sent: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="mi-vllm-driver", daemon=True)
        self._thread.start()

    def submit(self, prompt: dict, params: Any, cancel: threading.Event | None = None) -> Iterator[list[int]]:
        """Yield the new token ids of one request as the engine produces them."""
        request_id = "mi-" + secrets.token_hex(8)
        sink: queue.Queue = queue.Queue()
        with self._lock:
            self._queues[request_id] = sink
            self._pending.append((request_id, prompt, params))
        self._wake.set()
        try:
            while True:
                try:
                    kind, value = sink.get(timeout=0.1)
                except queue.Empty:
                    if cancel is not None and cancel.is_set():
                        with self._lock:
                            self._aborts.append(request_id)
                        self._wake.set()
                        return
                    continue
                if kind == "tokens":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            with self._lock:
                self._queues.pop(request_id, None)

    def _run(self) -> None:
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
                sent = self._sent.get(out.request_id, 0)
                if len(tokens) > sent:
                    self._deliver(out.request_id, "tokens", tokens[sent:])
                    self._sent[out.request_id] = len(tokens)
                if out.finished:
                    self._sent.pop(out.request_id, None)
                    self._deliver(out.request_id, "done", None)

    def _deliver(self, request_id: str, kind: str, value: Any) -> None:
        with self._lock:
            sink = self._queues.get(request_id)
        if sink is not None:
            sink.put((kind, value))


class VLLMService(Service):
    """The server's `Service` generating with vLLM (banks by name from the bank directory)."""

    def __init__(self, model: Any, tokenizer: Any, *, model_name: str | None = None, engine: MIEngine | None = None,
                 **options: Any) -> None:
        super().__init__(model, tokenizer, **options)
        self.engine = engine if engine is not None else MIEngine(model_name, bank_dir=self.bank_dir)
        self.driver = EngineDriver(self.engine.llm.llm_engine)

    def steering(self, memory: MemorySpec | None) -> RequestSteering | None:
        """The request's `RequestSteering` (None without banks), checked now so a bad one is a 400."""
        if memory is None or not memory.banks:
            return None
        self._check_layers(memory.layers)
        uses = []
        for ref in memory.banks:
            if ref.name is None:
                raise ApiError(400, "inline 'text' banks are not served by the vLLM engine: create the bank with "
                                    "POST /v1/banks and name it", code="inline_bank_unsupported")
            self.load_bank(ref.name)  # 404 for an unknown bank, 400 for a foreign one
            uses.append(BankUse(ref.name, ref.role, ref.gain))
        steering = RequestSteering(banks=tuple(uses), rho=memory.rho,
                                   layers=tuple(memory.layers) if memory.layers else None)
        self.engine.check(steering)
        return steering

    def generate(self, ids: list[int], steering: RequestSteering | None, options: dict[str, Any], seed: int | None,
                 stops: list[str] | None, streamer: _TokenQueue, cancel: threading.Event | None = None) -> None:
        """One generation in the shared vLLM batch; tokens arrive through `streamer` (no model lock held)."""
        sampled = options.get("do_sample", False)
        params = steering_params(
            steering, max_tokens=options["max_new_tokens"], temperature=options.get("temperature", 1.0) if sampled else 0.0,
            top_p=options.get("top_p", 1.0) if sampled else 1.0, seed=seed, stop=stops,
        )
        streamer.put(torch.tensor(ids))  # the prompt (a streamer skips it, as with transformers' generate)
        for tokens in self.driver.submit(steered_prompt(ids, steering), params, cancel):
            streamer.put(torch.tensor(tokens))

    def open_session(self, req: SessionCreate) -> _SessionState:
        raise ApiError(501, "sessions keep a transformers KV cache and are served by the transformers engine "
                            "(mi serve without --engine vllm); send the whole conversation to /v1/chat/completions",
                       code="sessions_unsupported")
