"""Shared arithmetic and drawing for reports: control vs drift, tables, plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memory_inception.datasets.traits import TRAITS
from memory_inception.evaluation.config import parse_persona
from memory_inception.tuning.statistics import Interval, bootstrap

METHOD_COLORS = {"plain": "#7f7f7f", "prompting": "#1f77b4", "caa": "#ff7f0e", "mi": "#2ca02c", "mi-mean": "#98df8a"}


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; nan when there are none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def statement_margin_of(entry: Mapping[str, Sequence[float]]) -> float:
    """The statement margin of a record's per-statement entry: mean matching minus mean non-matching log-prob."""
    return nanmean(entry["matching"]) - nanmean(entry["nonmatching"])


MOVED_RULE = (
    "Intervals are 95% percentile-bootstrap intervals (2000 resamples, seed 0) over the items (persona statements, "
    "Likert items, prompts, questions), paired: the same items scored under plain and under the method are resampled "
    "together. A pole counts as moved toward its pole only when the interval of its control lies above 0 (\u201cmoved "
    "away\u201d: below 0); a trait's poles are apart when the interval of high-pole change minus low-pole change lies "
    "above 0, and both poles moved when both controls' intervals lie above 0."
)


def fmt_interval(interval: Interval | None, digits: int = 3) -> str:
    """`+0.123 [+0.045, +0.201]`; `n/a` without an estimate, `+0.123 (no interval)` with only an estimate."""
    if interval is None or math.isnan(interval.estimate):
        return "n/a"
    if math.isnan(interval.low):
        return f"{interval.estimate:+.{digits}f} (no interval)"
    return f"{interval.estimate:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"


def above_zero(interval: Interval | None) -> bool:
    """The "moved" rule: the interval excludes 0 on the positive side."""
    return interval is not None and interval.excludes(0.0) and interval.low > 0.0


def below_zero(interval: Interval | None) -> bool:
    return interval is not None and interval.excludes(0.0) and interval.high < 0.0


@dataclass
class ItemScores:
    """Per-item values of one measure under several conditions, laid out for the paired bootstrap.

    `groups` are arrays of items (rows) by columns; the rows of a group are resampled together, groups on their
    own. A trait's score under a condition is `sum(weight * mean(groups[g][:, base + columns[condition]]))` over
    its `parts` (g, weight, base): a statement margin is (matching, +1, 0), (non-matching, -1, 0); a Likert or
    judge score one part. Every condition is scored on the same items, so the differences are paired.
    """

    columns: dict[tuple[str, str], int]  # (persona, method) -> column (after `base`)
    groups: list[np.ndarray] = field(default_factory=list)
    parts: dict[str, list[tuple[int, float, int]]] = field(default_factory=dict)

    def score(self, means: Mapping[int, np.ndarray], trait: str, condition: tuple[str, str]) -> float:
        c = self.columns[condition]
        return float(sum(w * means[g][base + c] for g, w, base in self.parts[trait]))

    def has(self, trait: str, condition: tuple[str, str]) -> bool:
        return trait in self.parts and condition in self.columns

    def interval(self, statistic: Callable[[Mapping[int, np.ndarray]], float], traits: Sequence[str]) -> Interval:
        """`statistic(means)` (means: {group index: column means}) with its bootstrap interval, resampling the
        groups of `traits` only (the statistic must read no other group)."""
        used = sorted({g for t in traits for g, _, _ in self.parts[t]})

        def stat(*arrays: np.ndarray) -> float:
            return statistic({g: a.mean(axis=0) for g, a in zip(used, arrays)})

        return bootstrap(stat, *(self.groups[g] for g in used))

    def change(self, means: Mapping[int, np.ndarray], trait: str, condition: tuple[str, str]) -> float:
        """The trait's score under `condition` minus plain's."""
        return self.score(means, trait, condition) - self.score(means, trait, ("none", "plain"))

    def control(self, means: Mapping[int, np.ndarray], persona: str, method: str) -> float:
        trait, pole = parse_persona(persona)
        return (1.0 if pole == "high" else -1.0) * self.change(means, trait, (persona, method))

    def drift(self, means: Mapping[int, np.ndarray], persona: str, method: str) -> float:
        trait, _ = parse_persona(persona)
        others = [t for t in TRAITS if t != trait and self.has(t, (persona, method))]
        return nanmean([abs(self.change(means, t, (persona, method))) for t in others])

    def others(self, persona: str) -> list[str]:
        trait, _ = parse_persona(persona)
        return [t for t in TRAITS if t != trait and t in self.parts]


def paired_margin_shift(
    plain: Mapping[str, Sequence[float]], steered: Mapping[str, Sequence[float]], sign: float = 1.0
) -> Interval:
    """The change of a statement margin from `plain` to `steered` (per-statement entries of the same statements),
    times `sign` (-1 toward a low pole), with its paired bootstrap interval over statements."""
    groups = [np.stack([np.asarray(plain[side], float), np.asarray(steered[side], float)], 1)
              for side in ("matching", "nonmatching")]
    return bootstrap(lambda m, n: sign * ((m[:, 1] - m[:, 0]).mean() - (n[:, 1] - n[:, 0]).mean()), *groups)


def control_and_drift(
    steered: Mapping[str, float], plain: Mapping[str, float], trait: str, pole: str
) -> tuple[float, float]:
    """Control: the target trait's change from plain, signed so that toward the pole is positive.

    Drift: the mean absolute change of the other traits present in both mappings.
    """
    sign = 1.0 if pole == "high" else -1.0
    control = sign * (steered[trait] - plain[trait])
    others = [abs(steered[t] - plain[t]) for t in TRAITS if t != trait and t in steered and t in plain]
    return control, nanmean(others)


def fmt(value: float, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter_control_drift(
    panels: Mapping[str, Sequence[tuple[str, str, float, float]]], path: Path, title: str
) -> Path:
    """One panel per measure; points (method, persona, control, drift); drift on x, control on y."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (measure, points) in zip(axes[0], panels.items()):
        seen = set()
        for method, persona, control, drift in points:
            if math.isnan(control) or math.isnan(drift):
                continue
            marker = "^" if persona.endswith(":high") else "v"
            label = method if method not in seen else None
            seen.add(method)
            ax.scatter(drift, control, color=METHOD_COLORS.get(method, "k"), marker=marker, s=46, label=label, alpha=0.85)
            ax.annotate(persona.replace(":", " ")[:6] + persona[-2:], (drift, control), fontsize=6, alpha=0.6)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("drift: mean |change| of the other four traits")
        ax.set_ylabel("control: target-trait change toward the pole")
        ax.set_title(measure)
        if seen:
            ax.legend(fontsize=8)
    fig.suptitle(title + "  (▲ high pole, ▼ low pole)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, title: str, xlabel: str, ylabel: str
) -> Path:
    """One line per method: (x values, y values)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, (xs, ys) in series.items():
        method = name.split(" ")[0]
        ax.plot(xs, ys, marker="o", label=name, color=METHOD_COLORS.get(method))
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(groups: Mapping[str, Mapping[str, float]], path: Path, title: str, ylabel: str) -> Path:
    """Grouped bars: one group per key of `groups`, one bar per method inside it."""
    plt = _pyplot()
    names = list(groups)
    methods = sorted({m for g in groups.values() for m in g}, key=lambda m: list(METHOD_COLORS).index(m) if m in METHOD_COLORS else 9)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.2))
    for i, method in enumerate(methods):
        xs = [j + i * width for j in range(len(names))]
        ys = [groups[n].get(method, math.nan) for n in names]
        ax.bar(xs, ys, width, label=method, color=METHOD_COLORS.get(method))
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
