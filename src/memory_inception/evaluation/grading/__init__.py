"""Offline graders for HARDMath and PHYSICS answers (no LLM judge).

Pipeline for one response: pull the final answer(s) out of the text (``\\boxed{}`` first,
:mod:`memory_inception.datasets.latex_spans`), cut each into top-level parts, drop left-hand sides
(``y =``, ``I(x) \\approx``), strip units (:mod:`.normalize`), parse LaTeX with latex2sympy2_extended
(:mod:`.parsing`), then compare with the reference *numerically* (:mod:`.equivalence`): both sides are
evaluated at the same points (the dataset's evaluation points where HARDMath stores them, else fixed or
seeded random points) and must agree within a relative tolerance. Symbolic fallbacks (``sympy.simplify``
on small expressions, ``math_verify.verify``) run only when numbers cannot decide, e.g. unparseable
symbols.

Bounded time (:mod:`.timeouts`): every parse / evaluation / simplification runs under :func:`deadline`, a
SIGALRM interval timer when called from the main thread (math_verify's own alarms are switched off so
they do not clobber ours). Off the main thread signals are unavailable, so the public graders run the
work in a daemon worker thread and give up after ``timeout`` seconds (the worker is abandoned, not
killed). Numeric checks come before any simplification and ``simplify`` is only tried on expressions
with few operations. The graders never raise on model output: failures come back as an incorrect
:class:`Grade`.

HARDMath rules (:mod:`.hardmath`; upstream grades nondimensionalization with ``sympy.simplify(a - b) == 0``
and the other types with a GPT-4o judge; we replace the judge with numeric checks, see
``reports/graders.md``):

- nondimensionalization_symbolic: identity check at 4 seeded random positive points, rtol 1e-6.
- nondimensionalization_numeric: |answer - reference| <= half a unit of the stored precision
  (0.005 for two decimals) or relative error <= ``rtol``.
- integral (Laplace, one formula in x): agree within ``rtol`` at ``large_eval_point`` and twice it.
- integral (three regimes in epsilon): each regime formula agrees within ``rtol`` at epsilon = 0.1, 1, 10.
- ODE: small-x formula at x = p, 5p, 10p (p = ``small_eval_point``), large-x formula at
  ``large_eval_point``; odd roots of negative numbers are taken real (as the dataset does).
- polynomial_roots: the candidate roots evaluated at the stored epsilon points (0.1 and 10) must match
  the reference roots one-to-one within ``rtol``; score = mean over the two regimes of the fraction of
  roots matched. Reference values come from the reference root formulas, not from the stored
  ``*_analytical`` lists, which disagree with the formulas for some rows.
Multi-part answers are matched part-to-reference by maximum bipartite matching, so order is free.

PHYSICS (:mod:`.physics`): every listed final answer must be matched by some extracted candidate (numbers
with units: leading numbers compared within ``rtol``; expressions: seeded random points, ``rtol``; text:
normalized string equality; prose: key words, :mod:`.prose`). Score = fraction of the listed answers
matched. Also: symbols the response defines (``where $d = 1/N$``) are substituted into candidates, one-letter
functions of coordinates may drop their arguments (``V(\\mathbf{r})`` ~ ``V``) (both :mod:`.substitution`),
both ``\\partial`` fraction notations are one text form, impossibility phrasings are synonyms, and a bare
choice label (``(c)``) resolves to the question's option.

:func:`grade` (:mod:`.graders`) dispatches on ``problem.benchmark``.
"""

from memory_inception.datasets.latex_spans import (
    extract_final_answer,
    find_boxed,
    split_top_level,
    strip_boxed,
)
from memory_inception.evaluation.grading.equivalence import equivalent
from memory_inception.evaluation.grading.graders import grade
from memory_inception.evaluation.grading.hardmath import grade_hardmath
from memory_inception.evaluation.grading.outcome import Grade
from memory_inception.evaluation.grading.physics import grade_physics
from memory_inception.evaluation.grading.timeouts import deadline

__all__ = [
    "Grade", "deadline", "equivalent", "extract_final_answer", "find_boxed", "grade", "grade_hardmath",
    "grade_physics", "split_top_level", "strip_boxed",
]
