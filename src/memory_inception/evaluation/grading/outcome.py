"""The result type every grader returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Grade:
    """Outcome of grading one response: all parts right?, fraction right, what was read, why."""

    correct: bool
    score: float
    extracted: str | None
    detail: str
