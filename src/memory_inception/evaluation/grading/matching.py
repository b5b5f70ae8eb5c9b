"""One listed PHYSICS answer against a reply's candidates: tables, listed values, text, numbers, expressions, prose.

:func:`match_answer` is the whole rule for one listed answer; :class:`Evidence` is what the reply offers (its
candidates without the copies of the question, its final answer, its own text). ``Evidence.strict`` reads
the question itself (:func:`~.physics.stated_answers`): only text, number and expression matches count there,
and a number must carry the reference's unit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from memory_inception.datasets.latex_spans import match_bracket, split_top_level, strip_boxed
from memory_inception.evaluation.grading.echo import is_trivial
from memory_inception.evaluation.grading.equivalence import equivalent, math_verify_equal, numeric_value
from memory_inception.evaluation.grading.normalize import (
    is_unit_tail,
    leading_number,
    norm_latex,
    prepare,
    relation_chain,
    text_key,
)
from memory_inception.evaluation.grading.parsing import to_sympy
from memory_inception.evaluation.grading.prose import keyword_recall, prose_words
from memory_inception.evaluation.grading.substitution import Defs, drop_function_args, substitute_definitions

#: At most this many candidates per reference get the response's definitions substituted.
_MAX_DEF_SUBSTITUTIONS = 30


_INEQUALITIES = {"<", ">", "\\le", "\\leq", "\\ge", "\\geq", "\\ll", "\\gg", "≤", "≥", "\\leqslant", "\\geqslant"}


@dataclass(frozen=True)
class Evidence:
    """What a reply offers for one problem's listed answers.

    ``cands``: (raw, prepared) candidates, copies of the question already dropped; ``final``: the same for the
    reply's final answer only (a bare trivial reference such as ``0`` is matched there, not anywhere in the
    text); ``context``: the reply's own text (copies blanked) for the text-containment and prose fallbacks;
    ``defs``: symbols the reply defines; ``strict``: reading a question, not a reply (see the module doc);
    ``lenient_trivial``: the problem also lists a non-trivial answer, which a correct verdict needs as well,
    so bare trivial references may match anywhere (as any other value does).
    """

    cands: list[tuple[str, str]]
    final: list[tuple[str, str]]
    context: str
    defs: Defs | None = None
    strict: bool = False
    lenient_trivial: bool = False


def match_answer(answer: str, ev: Evidence, rtol: float) -> tuple[bool, str]:
    """Is the listed ``answer`` matched by some candidate of ``ev``? Returns (verdict, reason)."""
    cells = _table_cells(answer)
    if cells:  # a table: every cell's text must appear in the response
        if ev.strict:
            return False, "table"
        context_key = text_key(ev.context)
        found = sum(text_key(c) in context_key for c in cells)
        return found == len(cells), f"table: {found}/{len(cells)} cells found"
    parts = _listed_values(answer)
    if len(parts) > 1:
        results = [_match_one(p, ev, rtol) for p in parts]
        n_ok = sum(ok for ok, _ in results)
        if n_ok == len(parts):
            return True, f"all {len(parts)} listed values matched"
        whole = _match_one(answer, ev, rtol)
        if whole[0]:
            return whole
        return False, f"{n_ok}/{len(parts)} listed values matched"
    dropped_condition = len(parts) == 1 and len(split_top_level(norm_latex(answer))) > 1
    return _match_one(parts[0] if dropped_condition else answer, ev, rtol)


def is_trivial_answer(answer: str) -> bool:
    """Is the listed ``answer`` (every value of it) a bare trivial value such as ``0``, ``E^{(1)} = 0`` or ``K``?"""
    if _table_cells(answer) or prose_words(answer):
        return False
    return all(is_trivial(prepare(part)) for part in _listed_values(answer) or [answer])


def _listed_values(answer: str) -> list[str]:
    """Comma-separated values of one listed answer; "(x = 1, y = 2)" groups of assignments are opened.

    A condition after the first value (``, r > R``: only inequalities between short terms) is where the value
    holds, not a value, and is dropped.
    """
    out = []
    for part in split_top_level(norm_latex(answer)):
        part = part.strip()
        if re.fullmatch(r"\\[lc]?dots|\.\.\.|etc\.?", part):
            continue
        if out and _is_condition(part):
            continue
        if part.startswith("(") and match_bracket(part, 0) == len(part) - 1:
            inner = split_top_level(part[1:-1])
            if len(inner) > 1 and all("=" in x for x in inner):
                out += inner
                continue
        out.append(part)
    return out


def _is_condition(part: str) -> bool:
    pieces, rels = relation_chain(part)
    return bool(rels) and all(r in _INEQUALITIES for r in rels) and all(0 < len(text_key(p)) <= 8 for p in pieces)


def _table_cells(answer: str) -> list[str] | None:
    """The cells of a reference given as a LaTeX array/tabular (None if it is not one). Cells of punctuation only
    (a ``:`` column between names and values) are layout, not content: a reply's table need not repeat them."""
    m = re.search(r"\\begin\{(array|tabular)\}(?:\{[^{}]*\})?(.*?)\\end\{\1\}", answer, re.S)
    if not m:
        return None
    body = re.sub(r"\\hline", " ", m.group(2))
    cells = [c.strip() for row in re.split(r"\\\\", body) for c in row.split("&") if c.strip()]
    return [c for c in cells if re.search(r"[A-Za-z0-9\\]", c)]


def _match_one(answer: str, ev: Evidence, rtol: float, loose: bool = True) -> tuple[bool, str]:
    """One listed value vs the candidates. ``loose=False`` skips the text-containment / prose fallbacks."""
    ok, why = _match_text(answer, ev, rtol, loose)
    if ok or not loose:
        return ok, why
    # "V(\mathbf{r})" and "V" name the same function: retry with coordinate arguments dropped (math only).
    bare = drop_function_args(norm_latex(answer))
    if bare != norm_latex(answer):
        ok2, why2 = _match_text(bare, ev, rtol, loose=False)
        if ok2:
            return True, why2 + " (function arguments dropped)"
    return ok, why


def _lhs_key(text: str) -> str | None:
    pieces, rels = relation_chain(norm_latex(strip_boxed(text)).strip().strip("$"))
    return text_key(pieces[0]) if rels and text_key(pieces[0]) else None


def _trivial_candidates(answer: str, ev: Evidence) -> list[tuple[str, str]]:
    """Candidates that may match a bare trivial reference value (``E^{(1)} = 0``, ``K``) of a problem that lists
    nothing else to match (or of a question read strictly).

    With a left-hand side: candidates stating the same left-hand side, plus (in a reply) bare values of the
    final answer. Without: the final answer only; a question never states a bare value.
    """
    lhs = _lhs_key(answer)
    if lhs is not None:
        out = [(raw, prep) for raw, prep in ev.cands if _lhs_key(raw) == lhs]
        if not ev.strict:
            out += [(raw, prep) for raw, prep in ev.final if _lhs_key(raw) is None]
        return out
    return [] if ev.strict else list(ev.final)


def _unit_key(text: str) -> str:
    """The text key of what follows the leading number of ``text``'s right-hand side (its unit)."""
    pieces, _ = relation_chain(norm_latex(strip_boxed(text)).strip().strip("$"))
    lead = leading_number(pieces[-1].strip()) if pieces else None
    return text_key(lead[1]) if lead else ""


def _match_text(answer: str, ev: Evidence, rtol: float, loose: bool) -> tuple[bool, str]:
    ref_text = prepare(answer)
    cands = ev.cands
    prose = prose_words(answer)
    trivial = not prose and is_trivial(ref_text)
    if trivial and not ev.lenient_trivial:
        cands = _trivial_candidates(answer, ev)
        if not cands:
            return False, "a bare value: matched only with its left-hand side or as the final answer"
    key = text_key(ref_text)
    full_key = text_key(answer)
    for raw, prep in cands:
        if key and (text_key(prep) == key or text_key(raw) == full_key):
            return True, "same text"
    why = "no match"
    lead = leading_number(ref_text)
    ref = None
    if lead is not None and is_unit_tail(lead[1]):
        ref_val = lead[0]
        unit = _unit_key(answer) if ev.strict else ""
        for raw, prep in cands:
            got = leading_number(prep)
            if got is None or not is_unit_tail(got[1]) or (ev.strict and _unit_key(raw) != unit):
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
            same, why = _symbolic(ref, ref_text, cands, rtol, ev.defs, symbolic=not ev.strict)
            if same:
                return True, why
    if not loose or ev.strict or trivial:
        return False, why
    # Not decided as math: the reference text inside the reply's own text, or prose keywords.
    context_key = text_key(ev.context)
    if (len(key) >= 6 and key in context_key) or (len(full_key) >= 6 and full_key in context_key):
        return True, "reference text found"
    # One word beside math ("+ \text{const.}") is not a prose answer; a one-word answer ("\text{Impossible}") is.
    if prose and (len(set(prose)) >= 2 or (ref is None and not re.sub(r"\\text\s*\{[^{}]*\}", "", ref_text).strip())):
        recall, negation_ok = keyword_recall(" ".join(prose) + " " + answer, ev.context)
        if recall >= 0.75 and negation_ok:
            return True, f"prose answer: {recall:.0%} of key words present"
        return False, f"prose answer: {recall:.0%} of key words present{'' if negation_ok else ', negation missing'}"
    if ref is None and lead is None:
        # math_verify is lenient on what it cannot parse: a bare value, or symbols the reference lacks, never match.
        ref_ids = _identifiers(ref_text)
        for raw, prep in cands[:20]:
            ids = _identifiers(prep)
            if is_trivial(prep) or (ref_ids and not (ids and ids <= ref_ids)):
                continue
            if math_verify_equal(ref_text, prep):
                return True, "math_verify"
        return False, "reference not parseable; no text match"
    return False, why


def _symbolic(
    ref: Any, ref_text: str, cands: list[tuple[str, str]], rtol: float, defs: Defs | None = None, symbolic: bool = True
) -> tuple[bool, str]:
    ref_ids = _identifiers(ref_text)
    allowed = ref_ids | {"\\mu"}
    def_ids = set().union(*(_identifiers(k) for k in defs)) if defs else set()
    tried = substituted = 0
    for raw, prep in cands:
        ids = _identifiers(prep)
        if ref.free_symbols and not (ids and ids <= allowed):
            # Symbols the reference lacks but the response defines ("where $d = 1/N$"): substitute them.
            # A bare symbol is not substituted: its definition is a candidate of its own (or a copy of the question).
            if defs and ids and ids - allowed <= def_ids and substituted < _MAX_DEF_SUBSTITUTIONS and not is_trivial(prep):
                substituted += 1
                cand = to_sympy(prep)
                for variant in substitute_definitions(cand, ref, defs) if cand is not None else []:
                    same, why = equivalent(ref, variant, rtol=rtol, symbolic=symbolic)
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
        same, why = equivalent(ref, cand, rtol=rtol, symbolic=symbolic)
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
