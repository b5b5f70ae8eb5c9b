"""mi.tune and what it stands on: the bootstrap, the reply contrast, KV-group selection, the fluent search, the
record, the tuned bank file and the defaults table."""

from __future__ import annotations

import math

import numpy as np
import pytest

import memory_inception as mi
from memory_inception.tuning.statistics import Interval, bootstrap, mean_interval, paired_difference


# ---- statistics ------------------------------------------------------------------------------------------------
def test_bootstrap_of_a_mean_matches_the_normal_interval():
    rng = np.random.default_rng(3)
    values = rng.normal(2.0, 1.0, 400)
    got = mean_interval(values, resamples=4000)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))  # independent: the normal approximation
    assert got.estimate == pytest.approx(values.mean())
    assert got.low == pytest.approx(values.mean() - half, abs=0.25 * half)
    assert got.high == pytest.approx(values.mean() + half, abs=0.25 * half)
    assert got.excludes(0.0) and not got.excludes(2.0)
    assert got.point == got.estimate and got.to_dict()["point"] == got.point


def test_bootstrap_is_seeded_and_constant_data_has_no_spread():
    values = np.arange(30.0)
    assert mean_interval(values, seed=1) == mean_interval(values, seed=1)
    assert mean_interval(values, seed=1) != mean_interval(values, seed=2)
    flat = mean_interval(np.full(10, 0.5))
    assert (flat.estimate, flat.low, flat.high) == (0.5, 0.5, 0.5)
    assert str(flat) == "+0.500 [+0.500, +0.500]"


def test_paired_bootstrap_is_narrower_when_the_items_are_shared():
    rng = np.random.default_rng(0)
    item = rng.normal(0, 3, 60)  # large item effects, shared by both measurements
    before, after = item, item + 0.3 + rng.normal(0, 0.1, 60)
    paired = paired_difference(after, before)
    unpaired = bootstrap(lambda a, b: float(a.mean() - b.mean()), after, before)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert paired.excludes(0.0) and not unpaired.excludes(0.0)
    assert (paired.high - paired.low) < 0.2 * (unpaired.high - unpaired.low)


def test_bootstrap_resamples_each_group_on_its_own():
    sizes = set()

    def statistic(a, b):
        sizes.add((len(a), len(b)))
        return float(a[:, 1].mean() - b.mean())

    got = bootstrap(statistic, np.ones((7, 2)), np.zeros(3), resamples=50)
    assert sizes == {(7, 3)} and isinstance(got, Interval) and got.to_dict()["resamples"] == 50
    with pytest.raises(mi.EvaluationError, match="at least one group"):
        bootstrap(statistic)
    with pytest.raises(mi.EvaluationError, match="non-empty"):
        bootstrap(statistic, np.zeros(0))
    with pytest.raises(mi.EvaluationError, match="between 0 and 1"):
        mean_interval([1.0, 2.0], level=95)
    with pytest.raises(mi.EvaluationError, match="equal 1-D"):
        paired_difference([1.0, 2.0], [1.0])
