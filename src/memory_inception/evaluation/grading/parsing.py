"""LaTeX -> sympy (latex2sympy2_extended, plain sympy syntax as fallback), cached and bounded in time."""

from __future__ import annotations

import re
from typing import Any

from memory_inception.evaluation.grading.timeouts import PARSE_SECONDS, GradingTimeout, bounded


#: A symbol with primes before or after its subscript: ``\\theta''``, ``E'``, ``x'_1``, ``x_{1}'``.
_PRIMED = re.compile(r"(\\[A-Za-z]+|(?<![\\A-Za-z])[A-Za-z])('*)(?:_\{([A-Za-z0-9]+)\}|_([A-Za-z0-9]))?('*)")


def _unprime(m: re.Match[str]) -> str:
    r"""``\theta''`` -> ``\theta_{pp}``, ``x'_1`` -> ``x_{1p}``: the primes become part of the subscript."""
    primes = len(m.group(2)) + len(m.group(5))
    if not primes:
        return m.group(0)
    sub = m.group(3) or m.group(4) or ""
    return f"{m.group(1)}_{{{sub}{'p' * primes}}}"


#: Parsed expressions (None: unparseable) by LaTeX text, at most :data:`_CACHE_SIZE`.
_PARSED: dict[str, Any] = {}
_CACHE_SIZE = 4096


def _parse(latex: str) -> Any:
    import sympy
    from latex2sympy2_extended import latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig

    config = ConversionConfig(interpret_as_mixed_fractions=False, lowercase_symbols=False)
    if "\\int" not in latex and not re.search(r"\\frac\s*\{\s*d", latex):
        # A symbol d before a command ("2d \sin\theta") is read as a differential "dsin"; brace it.
        latex = re.sub(r"(?<![\\A-Za-z{])d(?=\s*\\[A-Za-z])", "{d}", latex)
    # latex2sympy drops primes ("\theta''" -> theta, "E' + E" -> 2E): a primed symbol is a symbol of its own.
    latex = _PRIMED.sub(_unprime, latex)
    # latex2sympy reads "E" / "e" as Euler's number and fails on "E_{0}": a subscripted E or e is a symbol.
    latex = re.sub(r"(?<![\\A-Za-z])([Ee])(?=\s*_)", r"\\mathrm{\1}", latex)
    # "\sin\theta/m" means sin(theta)/m, not sin(theta/m): parenthesize a one-token argument before "/".
    latex = re.sub(r"(\\(?:a?sin|a?cos|a?tan|arcsin|arccos|arctan|sinh|cosh|tanh|ln|log|exp))\s*(\\[A-Za-z]+|[A-Za-z0-9])(?=\s*/)", r"\1(\2)", latex)
    try:
        expr = latex2sympy(latex, conversion_config=config)
    except GradingTimeout:
        raise  # a deadline, not a parse failure: nothing is cached
    except Exception:
        expr = None
    if expr is None or not isinstance(expr, sympy.Basic):
        from sympy.parsing.sympy_parser import (
            convert_xor,
            implicit_multiplication,
            parse_expr,
            standard_transformations,
        )

        if "\\" in latex or not re.fullmatch(r"[\w\s.+\-*/^(){}]*", latex):
            return None
        plain = latex.replace("{", "(").replace("}", ")")
        tr = standard_transformations + (implicit_multiplication, convert_xor)
        expr = parse_expr(plain, transformations=tr, evaluate=True)
    if not isinstance(expr, sympy.Expr):
        return None
    # The imaginary unit is a plain symbol "i" after latex2sympy; HARDMath roots and physics use i = sqrt(-1).
    subs = {s: sympy.I for s in expr.free_symbols if s.name in ("i", "j")}
    return expr.xreplace(subs) if subs else expr


def to_sympy(latex: str) -> Any:
    """LaTeX (already cleaned) -> sympy expression, or None; bounded in time."""
    if not latex or len(latex) > 2000:
        return None
    if latex in _PARSED:
        return _PARSED[latex]
    # A parse that ran out of its own PARSE_SECONDS is stored as None (counted once as a step timeout; a repeat
    # would time out the same way). One the whole call's deadline interrupts raises through and is not stored.
    expr = bounded(lambda: _parse(latex), PARSE_SECONDS, None)
    if len(_PARSED) < _CACHE_SIZE:
        _PARSED[latex] = expr
    return expr


def sym_key(name: str) -> str:
    """Symbol names compared loosely: ``a_{1}`` == ``a_1``, ``\\varepsilon`` == ``epsilon``."""
    n = re.sub(r"[\\{}\s]", "", name)
    n = n.replace("mathrm", "").replace("var", "", 1) if n.startswith("var") else n.replace("mathrm", "")
    return n
