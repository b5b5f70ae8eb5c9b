"""Bounded time for grading: :func:`deadline`, bounded single steps, and the guarded runner of a whole call.

:func:`deadline` is a SIGALRM interval timer when called from the main thread (math_verify's own alarms
are switched off so they do not clobber ours). Off the main thread signals are unavailable, so
:func:`run_guarded` runs the work in a daemon worker thread and gives up after ``timeout`` seconds (the
worker is abandoned, not killed). A call that runs out of time or raises comes back as a :class:`Grade`
with status "timeout" or "error" (never as an exception, never as a plain "incorrect"); bounded steps that
time out inside a call are counted in ``Grade.step_timeouts``.
"""

from __future__ import annotations

import contextlib
import contextvars
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


#: Bounded steps that timed out in the grading call running in this context (set by :func:`run_guarded`).
_STEP_TIMEOUTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("grading_step_timeouts", default=None)


class Token:
    """One :func:`deadline`'s identity; ``fired`` is set when its alarm went off (even if the exception it raised
    was then swallowed by a broad ``except`` inside sympy, latex2sympy or math_verify)."""

    __slots__ = ("fired", "outer")

    def __init__(self) -> None:
        self.fired = False
        self.outer: Token | None = None  # the earlier, armed deadline this one deferred to (it governs)

    def outer_fired(self) -> bool:
        """Did the outer deadline this one deferred to go off (its exception perhaps swallowed inside the block)?"""
        return self.outer is not None and self.outer.fired


#: The armed deadlines of the main thread, innermost last.
_ARMED: list[Token] = []


class GradingTimeout(Exception):
    """Raised inside a grader when a bounded step runs past its deadline (never escapes a grader)."""

    def __init__(self, message: str, owner: object = None) -> None:
        super().__init__(message)
        self.owner = owner


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Token]:
    """Raise :class:`GradingTimeout` in the block after ``seconds`` (main thread only; else a no-op).

    Yields a token; the exception's ``owner`` is the token of the deadline that fired, so a nested
    handler can tell its own timeout from an outer one (and let the outer one propagate). Nested
    deadlines never extend an outer one: the outer timer is re-armed with its remaining time on exit.
    ``token.fired`` tells afterwards whether this deadline's alarm went off.
    """
    token = Token()
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not usable or seconds <= 0:
        yield token
        return
    start = time.monotonic()
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if 0 < outer_left <= seconds:
        token.outer = _ARMED[-1] if _ARMED else None
        yield token  # the outer, earlier timer governs
        return

    def _raise(signum: int, frame: Any) -> None:
        token.fired = True
        raise GradingTimeout(f"step exceeded {seconds:g} s", token)

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    _ARMED.append(token)
    try:
        yield token
    finally:
        _ARMED.remove(token)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-4))


def bounded(fn: Callable[[], Any], seconds: float, default: Any) -> Any:
    """Run ``fn`` under a deadline; on its own timeout or any error return ``default``.

    A timeout that ``fn`` swallowed itself (third-party code with a broad ``except``) still counts as one: the
    result may be a silent fallback, so ``default`` is returned.
    """
    try:
        with deadline(seconds) as token:
            out = fn()
        if token.outer_fired():  # the enclosing call's deadline went off and was swallowed: let it end the call
            raise GradingTimeout("outer deadline (caught inside a step)", token.outer)
        if not token.fired:
            return out
    except GradingTimeout as exc:
        if exc.owner is not token:
            raise
    except RecursionError:
        return default
    except Exception as exc:  # sympy / parser errors on arbitrary input
        logger.debug("bounded step failed: %s: %s", type(exc).__name__, exc)
        return default
    logger.debug("bounded step timed out after %.1f s", seconds)
    counter = _STEP_TIMEOUTS.get()
    if counter is not None:
        counter[0] += 1
    return default


def run_guarded(fn: Callable[[], Grade], timeout: float) -> Grade:
    """Run a whole grading call with a time limit that works on and off the main thread.

    Returns ``fn()``'s grade with ``step_timeouts`` filled in, or a grade with status "timeout" (the call ran
    past ``timeout`` seconds) or "error" (it raised), which callers count apart from incorrect answers.
    """
    counter = [0]
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        reset = _STEP_TIMEOUTS.set(counter)
        try:
            with deadline(timeout) as token:
                g = fn()
        except GradingTimeout as exc:
            if exc.owner is not token:
                raise
            return _failed("timeout", f"grading timed out after {timeout:g} s", counter[0])
        except Exception as exc:
            logger.warning("grader failed: %s: %s", type(exc).__name__, exc)
            return _failed("error", f"grader error {type(exc).__name__}: {exc}", counter[0])
        finally:
            _STEP_TIMEOUTS.reset(reset)
        if token.outer_fired():
            raise GradingTimeout("outer deadline (caught inside a grading call)", token.outer)
        if token.fired:  # the alarm went off but code under a broad ``except`` swallowed it: no trusted verdict
            return _failed("timeout", f"grading timed out after {timeout:g} s (caught inside a step)", counter[0])
        g.step_timeouts = counter[0]
        return g
    box: list[Grade] = []

    def work() -> None:
        _STEP_TIMEOUTS.set(counter)
        try:
            box.append(fn())
        except Exception as exc:
            logger.warning("grader failed: %s: %s", type(exc).__name__, exc)
            box.append(_failed("error", f"grader error {type(exc).__name__}: {exc}", counter[0]))

    worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True, name="grader")
    worker.start()
    worker.join(timeout)
    if not box:
        return _failed("timeout", f"grading timed out after {timeout:g} s (worker abandoned)", counter[0])
    box[0].step_timeouts = counter[0]
    return box[0]


def _failed(status: str, detail: str, step_timeouts: int) -> Grade:
    return Grade(False, 0.0, None, detail, status=status, step_timeouts=step_timeouts)
