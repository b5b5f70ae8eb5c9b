"""Strength calibration: the constrained search on a toy objective, and a real sweep on a tiny model."""

from __future__ import annotations

import pytest

import memory_inception as mi
from memory_inception.methods.mi import MI
from memory_inception.tuning.calibration import calibrate, search


def test_search_maximizes_control_within_the_bound():
    calls = []

    def evaluate(s):
        calls.append(s)
        return -((s - 5.0) ** 2), s / 10.0  # control peaks at 5; badness grows with strength

    best, points = search([0, 2, 4, 6, 8], evaluate, bound=0.45)
    assert best == 4.0  # 5 and 6 are too bad; 4 beats 3 (the refinement midpoint) and 2
    assert sorted(calls) == [0, 2, 3, 4, 5, 6, 8]  # the grid, then midpoints 3 and 5 around the best
    assert all(bad <= 0.45 for s, c, bad in points if s == best)


def test_search_refines_toward_the_peak_and_breaks_ties_low():
    best, _ = search([0, 4, 8], lambda s: (-abs(s - 5.0), 0.0), bound=1.0, refine=3)
    assert best == 5.0  # 4 -> midpoint 6 (-1) and 2; then 5 (0.0) between 4 and 6
    best, _ = search([1, 2, 3], lambda s: (1.0, 0.0), bound=1.0)
    assert best == 1.0  # equal control: the weaker strength


def test_search_with_nothing_feasible():
    best, points = search([1, 2], lambda s: (s, 1.0), bound=0.5)
    assert best is None and len(points) == 2
    with pytest.raises(mi.SteeringError, match="no strengths"):
        search([], lambda s: (0.0, 0.0), bound=1.0)


def test_calibrate_sweeps_real_generations(tiny_models, tiny_tokenizer, tmp_path):
    model, tok = tiny_models("llama"), tiny_tokenizer
    bank = mi.build_bank(model, tok, "you are a cheerful pirate who loves the sea")
    steering = mi.Steering(target=bank, sites=mi.Sites({2: None, 3: None}))
    seen = []

    def control(method, replies):
        seen.append((method.steering.rho, len(replies)))
        return -abs(method.steering.rho - 2.0)

    result = calibrate(
        model, tok, lambda rho: MI(_with_rho(steering, rho)),
        control, strengths=[0.0, 2.0, 8.0], prompts=["tell me about cats", "hello"], tolerance=1.0,
        max_new_tokens=6, refine=0,
    )
    assert result.best == 2.0
    assert [p.strength for p in result.points] == [0.0, 2.0, 8.0]
    assert all(n == 2 for _, n in seen)
    assert all(0.0 <= p.repetition <= 1.0 and p.feasible for p in result.points)
    strict = calibrate(
        model, tok, lambda rho: MI(_with_rho(steering, rho)), control, strengths=[2.0],
        prompts=["hello"], tolerance=-10.0, max_new_tokens=4, refine=0,
    )
    assert strict.best is None and not strict.points[0].feasible
    data = result.save(tmp_path / "cal.json").read_text()
    assert '"best": 2.0' in data


def _with_rho(steering, rho):
    from dataclasses import replace

    return replace(steering, rho=rho)
