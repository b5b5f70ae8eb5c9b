"""Tokens on their way out: the sink a generation writes to (`TokenQueue`, with each token's log-probabilities when
asked), stop strings (`StopOn`, `cut_at_stop`), which tokens' log-probabilities a reply shows (`visible_logprobs`),
and one reply streamed as server-sent events (`EventStream`, in the shape a `formats` builder gives)."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and the `top` most likely tokens at its step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class TokenQueue(BaseStreamer):
    """Receives generated token ids from `generate` (the first `put` is the prompt: skipped), into `tokens` and,
    with a `sink`, one `("token", (id, logprob or None))` item each.

    An engine that reports log-probabilities sets `scorer` (token id -> `TokenLogprob`, called as each token
    arrives); they collect in `logprobs`. `top_logprobs` is what the request asked (None: none)."""

    def __init__(self, sink: queue.Queue | None = None, top_logprobs: int | None = None):
        self.sink = sink
        self.top_logprobs = top_logprobs
        self.scorer: Callable[[int], TokenLogprob] | None = None
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.first_token_at: float | None = None  # time.monotonic() of the first generated token
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        for t in (int(t) for t in value.flatten().tolist()):
            entry = self.scorer(t) if self.scorer is not None else None
            self.tokens.append(t)
            if entry is not None:
                self.logprobs.append(entry)
            if self.sink is not None:
                self.sink.put(("token", (t, entry)))

    def end(self) -> None:
        pass


class StopOn(StoppingCriteria):
    """Stops on a stop string in the new text, or when the request is cancelled (client gone, deadline passed)."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: list[str] | None, cancel: threading.Event | None):
        self.tokenizer, self.prompt_len, self.stops, self.cancel = tokenizer, prompt_len, stops or [], cancel

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = bool(self.cancel is not None and self.cancel.is_set())
        if not done and self.stops:
            text = self.tokenizer.decode(input_ids[0, self.prompt_len :], skip_special_tokens=True)
            done = any(s in text for s in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stops: list[str] | None) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops or []) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def visible_logprobs(tokens: Sequence[int], entries: Sequence[TokenLogprob], ends: Sequence[int], text_len: int,
                     skip: set[int]) -> list[TokenLogprob]:
    """The log-probabilities a reply shows: of each token whose text ends within the reply's `text_len` characters
    (`ends[i]`: the length of the decoded text up to token i), end-of-sequence tokens (`skip`) left out."""
    return [e for t, e, end in zip(tokens, entries, ends, strict=False) if t not in skip and end <= text_len]


def sse(payload: Any) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload)}\n\n"


@dataclass(frozen=True)
class Finished:
    """A reply as it ends: its text (cut at a stop string), finish_reason and visible completion tokens."""

    text: str
    reason: str
    completion_tokens: int


class Shape(Protocol):
    """The events of one streamed reply (`formats.ChatChunks`, `formats.CompletionChunks`)."""

    def start(self) -> dict | None: ...

    def delta(self, text: str, logprobs: list[TokenLogprob] | None) -> dict: ...

    def end(self, finished: Finished) -> list[dict]: ...

    def error(self, message: str, type_: str, code: str | None) -> dict: ...


class EventStream:
    """One reply as server-sent events: `iter()` runs `generate(streamer)` in a worker thread and yields events as
    text arrives; `close()` (thread-safe, idempotent) stops it — the client left.

    `finish(tokens)` gives the reply as it ends; `decode` turns tokens into text. Text is held back while it could
    still become a stop string, ends in an incomplete UTF-8 character or (with `strip`) is surrounding space.
    `on_end` runs once the generation has stopped (or at `close()` if it never started): it frees the engine.
    `on_error` turns a failure into (message, type, code) for the error event.
    """

    def __init__(self, *, generate: Callable[[TokenQueue], None], decode: Callable[[list[int]], str],
                 finish: Callable[[list[int]], Finished], stops: list[str] | None, shape: Shape,
                 cancel: threading.Event, on_end: Callable[[], None],
                 on_error: Callable[[BaseException], tuple[str, str, str | None]],
                 top_logprobs: int | None = None, skip: set[int] | None = None, strip: bool = False):
        self.generate, self.decode, self.finish, self.stops, self.shape = generate, decode, finish, stops, shape
        self.cancel, self.on_end, self.on_error = cancel, on_end, on_error
        self.top_logprobs, self.skip, self.strip = top_logprobs, skip or set(), strip
        self._lock = threading.Lock()
        self._started = self._closed = False

    def close(self) -> None:
        self.cancel.set()  # a running generation stops at its next token and then frees the engine
        with self._lock:
            never_started, self._closed = not self._started, True
        if never_started:
            self.on_end()

    def __iter__(self) -> Iterator[str]:
        return self._events()

    def _events(self) -> Iterator[str]:
        with self._lock:  # started only here, at the first event asked for: close() before that frees the engine
            if self._closed or self._started:
                return
            self._started = True
        sink: queue.Queue = queue.Queue()
        streamer = TokenQueue(sink, self.top_logprobs)
        stops = self.stops
        hold = max((len(s) for s in stops), default=1) - 1 if stops else 0

        def work() -> None:
            try:
                self.generate(streamer)
            except BaseException as exc:  # reported to the client as an error event
                if not isinstance(exc, Exception) or getattr(exc, "status", 500) >= 500:
                    logger.exception("streamed generation failed")
                sink.put(("error", exc))
            finally:
                self.on_end()
                sink.put(("done", None))

        worker = threading.Thread(target=work, name="mi-stream", daemon=True)
        worker.start()
        try:
            first = self.shape.start()
            if first is not None:
                yield sse(first)
            tokens: list[int] = []
            entries: list[TokenLogprob] = []
            ends: list[int] = []
            sent = shown = 0  # characters of the (stripped) text sent; log-probabilities sent
            stopped = False
            while True:
                kind, value = sink.get()
                if kind == "done":
                    break
                if kind == "error":
                    yield sse(self.shape.error(*self.on_error(value)))
                    yield "data: [DONE]\n\n"
                    return
                if stopped:
                    continue
                token, entry = value
                tokens.append(token)
                full = self.decode(tokens)
                if entry is not None:
                    entries.append(entry)
                    ends.append(len(full))
                text, stopped = cut_at_stop(full, stops)
                lead = len(text) - len(text.lstrip()) if self.strip else 0
                view = text[lead:]
                safe = len(view) if stopped else len(view) - hold
                # an incomplete UTF-8 character (or, stripping, trailing space) waits for what follows
                while safe > sent and (view[safe - 1] == "\ufffd" or (self.strip and view[safe - 1].isspace())):
                    safe -= 1
                if safe > sent:
                    shown_now = visible_logprobs(tokens, entries, ends, lead + safe, self.skip)
                    new = shown_now[shown:] if self.top_logprobs is not None else None
                    shown = len(shown_now)
                    yield sse(self.shape.delta(view[sent:safe], new))
                    sent = safe
            finished = self.finish(tokens)
            last = visible_logprobs(tokens, entries, ends, len(finished.text), self.skip)[shown:]
            if len(finished.text) > sent or last:
                yield sse(self.shape.delta(finished.text[sent:], last if self.top_logprobs is not None else None))
            for event in self.shape.end(finished):
                yield sse(event)
            yield "data: [DONE]\n\n"
        finally:
            self.cancel.set()  # the client left early: stop generating and free the model
