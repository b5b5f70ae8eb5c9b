"""The replies in OpenAI's shapes: chat completions, text completions and session turns, whole or as stream events,
with log-probabilities as each API writes them (`chat.completion`'s `logprobs.content`, the legacy completions'
`tokens` / `token_logprobs` / `top_logprobs` / `text_offset`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memory_inception.serving.schemas import error_body
from memory_inception.serving.streaming import Finished, TokenLogprob


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class TokenText:
    """A token's text and UTF-8 bytes as the logprobs objects show them (one token decoded alone)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def entry(self, token: int, logprob: float) -> dict[str, Any]:
        text = self(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def chat(self, entries: Sequence[TokenLogprob] | None) -> dict | None:
        """`choices[0].logprobs` of a chat completion (or chunk)."""
        if entries is None:
            return None
        return {"content": [{**self.entry(e.token, e.logprob),
                             "top_logprobs": [self.entry(t, lp) for t, lp in e.top]} for e in entries],
                "refusal": None}

    def completion(self, entries: Sequence[TokenLogprob] | None, offset: int = 0) -> dict | None:
        """`choices[0].logprobs` of a text completion (or chunk); `offset`: characters of the reply before it."""
        if entries is None:
            return None
        tokens = [self(e.token) for e in entries]
        offsets, at = [], offset
        for text in tokens:
            offsets.append(at)
            at += len(text)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self(t): lp for t, lp in e.top} for e in entries],
                "text_offset": offsets}


@dataclass(frozen=True)
class Reply:
    """What every reply object carries: its id, creation time and the served model's id."""

    id: str
    created: int
    model: str


def chat_completion(reply: Reply, finished: Finished, prompt_tokens: int, logprobs: dict | None) -> dict:
    return {
        "id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": finished.text},
                     "finish_reason": finished.reason, "logprobs": logprobs}],
        "usage": usage(prompt_tokens, finished.completion_tokens),
    }


def text_completion(reply: Reply, finished: Finished, prompt_tokens: int, logprobs: dict | None) -> dict:
    return {
        "id": reply.id, "object": "text_completion", "created": reply.created, "model": reply.model,
        "choices": [{"index": 0, "text": finished.text, "finish_reason": finished.reason, "logprobs": logprobs}],
        "usage": usage(prompt_tokens, finished.completion_tokens),
    }


def session_message(reply: Reply, session_id: str, finished: Finished, prompt_tokens: int,
                    cache: dict[str, Any]) -> dict:
    return {
        "id": reply.id, "object": "session.message", "created": reply.created, "model": reply.model,
        "session_id": session_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": finished.text},
                     "finish_reason": finished.reason}],
        "usage": usage(prompt_tokens, finished.completion_tokens),
        **cache,
    }


@dataclass
class ChatChunks:
    """`chat.completion.chunk` events (a session turn's: `session.message.chunk`, with its id, and its cache report
    on the last chunk)."""

    reply: Reply
    prompt_tokens: int
    include_usage: bool
    text: TokenText
    session_id: str | None = None
    cache: Callable[[], dict[str, Any]] | None = None

    def _chunk(self, choices: list[dict], **more: Any) -> dict:
        obj = "session.message.chunk" if self.session_id is not None else "chat.completion.chunk"
        out = {"id": self.reply.id, "object": obj, "created": self.reply.created, "model": self.reply.model,
               "choices": choices, **more}
        if self.session_id is not None:
            out["session_id"] = self.session_id
        return out

    def start(self) -> dict:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                             "logprobs": None}])

    def delta(self, text: str, logprobs: list[TokenLogprob] | None) -> dict:
        return self._chunk([{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": None,
                             "logprobs": self.text.chat(logprobs)}])

    def end(self, finished: Finished) -> list[dict]:
        more = self.cache() if self.cache is not None else {}
        events = [self._chunk([{"index": 0, "delta": {}, "finish_reason": finished.reason, "logprobs": None}],
                              **more)]
        if self.include_usage:
            events.append(self._chunk([], usage=usage(self.prompt_tokens, finished.completion_tokens)))
        return events

    def error(self, message: str, type_: str, code: str | None) -> dict:
        return error_body(message, type_, code)


@dataclass
class CompletionChunks:
    """`text_completion` events of a streamed text completion."""

    reply: Reply
    prompt_tokens: int
    include_usage: bool
    text: TokenText
    sent: int = 0  # characters streamed so far (the next logprobs' text_offset)

    def _chunk(self, choices: list[dict], **more: Any) -> dict:
        return {"id": self.reply.id, "object": "text_completion", "created": self.reply.created,
                "model": self.reply.model, "choices": choices, **more}

    def start(self) -> None:
        return None

    def delta(self, text: str, logprobs: list[TokenLogprob] | None) -> dict:
        chunk = self._chunk([{"index": 0, "text": text, "finish_reason": None,
                              "logprobs": self.text.completion(logprobs, self.sent)}])
        if logprobs is not None:
            self.sent += sum(len(self.text(e.token)) for e in logprobs)
        return chunk

    def end(self, finished: Finished) -> list[dict]:
        events = [self._chunk([{"index": 0, "text": "", "finish_reason": finished.reason, "logprobs": None}])]
        if self.include_usage:
            events.append(self._chunk([], usage=usage(self.prompt_tokens, finished.completion_tokens)))
        return events

    def error(self, message: str, type_: str, code: str | None) -> dict:
        return error_body(message, type_, code)
