"""Bootstrap intervals over items (statements, prompts), paired where the same items are measured twice.

`bootstrap(statistic, *groups)` resamples the rows of each group with replacement (each group on its own, so
a stratified design such as matching vs non-matching statements keeps its group sizes) and keeps a row's
columns together: a row holding the same statement scored under two methods is the paired bootstrap. The
interval is the percentile interval of the resampled statistic; the point estimate is the statistic on the
data as given. Seeded, so a report's intervals are reproducible.

    # per-pole shift of a statement margin: rows = statements, columns = (plain, steered)
    shift = bootstrap(lambda m, n: (m[:, 1] - m[:, 0]).mean() - (n[:, 1] - n[:, 0]).mean(), matching, nonmatching)
    print(shift)  # +0.312 [+0.201, +0.433]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memory_inception.errors import EvaluationError

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval (`level`, percentile method)."""

    point: float
    low: float
    high: float
    level: float = LEVEL
    resamples: int = RESAMPLES
    seed: int = 0

    @property
    def estimate(self) -> float:
        """The point estimate (the same number as `point`)."""
        return self.point

    def __str__(self) -> str:
        return f"{self.point:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def excludes(self, value: float = 0.0) -> bool:
        """Whether `value` lies outside the interval."""
        return not (self.low <= value <= self.high)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap(
    statistic: Callable[..., float],
    *groups: Any,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """`statistic(*groups)` with a percentile bootstrap interval, resampling each group's rows (items).

    Each group is an array of items: 1-D (one value per item) or 2-D (one row per item, its columns the paired
    measurements of that item). Rows are drawn with replacement within their group; columns stay together.
    """
    if not groups:
        raise EvaluationError("bootstrap needs at least one group of items")
    if resamples < 1:
        raise EvaluationError(f"resamples={resamples}; use at least 1")
    if not 0.0 < level < 1.0:
        raise EvaluationError(f"level={level} is not between 0 and 1 (0.95 for a 95% interval)")
    arrays = [np.asarray(g, dtype=float) for g in groups]
    for i, a in enumerate(arrays):
        if a.ndim not in (1, 2) or len(a) == 0:
            raise EvaluationError(f"group {i} has shape {a.shape}; pass a non-empty 1-D or 2-D array (rows = items)")
    rng = np.random.default_rng(seed)
    estimate = float(statistic(*arrays))
    draws = np.empty(resamples)
    for r in range(resamples):
        draws[r] = statistic(*(a[rng.integers(0, len(a), len(a))] for a in arrays))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return Interval(estimate, float(low), float(high), level, resamples, seed)


def mean_interval(values: Any, **options: Any) -> Interval:
    """The mean of per-item values with its bootstrap interval."""
    return bootstrap(lambda v: float(v.mean()), values, **options)


def paired_difference(after: Any, before: Any, **options: Any) -> Interval:
    """Mean of `after - before` over the same items (the paired bootstrap of a shift)."""
    a, b = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise EvaluationError(f"paired values need equal 1-D shapes, got {a.shape} and {b.shape}")
    return bootstrap(lambda rows: float((rows[:, 0] - rows[:, 1]).mean()), np.stack([a, b], 1), **options)
