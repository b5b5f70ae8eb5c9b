"""`Engine`: what the service needs from a generation engine (the transformers one in `hf_engine`, the vLLM one in
`vllm_engine`). The service keeps everything else: banks, limits, transcripts, replies."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from memory_inception.serving.bank_store import BankStore
from memory_inception.serving.schemas import MemorySpec
from memory_inception.serving.session_store import SessionState
from memory_inception.serving.streaming import TokenQueue


class Engine(Protocol):
    """Generates replies for the service; steering is prepared once per request (or per session guidance)."""

    name: str
    """The engine's name in messages ("transformers", "vllm")."""

    context_length: int
    """Prompt plus reply tokens the engine can hold (0: unknown, not checked)."""

    concurrency: int
    """Generations it runs at once: the service lets that many requests hold it (the rest wait in line)."""

    def steering(self, memory: MemorySpec, banks: BankStore) -> Any:
        """The engine's prepared steering for `memory` (which has banks; its layers are the model's), validated
        now, so a bad bank or layer is a 4xx before generation. The service passes it back to `generate` and
        keeps a session's in `SessionState.steering`."""

    def generate(self, ids: list[int], steering: Any, options: dict[str, Any], seed: int | None,
                 stops: list[str] | None, streamer: TokenQueue, cancel: threading.Event | None = None) -> None:
        """One generation after the prompt `ids` (`options` as for transformers' `generate`); tokens arrive through
        `streamer` (its first `put` is the prompt), with their log-probabilities (`streamer.scorer`) when
        `streamer.top_logprobs` is not None. Stops at a stop string or when `cancel` is set."""

    def open_session(self, session_id: str) -> Any:
        """A new session's engine state (kept in `SessionState.cache`)."""

    def close_session(self, cache: Any) -> None:
        """Forget a deleted session's engine state."""

    def session_generate(self, state: SessionState, ids: list[int], options: dict[str, Any], seed: int | None,
                         stops: list[str] | None, streamer: TokenQueue,
                         cancel: threading.Event | None = None) -> dict[str, Any]:
        """One session turn after the whole conversation `ids`, steered with `state.steering`: tokens arrive through
        `streamer`; returns the turn's cache report (`cache`: "new", "reused" or "rebuilt" — "rebuilt" whenever
        the transcript has replies the engine holds no cache of, e.g. after a restart; `cache_reused_tokens`;
        `cache_tokens`). Runs under the session's lock."""

    def session_cache_view(self, state: SessionState) -> dict[str, Any]:
        """The session's cache as `GET /v1/sessions/{id}` shows it: `tokens`, `bytes`, `evicted`."""
