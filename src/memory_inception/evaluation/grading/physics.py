"""PHYSICS grading: the reply's own candidates (copies of the question dropped), each listed answer matched
(:mod:`.matching`); answers the question itself prints are not graded; multiple-choice labels resolved."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from memory_inception.datasets.latex_spans import extract_final_answer
from memory_inception.datasets.reasoning_problems import physics_subjects
from memory_inception.evaluation.grading.candidates import candidates, dedupe, final_candidates
from memory_inception.evaluation.grading.echo import own_candidates, own_text, picked_option, read_question
from memory_inception.evaluation.grading.equivalence import DEFAULT_RTOL
from memory_inception.evaluation.grading.matching import Evidence, is_trivial_answer, match_answer
from memory_inception.evaluation.grading.normalize import prepare, text_key
from memory_inception.evaluation.grading.outcome import Grade, check_problem
from memory_inception.evaluation.grading.substitution import definitions, drop_function_args
from memory_inception.evaluation.grading.timeouts import run_guarded

if TYPE_CHECKING:
    from memory_inception.datasets.reasoning_problems import Problem


def grade_physics(
    problem: Problem,
    response: str | None,
    *,
    rtol: float = DEFAULT_RTOL,
    timeout: float = 20.0,
    require_boxed: bool = False,
) -> Grade:
    """Grade a PHYSICS response: every listed final answer must be matched; score = fraction matched.

    Candidates are the ``\\boxed{}`` contents (and their comma-separated parts). A response without
    any box is scanned instead (every math chunk, each side of each ``=``, the "answer is" phrase) unless
    ``require_boxed``; scanning is lenient and is flagged in ``Grade.detail``. Candidates the question
    prints are dropped (:mod:`.echo`). Per listed answer, in order: loose text equality; a number (units
    stripped) within ``rtol``; an expression equal at seeded random points within ``rtol``; for answers that
    are not parseable math, the reference text contained in the reply's own text, or (prose answers) >= 75%
    of its content words present with agreeing negation. Listed answers the question prints
    (:func:`stated_answers`) are not graded; when that is all of them the grade's status is "show-that".
    Raises :class:`~memory_inception.errors.EvaluationError` for a problem that is not a PHYSICS one.
    """
    check_problem(problem, "physics", physics_subjects(), "PHYSICS subject")
    return run_guarded(lambda: _grade_physics(problem, response, rtol, require_boxed), timeout)


def stated_answers(problem: Problem, rtol: float = DEFAULT_RTOL) -> tuple[bool, ...]:
    """Per listed answer: does the question itself print it? (Then matching it would credit copying.)

    The question is read like an unboxed reply with :class:`~.matching.Evidence` ``strict``: an answer is
    stated when a chunk of the question equals it as text, as an expression at the seeded points, or as a
    number with the same unit text. Never stated: bare trivial values without a left-hand side (``0``,
    ``K``), prose and tables (no text fallbacks), and an answer that is one of the question's multiple-choice
    options (choosing it is the task).
    """
    return _stated(problem.question, tuple(problem.answers), rtol)


@lru_cache(maxsize=2048)
def _stated(question: str, answers: tuple[str, ...], rtol: float) -> tuple[bool, ...]:
    if not isinstance(question, str) or not question.strip():
        return tuple(False for _ in answers)
    q = read_question(question)
    qcands, _, _ = candidates(question)
    ev = Evidence(cands=_prepared(qcands), final=[], context="", strict=True)
    out = []
    for answer in answers:
        offered = bool({text_key(answer), text_key(prepare(answer))} & set(q.options))
        out.append(not offered and match_answer(answer, ev, rtol)[0])
    return tuple(out)


def _prepared(cands: list[str]) -> list[tuple[str, str]]:
    out = [(c, prepare(c)) for c in cands]
    return out + [(raw, drop_function_args(prep)) for raw, prep in out if drop_function_args(prep) != prep]


def _grade_physics(problem: Problem, response: str | None, rtol: float, require_boxed: bool) -> Grade:
    stated = stated_answers(problem, rtol)
    n_stated = sum(stated)
    if n_stated == len(problem.answers):
        extracted = extract_final_answer(response) if isinstance(response, str) else None
        return Grade(False, 0.0, extracted, "every listed answer is printed in the question (a 'show that' problem): "
                     "matching it would credit copying, so it is not graded", status="show-that", stated=n_stated)
    if not isinstance(response, str) or not response.strip():
        return Grade(False, 0.0, None, "empty or non-text response", stated=n_stated)
    cands, extracted, scanned = candidates(response, require_boxed)
    if not cands and not scanned:
        why = "no boxed answer found" if require_boxed else "no final answer found"
        return Grade(False, 0.0, extracted, why, stated=n_stated)
    q = read_question(problem.question)
    final = final_candidates(response)
    chosen = _chosen_option(problem.question, response, cands, scanned)
    option_cands: list[str] = []
    if chosen is not None:
        label, option = chosen
        option_cands, _, _ = candidates(option if "$" in option else f"${option}$")
        extracted = f"({label}) -> {option.strip()}"
    pick = picked_option(final, cands, q, boxed=not scanned)
    if scanned:  # scan the reply's own text: math segments copied from the question are blanked first
        own, _, _ = candidates(own_text(response, q, keep=pick))
        kept = own_candidates(own, final, q, pick)
    else:
        kept = own_candidates(cands, final, q, pick)
    n_copied = len(set(cands) - set(kept))
    kept = dedupe(kept + option_cands)  # a resolved choice label is the reply's pick, not a copy
    own_final = own_candidates(final, final, q, pick)
    context = own_text(response, q, keep=pick) if scanned else " ; ".join(kept)
    ev = Evidence(
        cands=_prepared(kept),
        final=_prepared(dedupe(own_final + option_cands)),
        context=context,
        defs=definitions(response),
        lenient_trivial=any(not s and not is_trivial_answer(a) for a, s in zip(problem.answers, stated)),
    )
    results = [(None, "printed in the question; not graded") if s else match_answer(a, ev, rtol) for a, s in zip(problem.answers, stated)]
    n_ok = sum(ok is True for ok, _ in results)
    n_graded = len(problem.answers) - n_stated
    notes = ("scanned unboxed text; " if scanned else "") + (
        f"{n_copied} candidate(s) copied from the question dropped; " if n_copied else ""
    )
    detail = notes + "; ".join(
        f"[{i + 1}] {'stated' if ok is None else 'ok' if ok else 'missing'} ({why})" for i, (ok, why) in enumerate(results)
    )
    return Grade(n_ok == n_graded, n_ok / n_graded, extracted, detail, stated=n_stated)


def _chosen_option(question: str, response: str, cands: list[str], scanned: bool) -> tuple[str, str] | None:
    """A multiple-choice pick: the response's final answer is only a label ("(c)") that the question lists.

    Returns (label, the option's text) or None. The option must be on one line of the question, as
    "(c) text"; the label alone is not evidence of anything else.
    """
    final = extract_final_answer(response) if scanned else (cands[0] if len(cands) == 1 else None)
    if not final:
        return None
    final = re.sub(r"\\text\s*\{([^{}]*)\}|\\mathrm\s*\{([^{}]*)\}", lambda m: m.group(1) or m.group(2) or "", final)
    m = re.fullmatch(r"\s*(?:\(\s*([a-hA-H])\s*\)|([a-hA-H]))\s*\.?\s*", final)
    if not m or not isinstance(question, str):
        return None
    label = (m.group(1) or m.group(2)).lower()
    opt = re.search(r"(?:^|\s)\(\s*" + label + r"\s*\)\s*([^\n]+)", question, re.IGNORECASE)
    if not opt:
        return None
    text = re.split(r"\s\([a-h]\)\s", opt.group(1))[0].strip().rstrip(";.,").strip()
    return (label, text) if text else None
