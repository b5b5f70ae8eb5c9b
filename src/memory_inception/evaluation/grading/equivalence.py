"""Are two expressions equal? Numeric checks at shared points first, small symbolic checks as fallback.

Both sides are evaluated at the same points (given, or seeded random points) and must agree within a
relative tolerance. ``sympy.simplify`` runs only when no point can be evaluated and only on expressions
with few operations; ``math_verify.verify`` is a separate fallback for references sympy cannot parse.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from memory_inception.evaluation.grading.parsing import sym_key
from memory_inception.evaluation.grading.timeouts import (
    PARSE_SECONDS,
    SIMPLIFY_SECONDS,
    bounded,
)

#: Relative tolerance of numeric comparisons unless a rule says otherwise.
DEFAULT_RTOL = 1e-2


_MAX_SIMPLIFY_OPS = 40


def _real_odd_roots(expr: Any) -> Any:
    import sympy

    def is_odd_root(e: Any) -> bool:
        return bool(e.is_Pow and e.exp.is_Rational and not e.exp.is_Integer and e.exp.q % 2 == 1)

    def real(e: Any) -> Any:
        p = e.exp.p
        return sympy.sign(e.base) ** p * sympy.Abs(e.base) ** e.exp

    return expr.replace(is_odd_root, real)


def numeric_value(expr: Any, subs: dict[Any, Any]) -> Any:
    """Numeric value of ``expr`` at ``subs`` as an mpmath mpc (huge/tiny magnitudes kept), or None."""
    import mpmath
    import sympy

    def as_float(v: Any) -> Any:
        if isinstance(v, complex):
            return sympy.Float(v.real, 30) + sympy.I * sympy.Float(v.imag, 30)
        return sympy.Float(v, 30)

    def plain(x: Any) -> bool:
        return bool(x.is_Float or x.is_Integer or x.is_zero)

    def run() -> Any:
        e = sympy.N(expr.xreplace({k: as_float(v) for k, v in subs.items()}), 30)
        if e.free_symbols or not e.is_number:
            return None
        re_, im_ = (sympy.N(x, 30) for x in e.as_real_imag())
        if not (plain(re_) and plain(im_)):
            return None
        return mpmath.mpc(mpmath.mpf(re_), mpmath.mpf(im_))

    return bounded(run, PARSE_SECONDS, None)


def values_close(a: Any, b: Any, rtol: float, atol: float = 0.0) -> bool:
    """Two mpmath values within ``atol`` or ``rtol`` (relative to the larger magnitude); non-finite never."""
    import mpmath

    diff = abs(a - b)
    scale = max(abs(a), abs(b))
    if not (mpmath.isfinite(diff) and mpmath.isfinite(scale)):
        return False
    return bool(diff <= atol or diff <= rtol * scale or (scale == 0))


def _sample_points(names: Sequence[str], n: int, seed: str) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{k: rng.uniform(0.6, 2.4) for k in names} for _ in range(n)]


def equivalent(
    reference: Any,
    candidate: Any,
    *,
    rtol: float = DEFAULT_RTOL,
    points: Sequence[dict[str, float]] | None = None,
    n_random: int = 4,
    atol: float = 0.0,
    symbolic: bool = True,
) -> tuple[bool, str]:
    """Are two sympy expressions equal within ``rtol`` at every point? Returns (verdict, reason).

    Symbols are matched by loose name (see ``sym_key``). ``points`` maps names to values; without
    it, ``n_random`` seeded random points in [0.6, 2.4] are used for the reference's symbols. Both the
    principal branch and real odd roots are tried; a symbolic check on small expressions is the
    fallback when no point can be evaluated (skipped with ``symbolic=False``).
    """
    import sympy

    ref_syms = {sym_key(s.name): s for s in reference.free_symbols}
    cand_syms = {sym_key(s.name): s for s in candidate.free_symbols}
    extra = sorted(set(cand_syms) - set(ref_syms))
    if extra:
        return False, f"candidate has symbols {extra} absent from the reference"
    if points is None:
        points = _sample_points(sorted(ref_syms), n_random if ref_syms else 1, "|".join(sorted(ref_syms)))
    for mode in ("principal", "real"):
        ref_e = reference if mode == "principal" else _real_odd_roots(reference)
        cand_e = candidate if mode == "principal" else _real_odd_roots(candidate)
        checked, ok = 0, True
        for pt in points:
            rs = {ref_syms[k]: v for k, v in pt.items() if k in ref_syms}
            cs = {cand_syms[k]: v for k, v in pt.items() if k in cand_syms}
            a, b = numeric_value(ref_e, rs), numeric_value(cand_e, cs)
            if a is None:
                continue
            checked += 1
            if b is None or not values_close(a, b, rtol, atol):
                ok = False
                break
        if checked and ok:
            return True, f"numerically equal at {checked} point(s) ({mode} branch)"
        if not checked:
            break
    else:
        return False, "numeric values differ"
    # No point evaluable: small symbolic check.
    if symbolic and sympy.count_ops(reference) + sympy.count_ops(candidate) <= _MAX_SIMPLIFY_OPS:
        same = bounded(lambda: sympy.simplify(reference - candidate) == 0, SIMPLIFY_SECONDS, False)
        if same:
            return True, "symbolically equal (simplify)"
    return False, "could not evaluate the reference; symbolic check failed"


def math_verify_equal(ref: str, cand: str) -> bool:
    """math_verify's own equivalence, with its signal timeouts off (ours is active instead)."""

    def run() -> bool:
        from math_verify import parse, verify

        g = parse(f"${ref}$", parsing_timeout=None)  # type: ignore[arg-type]
        p = parse(f"${cand}$", parsing_timeout=None)  # type: ignore[arg-type]
        return bool(g and p and verify(g, p, timeout_seconds=None))  # type: ignore[arg-type]

    return bool(bounded(run, SIMPLIFY_SECONDS, False))
