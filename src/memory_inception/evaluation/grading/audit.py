"""Checks of the graders themselves, on the shipped problems (``experiments/check_graders.py`` reports them).

- :func:`self_check`: each reference solution graded as a reply to its own problem. Measures *misses*: a
  correct solution the grader fails to credit. Listed answers that the solution itself does not state (hand-checked
  errata, ``datasets.reasoning_problems.physics_errata``) are set aside: no grader can miss what is not there.
- :func:`echo_check`: each question graded as a reply to itself. Measures credit for copying: it should be 0.
- :func:`cross_check`: each problem graded with *another* problem's reference solution. Measures *false
  positives*: credit for a fluent, on-topic but wrong reply. A pair whose two problems have the same reference
  answer (the other problem's listed answers, boxed, grade correct) is not a false positive and is marked so.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from memory_inception.evaluation.grading.outcome import Grade

if TYPE_CHECKING:
    from memory_inception.datasets.reasoning_problems import Problem

Grader = Callable[["Problem", str], Grade]


@dataclass(frozen=True)
class Graded:
    """One problem graded with one text: whose problem, whose text, the grade, the seconds it took.

    Self-check only: ``set_aside`` names the listed answers left out as errata (index -> why); ``grade`` is then
    over the others and ``shipped`` is the grade over every listed answer, as the texts ship."""

    problem: Problem
    source: Problem
    grade: Grade
    seconds: float
    set_aside: Mapping[int, str] = field(default_factory=dict)
    shipped: Grade | None = None

    @property
    def all_set_aside(self) -> bool:
        """Every listed answer is an erratum: the solution states none of them, so there is nothing to check."""
        return bool(self.set_aside) and len(self.set_aside) == len(self.problem.answers)

    @property
    def as_shipped(self) -> Grade:
        """The grade over every listed answer (the same as ``grade`` when nothing was set aside)."""
        return self.shipped or self.grade


@dataclass(frozen=True)
class Credited:
    """A cross pair the grader credited: the graded problem, the problem whose solution was the reply, and
    whether the two share their reference answer (then the credit is right, not a false positive)."""

    problem: Problem
    source: Problem
    grade: Grade
    same_answer: bool


def _timed(grader: Grader, problem: Problem, source: Problem, text: str) -> Graded:
    t0 = time.perf_counter()
    g = grader(problem, text)
    return Graded(problem, source, g, time.perf_counter() - t0)


def self_check(problems: list[Problem], grader: Grader, errata: Mapping[str, Mapping[int, str]] | None = None) -> list[Graded]:
    """Each problem graded with its own reference solution; the listed answers in ``errata`` (id -> {index: why})
    are set aside, and such a problem is also graded over every listed answer (``Graded.shipped``)."""
    rows = []
    for p in problems:
        wrong = dict((errata or {}).get(p.id, {}))
        if not wrong:
            rows.append(_timed(grader, p, p, p.solution))
            continue
        shipped = _timed(grader, p, p, p.solution)
        kept = [a for i, a in enumerate(p.answers) if i not in wrong]
        if not kept:
            rows.append(dataclasses.replace(shipped, set_aside=wrong, shipped=shipped.grade))
            continue
        row = _timed(grader, dataclasses.replace(p, answers=kept), p, p.solution)
        rows.append(dataclasses.replace(row, problem=p, set_aside=wrong, shipped=shipped.grade))
    return rows


def echo_check(problems: list[Problem], grader: Grader) -> list[Graded]:
    """Each problem graded with its own question text as the reply."""
    return [_timed(grader, p, p, p.question) for p in problems]


def draw_pairs(problems: list[Problem], n: int | None, seed: int | str, same_kind: bool = False) -> list[tuple[Problem, Problem]]:
    """Seeded (graded problem, source problem) pairs of two different problems.

    ``same_kind``: the source has the graded problem's kind (harder: similar symbols and formulas) and every
    problem is graded once (``n`` ignored); else ``n`` pairs drawn uniformly from all ordered pairs.
    """
    rng = random.Random(f"cross-{seed}-{same_kind}")
    if same_kind:
        out = []
        for p in problems:
            others = [q for q in problems if q.kind == p.kind and q.id != p.id]
            if others:
                out.append((p, rng.choice(others)))
        return out
    if len(problems) < 2:
        return []
    return [tuple(rng.sample(problems, 2)) for _ in range(n or 0)]  # type: ignore[misc]


def shares_answer(problem: Problem, source: Problem, grader: Grader) -> bool:
    """Does ``source``'s reference answer, boxed, grade correct for ``problem``? (Then they share the answer.)"""
    boxed = " ".join(f"\\boxed{{{a}}}" for a in source.answers)
    return grader(problem, boxed).correct


def cross_check(pairs: list[tuple[Problem, Problem]], grader: Grader) -> tuple[list[Graded], list[Credited]]:
    """Grade each pair's problem with the source's reference solution; every credited pair, answer-sharing marked."""
    graded = [_timed(grader, p, q, q.solution) for p, q in pairs]
    credited = [Credited(g.problem, g.source, g.grade, shares_answer(g.problem, g.source, grader)) for g in graded if g.grade.correct]
    return graded, credited


def false_positives(graded: list[Graded], credited: list[Credited]) -> tuple[int, int]:
    """(false positives, pairs with a verdict): credited pairs that do not share the answer, over status-ok pairs."""
    return sum(not c.same_answer for c in credited), sum(g.grade.status == "ok" for g in graded)
