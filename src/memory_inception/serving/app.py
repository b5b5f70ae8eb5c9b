"""An OpenAI-compatible HTTP server with Memory Inception steering (FastAPI + uvicorn).

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (plain and SSE streaming, with a
``memory`` extension object), banks as files (``/v1/banks``) and multi-turn sessions whose KV cache persists
(``/v1/sessions``). One model is shared by all requests: every use of it runs under one lock per model, one
request at a time (``mi.inject`` refuses nesting, and interleaved forwards would corrupt each other).

``create_app(model, tokenizer, bank_dir=...)`` builds the app (tests use it directly); ``run_server(...)``
loads a model and serves it with uvicorn (``mi serve``).
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import re
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from memory_inception.core.architecture import geometry
from memory_inception.core.banks import Bank, build_bank
from memory_inception.core.sites import Sites, parse_layers
from memory_inception.core.steering import Steering
from memory_inception.errors import MemoryInceptionError
from memory_inception.hf.inject import Injection, inject
from memory_inception.hf.session import Session, common_prefix

logger = logging.getLogger(__name__)

BANK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MAX_TOKENS = 128
DEFAULT_MAX_TOKENS_LIMIT = 1024
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB
DEFAULT_SESSION_CACHE_BYTES = 512 << 20  # 512 MiB of session KV caches
DEFAULT_MAX_SESSIONS = 1000
TEXT_BANK_CACHE_SIZE = 32

# One lock per model object: every forward of a model (generation, bank building) holds it, even across
# several apps serving the same model in one process.
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.Lock:
    """The lock that serializes every use of `model` in this process."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


# ============================================================================ errors


class ApiError(Exception):
    """An error answered as OpenAI's `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def _error_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(_error_body(message, type_, code), status_code=status, headers=headers)


def _describe_validation(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {where!r} (not accepted here; check the spelling)")
        elif err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
        elif not loc and err.get("type") in ("model_attributes_type", "dict_type", "missing"):
            parts.append("the body must be a JSON object (Content-Type: application/json)")
        else:
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# ============================================================================ request models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BankRef(_Strict):
    name: str | None = None
    text: str | None = None
    role: Literal["target", "reference", "auxiliary"] = "target"
    gain: float = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> BankRef:
        if (self.name is None) == (self.text is None):
            raise ValueError("a memory bank needs exactly one of 'name' (a saved bank) or 'text' (built on the fly)")
        if self.text is not None and not self.text.strip():
            raise ValueError("a memory bank's 'text' is empty")
        return self


class MemorySpec(_Strict):
    banks: list[BankRef] = Field(default_factory=list, max_length=16)
    layers: list[int] | str | None = None
    rho: float | None = Field(default=None, ge=-100, le=100)

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | str | None) -> list[int] | None:
        return parse_layers(value)

    @model_validator(mode="after")
    def _roles(self) -> MemorySpec:
        for role in ("target", "reference"):
            if sum(b.role == role for b in self.banks) > 1:
                raise ValueError(f"memory has more than one {role!r} bank; use role 'auxiliary' for the others")
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops or None


class ChatRequest(_Sampling):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None
    memory: MemorySpec | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value


class BankCreate(_Strict):
    name: str
    text: str = Field(min_length=1)
    layers: list[int] | str | None = None

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | str | None) -> list[int] | None:
        return parse_layers(value)


class SessionCreate(_Strict):
    memory: MemorySpec | None = None
    system: str | None = None


class SessionMessage(_Sampling):
    content: str


class SessionPatch(_Strict):
    memory: MemorySpec | None


# ============================================================================ generation helpers


class _TokenQueue(BaseStreamer):
    """Receives generated token ids from `generate` (the first `put` is the prompt: skipped)."""

    def __init__(self, sink: queue.Queue | None = None):
        self.sink = sink
        self.tokens: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        ids = [int(t) for t in value.flatten().tolist()]
        self.tokens += ids
        if self.sink is not None:
            for t in ids:
                self.sink.put(("token", t))

    def end(self) -> None:
        pass


class _StopOn(StoppingCriteria):
    """Stops on a stop string in the new text, or when the request is cancelled (client gone)."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: list[str] | None, cancel: threading.Event | None):
        self.tokenizer, self.prompt_len, self.stops, self.cancel = tokenizer, prompt_len, stops or [], cancel

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = bool(self.cancel is not None and self.cancel.is_set())
        if not done and self.stops:
            text = self.tokenizer.decode(input_ids[0, self.prompt_len :], skip_special_tokens=True)
            done = any(s in text for s in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _cut_at_stop(text: str, stops: list[str] | None) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops or []) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _sampling_options(req: _Sampling, max_tokens: int) -> dict[str, Any]:
    options: dict[str, Any] = {"max_new_tokens": max_tokens}
    temperature = 1.0 if req.temperature is None else req.temperature
    if temperature == 0:
        options["do_sample"] = False
    else:
        options.update(do_sample=True, temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p)
    return options


def _cache_bytes(cache: Any) -> int:
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class _SessionState:
    """A session as the server keeps it: the transcript, the memory spec and its steering, and `session` — the
    engine's own per-session state (the transformers engine's `Session`, holding the KV cache; None on vLLM).

    `lock` serializes the session's turns and guidance changes (a PATCH waits for a running turn)."""

    def __init__(self, memory: MemorySpec | None, steering: Any, system: str | None, session: Session | None):
        self.id = "sess_" + secrets.token_hex(12)
        self.memory = memory
        self.steering = steering
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.session = session
        self.lock = threading.Lock()
        self.created = int(time.time())
        self.last_used = time.monotonic()
        self.evicted = False


# ============================================================================ the service


class Service:
    """Everything the endpoints do, independent of HTTP: banks, steering, generation, sessions."""

    def __init__(self, model: Any, tokenizer: Any, *, bank_dir: Path, model_id: str, max_tokens_limit: int,
                 default_max_tokens: int, session_cache_bytes: int, max_sessions: int = DEFAULT_MAX_SESSIONS):
        self.model, self.tokenizer = model, tokenizer
        self.bank_dir = Path(bank_dir)
        self.bank_dir.mkdir(parents=True, exist_ok=True)
        self.model_id = model_id
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = min(default_max_tokens, max_tokens_limit)
        self.session_cache_bytes = session_cache_bytes
        self.max_sessions = max_sessions
        self.lock = model_lock(model)
        self.num_layers = geometry(model).num_layers
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.started = time.time()
        self._state_lock = threading.Lock()  # guards the dicts below (never held while the model runs)
        self._bank_cache: dict[str, tuple[tuple[int, int], Bank]] = {}
        self._text_banks: OrderedDict[tuple[str, tuple[int, ...]], Bank] = OrderedDict()
        self.sessions: dict[str, _SessionState] = {}

    # ---- banks --------------------------------------------------------------------------------------
    def bank_path(self, name: str) -> Path:
        if not BANK_NAME.fullmatch(name):
            raise ApiError(400, f"invalid bank name {name!r}: use 1-64 letters, digits, '-' or '_'")
        return self.bank_dir / f"{name}.safetensors"

    def load_bank(self, name: str) -> Bank:
        path = self.bank_path(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ApiError(404, f"no bank named {name!r}; create it with POST /v1/banks or list them with "
                                "GET /v1/banks", code="bank_not_found") from None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._state_lock:
            hit = self._bank_cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        bank = Bank.load(path, model=self.model)
        with self._state_lock:
            self._bank_cache[name] = (key, bank)
        return bank

    def create_bank(self, req: BankCreate) -> Bank:
        path = self.bank_path(req.name)
        self._check_layers(req.layers)
        with self.lock:  # also makes check-then-write atomic between concurrent creations
            if path.exists():
                raise ApiError(409, f"a bank named {req.name!r} exists; DELETE /v1/banks/{req.name} first",
                               code="bank_exists")
            bank = build_bank(self.model, self.tokenizer, req.text, layers=req.layers, name=req.name)
            bank.save(path)
        logger.info("built bank %s: %d slots x %d layers, %d bytes", req.name, bank.num_slots, len(bank.layers),
                    bank.nbytes)
        return bank

    def delete_bank(self, name: str) -> None:
        path = self.bank_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ApiError(404, f"no bank named {name!r}", code="bank_not_found") from None
        with self._state_lock:
            self._bank_cache.pop(name, None)

    def list_banks(self) -> list[dict]:
        out = []
        for path in sorted(self.bank_dir.glob("*.safetensors")):
            if BANK_NAME.fullmatch(path.stem):
                try:
                    out.append(self.bank_info(path.stem))
                except (ApiError, MemoryInceptionError) as exc:
                    logger.warning("skipping unreadable bank file %s: %s", path, exc)
        return out

    def bank_info(self, name: str) -> dict:
        bank = self.load_bank(name)
        path = self.bank_path(name)
        return {
            "object": "bank", "name": name, "slots": bank.num_slots, "layers": list(bank.layers),
            "bytes": bank.nbytes, "file_bytes": path.stat().st_size, "text": bank.text,
            "created": int(path.stat().st_mtime),
        }

    def _check_layers(self, layers: list[int] | None) -> None:
        bad = [layer for layer in layers or [] if not 0 <= layer < self.num_layers]
        if bad:
            raise ApiError(400, f"layers {bad} are out of range: this model has layers 0..{self.num_layers - 1}")

    def _text_bank(self, text: str, layers: list[int]) -> Bank:
        key = (text, tuple(layers))
        with self._state_lock:
            bank = self._text_banks.get(key)
            if bank is not None:
                self._text_banks.move_to_end(key)
                return bank
        with self.lock:
            bank = build_bank(self.model, self.tokenizer, text, layers=layers, name="inline")
        with self._state_lock:
            self._text_banks[key] = bank
            while len(self._text_banks) > TEXT_BANK_CACHE_SIZE:
                self._text_banks.popitem(last=False)
        return bank

    # ---- steering -----------------------------------------------------------------------------------
    def steering(self, memory: MemorySpec | None) -> Steering | None:
        """The Steering a `memory` object asks for (None without banks); validated against the model."""
        if memory is None or not memory.banks:
            return None
        self._check_layers(memory.layers)
        sites = Sites({layer: None for layer in memory.layers}) if memory.layers else Sites.default(self.model)
        target = reference = None
        positive = negative = 1.0
        auxiliary = []
        for ref in memory.banks:
            bank = self.load_bank(ref.name) if ref.name is not None else self._text_bank(ref.text, list(sites.layers))
            if ref.role == "target":
                target, positive = bank, ref.gain
            elif ref.role == "reference":
                reference, negative = bank, ref.gain
            else:
                auxiliary.append((bank, ref.gain))
        steering = Steering(target=target, reference=reference, auxiliary=auxiliary, sites=sites, rho=memory.rho,
                            positive_gain=positive, negative_gain=negative)
        Injection(self.model, steering)  # plans now: a bad layer or a foreign bank is a 400 before generation
        return steering

    # ---- generation ---------------------------------------------------------------------------------
    def max_tokens(self, req: _Sampling) -> int:
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if asked is None:
            return self.default_max_tokens
        if asked > self.max_tokens_limit:
            raise ApiError(422, f"max_tokens {asked} is above this server's limit of {self.max_tokens_limit}",
                           code="max_tokens_too_large")
        return asked

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids

    def _check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        if self.max_positions and prompt_tokens + max_tokens > self.max_positions:
            raise ApiError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                f"model's context of {self.max_positions} tokens", code="context_length_exceeded")

    def generate(self, ids: list[int], steering: Steering | None, options: dict[str, Any], seed: int | None,
                 stops: list[str] | None, streamer: _TokenQueue, cancel: threading.Event | None = None) -> None:
        """Run one generation under the model lock; tokens arrive through `streamer`."""
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        criteria = StoppingCriteriaList([_StopOn(self.tokenizer, len(ids), stops, cancel)])
        with self.lock:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad(), inject(self.model, steering):
                self.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    pad_token_id=self.tokenizer.pad_token_id, streamer=streamer, stopping_criteria=criteria,
                    **options,
                )

    def finish(self, tokens: list[int], max_tokens: int, stops: list[str] | None) -> tuple[str, str, int]:
        """Reply text (cut at a stop string), finish_reason and the visible completion tokens."""
        eos = self._eos_ids()
        visible = [t for t in tokens if t not in eos]
        text, stopped = _cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stops)
        if stopped or (tokens and tokens[-1] in eos) or len(tokens) < max_tokens:
            reason = "stop"
        else:
            reason = "length"
        if stopped:
            visible = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text, reason, len(visible)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    # ---- sessions -----------------------------------------------------------------------------------
    # The transcript, memory and limits are kept here for every engine; an engine supplies `_session_state`
    # (its per-session state), `_session_generate` (one turn's tokens and cache report) and
    # `_session_cache_view`.
    def open_session(self, req: SessionCreate) -> _SessionState:
        """A new session (counted against `max_sessions`)."""
        steering = self.steering(req.memory)
        state = _SessionState(req.memory, steering, req.system, self._session_state())
        with self._state_lock:
            if len(self.sessions) >= self.max_sessions:
                raise ApiError(429, f"this server holds its limit of {self.max_sessions} sessions; DELETE "
                                    "/v1/sessions/{id} the ones you no longer need", code="too_many_sessions")
            self.sessions[state.id] = state
        return state

    def get_session(self, session_id: str) -> _SessionState:
        with self._state_lock:
            state = self.sessions.get(session_id)
        if state is None:
            raise ApiError(404, f"no session {session_id!r}; create one with POST /v1/sessions",
                           code="session_not_found")
        return state

    def patch_session(self, state: _SessionState, memory: MemorySpec | None) -> None:
        """Change the guidance from the next turn on; the transcript (and any cache) stay as they are."""
        steering = self.steering(memory)
        with state.lock:  # never in the middle of a turn
            state.steering, state.memory = steering, memory

    def delete_session(self, session_id: str) -> None:
        self.get_session(session_id)
        with self._state_lock:
            self.sessions.pop(session_id, None)

    def session_turn(self, state: _SessionState, req: SessionMessage) -> dict:
        """One turn: the transcript plus the new user message, steered with the session's current memory.

        The stripped reply (cut at a stop string) joins the transcript; banks never do.
        """
        max_tokens = self.max_tokens(req)
        options = _sampling_options(req, max_tokens)
        user = {"role": "user", "content": req.content}
        with state.lock:
            ids = self.render(state.messages + [user])
            self._check_length(len(ids), max_tokens)
            state.last_used = time.monotonic()  # the most recent session while its cache budget is enforced
            tokens, cache = self._session_generate(state, ids, options, req.seed, req.stop)
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

    def session_view(self, state: _SessionState) -> dict:
        return {
            "id": state.id, "object": "session", "created": state.created, "model": self.model_id,
            "messages": [dict(m) for m in state.messages],
            "memory": state.memory.model_dump() if state.memory is not None else None,
            "cache": self._session_cache_view(state),
        }

    # ---- sessions: the transformers engine's KV cache ---------------------------------------------------
    def _session_state(self) -> Session:
        """A session's own KV cache (a `Session`; the server keeps the transcript and steering)."""
        return Session(self.model, self.tokenizer)

    def _session_generate(self, state: _SessionState, ids: list[int], options: dict[str, Any], seed: int | None,
                          stops: list[str] | None) -> tuple[list[int], dict[str, Any]]:
        """The reply's token ids, from the session's cache, and the turn's cache report:
        `cache` is "new" (empty cache), "reused" (its common prefix with the prompt kept) or "rebuilt" (the
        cache had been evicted), with `cache_reused_tokens` and `cache_tokens` (its length after the turn)."""
        session = state.session
        with self.lock:
            if state.evicted:
                cache_state = "rebuilt"
            elif session.cache.get_seq_length() == 0:
                cache_state = "new"
            else:
                cache_state = "reused"
            reused = min(common_prefix(ids, session.cache_ids), len(ids) - 1)
            if seed is not None:
                torch.manual_seed(seed)
            criteria = StoppingCriteriaList([_StopOn(self.tokenizer, len(ids), stops, None)])
            session.steering = state.steering  # the session's current guidance (a PATCH changes state.steering)
            tokens = session.generate(ids, stopping_criteria=criteria, **options)
            state.evicted = False
            cached = session.cache.get_seq_length()
            self._enforce_budget()
        return tokens, {"cache": cache_state, "cache_reused_tokens": reused if cache_state == "reused" else 0,
                        "cache_tokens": cached}

    def _enforce_budget(self) -> None:
        """Drop least-recently-used session caches (transcripts stay) until the total fits the budget."""
        with self._state_lock:
            states = sorted(self.sessions.values(), key=lambda s: s.last_used)
        total = sum(_cache_bytes(s.session.cache) for s in states)
        for state in states:
            if total <= self.session_cache_bytes:
                break
            size = _cache_bytes(state.session.cache)
            if size == 0:
                continue
            state.session.cache = DynamicCache()
            state.session.cache_ids = []
            state.evicted = True
            total -= size
            logger.info("evicted the KV cache of session %s (%d bytes; budget %d)", state.id, size,
                        self.session_cache_bytes)

    def _session_cache_view(self, state: _SessionState) -> dict[str, Any]:
        cache = state.session.cache
        return {"tokens": cache.get_seq_length(), "bytes": _cache_bytes(cache), "evicted": state.evicted}


# ============================================================================ middleware


class _Gate:
    """Pure ASGI middleware: one log line per request, the body size limit (413) and the API key (401)."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_logged(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_logged)
        finally:
            logger.info("%s %s %d %.1fms", scope["method"], scope["path"], status["code"],
                        (time.perf_counter() - started) * 1000)

    async def _handle(self, scope: dict, receive: Any, send: Any) -> None:
        if self.api_key is not None and scope["path"] not in ("/health", "/"):  # "/": the static playground
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                response = _error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                           "authentication_error", "invalid_api_key",
                                           headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            too_large = _error_response(413, f"request body too large: the limit is {self.max_body_bytes} bytes",
                                        code="body_too_large")
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await too_large(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            # every body this API takes is JSON: accept it without a content type, or with curl's default
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            kind = dict(scope["headers"]).get(b"content-type", b"")
            if not kind or kind.startswith(b"application/x-www-form-urlencoded"):
                kind = b"application/json"
            scope = {**scope, "headers": headers + [(b"content-type", kind)]}
            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


# ============================================================================ the app


def create_app(
    model: Any,
    tokenizer: Any,
    *,
    bank_dir: str | Path,
    api_key: str | None = None,
    model_id: str | None = None,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    session_cache_bytes: int = DEFAULT_SESSION_CACHE_BYTES,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    service_class: type[Service] | None = None,
    service_options: dict[str, Any] | None = None,
) -> FastAPI:
    """The FastAPI app serving `model` (shared, one request at a time) with banks stored in `bank_dir`.

    `service_class` (a `Service` subclass, e.g. the vLLM engine's) runs the generations instead of `model`.
    """
    service = (service_class or Service)(
        model, tokenizer, bank_dir=Path(bank_dir), model_id=model_id or DEFAULT_MODEL_ID,
        max_tokens_limit=max_tokens_limit, default_max_tokens=default_max_tokens,
        session_cache_bytes=session_cache_bytes, max_sessions=max_sessions, **(service_options or {}),
    )
    app = FastAPI(title="memory-inception", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.type, exc.code)

    @app.exception_handler(MemoryInceptionError)
    async def _mi_error(_request: Request, exc: MemoryInceptionError) -> JSONResponse:
        return _error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(400, _describe_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(exc.status_code,
                                                                                           str(exc.detail))
        return _error_response(exc.status_code, message, type_)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    # ---- the playground (a static page; its API calls send the key the user types) -------------------
    @app.get("/", include_in_schema=False)
    def playground() -> HTMLResponse:
        return HTMLResponse((Path(__file__).parent / "playground.html").read_text(encoding="utf-8"))

    # ---- health and models --------------------------------------------------------------------------
    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": service.model_id, "sessions": len(service.sessions),
                "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [
            {"id": service.model_id, "object": "model", "created": int(service.started), "owned_by": "local"}
        ]}

    # ---- chat completions ---------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest) -> Any:
        if req.model not in (service.model_id, "default"):
            raise ApiError(404, f"model {req.model!r} is not served here; this server serves "
                                f"{service.model_id!r} (GET /v1/models)", code="model_not_found")
        max_tokens = service.max_tokens(req)
        steering = service.steering(req.memory)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        ids = service.render(messages)
        service._check_length(len(ids), max_tokens)
        options = _sampling_options(req, max_tokens)
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            cancel = threading.Event()
            chunks = _stream(service, completion_id, created, ids, steering, options, req, max_tokens,
                             include_usage, cancel)

            async def body() -> Any:
                try:
                    async for item in iterate_in_threadpool(chunks):
                        yield item
                finally:
                    cancel.set()  # the client left (or the stream ended): stop generating, free the model

            return StreamingResponse(
                body(),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
            )
        streamer = _TokenQueue()
        service.generate(ids, steering, options, req.seed, req.stop, streamer)
        text, reason, completion = service.finish(streamer.tokens, max_tokens, req.stop)
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": service.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                         "logprobs": None}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion,
                      "total_tokens": len(ids) + completion},
        }

    # ---- banks --------------------------------------------------------------------------------------
    @app.post("/v1/banks", status_code=201)
    def create_bank(req: BankCreate) -> dict:
        service.create_bank(req)
        return service.bank_info(req.name)

    @app.get("/v1/banks")
    def list_banks() -> dict:
        return {"object": "list", "data": service.list_banks()}

    @app.get("/v1/banks/{name:path}")
    def get_bank(name: str) -> dict:
        return service.bank_info(name)

    @app.delete("/v1/banks/{name:path}")
    def delete_bank(name: str) -> dict:
        service.delete_bank(name)
        return {"object": "bank.deleted", "name": name, "deleted": True}

    # ---- sessions -----------------------------------------------------------------------------------
    @app.post("/v1/sessions", status_code=201)
    def create_session(req: SessionCreate | None = None) -> dict:
        state = service.open_session(req or SessionCreate())
        return service.session_view(state)

    @app.get("/v1/sessions/{session_id}")
    def get_session(session_id: str) -> dict:
        return service.session_view(service.get_session(session_id))

    @app.post("/v1/sessions/{session_id}/messages")
    def session_message(session_id: str, req: SessionMessage) -> dict:
        return service.session_turn(service.get_session(session_id), req)

    @app.patch("/v1/sessions/{session_id}")
    def patch_session(session_id: str, req: SessionPatch) -> dict:
        state = service.get_session(session_id)
        service.patch_session(state, req.memory)
        return service.session_view(state)

    @app.delete("/v1/sessions/{session_id}")
    def delete_session(session_id: str) -> dict:
        service.delete_session(session_id)
        return {"object": "session.deleted", "id": session_id, "deleted": True}

    app.add_middleware(_Gate, api_key=api_key, max_body_bytes=max_body_bytes)
    return app


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _stream(service: Service, completion_id: str, created: int, ids: list[int], steering: Steering | None,
            options: dict[str, Any], req: ChatRequest, max_tokens: int, include_usage: bool,
            cancel: threading.Event) -> Iterator[str]:
    """SSE chunks in OpenAI's format; the generation runs in a worker thread holding the model lock."""
    sink: queue.Queue = queue.Queue()
    streamer = _TokenQueue(sink)
    stops = req.stop
    hold = max((len(s) for s in stops), default=1) - 1 if stops else 0

    def work() -> None:
        try:
            service.generate(ids, steering, options, req.seed, stops, streamer, cancel)
        except BaseException as exc:  # reported to the client as an error event
            logger.exception("streamed generation failed")
            sink.put(("error", exc))
        finally:
            sink.put(("done", None))

    def chunk(delta: dict, finish: str | None = None) -> str:
        return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                     "model": service.model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                             "logprobs": None}]})

    worker = threading.Thread(target=work, name="mi-stream", daemon=True)
    worker.start()
    try:
        yield chunk({"role": "assistant", "content": ""})
        tokens: list[int] = []
        sent = 0
        stopped = False
        while True:
            kind, value = sink.get()
            if kind == "done":
                break
            if kind == "error":
                yield _sse(_error_body(f"generation failed: {value}", "server_error"))
                yield "data: [DONE]\n\n"
                return
            if stopped:
                continue
            tokens.append(value)
            text = service.tokenizer.decode(tokens, skip_special_tokens=True)
            text, stopped = _cut_at_stop(text, stops)
            safe = len(text) if stopped else len(text) - hold
            while safe > sent and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 character: wait for it
                safe -= 1
            if safe > sent:
                yield chunk({"content": text[sent:safe]})
                sent = safe
        final, reason, completion = service.finish(tokens, max_tokens, stops)
        if len(final) > sent:
            yield chunk({"content": final[sent:]})
        yield chunk({}, reason)
        if include_usage:
            yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": service.model_id, "choices": [],
                        "usage": {"prompt_tokens": len(ids), "completion_tokens": completion,
                                  "total_tokens": len(ids) + completion}})
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # the client left early: stop generating and free the model


def run_server(
    model_name: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    bank_dir: str | Path = "banks",
    api_key: str | None = None,
    engine: Literal["transformers", "vllm"] = "transformers",
    **options: Any,
) -> None:
    """Load `model_name` (default model if None) and serve it with uvicorn until interrupted.

    `engine="vllm"` generates with a vLLM engine (continuous batching; needs the `[vllm]` extra, docs/vllm.md);
    the transformers model is still loaded, for building banks.
    """
    import uvicorn

    from memory_inception.hf.models import load_model

    model, tokenizer = load_model(model_name)
    if engine == "vllm":
        from memory_inception.serving.vllm_engine import VLLMService

        options.update(service_class=VLLMService, service_options={"model_name": model_name})
    elif engine != "transformers":
        raise ValueError(f"engine must be 'transformers' or 'vllm', not {engine!r}")
    app = create_app(model, tokenizer, bank_dir=bank_dir, api_key=api_key, model_id=model_name or DEFAULT_MODEL_ID,
                     **options)
    logger.info("serving %s with %s on http://%s:%d (banks in %s)", model_name or DEFAULT_MODEL_ID, engine, host,
                port, bank_dir)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
