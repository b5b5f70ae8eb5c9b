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
with few operations. The graders never raise on model output, and never turn a failure into a plain
"incorrect": :attr:`Grade.status` says what happened ("ok"; "show-that", see below; "timeout" when the call ran
past its limit; "error" when it raised), and ``Grade.step_timeouts`` counts bounded steps that ran out of time.
They do raise :class:`~memory_inception.errors.EvaluationError` on a problem they cannot grade at all: an
unknown benchmark (:func:`grade`) or an unknown HARDMath kind / PHYSICS subject, naming the valid ones.

A reply earns no credit for what it copies from the question (:mod:`.echo`). The question is read with the
same candidate scan (:mod:`.candidates`) and the same normalization (:func:`~.normalize.text_key`) as a reply,
and a reply candidate whose text key is one of the question's is dropped before matching. Exceptions: a bare
trivial value (``0``, ``-2``, ``1/2``, one symbol such as ``K``) that is part of the reply's own final answer,
and a final answer that picks exactly one option of a multiple-choice question ("$10^{-5}$, $10^{-2}$, $10^1$"
inline, or short "(a) ... (b) ..." lines), when it is boxed or the reply names no other option. The text
fallbacks (reference text contained in the reply, prose key words) read the reply's own text: math segments
copied from the question and runs of five or more words the question contains are blanked. So the same
expression earns credit when the reply derives it and the question does not print it, and none when it is
restated from the question. Bare trivial references (``E^{(1)} = 0``, ``K``) are too common to be evidence on
their own: in a problem whose graded answers are all such values they match only a candidate with the same
left-hand side or the reply's final answer; next to a non-trivial listed answer (which a correct verdict needs
too) they match anywhere, like any value. A condition after a listed value (``, r > R``, ``\text{at} r = a``)
is where the value holds, not part of it.

Show-that problems (the question states the result): a listed answer is *stated* when the question itself,
read strictly (text equal, expression equal at the seeded points, or a number with the same unit text; no
prose or containment fallback; never a bare trivial value without its left-hand side, never a multiple-choice
option), matches it (:func:`~.physics.stated_answers`). Stated answers are not graded: matching them would
credit copying, and whether a derivation really reaches a printed result needs a judge, not an answer
matcher. The score is over the other listed answers (``Grade.stated`` counts the left-out ones); when every
listed answer is stated the problem is left out entirely, with status "show-that", and callers count such
rows apart (``reports/graders.md`` lists them; the reasoning reports show their counts). HARDMath questions
never print their answers (the echo check in ``reports/graders.md``), so there only copied candidates are
dropped.

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

PHYSICS (:mod:`.physics`, :mod:`.matching`): every listed final answer that the question does not state must
be matched by some extracted candidate (numbers with units: leading numbers compared within ``rtol``;
expressions: seeded random points, ``rtol``; text: normalized string equality; prose: key words, :mod:`.prose`;
``math_verify`` only for unparseable references, never against a bare value or a candidate with symbols the
reference lacks). Score = fraction of the listed answers
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
from memory_inception.evaluation.grading.graders import GRADERS, grade
from memory_inception.evaluation.grading.hardmath import grade_hardmath
from memory_inception.evaluation.grading.outcome import STATUSES, Grade
from memory_inception.evaluation.grading.physics import grade_physics, stated_answers
from memory_inception.evaluation.grading.timeouts import deadline

__all__ = [
    "GRADERS", "Grade", "STATUSES", "deadline", "equivalent", "extract_final_answer", "find_boxed", "grade",
    "grade_hardmath", "grade_physics", "split_top_level", "stated_answers", "strip_boxed",
]
