"""One entry point for both benchmarks: :func:`grade` dispatches on ``problem.benchmark``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory_inception.evaluation.grading.hardmath import grade_hardmath
from memory_inception.evaluation.grading.outcome import Grade
from memory_inception.evaluation.grading.physics import grade_physics

if TYPE_CHECKING:
    from memory_inception.datasets.reasoning_problems import Problem


def grade(problem: Problem, response: str | None, **kwargs: Any) -> Grade:
    """Dispatch to :func:`grade_hardmath` or :func:`grade_physics` by ``problem.benchmark``."""
    if problem.benchmark == "hardmath":
        return grade_hardmath(problem, response, **kwargs)
    if problem.benchmark == "physics":
        return grade_physics(problem, response, **kwargs)
    return Grade(False, 0.0, None, f"unknown benchmark {problem.benchmark!r}; expected 'hardmath' or 'physics'")
