"""One entry point for both benchmarks: :func:`grade` dispatches on ``problem.benchmark``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory_inception.errors import EvaluationError
from memory_inception.evaluation.grading.hardmath import grade_hardmath
from memory_inception.evaluation.grading.outcome import Grade
from memory_inception.evaluation.grading.physics import grade_physics

if TYPE_CHECKING:
    from memory_inception.datasets.reasoning_problems import Problem

#: The benchmarks :func:`grade` knows, each with its grader.
GRADERS = {"hardmath": grade_hardmath, "physics": grade_physics}


def grade(problem: Problem, response: str | None, **kwargs: Any) -> Grade:
    """Dispatch to :func:`grade_hardmath` or :func:`grade_physics` by ``problem.benchmark``.

    Raises :class:`~memory_inception.errors.EvaluationError` naming the known benchmarks for any other.
    """
    grader = GRADERS.get(getattr(problem, "benchmark", None))  # type: ignore[arg-type]
    if grader is None:
        raise EvaluationError(
            f"unknown benchmark {getattr(problem, 'benchmark', None)!r} for problem {getattr(problem, 'id', '?')!r}; "
            f"grade() knows {sorted(GRADERS)}"
        )
    return grader(problem, response, **kwargs)
