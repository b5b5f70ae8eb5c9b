"""`GET /metrics`: the server's counters in the Prometheus text format (prometheus-client, one registry per app, so
several apps in one process keep their own numbers)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from memory_inception.serving.admission import Admission

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Telemetry:
    """The app's metrics: requests by route and status, their latency, tokens, steered share, queue and sessions."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, admission: Admission, sessions: Callable[[], int]):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._counts = (0, 0)  # steered generations, all generations
        self.requests = Counter("mi_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=registry)
        self.latency = Histogram("mi_request_duration_seconds", "Time from a request's arrival to the end of its "
                                 "response (a stream's last event included), by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram("mi_queue_wait_seconds", "Time a generation waited for the engine",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = Histogram("mi_time_to_first_token_seconds", "Time from a request's arrival to its first "
                                     "generated token", buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("mi_tokens", "Tokens read (prompt) and generated (completion)", ["kind"],
                              registry=registry)
        self.generations = Counter("mi_generations", "Generations run, steered (with banks) or plain", ["steered"],
                                   registry=registry)
        self.rejected = Counter("mi_rejected", "Requests refused before generation to bound the work, by reason",
                                ["reason"], registry=registry)
        for steered in ("true", "false"):
            self.generations.labels(steered=steered)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind=kind)
        Gauge("mi_steered_share", "Share of the generations run so far that were steered (0 before any)",
              registry=registry).set_function(self._steered_share)
        Gauge("mi_queue_depth", "Requests waiting for the engine", registry=registry).set_function(
            lambda: admission.waiting)
        Gauge("mi_queue_running", "Requests holding the engine", registry=registry).set_function(
            lambda: admission.running)
        Gauge("mi_queue_limit", "The most requests that may wait (max_queue)", registry=registry).set(
            admission.max_queue)
        Gauge("mi_sessions", "Sessions stored", registry=registry).set_function(sessions)

    def _steered_share(self) -> float:
        with self._lock:
            steered, total = self._counts
        return steered / total if total else 0.0

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def generation(self, *, steered: bool, prompt_tokens: int, completion_tokens: int) -> None:
        self.generations.labels(steered="true" if steered else "false").inc()
        with self._lock:
            self._counts = (self._counts[0] + int(steered), self._counts[1] + 1)
        self.tokens.labels(kind="prompt").inc(prompt_tokens)
        self.tokens.labels(kind="completion").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
