"""What the endpoints do, independent of HTTP and of the engine: requests checked without model work (max_tokens,
context, bank limits), then admitted to the engine in order within a deadline (`admission`), a memory spec to
prepared steering, chat and text completions (whole or streamed, with log-probabilities), session turns on the
stored transcript, and the counters `/metrics` shows."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory_inception.hf.text import encode, render_chat
from memory_inception.serving.admission import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S, Admission, Deadline
from memory_inception.serving.bank_store import DEFAULT_MAX_BANK_TOKENS, DEFAULT_MAX_MEMORY_SLOTS, BankStore
from memory_inception.serving.formats import (
    ChatChunks,
    CompletionChunks,
    Reply,
    TokenText,
    chat_completion,
    session_message,
    text_completion,
)
from memory_inception.serving.protocol import Engine
from memory_inception.serving.redact import Redactor
from memory_inception.serving.schemas import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    MemorySpec,
    Sampling,
    SessionCreate,
    SessionMessage,
)
from memory_inception.serving.session_store import (
    DEFAULT_MAX_SESSIONS,
    SessionState,
    SessionStore,
    default_sessions_db,
)
from memory_inception.serving.streaming import (
    EventStream,
    Finished,
    TokenLogprob,
    TokenQueue,
    cut_at_stop,
    visible_logprobs,
)
from memory_inception.serving.telemetry import Telemetry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """A completion request checked and ready to run: the prompt ids, its memory (prepared once admitted), the
    generation options, the max_tokens granted, stop strings, seed, the log-probabilities asked (None: none), and
    whether it is a chat or a text completion."""

    ids: list[int]
    memory: MemorySpec | None
    options: dict[str, Any]
    max_tokens: int
    stops: list[str] | None
    seed: int | None
    top_logprobs: int | None
    kind: str  # "chat" or "completion"
    include_usage: bool = False


class Service:
    """Everything the endpoints do: banks (`banks`), stored sessions (`sessions`), replies; `engine` generates,
    `admission` bounds who waits for it, `telemetry` counts."""

    def __init__(self, model: Any, tokenizer: Any, engine: Engine, *, bank_dir: str | Path, model_id: str,
                 max_tokens_limit: int, default_max_tokens: int, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 sessions_db: str | Path | None = None, max_bank_tokens: int = DEFAULT_MAX_BANK_TOKENS,
                 max_memory_slots: int = DEFAULT_MAX_MEMORY_SLOTS, max_queue: int = DEFAULT_MAX_QUEUE,
                 request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S):
        self.model, self.tokenizer = model, tokenizer
        self.engine = engine
        self.banks = BankStore(model, tokenizer, bank_dir, max_bank_tokens=max_bank_tokens,
                               max_memory_slots=max_memory_slots)
        self.sessions_db = Path(sessions_db) if sessions_db is not None else default_sessions_db(bank_dir)
        self.sessions = SessionStore(self.sessions_db, max_sessions)
        self.redact = Redactor(bank_dir, self.sessions_db)
        self.admission = Admission(engine.concurrency, max_queue)
        self.request_timeout_s = request_timeout_s
        self.telemetry = Telemetry(self.admission, lambda: len(self.sessions))
        self.text = TokenText(tokenizer)
        self.model_id = model_id
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = min(default_max_tokens, max_tokens_limit)
        self.started = time.time()

    # ---- admission ------------------------------------------------------------------------------------
    def deadline(self) -> Deadline:
        """A new request's deadline (and cancel flag)."""
        return Deadline(self.request_timeout_s)

    def admit(self, deadline: Deadline) -> Any:
        """A place on the engine (a `Ticket`; 503 with Retry-After when the line is full or the deadline passes)."""
        ticket = self.admission.enter(deadline)
        self.telemetry.queue_wait.observe(deadline.elapsed())
        return ticket

    @contextmanager
    def admitted(self, deadline: Deadline) -> Iterator[None]:
        with self.admit(deadline):
            yield

    # ---- steering -----------------------------------------------------------------------------------
    def check_memory(self, memory: MemorySpec | None) -> None:
        """The checks a memory passes without model work: layers, named banks, bank sizes and slots."""
        if memory is not None and memory.banks:
            self.banks.check_memory(memory)

    def steering(self, memory: MemorySpec | None) -> Any:
        """The engine's prepared steering for a `memory` object (None without banks), validated now; builds inline
        banks, so call it once admitted."""
        if memory is None or not memory.banks:
            return None
        self.banks.check_layers(memory.layers)
        return self.engine.steering(memory, self.banks)

    def prepared_steering(self, memory: MemorySpec | None, deadline: Deadline) -> Any:
        """`steering(memory)` checked first and then prepared on the engine (admitted: it may build banks)."""
        self.check_memory(memory)
        if memory is None or not memory.banks:
            return None
        with self.admitted(deadline):
            return self.steering(memory)

    # ---- limits and prompts -------------------------------------------------------------------------
    def max_tokens(self, req: Sampling) -> int:
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if asked is None:
            return self.default_max_tokens
        if asked > self.max_tokens_limit:
            raise ApiError(422, f"max_tokens {asked} is above this server's limit of {self.max_tokens_limit}",
                           code="max_tokens_too_large")
        return asked

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt ids of a conversation (chat template with the generation prompt)."""
        return render_chat(self.tokenizer, messages)

    def check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        context = self.engine.context_length
        if context and prompt_tokens + max_tokens > context:
            raise ApiError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                f"model's context of {context} tokens", code="context_length_exceeded")

    def check_model(self, model: str) -> None:
        if model not in (self.model_id, "default"):
            raise ApiError(404, f"model {model!r} is not served here; this server serves "
                                f"{self.model_id!r} (GET /v1/models)", code="model_not_found")

    # ---- replies ------------------------------------------------------------------------------------
    def finish(self, tokens: list[int], max_tokens: int, stops: list[str] | None, strip: bool = False) -> Finished:
        """Reply text (cut at a stop string; `strip`ped for a transcript), finish_reason and visible tokens."""
        eos = self.eos_ids()
        visible = [t for t in tokens if t not in eos]
        text, stopped = cut_at_stop(self.decode(tokens), stops)
        if stopped or (tokens and tokens[-1] in eos) or len(tokens) < max_tokens:
            reason = "stop"
        else:
            reason = "length"
        if stopped:
            visible = encode(self.tokenizer, text)
        return Finished(text.strip() if strip else text, reason, len(visible))

    def shown_logprobs(self, streamer: TokenQueue, finished: Finished) -> list[TokenLogprob] | None:
        """The log-probabilities of the tokens the reply shows (None when none were asked)."""
        if streamer.top_logprobs is None:
            return None
        tokens = streamer.tokens
        ends = [len(self.decode(tokens[: i + 1])) for i in range(len(streamer.logprobs))]
        return visible_logprobs(tokens, streamer.logprobs, ends, len(finished.text), self.eos_ids())

    def decode(self, tokens: list[int]) -> str:
        """Reply text as generated (special tokens dropped, spaces kept: a stream's pieces add up to it)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def describe_error(self, exc: BaseException) -> tuple[str, str, str | None]:
        """A failure as a stream's error event says it: (message, type, code), the server's paths redacted."""
        if isinstance(exc, ApiError):
            return self.redact(exc.message), exc.type, exc.code
        return self.redact(f"generation failed: {exc}"), "server_error", None

    def _reply(self, prefix: str) -> Reply:
        return Reply(prefix + secrets.token_hex(12), int(time.time()), self.model_id)

    def _observed(self, streamer: TokenQueue, deadline: Deadline) -> None:
        if streamer.first_token_at is not None:
            self.telemetry.first_token.observe(streamer.first_token_at - deadline.start)

    # ---- chat and text completions ------------------------------------------------------------------
    def prepare_chat(self, req: ChatRequest) -> Call:
        """Check a chat completion request (model, max_tokens, memory, context) without model work."""
        self.check_model(req.model)
        max_tokens = self.max_tokens(req)
        self.check_memory(req.memory)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        ids = self.render(messages)
        self.check_length(len(ids), max_tokens)
        return Call(ids, req.memory, req.generation_options(max_tokens), max_tokens, req.stop, req.seed,
                    req.top_logprobs_asked(), "chat", bool(req.stream_options and req.stream_options.include_usage))

    def prepare_completion(self, req: CompletionRequest) -> Call:
        """Check a text completion request: the prompt is continued as it is (no chat template)."""
        self.check_model(req.model)
        max_tokens = self.max_tokens(req)
        self.check_memory(req.memory)
        ids = encode(self.tokenizer, req.prompt)
        if not ids:
            raise ApiError(400, "the prompt has no tokens; send some text to continue", code="empty_prompt")
        self.check_length(len(ids), max_tokens)
        return Call(ids, req.memory, req.generation_options(max_tokens), max_tokens, req.stop, req.seed,
                    req.top_logprobs_asked(), "completion",
                    bool(req.stream_options and req.stream_options.include_usage))

    def _generate(self, call: Call, steering: Any, streamer: TokenQueue, deadline: Deadline) -> Finished:
        self.engine.generate(call.ids, steering, call.options, call.seed, call.stops, streamer, deadline)
        if deadline.tripped:
            raise deadline.exceeded("generating")
        finished = self.finish(streamer.tokens, call.max_tokens, call.stops)
        self._observed(streamer, deadline)
        self.telemetry.generation(steered=steering is not None, prompt_tokens=len(call.ids),
                                  completion_tokens=finished.completion_tokens)
        return finished

    def complete(self, call: Call, deadline: Deadline) -> dict:
        """A `chat.completion` or `text_completion` object, once the request's turn on the engine comes."""
        reply = self._reply("chatcmpl-" if call.kind == "chat" else "cmpl-")
        streamer = TokenQueue(top_logprobs=call.top_logprobs)
        with self.admitted(deadline):
            steering = self.steering(call.memory)
            finished = self._generate(call, steering, streamer, deadline)
        shown = self.shown_logprobs(streamer, finished)
        if call.kind == "chat":
            return chat_completion(reply, finished, len(call.ids), self.text.chat(shown))
        return text_completion(reply, finished, len(call.ids), self.text.completion(shown))

    def stream(self, call: Call, deadline: Deadline) -> EventStream:
        """The completion as SSE events, admitted now (so a full line is a 503 before the stream starts); closing
        the stream (the client left) or the deadline stops the generation."""
        reply = self._reply("chatcmpl-" if call.kind == "chat" else "cmpl-")
        ticket = self.admit(deadline)
        try:
            steering = self.steering(call.memory)
        except BaseException:
            ticket.release()
            raise
        done: dict[str, Finished] = {}

        def generate(streamer: TokenQueue) -> None:
            done["reply"] = self._generate(call, steering, streamer, deadline)

        shape_type = ChatChunks if call.kind == "chat" else CompletionChunks
        return EventStream(
            generate=generate, decode=self.decode, finish=lambda tokens: done["reply"], stops=call.stops,
            shape=shape_type(reply, len(call.ids), call.include_usage, self.text), cancel=deadline,
            on_end=ticket.release, on_error=self.describe_error, top_logprobs=call.top_logprobs,
            skip=self.eos_ids(),
        )

    # ---- sessions -----------------------------------------------------------------------------------
    # The transcript and memory are stored (SessionStore) for every engine; the engine keeps its per-session
    # state (`SessionState.cache`), runs a turn and reports its cache.
    def open_session(self, req: SessionCreate, deadline: Deadline) -> SessionState:
        """A new stored session (counted against the store's `max_sessions`), its memory checked and prepared."""
        steering = self.prepared_steering(req.memory, deadline)
        state = self.sessions.create(req.memory, req.system)
        state.steering, state.steering_ready = steering, True
        state.cache = self.engine.open_session(state.id)
        return state

    def get_session(self, session_id: str) -> SessionState:
        return self.sessions.get(session_id)

    def patch_session(self, state: SessionState, memory: MemorySpec | None, deadline: Deadline) -> None:
        """Change the guidance from the next turn on; the transcript (and any cache) stay as they are."""
        steering = self.prepared_steering(memory, deadline)
        with self._turn_lock(state, deadline):  # never in the middle of a turn
            self.sessions.refresh(state)
            self.sessions.set_memory(state, memory, steering)

    def delete_session(self, session_id: str) -> None:
        live = self.sessions.delete(session_id)
        if live is not None and live.cache is not None:
            self.engine.close_session(live.cache)

    def _lock_turn(self, state: SessionState, deadline: Deadline) -> None:
        """Take the session's turn lock, waiting at most until the deadline (409 then)."""
        if not state.lock.acquire(timeout=max(0.0, deadline.remaining()) if deadline.seconds else -1):
            raise ApiError(409, f"session {state.id!r} is busy with another turn past this request's deadline; "
                                "retry", code="session_busy")

    @contextmanager
    def _turn_lock(self, state: SessionState, deadline: Deadline) -> Iterator[None]:
        self._lock_turn(state, deadline)
        try:
            yield
        finally:
            state.lock.release()

    def session_turn(self, state: SessionState, req: SessionMessage, deadline: Deadline) -> dict | EventStream:
        """One turn: the stored transcript plus the new user message, steered with the session's current memory
        (prepared again after a restart or a change elsewhere). The stripped reply (cut at a stop string) joins
        the transcript; banks never do. Streamed (`req.stream`): SSE chunks, the transcript written when the
        generation ends (not when the client left before)."""
        max_tokens = self.max_tokens(req)
        options = req.generation_options(max_tokens)
        user = {"role": "user", "content": req.content}
        self._lock_turn(state, deadline)  # held until the turn ends (`end`), a stream's included
        release: list[Callable[[], None]] = [state.lock.release]
        try:
            self.sessions.refresh(state)
            ids = self.render(state.messages + [user])
            self.check_length(len(ids), max_tokens)
            if not state.steering_ready:
                self.check_memory(state.memory)
            release.insert(0, self.admit(deadline).release)
            if not state.steering_ready:
                state.steering, state.steering_ready = self.steering(state.memory), True
            if state.cache is None:
                state.cache = self.engine.open_session(state.id)
        except BaseException:
            for step in release:
                step()
            raise
        reply, report = self._reply("chatcmpl-"), {}
        done: dict[str, Finished] = {}

        def generate(streamer: TokenQueue) -> None:
            report.update(self.engine.session_generate(state, ids, options, req.seed, req.stop, streamer, deadline))
            if deadline.tripped:
                raise deadline.exceeded("generating")
            finished = self.finish(streamer.tokens, max_tokens, req.stop, strip=True)
            if not deadline.is_set():  # a client that left gets no half reply in its transcript
                self.sessions.append(state, [user, {"role": "assistant", "content": finished.text}])
            self._observed(streamer, deadline)
            self.telemetry.generation(steered=state.steering is not None, prompt_tokens=len(ids),
                                      completion_tokens=finished.completion_tokens)
            done["reply"] = finished

        def end() -> None:
            for step in release:
                step()

        if req.stream:
            shape = ChatChunks(reply, len(ids), bool(req.stream_options and req.stream_options.include_usage),
                               self.text, session_id=state.id, cache=lambda: dict(report))
            return EventStream(generate=generate, decode=self.decode, finish=lambda tokens: done["reply"],
                               stops=req.stop, shape=shape, cancel=deadline, on_end=end,
                               on_error=self.describe_error, strip=True)
        try:
            generate(TokenQueue())
        finally:
            end()
        return session_message(reply, state.id, done["reply"], len(ids), report)

    def session_view(self, session_id: str) -> dict:
        created, memory, messages = self.sessions.view(session_id)
        state = self.sessions.get(session_id)
        cache = (self.engine.session_cache_view(state) if state.cache is not None
                 else {"tokens": 0, "bytes": 0, "evicted": False})
        return {
            "id": session_id, "object": "session", "created": created, "model": self.model_id,
            "messages": messages, "memory": memory.model_dump() if memory is not None else None, "cache": cache,
        }
