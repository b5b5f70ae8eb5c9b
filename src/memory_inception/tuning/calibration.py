"""Strength calibration: the strongest control that stays fluent.

Over-steering is the commonest failure (repetition loops, collapse). `calibrate` sweeps a method's strength
(MI's rho, CAA's multiplier) on calibration prompts, measures a control score and the fluency of real greedy
replies at each strength, and keeps the strength with the best control among those whose repeated-trigram
rate stays within `tolerance` of the plain model's on the same prompts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from memory_inception.core.steering import Steering
from memory_inception.errors import SteeringError
from memory_inception.methods.interface import Messages, Method, Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.runners import generate, statement_margin
from memory_inception.tuning.fluency import (
    compression_ratio,
    distinct_n,
    repeated_ngram_rate,
)
from memory_inception.tuning.selection import CALIBRATION_PROMPTS

logger = logging.getLogger(__name__)

# Strengths tried by default for MI (rho) and CAA (multiplier). rho < 0 weakens the bank below its natural
# attention weight: on SmolLM2 with the default sites (6 layers, middle_heavy) replies looped down to rho -12
# and stayed fluent from about rho -24 (reports/compare_methods.md).
RHO_GRID = (-48.0, -36.0, -24.0, -16.0, -8.0, 0.0, 4.0)
MULTIPLIER_GRID = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Default fluency bound: the repeated-trigram rate may exceed the plain model's by at most this much.
DEFAULT_TOLERANCE = 0.10

Control = Callable[[Method, list[str]], float]


@dataclass(frozen=True)
class Point:
    """One strength of the sweep."""

    strength: float
    control: float
    repetition: float  # mean repeated-trigram rate of the replies (the bounded fluency measure)
    distinct2: float
    compression: float
    feasible: bool
    sample: str = ""


@dataclass(frozen=True)
class Calibration:
    """The sweep, the plain model's fluency on the same prompts, and the chosen strength (None: none feasible)."""

    best: float | None
    points: tuple[Point, ...]
    plain_repetition: float
    bound: float
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {
            "best": self.best,
            "plain_repetition": self.plain_repetition,
            "bound": self.bound,
            "config": self.config,
            "points": [asdict(p) for p in self.points],
        }
        path.write_text(json.dumps(payload, indent=2))
        return path


def search(
    strengths: Sequence[float],
    evaluate: Callable[[float], tuple[float, float]],
    bound: float,
    refine: int = 1,
) -> tuple[float | None, list[tuple[float, float, float]]]:
    """Maximize control subject to badness <= bound over a grid, then refine around the best.

    `evaluate(s) -> (control, badness)`. Each refinement round tries the midpoints between the best strength
    and its grid neighbours. Returns the best strength (None if none is feasible; ties go to the weaker
    strength) and every evaluation `(strength, control, badness)`, sorted by strength.
    """
    grid = sorted({float(s) for s in strengths})
    if not grid:
        raise SteeringError("no strengths to search; pass at least one")
    seen: dict[float, tuple[float, float]] = {}

    def run(s: float) -> None:
        if s not in seen:
            seen[s] = evaluate(s)

    def best_now() -> float | None:
        feasible = [(c, -abs(s), s) for s, (c, bad) in seen.items() if bad <= bound]
        return max(feasible)[2] if feasible else None

    for s in grid:
        run(s)
    for _ in range(refine):
        best = best_now()
        if best is None:
            break
        tried = sorted(seen)
        i = tried.index(best)
        for j in (i - 1, i + 1):
            if 0 <= j < len(tried):
                run((best + tried[j]) / 2)
    return best_now(), sorted((s, c, bad) for s, (c, bad) in seen.items())


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    make_method: Callable[[float], Method],
    control: Control,
    *,
    strengths: Sequence[float] = RHO_GRID,
    prompts: Sequence[str | Messages] = CALIBRATION_PROMPTS,
    tolerance: float = DEFAULT_TOLERANCE,
    max_new_tokens: int = 48,
    refine: int = 1,
    progress: Callable[[float, Point], None] | None = None,
) -> Calibration:
    """Sweep `make_method(strength)` and keep the strongest control within the fluency bound (module docstring)."""
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    if not conversations:
        raise SteeringError("calibration needs at least one prompt")
    plain = generate(model, tokenizer, Plain(), conversations, max_new_tokens=max_new_tokens)
    plain_rep = _mean(repeated_ngram_rate(r, 3) for r in plain)
    bound = plain_rep + tolerance
    points: dict[float, Point] = {}

    def evaluate(strength: float) -> tuple[float, float]:
        method = make_method(strength)
        replies = generate(model, tokenizer, method, conversations, max_new_tokens=max_new_tokens)
        rep = _mean(repeated_ngram_rate(r, 3) for r in replies)
        point = Point(
            strength=strength,
            control=float(control(method, replies)),
            repetition=rep,
            distinct2=_mean(distinct_n(r, 2) for r in replies),
            compression=_mean(compression_ratio(r) for r in replies),
            feasible=rep <= bound,
            sample=replies[0],
        )
        points[strength] = point
        logger.info("strength %.3g: control %.4f, repetition %.3f", strength, point.control, rep)
        if progress is not None:
            progress(strength, point)
        return point.control, rep

    best, _ = search(strengths, evaluate, bound, refine=refine)
    config = {"prompts": len(conversations), "tolerance": tolerance, "max_new_tokens": max_new_tokens}
    return Calibration(best, tuple(points[s] for s in sorted(points)), plain_rep, bound, config)


def calibrate_mi(
    model: nn.Module, tokenizer: Any, steering: Steering, control: Control, **options: Any
) -> Calibration:
    """`calibrate` over MI's rho for a steering (banks and sites fixed)."""
    return calibrate(model, tokenizer, lambda rho: MI(replace(steering, rho=rho)), control, **options)


def statement_control(
    model: nn.Module, tokenizer: Any, matching: Sequence[str], nonmatching: Sequence[str], pole: int = 1
) -> Control:
    """Control = `pole` x the statement-likelihood margin shift against the plain model (replies unused)."""
    if pole not in (1, -1):
        raise SteeringError("pole must be 1 (toward the matching statements) or -1 (away from them)")
    base = statement_margin(model, tokenizer, Plain(), matching, nonmatching)

    def control(method: Method, _replies: list[str]) -> float:
        return pole * (statement_margin(model, tokenizer, method, matching, nonmatching) - base)

    return control


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0
