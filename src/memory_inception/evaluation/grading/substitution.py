"""What a PHYSICS response states about its own symbols: definitions (``where $d = 1/N$``) substituted
into candidates, and one-letter functions of coordinates written without their arguments."""

from __future__ import annotations

import re
from typing import Any

from memory_inception.datasets.latex_spans import math_segments, split_top_level
from memory_inception.evaluation.grading.normalize import (
    norm_latex,
    relation_chain,
    strip_units,
)
from memory_inception.evaluation.grading.parsing import sym_key, to_sympy
from memory_inception.evaluation.grading.timeouts import PARSE_SECONDS, bounded

#: Symbol (normalized LHS text) -> the right-hand sides the response states for it.
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
