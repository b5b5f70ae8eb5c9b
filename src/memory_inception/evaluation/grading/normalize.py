"""LaTeX clean-up before parsing: spacing and fonts, relations and left-hand sides, units, leading numbers."""

from __future__ import annotations

import math
import re

from memory_inception.datasets.latex_spans import strip_boxed

_RELATIONS = re.compile(
    r"\\implies|\\Rightarrow|\\Longrightarrow|\\rightarrow|\\to(?![a-zA-Z])|\\approx|\\simeq|\\sim(?![a-zA-Z])"
    r"|\\equiv|\\cong|\\propto|\\leq?(?![a-zA-Z])|\\geq?(?![a-zA-Z])|\\ll(?![a-zA-Z])|\\gg(?![a-zA-Z])"
    r"|\\l[ge]qslant|≈|≤|≥|<|>|=|:="
)


_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textrm|mbox|rm|textnormal|textit|mathit|operatorname\*?)\s*\{([^{}]*)\}")


#: Words and symbols that may follow a number as its unit (units are compared by number only).
UNIT_TOKENS = set(
    """m cm mm km nm um μm pm fm A Å AA s ms us μs ns ps sec min h hr hrs hour hours yr year years day days
    kg g mg J kJ MJ eV meV keV MeV GeV TeV erg ergs cal kcal W kW MW mW V kV mV MV Ω ohm ohms Omega kOhm
    K mK Pa kPa MPa atm bar mbar torr Torr mmHg N kN dyn dyne dynes C mC uC μC nC pC F mF uF μF nF pF
    H mH uH μH T mT G gauss Gauss Hz kHz MHz GHz THz rad mrad sr deg degree degrees mol L mL l
    barn barns b mb Ci Bq Wb lm lx cd rpm c mu micro lines rulings cycles fringes photons
    electrons counts per second seconds meters meter cm^3 m^3 m^2 cm^2 kgm Ns Nm Js""".split()
)


def norm_latex(s: str) -> str:
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


def relation_chain(s: str) -> tuple[list[str], list[str]]:
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


def split_relations(s: str) -> list[str]:
    """Top-level pieces of ``a = b \\approx c`` (the relations dropped)."""
    return relation_chain(s)[0]


def _strip_lhs(s: str) -> str:
    """Keep what follows the last top-level relation (=, \\approx, \\implies, ...)."""
    pieces = split_relations(s)
    for piece in reversed(pieces):
        if piece.strip():
            return piece.strip()
    return s.strip()


def strip_units(s: str) -> str:
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


def leading_number(s: str) -> tuple[float, str] | None:
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


def is_unit_tail(tail: str) -> bool:
    """True when ``tail`` is empty or only unit symbols (m, kg, GeV/c, \\mu F, cm^{-1}, ...)."""
    t = re.sub(r"\\(mu|Omega|AA|circ|ohm)(?![a-zA-Z])", r" \1 ", tail)
    t = re.sub(r"[{}()\s/.*·]|\\cdot|\^\s*\{?-?\d+\}?|-1", " ", t)
    toks = t.split()
    return all(tok in UNIT_TOKENS for tok in toks)


def prepare(part: str) -> str:
    """One answer part as text ready to parse: boxed removed, LHS dropped, units stripped."""
    s = norm_latex(strip_boxed(part))
    s = s.strip().strip("$").strip()
    # A condition in words ("\text{at} r = a", "\text{for } x > 0") is cut before the left-hand side goes, so
    # the value is what precedes it, not the condition's right-hand side.
    head = re.split(r"\\text\s*\{\s*(?:for|if|when|where|at|with|as|in|and|or)(?![a-zA-Z])", s)[0]
    s = _strip_lhs(head if head.strip() else s)
    s = strip_units(s)
    # An additive constant in words ("+ \text{const.}") leaves a dangling operator once the words go: drop it.
    s = re.sub(r"\s*[-+]\s*$", "", s.strip().strip("$").strip().rstrip(".,;"))
    return s.strip()


def text_key(s: str) -> str:
    """Loose text form for string comparison: no spacing, braces, fonts, \\left/\\right; lower case."""
    s = norm_latex(s)
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
