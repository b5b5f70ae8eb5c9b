"""Tokens on their way out: the sink a generation writes to (`TokenQueue`), stop strings (`StopOn`, `cut_at_stop`)
and a chat completion streamed as OpenAI's server-sent-event chunks (`stream_chunks`)."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from memory_inception.serving.schemas import error_body

logger = logging.getLogger(__name__)


class TokenQueue(BaseStreamer):
    """Receives generated token ids from `generate` (the first `put` is the prompt: skipped), into `tokens` and,
    with a `sink`, one `("token", id)` item each."""

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


class StopOn(StoppingCriteria):
    """Stops on a stop string in the new text, or when the request is cancelled (client gone)."""

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


def sse(payload: Any) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload)}\n\n"


def stream_chunks(
    *,
    generate: Callable[[TokenQueue], None],
    decode: Callable[[list[int]], str],
    finish: Callable[[list[int]], tuple[str, str, int]],
    stops: list[str] | None,
    completion_id: str,
    created: int,
    model_id: str,
    prompt_tokens: int,
    include_usage: bool,
    cancel: threading.Event,
) -> Iterator[str]:
    """SSE chunks in OpenAI's format for one reply.

    `generate(streamer)` runs the generation (in a worker thread; it holds the model as the engine needs);
    `decode` turns token ids into text, `finish` gives the final text, finish_reason and completion tokens.
    Text is held back while it could still become a stop string or ends in an incomplete UTF-8 character.
    """
    sink: queue.Queue = queue.Queue()
    streamer = TokenQueue(sink)
    hold = max((len(s) for s in stops), default=1) - 1 if stops else 0

    def work() -> None:
        try:
            generate(streamer)
        except BaseException as exc:  # reported to the client as an error event
            logger.exception("streamed generation failed")
            sink.put(("error", exc))
        finally:
            sink.put(("done", None))

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return sse({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

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
                yield sse(error_body(f"generation failed: {value}", "server_error"))
                yield "data: [DONE]\n\n"
                return
            if stopped:
                continue
            tokens.append(value)
            text, stopped = cut_at_stop(decode(tokens), stops)
            safe = len(text) if stopped else len(text) - hold
            while safe > sent and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 character: wait for it
                safe -= 1
            if safe > sent:
                yield chunk({"content": text[sent:safe]})
                sent = safe
        final, reason, completion = finish(tokens)
        if len(final) > sent:
            yield chunk({"content": final[sent:]})
        yield chunk({}, reason)
        if include_usage:
            yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                       "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                                "total_tokens": prompt_tokens + completion}})
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # the client left early: stop generating and free the model
