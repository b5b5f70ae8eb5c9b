"""Bounded time for grading: :func:`deadline`, bounded single steps, and the guarded runner of a whole call.

:func:`deadline` is a SIGALRM interval timer when called from the main thread (math_verify's own alarms
are switched off so they do not clobber ours). Off the main thread signals are unavailable, so
:func:`run_guarded` runs the work in a daemon worker thread and gives up after ``timeout`` seconds (the
worker is abandoned, not killed). Failures come back as an incorrect :class:`Grade`, never as an exception.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any, Callable, Iterator

from memory_inception.evaluation.grading.outcome import Grade

logger = logging.getLogger(__name__)


#: Time limit for one parse, one numeric evaluation or one substitution (seconds).
PARSE_SECONDS = 3.0


#: Time limit for one ``sympy.simplify`` or ``math_verify`` check (seconds).
SIMPLIFY_SECONDS = 2.0


class GradingTimeout(Exception):
    """Raised inside a grader when a bounded step runs past its deadline (never escapes a grader)."""

    def __init__(self, message: str, owner: object = None) -> None:
        super().__init__(message)
        self.owner = owner


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[object]:
    """Raise :class:`GradingTimeout` in the block after ``seconds`` (main thread only; else a no-op).

    Yields a token; the exception's ``owner`` is the token of the deadline that fired, so a nested
    handler can tell its own timeout from an outer one (and let the outer one propagate). Nested
    deadlines never extend an outer one: the outer timer is re-armed with its remaining time on exit.
    """
    token = object()
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not usable or seconds <= 0:
        yield token
        return
    start = time.monotonic()
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if 0 < outer_left <= seconds:
        yield token  # the outer, earlier timer governs
        return

    def _raise(signum: int, frame: Any) -> None:
        raise GradingTimeout(f"step exceeded {seconds:g} s", token)

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield token
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-4))


def bounded(fn: Callable[[], Any], seconds: float, default: Any) -> Any:
    """Run ``fn`` under a deadline; on its own timeout or any error return ``default``."""
    try:
        with deadline(seconds) as token:
            return fn()
    except GradingTimeout as exc:
        if exc.owner is not token:
            raise
        logger.debug("bounded step timed out after %.1f s", seconds)
        return default
    except RecursionError:
        return default
    except Exception as exc:  # sympy / parser errors on arbitrary input
        logger.debug("bounded step failed: %s: %s", type(exc).__name__, exc)
        return default


def run_guarded(fn: Callable[[], Grade], timeout: float) -> Grade:
    """Run a whole grading call with a time limit that works on and off the main thread."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        try:
            with deadline(timeout) as token:
                return fn()
        except GradingTimeout as exc:
            if exc.owner is not token:
                raise
            return Grade(False, 0.0, None, f"grading timed out after {timeout:g} s")
        except Exception as exc:
            logger.warning("grader failed: %s: %s", type(exc).__name__, exc)
            return Grade(False, 0.0, None, f"grader error {type(exc).__name__}: {exc}")
    box: list[Grade] = []

    def work() -> None:
        try:
            box.append(fn())
        except Exception as exc:
            box.append(Grade(False, 0.0, None, f"grader error {type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=work, daemon=True, name="grader")
    worker.start()
    worker.join(timeout)
    if not box:
        return Grade(False, 0.0, None, f"grading timed out after {timeout:g} s (worker abandoned)")
    return box[0]
