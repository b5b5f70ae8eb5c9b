"""Problems of the two reasoning benchmarks: HARDMath mini and PHYSICS validation.

Data ship in ``memory_inception/data/hardmath`` and ``memory_inception/data/physics`` (see their
SOURCE.md). Loading is deterministic: HARDMath in its numeric key order ("0".."365"), PHYSICS by
subject (alphabetical) and then file order. Grading lives in :mod:`memory_inception.evaluation.grading`.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

from memory_inception.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "Problem",
    "hardmath_kinds",
    "load_hardmath",
    "load_physics",
    "physics_errata",
    "physics_subjects",
]

_HARDMATH_KINDS = (
    "nondimensionalization_symbolic",
    "nondimensionalization_numeric",
    "polynomial_roots",
    "ODE",
    "integral",
)
_PHYSICS_SUBJECTS = ("atomic", "electro", "mechanics", "optics", "quantum", "statistics")
_PHYSICS_NAMES = {
    "atomic": "Atomic Physics",
    "electro": "Electromagnetism",
    "mechanics": "Classical Mechanics",
    "optics": "Optics",
    "quantum": "Quantum Mechanics",
    "statistics": "Thermodynamics & Statistical Mechanics",
}


@dataclass(frozen=True)
class Problem:
    """One benchmark problem with its reference solution and final answer(s)."""

    id: str
    benchmark: str
    kind: str
    question: str
    solution: str
    answers: list[str]
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def hardmath_kinds() -> list[str]:
    """The five HARDMath problem types, in the order of the upstream paper."""
    return list(_HARDMATH_KINDS)


def physics_subjects() -> list[str]:
    """The six PHYSICS subject keys (file prefixes), alphabetical."""
    return list(_PHYSICS_SUBJECTS)


def _data_dir(name: str) -> Any:
    return resources.files("memory_inception") / "data" / name


def _check_names(given: Sequence[str] | str | None, valid: Sequence[str], what: str) -> list[str]:
    if given is None:
        return list(valid)
    if isinstance(given, str):
        given = [given]
    unknown = [g for g in given if g not in valid]
    if unknown:
        raise DataError(f"unknown {what} {unknown}; choose from {list(valid)}")
    return [v for v in valid if v in set(given)]


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise DataError(f"limit must be a non-negative int or None, got {limit!r}")


# ----------------------------------------------------------------------------------- HARDMath


def _none(value: Any) -> Any:
    return None if value in (None, "None", "") else value


_COMPLEX_RE = re.compile(
    r"\(?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)?\s*([-+]\s*(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)?j\)?"
    r"|([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)",
    re.IGNORECASE,
)


def _parse_values(text: Any) -> list[complex] | None:
    """Parse an upstream value field: a float, a sympy expression, or a Python/numpy list of complexes."""
    text = _none(text)
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return [complex(text)]
    s = str(text).strip()
    if s.startswith("["):
        # Python lists "[(1+2j), -1j, ...]" and numpy reprs "[-1.5+0.j  0.2-0.9j ...]".
        items = re.findall(r"\(?[-+]?[\d.]+(?:e[-+]?\d+)?(?:[-+][\d.]*(?:e[-+]?\d+)?j)?\)?|[-+]?[\d.]*j", s[1:-1])
        out = []
        for it in items:
            it = it.strip("()").replace(" ", "")
            if not it:
                continue
            if it in ("j", "+j", "-j"):
                it = it.replace("j", "1j")
            out.append(complex(it))
        return out
    try:
        return [complex(float(s))]
    except ValueError:
        pass
    import sympy

    try:
        return [complex(sympy.sympify(s).evalf())]
    except Exception as exc:  # upstream field unparseable: keep going without it
        logger.warning("could not parse HARDMath value %r: %s", s, exc)
        return None


def _boxed_spans(text: str) -> list[tuple[int, str]]:
    from memory_inception.datasets.latex_spans import find_boxed

    return find_boxed(text, with_positions=True)


def _hardmath_answers(row: dict[str, Any]) -> tuple[list[str], list[str | None]]:
    """Final answers and their regimes (small / large / very_large) for one upstream row."""
    from memory_inception.datasets.latex_spans import split_top_level, strip_boxed

    qtype = row["question_type"]
    answer = str(row["answer_val"])
    if qtype == "ODE":
        parts = [str(p).strip() for p in ast.literal_eval(answer)]
        return parts, ["small", "large"]
    if qtype == "integral" and row["answer_type"] == "list":
        parts = split_top_level(answer)
        return parts, ["small", "large", "very_large"][: len(parts)]
    if qtype == "integral":
        return [strip_boxed(answer)], ["large"]
    if qtype == "polynomial_roots":
        # answer_val holds only the small-epsilon list; the solution boxes both regimes.
        boxes = _boxed_spans(row["solution"])
        found: dict[str, str] = {}
        for pos, content in boxes:
            before = row["solution"][max(0, pos - 120) : pos].lower()
            for regime in ("small", "large"):
                if f"{regime} positive" in before and "roots of $p(x)$" in before:
                    found[regime] = content.strip()
        if set(found) != {"small", "large"}:
            raise DataError("HARDMath polynomial_roots row without both boxed regimes; data file changed?")
        return [found["small"], found["large"]], ["small", "large"]
    return [answer.strip()], [None]


def _hardmath_extra(row: dict[str, Any], regimes: list[str | None]) -> dict[str, Any]:
    qtype = row["question_type"]
    variable = {
        "ODE": "x",
        "polynomial_roots": "epsilon",
        "nondimensionalization_symbolic": None,
        "nondimensionalization_numeric": None,
    }.get(qtype, "x" if row["answer_type"] == "math_expression" else "epsilon")
    extra: dict[str, Any] = {
        "answer_type": row["answer_type"],
        "answer_val": row["answer_val"],
        "precision": _none(row.get("precision")),
        "regimes": regimes,
        "variable": variable,
    }
    for regime in ("small", "large"):
        point = _none(row.get(f"{regime}_eval_point"))
        extra[f"{regime}_eval_point"] = None if point is None else float(point)
        extra[f"{regime}_analytical"] = _parse_values(row.get(f"{regime}_analytical"))
        extra[f"{regime}_numerical"] = _parse_values(row.get(f"{regime}_numerical"))
    return extra


@lru_cache(maxsize=1)
def _hardmath_all() -> tuple[Problem, ...]:
    path = _data_dir("hardmath") / "HARDMath_mini.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}; reinstall memory_inception") from exc
    problems = []
    for key in sorted(raw, key=int):
        row = raw[key]
        answers, regimes = _hardmath_answers(row)
        problems.append(
            Problem(
                id=f"hardmath/{key}",
                benchmark="hardmath",
                kind=row["question_type"],
                question=row["question"],
                solution=row["solution"],
                answers=answers,
                extra=_hardmath_extra(row, regimes),
            )
        )
    return tuple(problems)


def load_hardmath(limit: int | None = None, kinds: Sequence[str] | str | None = None) -> list[Problem]:
    """HARDMath mini problems (366), optionally only some kinds, first ``limit`` in key order."""
    _check_limit(limit)
    wanted = set(_check_names(kinds, _HARDMATH_KINDS, "HARDMath kind(s)"))
    problems = [p for p in _hardmath_all() if p.kind in wanted]
    return problems[:limit] if limit is not None else problems


# ------------------------------------------------------------------------------------ PHYSICS


def _physics_problem(row: dict[str, Any], n_images: int) -> Problem:
    subject = row["id"].split("/", 1)[0]
    return Problem(
        id=f"physics/{row['id']}",
        benchmark="physics",
        kind=subject,
        question=row["questions"].lstrip("\ufeff"),
        solution=row["solutions"],
        answers=[str(a) for a in row["final_answers"]],
        extra={"subject_name": _PHYSICS_NAMES[subject], "n_images": n_images},
    )


@lru_cache(maxsize=1)
def _physics_all() -> tuple[tuple[Problem, ...], tuple[Problem, ...]]:
    base = _data_dir("physics")
    text_only: list[Problem] = []
    with_images: list[Problem] = []
    try:
        for subject in _PHYSICS_SUBJECTS:
            lines = (base / "textonly" / f"{subject}_dataset_textonly.jsonl").read_text(encoding="utf-8")
            text_only += [_physics_problem(json.loads(x), 0) for x in lines.splitlines() if x.strip()]
        lines = (base / "with_images.jsonl").read_text(encoding="utf-8")
        with_images = [
            _physics_problem(r, int(r["n_images"])) for r in (json.loads(x) for x in lines.splitlines() if x.strip())
        ]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read PHYSICS data under {base}: {exc}; reinstall memory_inception") from exc
    return tuple(text_only), tuple(with_images)


def load_physics(
    limit: int | None = None, subjects: Sequence[str] | str | None = None, text_only: bool = True
) -> list[Problem]:
    """PHYSICS validation problems (231 text-only; 297 with ``text_only=False``), by subject then file order."""
    _check_limit(limit)
    wanted = _check_names(subjects, _PHYSICS_SUBJECTS, "PHYSICS subject(s)")
    plain, figures = _physics_all()
    pool = list(plain) + ([] if text_only else list(figures))
    problems = [p for s in wanted for p in pool if p.kind == s]
    if not text_only:
        logger.info("PHYSICS with figures: the figures are not shipped; %d problems refer to one", len(figures))
    return problems[:limit] if limit is not None else problems


@lru_cache(maxsize=1)
def _physics_errata() -> tuple[tuple[str, int, str], ...]:
    path = _data_dir("physics") / "errata.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["errata"]
        entries = tuple((str(r["id"]), int(r["answer"]), f"solution: {r['solution']}; listed: {r['listed']}") for r in rows)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the PHYSICS errata {path}: {exc}; reinstall memory_inception") from exc
    problems = {p.id: p for p in _physics_all()[0] + _physics_all()[1]}
    for pid, index, _ in entries:
        if pid not in problems or not 0 <= index < len(problems[pid].answers):
            raise DataError(f"PHYSICS errata {path} names answer {index} of {pid!r}, which does not exist; fix the entry")
    return entries


def physics_errata() -> dict[str, dict[int, str]]:
    """Listed PHYSICS answers that the shipped reference solution does not state (hand-checked; ``data/physics/
    errata.json``): problem id -> {answer index: what the solution writes instead}. For grader self-checks only."""
    out: dict[str, dict[int, str]] = {}
    for pid, index, why in _physics_errata():
        out.setdefault(pid, {})[index] = why
    return out
