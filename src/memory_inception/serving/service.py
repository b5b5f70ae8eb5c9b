"""What the endpoints do, independent of HTTP and of the engine: a memory spec to prepared steering, max_tokens and
context limits, chat rendering, finishing a reply (stop strings, finish_reason, usage), session turns and views."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory_inception.hf.text import render_chat
from memory_inception.serving.bank_store import BankStore
from memory_inception.serving.protocol import Engine
from memory_inception.serving.schemas import (
    ApiError,
    ChatRequest,
    MemorySpec,
    Sampling,
    SessionCreate,
    SessionMessage,
)
from memory_inception.serving.session_store import (
    DEFAULT_MAX_SESSIONS,
    SessionRegistry,
    SessionState,
)
from memory_inception.serving.streaming import TokenQueue, cut_at_stop, stream_chunks


@dataclass(frozen=True)
class ChatCall:
    """A chat completion request checked and ready to run: the prompt ids, the prepared steering (None: plain),
    generation options, the max_tokens granted, stop strings and seed."""

    ids: list[int]
    steering: Any
    options: dict[str, Any]
    max_tokens: int
    stops: list[str] | None
    seed: int | None


class Service:
    """Everything the endpoints do: banks (`banks`), sessions (`sessions`), replies; `engine` generates."""

    def __init__(self, model: Any, tokenizer: Any, engine: Engine, *, bank_dir: str | Path, model_id: str,
                 max_tokens_limit: int, default_max_tokens: int, max_sessions: int = DEFAULT_MAX_SESSIONS):
        self.model, self.tokenizer = model, tokenizer
        self.engine = engine
        self.banks = BankStore(model, tokenizer, bank_dir)
        self.sessions = SessionRegistry(max_sessions)
        self.model_id = model_id
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = min(default_max_tokens, max_tokens_limit)
        self.started = time.time()

    # ---- steering -----------------------------------------------------------------------------------
    def steering(self, memory: MemorySpec | None) -> Any:
        """The engine's prepared steering for a `memory` object (None without banks), validated now."""
        if memory is None or not memory.banks:
            return None
        self.banks.check_layers(memory.layers)
        return self.engine.steering(memory, self.banks)

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

    # ---- generation ---------------------------------------------------------------------------------
    def generate(self, ids: list[int], steering: Any, options: dict[str, Any], seed: int | None,
                 stops: list[str] | None, streamer: TokenQueue, cancel: threading.Event | None = None) -> None:
        """One generation on the engine; tokens arrive through `streamer`."""
        self.engine.generate(ids, steering, options, seed, stops, streamer, cancel)

    def finish(self, tokens: list[int], max_tokens: int, stops: list[str] | None) -> tuple[str, str, int]:
        """Reply text (cut at a stop string), finish_reason and the visible completion tokens."""
        eos = self.eos_ids()
        visible = [t for t in tokens if t not in eos]
        text, stopped = cut_at_stop(self.decode(tokens), stops)
        if stopped or (tokens and tokens[-1] in eos) or len(tokens) < max_tokens:
            reason = "stop"
        else:
            reason = "length"
        if stopped:
            visible = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text, reason, len(visible)

    def decode(self, tokens: list[int]) -> str:
        """Reply text as generated (special tokens dropped, spaces kept: a stream's pieces add up to it)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    # ---- chat completions ---------------------------------------------------------------------------
    def prepare_chat(self, req: ChatRequest) -> ChatCall:
        """Check a chat completion request (model, max_tokens, memory, context) and prepare its steering once."""
        if req.model not in (self.model_id, "default"):
            raise ApiError(404, f"model {req.model!r} is not served here; this server serves "
                                f"{self.model_id!r} (GET /v1/models)", code="model_not_found")
        max_tokens = self.max_tokens(req)
        steering = self.steering(req.memory)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        ids = self.render(messages)
        self.check_length(len(ids), max_tokens)
        return ChatCall(ids, steering, req.generation_options(max_tokens), max_tokens, req.stop, req.seed)

    def complete(self, call: ChatCall) -> dict:
        """A `chat.completion` object."""
        completion_id, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        streamer = TokenQueue()
        self.generate(call.ids, call.steering, call.options, call.seed, call.stops, streamer)
        text, reason, completion = self.finish(streamer.tokens, call.max_tokens, call.stops)
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": self.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                         "logprobs": None}],
            "usage": {"prompt_tokens": len(call.ids), "completion_tokens": completion,
                      "total_tokens": len(call.ids) + completion},
        }

    def stream(self, call: ChatCall, include_usage: bool, cancel: threading.Event) -> Iterator[str]:
        """The completion as SSE chunks; setting `cancel` (the client left) stops the generation."""
        return stream_chunks(
            generate=lambda streamer: self.generate(call.ids, call.steering, call.options, call.seed, call.stops,
                                                    streamer, cancel),
            decode=self.decode, finish=lambda tokens: self.finish(tokens, call.max_tokens, call.stops),
            stops=call.stops, completion_id="chatcmpl-" + secrets.token_hex(12), created=int(time.time()),
            model_id=self.model_id, prompt_tokens=len(call.ids), include_usage=include_usage, cancel=cancel,
        )

    # ---- sessions -----------------------------------------------------------------------------------
    # The transcript, memory and limits are kept here for every engine; the engine keeps its per-session state
    # (`SessionState.cache`), runs a turn and reports its cache.
    def open_session(self, req: SessionCreate) -> SessionState:
        """A new session (counted against the registry's `max_sessions`)."""
        state = SessionState(req.memory, self.steering(req.memory), req.system)
        state.cache = self.engine.open_session(state.id)
        try:
            self.sessions.add(state)
        except ApiError:
            self.engine.close_session(state.cache)
            raise
        return state

    def get_session(self, session_id: str) -> SessionState:
        return self.sessions.get(session_id)

    def patch_session(self, state: SessionState, memory: MemorySpec | None) -> None:
        """Change the guidance from the next turn on; the transcript (and any cache) stay as they are."""
        steering = self.steering(memory)
        with state.lock:  # never in the middle of a turn
            state.steering, state.memory = steering, memory

    def delete_session(self, session_id: str) -> None:
        state = self.sessions.remove(session_id)
        self.engine.close_session(state.cache)

    def session_turn(self, state: SessionState, req: SessionMessage) -> dict:
        """One turn: the transcript plus the new user message, steered with the session's current memory.

        The stripped reply (cut at a stop string) joins the transcript; banks never do.
        """
        max_tokens = self.max_tokens(req)
        options = req.generation_options(max_tokens)
        user = {"role": "user", "content": req.content}
        with state.lock:
            ids = self.render(state.messages + [user])
            self.check_length(len(ids), max_tokens)
            tokens, cache = self.engine.session_generate(state, ids, options, req.seed, req.stop)
            text, reason, completion = self.finish(tokens, max_tokens, req.stop)
            text = text.strip()
            state.messages += [user, {"role": "assistant", "content": text}]
        return {
            "id": "chatcmpl-" + secrets.token_hex(12), "object": "session.message", "created": int(time.time()),
            "model": self.model_id, "session_id": state.id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion,
                      "total_tokens": len(ids) + completion},
            **cache,
        }

    def session_view(self, state: SessionState) -> dict:
        return {
            "id": state.id, "object": "session", "created": state.created, "model": self.model_id,
            "messages": [dict(m) for m in state.messages],
            "memory": state.memory.model_dump() if state.memory is not None else None,
            "cache": self.engine.session_cache_view(state),
        }
