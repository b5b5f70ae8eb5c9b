"""Bounded work in front of the engine: each request's deadline (`Deadline`) and the wait queue (`Admission`: at most
`concurrency` requests hold the engine, at most `max_queue` wait, first come first served; the rest are refused at
once with 503 and a `Retry-After`)."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque

from memory_inception.serving.schemas import ApiError

DEFAULT_MAX_QUEUE = 32
DEFAULT_REQUEST_TIMEOUT_S = 300.0


class Deadline(threading.Event):
    """A request's cancel flag: `set()` when the client leaves, and read as set once `seconds` have passed since the
    request arrived. Generation polls `is_set()` between tokens (transformers' stopping criteria, the vLLM driver);
    `tripped` says the deadline, not the client, stopped it."""

    def __init__(self, seconds: float | None):
        super().__init__()
        self.seconds = seconds
        self.start = time.monotonic()
        self.at = self.start + seconds if seconds else math.inf
        self.tripped = False

    def is_set(self) -> bool:
        if super().is_set():
            return True
        if time.monotonic() >= self.at:
            self.tripped = True
            return True
        return False

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def exceeded(self, doing: str) -> ApiError:
        """The 504 for a request that ran past its deadline while `doing` (e.g. "generating")."""
        return ApiError(504, f"the request ran past this server's deadline of {self.seconds:g} s while {doing}; ask "
                             "for fewer tokens (max_tokens) or retry when the server is less busy",
                        "server_error", "deadline_exceeded")


class Ticket:
    """A request's place on the engine (from `Admission.enter`); `release()` (idempotent) frees it."""

    def __init__(self, admission: Admission):
        self.admission = admission
        self.started = time.monotonic()
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.admission.leave(time.monotonic() - self.started)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """At most `concurrency` requests on the engine at once and at most `max_queue` waiting for it, in order.

    A request that finds the queue full, or whose deadline passes while it waits, is refused with 503 and a
    `Retry-After` estimated from how long recent requests held the engine.
    """

    def __init__(self, concurrency: int, max_queue: int = DEFAULT_MAX_QUEUE):
        if concurrency < 1 or max_queue < 0:
            raise ValueError(f"concurrency must be >= 1 and max_queue >= 0, got {concurrency} and {max_queue}")
        self.concurrency, self.max_queue = concurrency, max_queue
        self.running = 0
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()
        self._held: deque[float] = deque(maxlen=64)  # seconds recent requests held the engine
        self.waited: deque[float] = deque(maxlen=1024)  # seconds recent requests waited (read by telemetry)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead times the median hold, over the concurrency."""
        with self._cond:
            held = statistics.median(self._held) if self._held else 1.0
            ahead = len(self._queue) + 1
        return max(1, math.ceil(held * ahead / self.concurrency))

    def _busy(self, message: str, code: str) -> ApiError:
        seconds = self.retry_after()
        return ApiError(503, f"{message}; retry after {seconds} s", "server_error", code,
                        headers={"Retry-After": str(seconds)})

    def enter(self, deadline: Deadline) -> Ticket:
        """A place on the engine, waiting in line until one is free (503 when the line is full or the deadline
        passes first, or when `deadline` is set because the client left)."""
        me = object()
        with self._cond:
            if not self._queue and self.running < self.concurrency:
                self.running += 1
                self.waited.append(0.0)
                return Ticket(self)
            if len(self._queue) >= self.max_queue:
                running, waiting = self.running, len(self._queue)
                busy = True
            else:
                busy = False
                self._queue.append(me)
        if busy:
            raise self._busy(f"the server is busy: {running} requests running and {waiting} waiting, its queue limit "
                             f"(max_queue {self.max_queue})", "server_busy")
        with self._cond:
            try:
                while not (self._queue[0] is me and self.running < self.concurrency):
                    remaining = deadline.remaining()
                    if remaining <= 0 or Deadline.is_set(deadline):
                        break
                    self._cond.wait(min(remaining, 1.0))
                else:
                    self.running += 1
                    self.waited.append(deadline.elapsed())
                    return Ticket(self)
            finally:
                self._queue.remove(me)
                self._cond.notify_all()
        raise self._busy(f"the request waited {deadline.elapsed():.1f} s in the queue, past this server's deadline of "
                         f"{deadline.seconds:g} s", "queue_timeout")

    def leave(self, held_s: float) -> None:
        with self._cond:
            self.running -= 1
            self._held.append(held_s)
            self._cond.notify_all()
