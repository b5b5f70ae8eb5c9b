"""PHYSICS grading: candidates from boxes (or the scanned text), each listed answer matched as text,
number, expression or prose; tables, multiple-choice labels and the response's own definitions."""

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
)
from memory_inception.evaluation.grading.normalize import (
    is_unit_tail,
    leading_number,
    norm_latex,
    prepare,
    split_relations,
    text_key,
)
from memory_inception.evaluation.grading.outcome import Grade
from memory_inception.evaluation.grading.parsing import to_sympy
from memory_inception.evaluation.grading.prose import keyword_recall, prose_words
from memory_inception.evaluation.grading.substitution import (
    Defs,
    definitions,
    drop_function_args,
    substitute_definitions,
)
from memory_inception.evaluation.grading.timeouts import run_guarded

if TYPE_CHECKING:
    from memory_inception.datasets.reasoning_problems import Problem


#: At most this many candidates per reference get the response's definitions substituted.
_MAX_DEF_SUBSTITUTIONS = 30


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
