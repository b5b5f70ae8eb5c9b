"""HARDMath grading: per-kind evaluation points, multi-part answers matched one-to-one, polynomial roots.

Upstream grades nondimensionalization with ``sympy.simplify(a - b) == 0`` and the other types with a
GPT-4o judge; we replace the judge with numeric checks (rules in the package docstring, evidence in
``reports/graders.md``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from memory_inception.datasets.latex_spans import (
    extract_final_answer,
    find_boxed,
    split_top_level,
)
from memory_inception.datasets.reasoning_problems import hardmath_kinds
from memory_inception.evaluation.grading.echo import own_candidates, read_question
from memory_inception.evaluation.grading.equivalence import (
    DEFAULT_RTOL,
    equivalent,
    numeric_value,
    values_close,
)
from memory_inception.evaluation.grading.normalize import (
    is_unit_tail,
    leading_number,
    prepare,
)
from memory_inception.evaluation.grading.outcome import Grade, check_problem
from memory_inception.evaluation.grading.parsing import sym_key, to_sympy
from memory_inception.evaluation.grading.timeouts import run_guarded

if TYPE_CHECKING:
    from memory_inception.datasets.reasoning_problems import Problem


_EXACT_RTOL = 1e-6


def grade_hardmath(problem: Problem, response: str | None, *, rtol: float = DEFAULT_RTOL, timeout: float = 20.0) -> Grade:
    """Grade a HARDMath response (or bare answer) against the problem's stored answers.

    Never raises on the response: a grading call that runs out of time or fails comes back with status
    "timeout" / "error". Raises :class:`~memory_inception.errors.EvaluationError` for a problem that is not a
    HARDMath one or has an unknown kind.
    """
    check_problem(problem, "hardmath", hardmath_kinds(), "HARDMath kind")
    if not isinstance(response, str) or not response.strip():
        return Grade(False, 0.0, None, "empty or non-text response")
    return run_guarded(lambda: _grade_hardmath(problem, response, rtol), timeout)


def _own_parts(problem: Problem, parts: list[str]) -> tuple[list[str], str]:
    """The answer parts that are not copied from the question (:mod:`.echo`), and a note on the dropped ones."""
    q = read_question(problem.question)
    kept = own_candidates(parts, parts, q)
    return kept, (f"; {len(parts) - len(kept)} part(s) copied from the question dropped" if len(kept) < len(parts) else "")


def _grade_hardmath(problem: Problem, response: str, rtol: float) -> Grade:
    kind, extra = problem.kind, problem.extra
    if kind == "polynomial_roots":
        return _grade_roots(problem, response, rtol)
    parts, extracted = _final_parts(response, len(problem.answers))
    parts, copy_note = _own_parts(problem, parts)
    if not parts:
        return Grade(False, 0.0, extracted, "no final answer found" + copy_note)
    # An unevaluated integral is the question restated, not an answer (evaluated, it equals the true value).
    cands = [None if re.search(r"\\i+nt(?![a-zA-Z])", p) else to_sympy(prepare(p)) for p in parts]
    if kind == "nondimensionalization_numeric":
        ref = float(leading_number(prepare(problem.answers[0]))[0])  # type: ignore[index]
        precision = extra.get("precision") or 2
        for p, c in zip(reversed(parts), reversed(cands)):
            val = _numeric_of(p, c)
            if val is None:
                continue
            ok = abs(val - ref) <= 0.5 * 10.0 ** (-precision) + 1e-12 or abs(val - ref) <= rtol * abs(ref)
            return Grade(ok, float(ok), extracted, f"epsilon {val:.6g} vs reference {ref:.6g} ({'ok' if ok else 'off'})")
        return Grade(False, 0.0, extracted, "final answer is not a number")
    refs = [to_sympy(prepare(a)) for a in problem.answers]
    if any(r is None for r in refs):
        return Grade(False, 0.0, extracted, "reference answer could not be parsed (dataset issue)")
    regimes = extra.get("regimes") or [None] * len(refs)
    var = extra.get("variable")
    table: list[list[bool]] = []
    reasons: list[str] = []
    for ref, regime in zip(refs, regimes):
        row = []
        for cand in cands:
            if cand is None:
                row.append(False)
                continue
            same, _ = _hardmath_equal(ref, cand, kind, regime, var, extra, rtol)
            row.append(same)
        table.append(row)
        reasons.append(f"{regime or 'answer'}: {'matched' if any(row) else 'no match'}")
    matched = _max_matching(table)
    score = matched / len(refs)
    unparsed = sum(c is None for c in cands)
    detail = "; ".join(reasons) + (f"; {unparsed} part(s) unparseable" if unparsed else "") + copy_note
    return Grade(matched == len(refs), score, extracted, detail)


def _final_parts(response: str, needed: int) -> tuple[list[str], str | None]:
    """Answer parts from the last box, extended by earlier boxes until ``needed`` parts are there."""
    boxes = [b for b in find_boxed(response) if b.strip()]
    if not boxes:
        final = extract_final_answer(response)
        return (split_top_level(final) if final else []), final
    parts: list[str] = []
    used: list[str] = []
    for box in reversed(boxes):
        parts = split_top_level(box) + parts
        used.insert(0, box)
        if len(parts) >= needed:
            break
    return parts, " ; ".join(used)


def _max_matching(ok: list[list[bool]]) -> int:
    """Size of a maximum bipartite matching (rows = references, columns = candidates)."""
    n_cols = len(ok[0]) if ok else 0
    owner = [-1] * n_cols

    def augment(r: int, seen: list[bool]) -> bool:
        for c in range(n_cols):
            if ok[r][c] and not seen[c]:
                seen[c] = True
                if owner[c] < 0 or augment(owner[c], seen):
                    owner[c] = r
                    return True
        return False

    return sum(augment(r, [False] * n_cols) for r in range(len(ok)))


def _numeric_of(part: str, parsed: Any) -> float | None:
    prepared = prepare(part)
    lead = leading_number(prepared)
    if lead is not None and is_unit_tail(lead[1]):
        return lead[0]
    if parsed is not None and not parsed.free_symbols:
        v = numeric_value(parsed, {})
        if v is not None and abs(v.imag) <= 1e-12 * max(1.0, abs(v.real)):
            return float(v.real)
    return None


def _hardmath_equal(ref: Any, cand: Any, kind: str, regime: str | None, var: str | None, extra: dict[str, Any], rtol: float) -> tuple[bool, str]:
    if kind == "nondimensionalization_symbolic":
        return equivalent(ref, cand, rtol=_EXACT_RTOL, n_random=4)
    if kind == "integral" and regime == "large" and extra.get("large_eval_point"):
        p = float(extra["large_eval_point"])
        return equivalent(ref, cand, rtol=rtol, points=[{"x": p}, {"x": 2 * p}])
    if kind == "integral":
        return equivalent(ref, cand, rtol=rtol, points=[{"epsilon": e} for e in (0.1, 1.0, 10.0)])
    if kind == "ODE" and regime == "small":
        p = float(extra.get("small_eval_point") or 0.1)
        return equivalent(ref, cand, rtol=rtol, points=[{"x": p}, {"x": 5 * p}, {"x": 10 * p}])
    if kind == "ODE":
        p = extra.get("large_eval_point")
        pts = [{"x": float(p)}] if p else None
        return equivalent(ref, cand, rtol=rtol, points=pts)
    return equivalent(ref, cand, rtol=rtol, points=[{var: v} for v in (0.5, 1.0, 2.0)] if var else None)


def _grade_roots(problem: Problem, response: str, rtol: float) -> Grade:
    """Candidate roots vs the reference roots, both evaluated at the stored small / large epsilon.

    The reference values are computed from the reference root formulas (``problem.answers``: small
    then large list). The stored ``*_analytical`` lists are not used: for some rows they disagree with
    the formulas (e.g. sqrt(-1/eps) stored as a real number).
    """
    extra = problem.extra
    ref_lists = [split_top_level(a) for a in problem.answers]
    needed = sum(len(r) for r in ref_lists)
    parts, extracted = _final_parts(response, needed)
    parts, copy_note = _own_parts(problem, parts)
    if not parts:
        return Grade(False, 0.0, extracted, "no final answer found" + copy_note)
    cands = [c for c in (to_sympy(prepare(p)) for p in parts) if c is not None]
    if not cands:
        return Grade(False, 0.0, extracted, "no parseable root")
    fractions, reasons = [], []
    for regime, ref_parts in zip(("small", "large"), ref_lists):
        point = extra.get(f"{regime}_eval_point") or (0.1 if regime == "small" else 10.0)
        refs = [_eps_value(to_sympy(prepare(r)), point) for r in ref_parts]
        refs = [r for r in refs if r is not None]
        if not refs:
            return Grade(False, 0.0, extracted, f"reference {regime} roots could not be evaluated (dataset issue)")
        values = [_eps_value(c, point) for c in cands]
        table = [[v is not None and values_close(r, v, rtol, atol=rtol * 1e-3) for v in values] for r in refs]
        got = _max_matching(table)
        fractions.append(got / len(refs))
        reasons.append(f"{regime} eps={point:g}: {got}/{len(refs)} roots")
    score = sum(fractions) / len(fractions)
    return Grade(score == 1.0, score, extracted, "; ".join(reasons) + copy_note)


def _eps_value(expr: Any, point: float) -> Any:
    """Value of a root formula at epsilon = point (None if it has other symbols or fails)."""
    if expr is None:
        return None
    syms = {sym_key(s.name): s for s in expr.free_symbols}
    if set(syms) - {"epsilon"}:
        return None
    return numeric_value(expr, {s: point for s in syms.values()})
