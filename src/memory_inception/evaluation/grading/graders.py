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

import contextlib
import logging
import math
import random
import re
import signal
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from memory_inception.datasets.latex_spans import (
    extract_final_answer,
    find_boxed,
    match_bracket,
    math_segments,
    split_top_level,
    strip_boxed,
)

if TYPE_CHECKING:
    from memory_inception.datasets.reasoning_problems import Problem


logger = logging.getLogger(__name__)


__all__ = [
    "Grade",
    "deadline",
    "equivalent",
    "extract_final_answer",
    "find_boxed",
    "grade",
    "grade_hardmath",
    "grade_physics",
    "split_top_level",
    "strip_boxed",
]


DEFAULT_RTOL = 1e-2


_EXACT_RTOL = 1e-6


_PARSE_SECONDS = 3.0


_SIMPLIFY_SECONDS = 2.0


_MAX_SIMPLIFY_OPS = 40


@dataclass
class Grade:
    """Outcome of grading one response: all parts right?, fraction right, what was read, why."""

    correct: bool
    score: float
    extracted: str | None
    detail: str


class GradingTimeout(Exception):
    """Raised inside a grader when a bounded step runs past its deadline (never escapes a grader)."""

    def __init__(self, message: str, owner: object = None) -> None:
        super().__init__(message)
        self.owner = owner


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[object]:
    """Raise :class:`GradingTimeout` in the block after ``seconds`` (main thread only; else a no-op).

    Yields a token; the exception's ``owner`` is the token of the deadline that fired, so a nested
    handler can tell its own timeout from an outer one (and let the outer one propagate). Nested
    deadlines never extend an outer one: the outer timer is re-armed with its remaining time on exit.
    """
    token = object()
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not usable or seconds <= 0:
        yield token
        return
    start = time.monotonic()
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if 0 < outer_left <= seconds:
        yield token  # the outer, earlier timer governs
        return

    def _raise(signum: int, frame: Any) -> None:
        raise GradingTimeout(f"step exceeded {seconds:g} s", token)

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield token
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-4))


def _bounded(fn: Callable[[], Any], seconds: float, default: Any) -> Any:
    """Run ``fn`` under a deadline; on its own timeout or any error return ``default``."""
    try:
        with deadline(seconds) as token:
            return fn()
    except GradingTimeout as exc:
        if exc.owner is not token:
            raise
        logger.debug("bounded step timed out after %.1f s", seconds)
        return default
    except RecursionError:
        return default
    except Exception as exc:  # sympy / parser errors on arbitrary input
        logger.debug("bounded step failed: %s: %s", type(exc).__name__, exc)
        return default


def _run_guarded(fn: Callable[[], Grade], timeout: float) -> Grade:
    """Run a whole grading call with a time limit that works on and off the main thread."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        try:
            with deadline(timeout) as token:
                return fn()
        except GradingTimeout as exc:
            if exc.owner is not token:
                raise
            return Grade(False, 0.0, None, f"grading timed out after {timeout:g} s")
        except Exception as exc:
            logger.warning("grader failed: %s: %s", type(exc).__name__, exc)
            return Grade(False, 0.0, None, f"grader error {type(exc).__name__}: {exc}")
    box: list[Grade] = []

    def work() -> None:
        try:
            box.append(fn())
        except Exception as exc:
            box.append(Grade(False, 0.0, None, f"grader error {type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=work, daemon=True, name="grader")
    worker.start()
    worker.join(timeout)
    if not box:
        return Grade(False, 0.0, None, f"grading timed out after {timeout:g} s (worker abandoned)")
    return box[0]


_RELATIONS = re.compile(
    r"\\implies|\\Rightarrow|\\Longrightarrow|\\rightarrow|\\to(?![a-zA-Z])|\\approx|\\simeq|\\sim(?![a-zA-Z])"
    r"|\\equiv|\\cong|\\propto|\\leq?(?![a-zA-Z])|\\geq?(?![a-zA-Z])|\\ll(?![a-zA-Z])|\\gg(?![a-zA-Z])"
    r"|\\l[ge]qslant|≈|≤|≥|<|>|=|:="
)


_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textrm|mbox|rm|textnormal|textit|mathit|operatorname\*?)\s*\{([^{}]*)\}")


_UNIT_TOKENS = set(
    """m cm mm km nm um μm pm fm A Å AA s ms us μs ns ps sec min h hr hrs hour hours yr year years day days
    kg g mg J kJ MJ eV meV keV MeV GeV TeV erg ergs cal kcal W kW MW mW V kV mV MV Ω ohm ohms Omega kOhm
    K mK Pa kPa MPa atm bar mbar torr Torr mmHg N kN dyn dyne dynes C mC uC μC nC pC F mF uF μF nF pF
    H mH uH μH T mT G gauss Gauss Hz kHz MHz GHz THz rad mrad sr deg degree degrees mol L mL l
    barn barns b mb Ci Bq Wb lm lx cd rpm c mu micro lines rulings cycles fringes photons
    electrons counts per second seconds meters meter cm^3 m^3 m^2 cm^2 kgm Ns Nm Js""".split()
)


def _norm_latex(s: str) -> str:
    """Cheap clean-ups shared by all parsers (spacing, \\left/\\right, lost backslashes, \\dfrac, ...)."""
    s = s.replace("&nbsp;", " ").replace("\u2212", "-").replace("×", "\\times ").replace("·", "\\cdot ").replace("\ufeff", "")
    s = s.replace("−", "-").replace("μ", "\\mu ").replace("Ω", "\\Omega ").replace("π", "\\pi ")
    s = re.sub(r"\\(?:displaystyle|left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\[ ,;:!]|\\q?quad|~", " ", s)
    s = re.sub(r"(?<![\\A-Za-z])(frac|sqrt|epsilon|boxed)(?=[{\s\[]|$)", r"\\\1", s)
    s = re.sub(r"\\operatorname\{(a?)(sin|cos|tan|sinh|cosh|tanh)\}", lambda m: ("\\arc" if m.group(1) else "\\") + m.group(2), s)
    s = s.replace("\\varepsilon", "\\epsilon").replace("\\cdotp", "\\cdot")
    s = re.sub(r"(\d)\s*E(?=[_A-Za-z\\{(])", r"\1 E", s)
    s = re.sub(r"_\s*(\\[A-Za-z]+|[A-Za-z0-9])", r"_{\1}", s)  # latex2sympy trips on "m_e c"
    # Function names written without a backslash ("exp(-x)" would be read as e*x*p*(-x)).
    s = re.sub(r"(?<![\\A-Za-z])(exp|ln|log|sin|cos|tan|sinh|cosh|tanh)\s*(?=\()", r"\\\1", s)
    # "2d\sin" is read as a symbol "dsin" by latex2sympy: separate a command from a preceding letter.
    s = re.sub(r"(?<=[A-Za-z0-9])\\(?=[A-Za-z])", r" \\", s)
    return s.strip()


def _strip_lhs(s: str) -> str:
    """Keep what follows the last top-level relation (=, \\approx, \\implies, ...)."""
    pieces = _split_relations(s)
    for piece in reversed(pieces):
        if piece.strip():
            return piece.strip()
    return s.strip()


def _split_relations(s: str) -> list[str]:
    """Top-level pieces of ``a = b \\approx c`` (the relations dropped)."""
    return _relation_chain(s)[0]


def _strip_units(s: str) -> str:
    """Remove \\text{..}-style words, degree signs and percent signs (units compared by number only)."""

    def repl(m: re.Match[str]) -> str:
        inner = m.group(1).strip()
        if inner in ("e", "d", "i"):
            return inner
        if re.fullmatch(r"[A-Za-z]+", inner) and m.group(0).startswith("\\operatorname"):
            return "\\operatorname{" + inner + "}"
        return " "

    s = _TEXT_CMD.sub(repl, s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\%|%|\\,|\\degree", " ", s)
    return s.strip().rstrip(".,;").strip()


_NUMBER = r"[-+]?\s*(?:\d+(?:\.\d*)?|\.\d+)"


_SCI = re.compile(
    rf"^\s*\(?\s*({_NUMBER})\s*\)?\s*(?:(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{{?\s*([-+]?\s*\d+)\s*\}}?|[eE]([-+]?\d+))?"
)


def _leading_number(s: str) -> tuple[float, str] | None:
    """``'2.6 \\times 10^{3} J/K'`` -> ``(2600.0, 'J/K')``; None if ``s`` does not start with a number."""
    m = _SCI.match(s)
    if not m:
        return None
    mant = float(m.group(1).replace(" ", ""))
    exp = m.group(2) or m.group(3)
    value = mant * 10.0 ** int(exp.replace(" ", "")) if exp else mant
    tail = s[m.end() :].strip()
    power = re.match(r"^\^\s*\{?\s*([-+]?\s*\d+(?:\.\d+)?)\s*\}?", tail) if not exp else None
    if power:  # "10^{-2} cm/s" is 0.01 cm/s, not 10 with a unit power; "-2^{2}" is -4 as in LaTeX
        try:
            value = math.copysign(abs(mant) ** float(power.group(1).replace(" ", "")), mant)
        except OverflowError:
            return None
        return value, tail[power.end() :].strip()
    return value, tail


def _is_unit_tail(tail: str) -> bool:
    """True when ``tail`` is empty or only unit symbols (m, kg, GeV/c, \\mu F, cm^{-1}, ...)."""
    t = re.sub(r"\\(mu|Omega|AA|circ|ohm)(?![a-zA-Z])", r" \1 ", tail)
    t = re.sub(r"[{}()\s/.*·]|\\cdot|\^\s*\{?-?\d+\}?|-1", " ", t)
    toks = t.split()
    return all(tok in _UNIT_TOKENS for tok in toks)


@lru_cache(maxsize=4096)
def _parse_cached(latex: str) -> Any:
    import sympy
    from latex2sympy2_extended import latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig

    config = ConversionConfig(interpret_as_mixed_fractions=False, lowercase_symbols=False)
    if "\\int" not in latex and not re.search(r"\\frac\s*\{\s*d", latex):
        # A symbol d before a command ("2d \sin\theta") is read as a differential "dsin"; brace it.
        latex = re.sub(r"(?<![\\A-Za-z{])d(?=\s*\\[A-Za-z])", "{d}", latex)
    # "\sin\theta/m" means sin(theta)/m, not sin(theta/m): parenthesize a one-token argument before "/".
    latex = re.sub(r"(\\(?:a?sin|a?cos|a?tan|arcsin|arccos|arctan|sinh|cosh|tanh|ln|log|exp))\s*(\\[A-Za-z]+|[A-Za-z0-9])(?=\s*/)", r"\1(\2)", latex)
    try:
        expr = latex2sympy(latex, conversion_config=config)
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


def _to_sympy(latex: str) -> Any:
    """LaTeX (already cleaned) -> sympy expression, or None; bounded in time."""
    if not latex or len(latex) > 2000:
        return None
    return _bounded(lambda: _parse_cached(latex), _PARSE_SECONDS, None)


def _prepare(part: str) -> str:
    """One answer part as text ready to parse: boxed removed, LHS dropped, units stripped."""
    s = _norm_latex(strip_boxed(part))
    s = s.strip().strip("$").strip()
    s = _strip_lhs(s)
    s = re.split(r"\\text\s*\{\s*(?:for|if|when|where|at|with|as|in|and|or)(?![a-zA-Z])", s)[0]
    s = _strip_units(s)
    return s.strip().strip("$").strip().rstrip(".,;").strip()


def _sym_key(name: str) -> str:
    """Symbol names compared loosely: ``a_{1}`` == ``a_1``, ``\\varepsilon`` == ``epsilon``."""
    n = re.sub(r"[\\{}\s]", "", name)
    n = n.replace("mathrm", "").replace("var", "", 1) if n.startswith("var") else n.replace("mathrm", "")
    return n


def _real_odd_roots(expr: Any) -> Any:
    import sympy

    def is_odd_root(e: Any) -> bool:
        return bool(e.is_Pow and e.exp.is_Rational and not e.exp.is_Integer and e.exp.q % 2 == 1)

    def real(e: Any) -> Any:
        p = e.exp.p
        return sympy.sign(e.base) ** p * sympy.Abs(e.base) ** e.exp

    return expr.replace(is_odd_root, real)


def _value(expr: Any, subs: dict[Any, Any]) -> Any:
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

    return _bounded(run, _PARSE_SECONDS, None)


def _close(a: Any, b: Any, rtol: float, atol: float = 0.0) -> bool:
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
) -> tuple[bool, str]:
    """Are two sympy expressions equal within ``rtol`` at every point? Returns (verdict, reason).

    Symbols are matched by loose name (see ``_sym_key``). ``points`` maps names to values; without
    it, ``n_random`` seeded random points in [0.6, 2.4] are used for the reference's symbols. Both the
    principal branch and real odd roots are tried; a symbolic check on small expressions is the
    fallback when no point can be evaluated.
    """
    import sympy

    ref_syms = {_sym_key(s.name): s for s in reference.free_symbols}
    cand_syms = {_sym_key(s.name): s for s in candidate.free_symbols}
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
            a, b = _value(ref_e, rs), _value(cand_e, cs)
            if a is None:
                continue
            checked += 1
            if b is None or not _close(a, b, rtol, atol):
                ok = False
                break
        if checked and ok:
            return True, f"numerically equal at {checked} point(s) ({mode} branch)"
        if not checked:
            break
    else:
        return False, "numeric values differ"
    # No point evaluable: small symbolic check.
    if sympy.count_ops(reference) + sympy.count_ops(candidate) <= _MAX_SIMPLIFY_OPS:
        same = _bounded(lambda: sympy.simplify(reference - candidate) == 0, _SIMPLIFY_SECONDS, False)
        if same:
            return True, "symbolically equal (simplify)"
    return False, "could not evaluate the reference; symbolic check failed"


def _math_verify(ref: str, cand: str) -> bool:
    """math_verify's own equivalence, with its signal timeouts off (ours is active instead)."""

    def run() -> bool:
        from math_verify import parse, verify

        g = parse(f"${ref}$", parsing_timeout=None)  # type: ignore[arg-type]
        p = parse(f"${cand}$", parsing_timeout=None)  # type: ignore[arg-type]
        return bool(g and p and verify(g, p, timeout_seconds=None))  # type: ignore[arg-type]

    return bool(_bounded(run, _SIMPLIFY_SECONDS, False))


def _text_key(s: str) -> str:
    """Loose text form for string comparison: no spacing, braces, fonts, \\left/\\right; lower case."""
    s = _norm_latex(s)
    # Derivative notation: "\frac{\partial f}{\partial x}" and "\frac{\partial}{\partial x} f" are one form.
    s = re.sub(
        r"\\frac\s*\{\s*\\partial\s*(\^\s*\{?\s*\d+\s*\}?)?\s*([^{}\s][^{}]*?)\s*\}\s*\{(\s*\\partial[^{}]*)\}",
        lambda m: "\\frac{\\partial" + (m.group(1) or "") + "}{" + m.group(3) + "}" + m.group(2),
        s,
    )
    s = re.sub(r"\\(?:text|mathrm|textrm|mbox|rm|mathbf|boldsymbol|bf|vec|bm|mathit|textbf|operatorname)(?![a-zA-Z])\s*", "", s)
    s = s.replace("\\cdot", "").replace("\\times", "*")
    s = re.sub(r"\\(?:begin|end)\s*\{[a-zA-Z*]*\}(?:\{[a-z|]*\})?|\\\\|&|\(\d\)", " ", s)
    return re.sub(r"[\s{}$\\,.;]", "", s).lower()


_STOPWORDS = set(
    """the and for are was were with that this from into onto than then there their these those its
    has have had been being which when where while what who whom will would shall should can could may
    might must also both each such only very more most less least per via due all any some other""".split()
)


_NEGATIONS = {"not", "no", "never", "cannot", "can't", "doesn't", "isn't", "won't", "none", "neither", "nor", "without"}


def _words(s: str) -> list[str]:
    s = re.sub(r"\\[a-zA-Z]+", " ", s)
    return [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'\-]+", s)]


def _content_words(s: str) -> list[str]:
    return [w for w in _words(s) if len(w) >= 3 and w not in _STOPWORDS and w not in _NEGATIONS]


_PROSE_SYNONYMS = [
    (re.compile(r"\bimpossible\b", re.IGNORECASE), "not possible"),
    (
        re.compile(
            r"\b(?:cannot|can't|can\s+not|could\s+not|couldn't|will\s+not|won't|does\s+not|do\s+not)\s+"
            r"(?:take\s+place|occur|happen|proceed)\b",
            re.IGNORECASE,
        ),
        "not possible",
    ),
    (re.compile(r"\b(?:forbidden|disallowed|not\s+allowed)\b", re.IGNORECASE), "not possible"),
]


def _canonical_prose(s: str) -> str:
    """Phrases of (im)possibility in one form: "impossible", "cannot take place", "forbidden" -> "not possible"."""
    for pattern, repl in _PROSE_SYNONYMS:
        s = pattern.sub(repl, s)
    return s


def _keyword_recall(reference: str, text: str) -> tuple[float, bool]:
    """Fraction of the reference's content words found in ``text`` (5-letter prefixes), negation agrees?"""
    reference, text = _canonical_prose(reference), _canonical_prose(text)
    ref_words = _content_words(reference)
    have = {w[:5] for w in _words(text)}
    found = sum(w[:5] in have for w in ref_words)
    ref_neg = any(w in _NEGATIONS for w in _words(reference))
    txt_neg = any(w in _NEGATIONS for w in _words(text))
    return found / max(1, len(ref_words)), (not ref_neg or txt_neg)


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


def grade_hardmath(problem: Problem, response: str | None, *, rtol: float = DEFAULT_RTOL, timeout: float = 20.0) -> Grade:
    """Grade a HARDMath response (or bare answer) against the problem's stored answers; never raises."""
    if not isinstance(response, str) or not response.strip():
        return Grade(False, 0.0, None, "empty or non-text response")
    return _run_guarded(lambda: _grade_hardmath(problem, response, rtol), timeout)


def _grade_hardmath(problem: Problem, response: str, rtol: float) -> Grade:
    kind, extra = problem.kind, problem.extra
    if kind == "polynomial_roots":
        return _grade_roots(problem, response, rtol)
    parts, extracted = _final_parts(response, len(problem.answers))
    if not parts:
        return Grade(False, 0.0, extracted, "no final answer found")
    # An unevaluated integral is the question restated, not an answer (evaluated, it equals the true value).
    cands = [None if re.search(r"\\i+nt(?![a-zA-Z])", p) else _to_sympy(_prepare(p)) for p in parts]
    if kind == "nondimensionalization_numeric":
        ref = float(_leading_number(_prepare(problem.answers[0]))[0])  # type: ignore[index]
        precision = extra.get("precision") or 2
        for p, c in zip(reversed(parts), reversed(cands)):
            val = _numeric_of(p, c)
            if val is None:
                continue
            ok = abs(val - ref) <= 0.5 * 10.0 ** (-precision) + 1e-12 or abs(val - ref) <= rtol * abs(ref)
            return Grade(ok, float(ok), extracted, f"epsilon {val:.6g} vs reference {ref:.6g} ({'ok' if ok else 'off'})")
        return Grade(False, 0.0, extracted, "final answer is not a number")
    refs = [_to_sympy(_prepare(a)) for a in problem.answers]
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


def _numeric_of(part: str, parsed: Any) -> float | None:
    prepared = _prepare(part)
    lead = _leading_number(prepared)
    if lead is not None and _is_unit_tail(lead[1]):
        return lead[0]
    if parsed is not None and not parsed.free_symbols:
        v = _value(parsed, {})
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
    cands = [c for c in (_to_sympy(_prepare(p)) for p in parts) if c is not None]
    if not cands:
        return Grade(False, 0.0, extracted, "no parseable root")
    fractions, reasons = [], []
    for regime, ref_parts in zip(("small", "large"), ref_lists):
        point = extra.get(f"{regime}_eval_point") or (0.1 if regime == "small" else 10.0)
        refs = [_eps_value(_to_sympy(_prepare(r)), point) for r in ref_parts]
        refs = [r for r in refs if r is not None]
        if not refs:
            return Grade(False, 0.0, extracted, f"reference {regime} roots could not be evaluated (dataset issue)")
        values = [_eps_value(c, point) for c in cands]
        table = [[v is not None and _close(r, v, rtol, atol=rtol * 1e-3) for v in values] for r in refs]
        got = _max_matching(table)
        fractions.append(got / len(refs))
        reasons.append(f"{regime} eps={point:g}: {got}/{len(refs)} roots")
    score = sum(fractions) / len(fractions)
    return Grade(score == 1.0, score, extracted, "; ".join(reasons))


def _eps_value(expr: Any, point: float) -> Any:
    """Value of a root formula at epsilon = point (None if it has other symbols or fails)."""
    if expr is None:
        return None
    syms = {_sym_key(s.name): s for s in expr.free_symbols}
    if set(syms) - {"epsilon"}:
        return None
    return _value(expr, {s: point for s in syms.values()})


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
    return _run_guarded(lambda: _grade_physics(problem, response, rtol, require_boxed), timeout)


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
        seg = _norm_latex(seg)
        seg = re.sub(r"\\(?:begin|end)\{[a-z*]*\}", "\n", seg)
        joined = re.sub(r"\\\\|\n|&", " ", seg).strip()
        cands.append(joined)
        cands += _split_relations(joined)
        for line in re.split(r"\\\\|\n|\\quad|\\qquad|\\text\{\s*(?:and|or|,)\s*\}", seg):
            line = line.replace("&", " ").strip()
            cands.append(line)
            for piece in split_top_level(line):
                cands.append(piece)
                cands += _split_relations(piece)
    return _dedupe([c for c in cands if c.strip()]), final, True


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for it in items:
        k = it.strip()
        if k and k not in seen:
            seen.add(k)
            out.append(k)
    return out


def _identifiers(s: str) -> set[str]:
    """Commands and single letters used in ``s`` (a cheap pre-filter before parsing a candidate)."""
    words: set[str] = set()
    for w in re.findall(r"\\?[A-Za-z]+", s):
        words.update([w] if w.startswith("\\") else list(w))
    skip = {"\\frac", "\\sqrt", "\\cdot", "\\times", "\\ln", "\\log", "\\exp", "\\sin", "\\cos", "\\tan", "\\pi", "e", "\\left", "\\right"}
    return {w for w in words if w not in skip}


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
    prepared = [(c, _prepare(c)) for c in cands]
    prepared += [(raw, _drop_function_args(prep)) for raw, prep in prepared if _drop_function_args(prep) != prep]
    context = response if scanned else " ; ".join(cands)
    defs = _definitions(response)
    results = [_physics_match(ans, prepared, context, rtol, defs) for ans in problem.answers]
    n_ok = sum(ok for ok, _ in results)
    score = n_ok / len(problem.answers)
    detail = ("scanned unboxed text; " if scanned else "") + "; ".join(
        f"[{i + 1}] {'ok' if ok else 'missing'} ({why})" for i, (ok, why) in enumerate(results)
    )
    return Grade(n_ok == len(problem.answers), score, extracted, detail)


def _prose_words(answer: str) -> list[str]:
    """Content words written as text (inside \\text{...} or bare words), units excluded."""
    blocks = " ".join(re.findall(r"\\text\s*\{([^{}]*)\}", answer))
    answer = re.sub(r"\\(?:begin|end)\s*\{[^{}]*\}", " ", answer)  # environment names are not words
    bare = re.sub(r"\\[a-zA-Z]+|\\text\s*\{[^{}]*\}", " ", answer)
    bare_words = [w for w in re.findall(r"[A-Za-z]{3,}", bare)]
    words = _content_words(blocks) + [w.lower() for w in bare_words if len(w) >= 4]
    return [w for w in words if w not in {u.lower() for u in _UNIT_TOKENS}]


def _listed_values(answer: str) -> list[str]:
    """Comma-separated values of one listed answer; "(x = 1, y = 2)" groups of assignments are opened."""
    out = []
    for part in split_top_level(_norm_latex(answer)):
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


_Defs = dict[str, list[str]]


def _table_cells(answer: str) -> list[str] | None:
    """The cells of a reference given as a LaTeX array/tabular (None if it is not one)."""
    m = re.search(r"\\begin\{(array|tabular)\}(?:\{[^{}]*\})?(.*?)\\end\{\1\}", answer, re.S)
    if not m:
        return None
    body = re.sub(r"\\hline", " ", m.group(2))
    return [c.strip() for row in re.split(r"\\\\", body) for c in row.split("&") if c.strip()]


def _physics_match(answer: str, prepared: list[tuple[str, str]], context: str, rtol: float, defs: _Defs | None = None) -> tuple[bool, str]:
    cells = _table_cells(answer)
    if cells:  # a table: every cell's text must appear in the response
        context_key = _text_key(context)
        found = sum(_text_key(c) in context_key for c in cells)
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
    answer: str, prepared: list[tuple[str, str]], context: str, rtol: float, defs: _Defs | None = None, loose: bool = True
) -> tuple[bool, str]:
    """One listed value vs the candidates. ``loose=False`` skips the text-containment / prose fallbacks."""
    ok, why = _physics_match_text(answer, prepared, context, rtol, defs, loose)
    if ok or not loose:
        return ok, why
    # "V(\mathbf{r})" and "V" name the same function: retry with coordinate arguments dropped (math only).
    bare = _drop_function_args(_norm_latex(answer))
    if bare != _norm_latex(answer):
        ok2, why2 = _physics_match_text(bare, prepared, context, rtol, defs, loose=False)
        if ok2:
            return True, why2 + " (function arguments dropped)"
    return ok, why


def _physics_match_text(
    answer: str, prepared: list[tuple[str, str]], context: str, rtol: float, defs: _Defs | None, loose: bool
) -> tuple[bool, str]:
    ref_text = _prepare(answer)
    key = _text_key(ref_text)
    full_key = _text_key(answer)
    for raw, prep in prepared:
        if key and (_text_key(prep) == key or _text_key(raw) == full_key):
            return True, "same text"
    prose = _prose_words(answer)
    why = "no match"
    lead = _leading_number(ref_text)
    ref = None
    if lead is not None and _is_unit_tail(lead[1]):
        ref_val = lead[0]
        for raw, prep in prepared:
            got = _leading_number(prep)
            if got is None or not _is_unit_tail(got[1]):
                continue
            values = [got[0], got[0] / 100.0] if "%" in raw else [got[0]]
            if any(_close_float(ref_val, v, rtol) for v in values):
                return True, f"number {got[0]:.6g} ~ {ref_val:.6g}"
        why = f"no number within {rtol:g} of {ref_val:.6g}"
        if not prose:
            return False, why
    else:
        ref = _to_sympy(ref_text)
        if ref is not None:
            same, why = _physics_symbolic(ref, ref_text, prepared, rtol, defs)
            if same:
                return True, why
    if not loose:
        return False, why
    # Not decided as math: the reference text inside the candidate text, or prose keywords.
    context_key = _text_key(context)
    if (len(key) >= 6 and key in context_key) or (len(full_key) >= 6 and full_key in context_key):
        return True, "reference text found"
    if prose and (ref is None or len(prose) >= 2):
        recall, negation_ok = _keyword_recall(" ".join(prose) + " " + answer, context)
        if recall >= 0.75 and negation_ok:
            return True, f"prose answer: {recall:.0%} of key words present"
        return False, f"prose answer: {recall:.0%} of key words present{'' if negation_ok else ', negation missing'}"
    if ref is None and lead is None:
        for raw, prep in prepared[:20]:
            if _math_verify(ref_text, prep):
                return True, "math_verify"
        return False, "reference not parseable; no text match"
    return False, why


def _physics_symbolic(
    ref: Any, ref_text: str, prepared: list[tuple[str, str]], rtol: float, defs: _Defs | None = None
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
                cand = _to_sympy(prep)
                for variant in _substitute_definitions(cand, ref, defs) if cand is not None else []:
                    same, why = equivalent(ref, variant, rtol=rtol)
                    if same:
                        return True, why + " after substituting the response's definitions"
            continue
        if not ref.free_symbols:
            got = _leading_number(prep)
            if got is not None and _is_unit_tail(got[1]):
                if _close_float(_as_float(ref), got[0], rtol):
                    return True, "number matches exact reference"
                continue
            if ids:
                continue
        cand = _to_sympy(prep)
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


_COORD = r"(?:\\(?:mathbf|vec|boldsymbol|bm)\s*\{\s*[rx]\s*\}|[rxyzt])'?"


_FUNC_ARGS = re.compile(
    r"((?<![\\A-Za-z])(?:\\(?:mathbf|vec|boldsymbol|bm)\s*\{[A-Za-z]\}|\\(?:psi|phi|varphi|rho|sigma|Phi|Psi)|[A-Za-z])"
    r"(?:_\{[^{}]*\}|_[A-Za-z0-9])?)\s*\(\s*" + _COORD + r"(?:\s*,\s*" + _COORD + r")*\s*\)"
)


def _drop_function_args(s: str) -> str:
    """``V(\\mathbf{r}) e^{ikz}`` -> ``V e^{ikz}``: a one-letter function of coordinates (r, x, y, z, t) only."""
    return _FUNC_ARGS.sub(r"\1", s)


_DEF_LHS = re.compile(r"(?:\\[A-Za-z]+|[A-Za-z])(?:_\{[A-Za-z0-9]+\}|_[A-Za-z0-9])?")


_NOT_SYMBOLS = {"\\sin", "\\cos", "\\tan", "\\exp", "\\ln", "\\log", "\\sqrt", "\\frac", "\\cdot", "\\times", "\\pi", "\\infty"}


def _relation_chain(s: str) -> tuple[list[str], list[str]]:
    """Top-level pieces of ``a = b \\approx c`` and the relations between them."""
    pieces, rels, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        ch = s[i]
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth = max(0, depth - 1)
        elif depth == 0:
            m = _RELATIONS.match(s, i)
            if m:
                pieces.append(s[start:i])
                rels.append(m.group(0))
                start = i = m.end()
                continue
        i += 1
    pieces.append(s[start:])
    return [p.strip() for p in pieces], rels


def _definitions(response: str) -> _Defs:
    """Equalities ``X = expr`` the response states, X a single symbol (``d``, ``Z_1``, ``\\omega_l``).

    Only chains whose relations are all ``=`` (or ``:=``, ``\\equiv``) count; every right-hand piece is a
    definition of X. Keys are the normalized LHS text.
    """
    defs: _Defs = {}
    for seg in math_segments(response):
        seg = _norm_latex(seg)
        seg = re.sub(r"\\(?:begin|end)\{[a-z*]*\}|\\tag\{[^{}]*\}", "\n", seg)
        for line in re.split(r"\\\\|\n|\\quad|\\qquad|&", seg):
            for piece in split_top_level(line):
                pieces, rels = _relation_chain(piece)
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


def _substitute_definitions(cand: Any, ref: Any, defs: _Defs) -> list[Any]:
    """``cand`` with symbols absent from ``ref`` replaced by their definitions (up to 3 rounds).

    Two variants: the first and the last stated definition of each symbol. A variant is returned only
    when every remaining symbol is one of the reference's.
    """
    ref_keys = {_sym_key(x.name) for x in ref.free_symbols}
    parsed: dict[str, list[Any]] = {}
    for lhs, rhss in defs.items():
        lhs_expr = _to_sympy(lhs)
        if lhs_expr is None or not lhs_expr.is_Symbol:
            continue
        key = _sym_key(lhs_expr.name)
        if key in ref_keys:
            continue  # never rewrite the reference's own symbols
        for rhs in rhss:
            e = _to_sympy(_strip_units(rhs))
            if e is not None and key not in {_sym_key(x.name) for x in e.free_symbols}:
                parsed.setdefault(key, []).append(e)
    if not parsed:
        return []
    out = []
    for pick in (0, -1):
        expr = cand
        for _ in range(3):
            subs = {x: parsed[_sym_key(x.name)][pick] for x in expr.free_symbols if _sym_key(x.name) in parsed}
            if not subs:
                break
            expr = _bounded(lambda e=expr, m=subs: e.xreplace(m), _PARSE_SECONDS, None)
            if expr is None:
                break
        if expr is not None and {_sym_key(x.name) for x in expr.free_symbols} <= ref_keys and expr is not cand:
            if all(expr != o for o in out):
                out.append(expr)
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


def _as_float(expr: Any) -> float:
    v = _value(expr, {})
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
