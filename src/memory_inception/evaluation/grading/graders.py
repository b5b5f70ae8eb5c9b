"""Offline graders for HARDMath and PHYSICS answers (no LLM judge).

Pipeline for one response: pull the final answer(s) out of the text (``\\boxed{}`` first), cut each
into top-level parts, drop left-hand sides (``y =``, ``I(x) \\approx``), strip units, parse LaTeX with
latex2sympy2_extended, then compare with the reference *numerically*: both sides are evaluated at the
same points (the dataset's evaluation points where HARDMath stores them, else fixed or seeded random
points) and must agree within a relative tolerance. Symbolic fallbacks (``sympy.simplify`` on small
expressions, ``math_verify.verify``) run only when numbers cannot decide, e.g. unparseable symbols.

Bounded time: every parse / evaluation / simplification runs under :func:`deadline`, a SIGALRM
interval timer when called from the main thread (math_verify's own alarms are switched off so they do
not clobber ours). Off the main thread signals are unavailable, so the public graders run the work in
a daemon worker thread and give up after ``timeout`` seconds (the worker is abandoned, not killed).
Numeric checks come before any simplification and ``simplify`` is only tried on expressions with few
operations. The graders never raise on model output: failures come back as an incorrect :class:`Grade`.

HARDMath rules (upstream grades nondimensionalization with ``sympy.simplify(a - b) == 0`` and the other
types with a GPT-4o judge; we replace the judge with numeric checks, see ``reports/graders.md``):

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

PHYSICS: every listed final answer must be matched by some extracted candidate (numbers with units:
leading numbers compared within ``rtol``; expressions: seeded random points, ``rtol``; text: normalized
string equality). Score = fraction of the listed answers matched. Also: symbols the response defines
(``where $d = 1/N$``) are substituted into candidates, one-letter functions of coordinates may drop their
arguments (``V(\\mathbf{r})`` ~ ``V``), both ``\\partial`` fraction notations are one text form,
impossibility phrasings are synonyms, and a bare choice label (``(c)``) resolves to the question's option.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from memory_inception.datasets.latex_spans import (
    extract_final_answer,
    find_boxed,
    match_bracket,
    math_segments,
    split_top_level,
)
from memory_inception.evaluation.grading.equivalence import (
    DEFAULT_RTOL,
    equivalent,
    math_verify_equal,
    numeric_value,
    values_close,
)
from memory_inception.evaluation.grading.normalize import (
    is_unit_tail,
    leading_number,
    norm_latex,
    prepare,
    relation_chain,
    split_relations,
    strip_units,
    text_key,
)
from memory_inception.evaluation.grading.outcome import Grade
from memory_inception.evaluation.grading.parsing import sym_key, to_sympy
from memory_inception.evaluation.grading.prose import keyword_recall, prose_words
from memory_inception.evaluation.grading.timeouts import (
    PARSE_SECONDS,
    bounded,
    deadline,
    run_guarded,
)

if TYPE_CHECKING:
    from memory_inception.datasets.reasoning_problems import Problem


__all__ = ["Grade", "deadline", "equivalent", "grade", "grade_hardmath", "grade_physics"]


_EXACT_RTOL = 1e-6


def grade_hardmath(problem: Problem, response: str | None, *, rtol: float = DEFAULT_RTOL, timeout: float = 20.0) -> Grade:
    """Grade a HARDMath response (or bare answer) against the problem's stored answers; never raises."""
    if not isinstance(response, str) or not response.strip():
        return Grade(False, 0.0, None, "empty or non-text response")
    return run_guarded(lambda: _grade_hardmath(problem, response, rtol), timeout)


def _grade_hardmath(problem: Problem, response: str, rtol: float) -> Grade:
    kind, extra = problem.kind, problem.extra
    if kind == "polynomial_roots":
        return _grade_roots(problem, response, rtol)
    parts, extracted = _final_parts(response, len(problem.answers))
    if not parts:
        return Grade(False, 0.0, extracted, "no final answer found")
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
    detail = "; ".join(reasons) + (f"; {unparsed} part(s) unparseable" if unparsed else "")
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
    if not parts:
        return Grade(False, 0.0, extracted, "no final answer found")
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
    return Grade(score == 1.0, score, extracted, "; ".join(reasons))


def _eps_value(expr: Any, point: float) -> Any:
    """Value of a root formula at epsilon = point (None if it has other symbols or fails)."""
    if expr is None:
        return None
    syms = {sym_key(s.name): s for s in expr.free_symbols}
    if set(syms) - {"epsilon"}:
        return None
    return numeric_value(expr, {s: point for s in syms.values()})


Defs = dict[str, list[str]]


_DEF_LHS = re.compile(r"(?:\\[A-Za-z]+|[A-Za-z])(?:_\{[A-Za-z0-9]+\}|_[A-Za-z0-9])?")


_NOT_SYMBOLS = {"\\sin", "\\cos", "\\tan", "\\exp", "\\ln", "\\log", "\\sqrt", "\\frac", "\\cdot", "\\times", "\\pi", "\\infty"}


def definitions(response: str) -> Defs:
    """Equalities ``X = expr`` the response states, X a single symbol (``d``, ``Z_1``, ``\\omega_l``).

    Only chains whose relations are all ``=`` (or ``:=``, ``\\equiv``) count; every right-hand piece is a
    definition of X. Keys are the normalized LHS text.
    """
    defs: Defs = {}
    for seg in math_segments(response):
        seg = norm_latex(seg)
        seg = re.sub(r"\\(?:begin|end)\{[a-z*]*\}|\\tag\{[^{}]*\}", "\n", seg)
        for line in re.split(r"\\\\|\n|\\quad|\\qquad|&", seg):
            for piece in split_top_level(line):
                pieces, rels = relation_chain(piece)
                if not rels or any(r not in ("=", ":=", "\\equiv") for r in rels):
                    continue
                lhs = pieces[0]
                if not _DEF_LHS.fullmatch(lhs) or lhs in _NOT_SYMBOLS:
                    continue
                for rhs in pieces[1:]:
                    rhs = rhs.strip().rstrip(".,;").strip()
                    if rhs and len(rhs) < 300 and len(defs.get(lhs, [])) < 3:
                        defs.setdefault(lhs, []).append(rhs)
        if sum(len(v) for v in defs.values()) > 200:
            break
    return defs


def substitute_definitions(cand: Any, ref: Any, defs: Defs) -> list[Any]:
    """``cand`` with symbols absent from ``ref`` replaced by their definitions (up to 3 rounds).

    Two variants: the first and the last stated definition of each symbol. A variant is returned only
    when every remaining symbol is one of the reference's.
    """
    ref_keys = {sym_key(x.name) for x in ref.free_symbols}
    parsed: dict[str, list[Any]] = {}
    for lhs, rhss in defs.items():
        lhs_expr = to_sympy(lhs)
        if lhs_expr is None or not lhs_expr.is_Symbol:
            continue
        key = sym_key(lhs_expr.name)
        if key in ref_keys:
            continue  # never rewrite the reference's own symbols
        for rhs in rhss:
            e = to_sympy(strip_units(rhs))
            if e is not None and key not in {sym_key(x.name) for x in e.free_symbols}:
                parsed.setdefault(key, []).append(e)
    if not parsed:
        return []
    out = []
    for pick in (0, -1):
        expr = cand
        for _ in range(3):
            subs = {x: parsed[sym_key(x.name)][pick] for x in expr.free_symbols if sym_key(x.name) in parsed}
            if not subs:
                break
            expr = bounded(lambda e=expr, m=subs: e.xreplace(m), PARSE_SECONDS, None)
            if expr is None:
                break
        if expr is not None and {sym_key(x.name) for x in expr.free_symbols} <= ref_keys and expr is not cand:
            if all(expr != o for o in out):
                out.append(expr)
    return out


_COORD = r"(?:\\(?:mathbf|vec|boldsymbol|bm)\s*\{\s*[rx]\s*\}|[rxyzt])'?"


_FUNC_ARGS = re.compile(
    r"((?<![\\A-Za-z])(?:\\(?:mathbf|vec|boldsymbol|bm)\s*\{[A-Za-z]\}|\\(?:psi|phi|varphi|rho|sigma|Phi|Psi)|[A-Za-z])"
    r"(?:_\{[^{}]*\}|_[A-Za-z0-9])?)\s*\(\s*" + _COORD + r"(?:\s*,\s*" + _COORD + r")*\s*\)"
)


def drop_function_args(s: str) -> str:
    """``V(\\mathbf{r}) e^{ikz}`` -> ``V e^{ikz}``: a one-letter function of coordinates (r, x, y, z, t) only."""
    return _FUNC_ARGS.sub(r"\1", s)


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
    ``require_boxed``; scanning is lenient and is flagged in ``Grade.detail``. Per listed answer, in
    order: loose text equality; a number (units stripped) within ``rtol``; an expression equal at
    seeded random points within ``rtol``; for answers that are not parseable math, the reference text
    contained in the candidate text, or (prose answers) >= 75% of its content words present with
    agreeing negation.
    """
    if not isinstance(response, str) or not response.strip():
        return Grade(False, 0.0, None, "empty or non-text response")
    return run_guarded(lambda: _grade_physics(problem, response, rtol, require_boxed), timeout)


def _grade_physics(problem: Problem, response: str, rtol: float, require_boxed: bool) -> Grade:
    cands, extracted, scanned = _physics_candidates(response, require_boxed)
    if not cands and not scanned:
        return Grade(False, 0.0, extracted, "no boxed answer found" if require_boxed else "no final answer found")
    chosen = _chosen_option(problem.question, response, cands, scanned)
    if chosen is not None:
        label, option = chosen
        option_cands, _, _ = _physics_candidates(option if "$" in option else f"${option}$")
        cands = _dedupe(cands + option_cands)
        extracted = f"({label}) -> {option.strip()}"
    prepared = [(c, prepare(c)) for c in cands]
    prepared += [(raw, drop_function_args(prep)) for raw, prep in prepared if drop_function_args(prep) != prep]
    context = response if scanned else " ; ".join(cands)
    defs = definitions(response)
    results = [_physics_match(ans, prepared, context, rtol, defs) for ans in problem.answers]
    n_ok = sum(ok for ok, _ in results)
    score = n_ok / len(problem.answers)
    detail = ("scanned unboxed text; " if scanned else "") + "; ".join(
        f"[{i + 1}] {'ok' if ok else 'missing'} ({why})" for i, (ok, why) in enumerate(results)
    )
    return Grade(n_ok == len(problem.answers), score, extracted, detail)


def _physics_candidates(response: str, require_boxed: bool = False) -> tuple[list[str], str | None, bool]:
    """(candidate strings, what was extracted, scanned?) — boxes if any, else every math chunk."""
    boxes = [b.strip() for b in find_boxed(response) if b.strip()]
    if boxes or require_boxed:
        cands: list[str] = []
        for b in boxes:
            cands.append(b)
            cands += split_top_level(b)
        return _dedupe(cands), (" ; ".join(boxes) or None), False
    final = extract_final_answer(response)
    segs = math_segments(response)
    paragraphs = [x for x in re.split(r"\n\s*\n", response.strip()) if x.strip()]
    last = re.sub(r"\$", " ", paragraphs[-1]) if paragraphs else ""
    cands = split_top_level(last) if len(last) < 400 else []
    for seg in segs + ([final] if final else []):
        seg = norm_latex(seg)
        seg = re.sub(r"\\(?:begin|end)\{[a-z*]*\}", "\n", seg)
        joined = re.sub(r"\\\\|\n|&", " ", seg).strip()
        cands.append(joined)
        cands += split_relations(joined)
        for line in re.split(r"\\\\|\n|\\quad|\\qquad|\\text\{\s*(?:and|or|,)\s*\}", seg):
            line = line.replace("&", " ").strip()
            cands.append(line)
            for piece in split_top_level(line):
                cands.append(piece)
                cands += split_relations(piece)
    return _dedupe([c for c in cands if c.strip()]), final, True


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for it in items:
        k = it.strip()
        if k and k not in seen:
            seen.add(k)
            out.append(k)
    return out


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


def _listed_values(answer: str) -> list[str]:
    """Comma-separated values of one listed answer; "(x = 1, y = 2)" groups of assignments are opened."""
    out = []
    for part in split_top_level(norm_latex(answer)):
        part = part.strip()
        if re.fullmatch(r"\\[lc]?dots|\.\.\.|etc\.?", part):
            continue
        if part.startswith("(") and match_bracket(part, 0) == len(part) - 1:
            inner = split_top_level(part[1:-1])
            if len(inner) > 1 and all("=" in x for x in inner):
                out += inner
                continue
        out.append(part)
    return out


def _table_cells(answer: str) -> list[str] | None:
    """The cells of a reference given as a LaTeX array/tabular (None if it is not one)."""
    m = re.search(r"\\begin\{(array|tabular)\}(?:\{[^{}]*\})?(.*?)\\end\{\1\}", answer, re.S)
    if not m:
        return None
    body = re.sub(r"\\hline", " ", m.group(2))
    return [c.strip() for row in re.split(r"\\\\", body) for c in row.split("&") if c.strip()]


def _physics_match(answer: str, prepared: list[tuple[str, str]], context: str, rtol: float, defs: Defs | None = None) -> tuple[bool, str]:
    cells = _table_cells(answer)
    if cells:  # a table: every cell's text must appear in the response
        context_key = text_key(context)
        found = sum(text_key(c) in context_key for c in cells)
        return found == len(cells), f"table: {found}/{len(cells)} cells found"
    parts = _listed_values(answer)
    if len(parts) > 1:
        results = [_physics_match_one(p, prepared, context, rtol, defs) for p in parts]
        n_ok = sum(ok for ok, _ in results)
        if n_ok == len(parts):
            return True, f"all {len(parts)} listed values matched"
        whole = _physics_match_one(answer, prepared, context, rtol, defs)
        if whole[0]:
            return whole
        return False, f"{n_ok}/{len(parts)} listed values matched"
    return _physics_match_one(answer, prepared, context, rtol, defs)


def _physics_match_one(
    answer: str, prepared: list[tuple[str, str]], context: str, rtol: float, defs: Defs | None = None, loose: bool = True
) -> tuple[bool, str]:
    """One listed value vs the candidates. ``loose=False`` skips the text-containment / prose fallbacks."""
    ok, why = _physics_match_text(answer, prepared, context, rtol, defs, loose)
    if ok or not loose:
        return ok, why
    # "V(\mathbf{r})" and "V" name the same function: retry with coordinate arguments dropped (math only).
    bare = drop_function_args(norm_latex(answer))
    if bare != norm_latex(answer):
        ok2, why2 = _physics_match_text(bare, prepared, context, rtol, defs, loose=False)
        if ok2:
            return True, why2 + " (function arguments dropped)"
    return ok, why


def _physics_match_text(
    answer: str, prepared: list[tuple[str, str]], context: str, rtol: float, defs: Defs | None, loose: bool
) -> tuple[bool, str]:
    ref_text = prepare(answer)
    key = text_key(ref_text)
    full_key = text_key(answer)
    for raw, prep in prepared:
        if key and (text_key(prep) == key or text_key(raw) == full_key):
            return True, "same text"
    prose = prose_words(answer)
    why = "no match"
    lead = leading_number(ref_text)
    ref = None
    if lead is not None and is_unit_tail(lead[1]):
        ref_val = lead[0]
        for raw, prep in prepared:
            got = leading_number(prep)
            if got is None or not is_unit_tail(got[1]):
                continue
            values = [got[0], got[0] / 100.0] if "%" in raw else [got[0]]
            if any(_close_float(ref_val, v, rtol) for v in values):
                return True, f"number {got[0]:.6g} ~ {ref_val:.6g}"
        why = f"no number within {rtol:g} of {ref_val:.6g}"
        if not prose:
            return False, why
    else:
        ref = to_sympy(ref_text)
        if ref is not None:
            same, why = _physics_symbolic(ref, ref_text, prepared, rtol, defs)
            if same:
                return True, why
    if not loose:
        return False, why
    # Not decided as math: the reference text inside the candidate text, or prose keywords.
    context_key = text_key(context)
    if (len(key) >= 6 and key in context_key) or (len(full_key) >= 6 and full_key in context_key):
        return True, "reference text found"
    if prose and (ref is None or len(prose) >= 2):
        recall, negation_ok = keyword_recall(" ".join(prose) + " " + answer, context)
        if recall >= 0.75 and negation_ok:
            return True, f"prose answer: {recall:.0%} of key words present"
        return False, f"prose answer: {recall:.0%} of key words present{'' if negation_ok else ', negation missing'}"
    if ref is None and lead is None:
        for raw, prep in prepared[:20]:
            if math_verify_equal(ref_text, prep):
                return True, "math_verify"
        return False, "reference not parseable; no text match"
    return False, why


def _physics_symbolic(
    ref: Any, ref_text: str, prepared: list[tuple[str, str]], rtol: float, defs: Defs | None = None
) -> tuple[bool, str]:
    ref_ids = _identifiers(ref_text)
    allowed = ref_ids | {"\\mu"}
    def_ids = set().union(*(_identifiers(k) for k in defs)) if defs else set()
    tried = substituted = 0
    for raw, prep in prepared:
        ids = _identifiers(prep)
        if ref.free_symbols and not (ids and ids <= allowed):
            # Symbols the reference lacks but the response defines ("where $d = 1/N$"): substitute them.
            if defs and ids and ids - allowed <= def_ids and substituted < _MAX_DEF_SUBSTITUTIONS:
                substituted += 1
                cand = to_sympy(prep)
                for variant in substitute_definitions(cand, ref, defs) if cand is not None else []:
                    same, why = equivalent(ref, variant, rtol=rtol)
                    if same:
                        return True, why + " after substituting the response's definitions"
            continue
        if not ref.free_symbols:
            got = leading_number(prep)
            if got is not None and is_unit_tail(got[1]):
                if _close_float(_as_float(ref), got[0], rtol):
                    return True, "number matches exact reference"
                continue
            if ids:
                continue
        cand = to_sympy(prep)
        tried += 1
        if cand is None:
            continue
        same, why = equivalent(ref, cand, rtol=rtol)
        if same:
            return True, why
        if tried >= 60:
            break
    return False, f"no candidate matched ({tried} compared)"


_MAX_DEF_SUBSTITUTIONS = 30


def _identifiers(s: str) -> set[str]:
    """Commands and single letters used in ``s`` (a cheap pre-filter before parsing a candidate)."""
    words: set[str] = set()
    for w in re.findall(r"\\?[A-Za-z]+", s):
        words.update([w] if w.startswith("\\") else list(w))
    skip = {"\\frac", "\\sqrt", "\\cdot", "\\times", "\\ln", "\\log", "\\exp", "\\sin", "\\cos", "\\tan", "\\pi", "e", "\\left", "\\right"}
    return {w for w in words if w not in skip}


def _as_float(expr: Any) -> float:
    v = numeric_value(expr, {})
    if v is None or abs(v.imag) > 1e-12 * max(1.0, abs(v.real)):
        return math.nan
    return float(v.real)


def _close_float(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return False
    return abs(a - b) <= rtol * max(abs(a), abs(b)) or a == b


def grade(problem: Problem, response: str | None, **kwargs: Any) -> Grade:
    """Dispatch to :func:`grade_hardmath` or :func:`grade_physics` by ``problem.benchmark``."""
    if problem.benchmark == "hardmath":
        return grade_hardmath(problem, response, **kwargs)
    if problem.benchmark == "physics":
        return grade_physics(problem, response, **kwargs)
    return Grade(False, 0.0, None, f"unknown benchmark {problem.benchmark!r}; expected 'hardmath' or 'physics'")
