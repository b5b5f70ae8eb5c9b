"""The transformers engine: generation on the shared model under its lock, steering planned once per request
(an `Injection`), log-probabilities read as each token is chosen (`LogprobRecorder`), and per-session KV caches
within a byte budget (least recently used evicted)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering, steering_from_roles
from memory_inception.hf.inject import Injection, inject
from memory_inception.hf.session import Session, common_prefix
from memory_inception.hf.text import generate_batch
from memory_inception.serving.bank_store import BankStore
from memory_inception.serving.locks import model_lock
from memory_inception.serving.schemas import MemorySpec
from memory_inception.serving.session_store import SessionState
from memory_inception.serving.streaming import StopOn, TokenLogprob, TokenQueue

logger = logging.getLogger(__name__)

DEFAULT_SESSION_CACHE_BYTES = 512 << 20  # 512 MiB of session KV caches


def memory_steering(memory: MemorySpec, banks: BankStore) -> Steering:
    """The core `Steering` a `memory` object asks for: its banks by role through `steering_from_roles`.

    Named banks come from `banks`; inline `text` banks are built for `banks.inline_layers(memory)`. Without
    layers, `sites=None` and `rho=None` are resolved when planned (tuned target bank, else the model's defaults).
    """
    layers = banks.inline_layers(memory) if any(ref.text is not None for ref in memory.banks) else []
    roles = [(ref.role, banks.load(ref.name) if ref.name is not None else banks.text_bank(ref.text, layers), ref.gain)
             for ref in memory.banks]
    sites = Sites({layer: None for layer in memory.layers}) if memory.layers else None
    return steering_from_roles(roles, sites=sites, rho=memory.rho)


def cache_bytes(cache: Any) -> int:
    """Bytes of the keys and values a KV cache holds."""
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class LogprobRecorder(LogitsProcessor):
    """Reads each step's logits before anything reshapes them (it runs ahead of temperature and top-p; the model's
    generation config adds no other processor to the served models) and scores the token the step then chose: its
    log-softmax and the `top` most likely tokens — the model's own distribution, as vLLM's raw logprobs.

    `score` is the streamer's scorer: transformers calls the processor, picks the token, then streams it."""

    def __init__(self, top: int):
        self.top = top
        self._step: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._step = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def score(self, token: int) -> TokenLogprob:
        step = self._step
        if step is None:
            raise RuntimeError("a token was streamed before its logits were read")
        top = ()
        if self.top:
            values, ids = step.topk(self.top)
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenLogprob(token, float(step[token]), top)


def logprob_options(streamer: TokenQueue) -> dict[str, Any]:
    """The `generate` options that score each token into `streamer` (none unless it asks for log-probabilities)."""
    if streamer.top_logprobs is None:
        return {}
    recorder = LogprobRecorder(streamer.top_logprobs)
    streamer.scorer = recorder.score
    return {"logits_processor": LogitsProcessorList([recorder])}


@dataclass(eq=False)
class CachedSession:
    """A session's state on this engine: its id, its `Session` (the KV cache; the service keeps the transcript),
    whether the cache was evicted since its last turn, and when it was last used (for the LRU budget)."""

    session_id: str
    session: Session
    evicted: bool = False
    last_used: float = field(default_factory=time.monotonic)


class HFEngine:
    """Generates with the transformers `model`, one request at a time (`locks.model_lock`)."""

    name = "transformers"
    concurrency = 1

    def __init__(self, model: Any, tokenizer: Any, *, session_cache_bytes: int = DEFAULT_SESSION_CACHE_BYTES):
        self.model, self.tokenizer = model, tokenizer
        self.session_cache_bytes = session_cache_bytes
        self.lock = model_lock(model)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self._caches_lock = threading.Lock()  # guards `_caches` (never held while the model runs)
        self._caches: set[CachedSession] = set()

    # ---- steering -----------------------------------------------------------------------------------
    def steering(self, memory: MemorySpec, banks: BankStore) -> Injection:
        """The planned injection for `memory`: planning now makes a bad layer or a foreign bank a 400 before
        generation, and generation enters this same `Injection` (`inject` takes it as it is)."""
        return Injection(self.model, memory_steering(memory, banks))

    # ---- generation ---------------------------------------------------------------------------------
    def generate(self, ids: list[int], steering: Injection | None, options: dict[str, Any], seed: int | None,
                 stops: list[str] | None, streamer: TokenQueue, cancel: threading.Event | None = None) -> None:
        """Run one generation under the model lock; tokens (and their log-probabilities, when the streamer asks)
        arrive through `streamer`."""
        criteria = StoppingCriteriaList([StopOn(self.tokenizer, len(ids), stops, cancel)])
        with self.lock:
            if seed is not None:
                torch.manual_seed(seed)
            with inject(self.model, steering):
                generate_batch(self.model, self.tokenizer, [ids], streamer=streamer, stopping_criteria=criteria,
                               **logprob_options(streamer), **options)

    # ---- sessions: their KV caches -------------------------------------------------------------------
    def open_session(self, session_id: str) -> CachedSession:
        """A session's own KV cache (a `Session`; the service keeps the transcript and steering)."""
        cached = CachedSession(session_id, Session(self.model, self.tokenizer))
        with self._caches_lock:
            self._caches.add(cached)
        return cached

    def close_session(self, cache: CachedSession) -> None:
        with self._caches_lock:
            self._caches.discard(cache)

    def session_generate(self, state: SessionState, ids: list[int], options: dict[str, Any], seed: int | None,
                         stops: list[str] | None, streamer: TokenQueue,
                         cancel: threading.Event | None = None) -> dict[str, Any]:
        """The reply, from the session's cache, through `streamer`; returns the turn's cache report: `cache` is
        "new" (empty cache, no reply yet), "reused" (its common prefix with the prompt kept) or "rebuilt" (the
        cache had been evicted, or the transcript has replies this engine never cached: a session from before a
        restart), with `cache_reused_tokens` and `cache_tokens` (its length after the turn)."""
        cached: CachedSession = state.cache
        session = cached.session
        cached.last_used = time.monotonic()  # the most recent session while the cache budget is enforced
        with self.lock:
            if session.cache.get_seq_length() > 0 and not cached.evicted:
                cache_state = "reused"
            elif cached.evicted or any(m["role"] == "assistant" for m in state.messages):
                cache_state = "rebuilt"
            else:
                cache_state = "new"
            reused = min(common_prefix(ids, session.cache_ids), len(ids) - 1)
            if seed is not None:
                torch.manual_seed(seed)
            criteria = StoppingCriteriaList([StopOn(self.tokenizer, len(ids), stops, cancel)])
            session.steering = state.steering  # the current guidance, planned when it was set (a PATCH changes it)
            session.generate(ids, stopping_criteria=criteria, streamer=streamer, **options)
            cached.evicted = False
            length = session.cache.get_seq_length()
            self._enforce_budget()
        return {"cache": cache_state, "cache_reused_tokens": reused if cache_state == "reused" else 0,
                "cache_tokens": length}

    def _enforce_budget(self) -> None:
        """Drop least-recently-used session caches (transcripts stay) until the total fits the budget."""
        with self._caches_lock:
            caches = sorted(self._caches, key=lambda c: c.last_used)
        total = sum(cache_bytes(c.session.cache) for c in caches)
        for cached in caches:
            if total <= self.session_cache_bytes:
                break
            size = cache_bytes(cached.session.cache)
            if size == 0:
                continue
            cached.session.reset()  # an empty cache (the server's sessions keep no transcript in `Session`)
            cached.evicted = True
            total -= size
            logger.info("evicted the KV cache of session %s (%d bytes; budget %d)", cached.session_id, size,
                        self.session_cache_bytes)

    def session_cache_view(self, state: SessionState) -> dict[str, Any]:
        cached: CachedSession = state.cache
        cache = cached.session.cache
        return {"tokens": cache.get_seq_length(), "bytes": cache_bytes(cache), "evicted": cached.evicted}
