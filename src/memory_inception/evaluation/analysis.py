"""Shared arithmetic and drawing for reports: control vs drift, tables, plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from memory_inception.datasets.traits import TRAITS

METHOD_COLORS = {"plain": "#7f7f7f", "prompting": "#1f77b4", "caa": "#ff7f0e", "mi": "#2ca02c", "mi-mean": "#98df8a"}


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; nan when there are none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


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
