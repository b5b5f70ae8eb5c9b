"""The result type every grader returns, and what its ``status`` can say."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memory_inception.errors import EvaluationError

#: What happened when a response was graded. "ok": the verdict is the grader's; "show-that": every listed
#: answer is printed in the question, so matching it would credit copying (left out, counted apart);
#: "timeout" / "error": the grading call ran out of time or raised, so there is no verdict (never a silent
#: "incorrect": callers count these apart).
STATUSES = ("ok", "show-that", "timeout", "error")


@dataclass
class Grade:
    """Outcome of grading one response: all parts right?, fraction right, what was read, why, what happened.

    ``status`` is one of :data:`STATUSES`; ``correct`` is False and ``score`` 0 whenever it is not "ok".
    ``stated`` counts the listed answers the question itself prints, which were not graded (the score is
    over the others); ``step_timeouts`` counts bounded steps (one parse, evaluation or simplification) that
    ran out of time, so a candidate may have gone unchecked.
    """

    correct: bool
    score: float
    extracted: str | None
    detail: str
    status: str = "ok"
    stated: int = 0
    step_timeouts: int = 0

    @property
    def graded(self) -> bool:
        """True when the verdict is the grader's (status "ok"), False for show-that, timeout and error."""
        return self.status == "ok"


def check_problem(problem: Any, benchmark: str, kinds: Sequence[str], kind_word: str) -> None:
    """EvaluationError unless `problem` is one of `benchmark`'s with a kind in `kinds` (named `kind_word`)."""
    if getattr(problem, "benchmark", None) != benchmark:
        raise EvaluationError(
            f"grade_{benchmark} got a problem of benchmark {getattr(problem, 'benchmark', None)!r} "
            f"({getattr(problem, 'id', '?')}); use grade(), which dispatches on 'hardmath' / 'physics'"
        )
    if problem.kind not in kinds:
        raise EvaluationError(f"unknown {kind_word} {problem.kind!r} ({problem.id}); choose from {kinds}")
