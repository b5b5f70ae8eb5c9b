"""Loaders of the shipped HARDMath mini and PHYSICS validation data."""

from __future__ import annotations

from collections import Counter

import pytest

from memory_inception.datasets.reasoning_problems import (
    DataError,
    Problem,
    hardmath_kinds,
    load_hardmath,
    load_physics,
    physics_subjects,
)


def test_hardmath_counts_and_kinds() -> None:
    problems = load_hardmath()
    assert len(problems) == 366
    assert Counter(p.kind for p in problems) == {
        "integral": 120,
        "nondimensionalization_symbolic": 65,
        "nondimensionalization_numeric": 64,
        "polynomial_roots": 63,
        "ODE": 54,
    }
    assert sorted(hardmath_kinds()) == sorted({p.kind for p in problems})
    assert all(isinstance(p, Problem) and p.benchmark == "hardmath" and p.answers for p in problems)
    assert [p.id for p in problems[:3]] == ["hardmath/0", "hardmath/1", "hardmath/2"]


def test_hardmath_answer_shapes() -> None:
    by_kind = {k: load_hardmath(kinds=k) for k in hardmath_kinds()}
    assert all(len(p.answers) == 2 for p in by_kind["ODE"])
    assert all(len(p.answers) == 2 for p in by_kind["polynomial_roots"])  # small, large epsilon
    assert all(p.extra["small_eval_point"] and p.extra["large_eval_point"] for p in by_kind["ODE"])
    assert Counter(len(p.answers) for p in by_kind["integral"]) == {1: 60, 3: 60}
    assert all(p.extra["precision"] == 2 for p in by_kind["nondimensionalization_numeric"])
    ode = by_kind["ODE"][0]
    assert ode.answers[0].startswith("y =") and ode.extra["regimes"] == ["small", "large"]


def test_hardmath_filters_and_limit() -> None:
    two = load_hardmath(limit=2, kinds=["ODE", "integral"])
    assert len(two) == 2 and {p.kind for p in two} <= {"ODE", "integral"}
    assert load_hardmath(limit=0) == []
    assert [p.id for p in load_hardmath(limit=5)] == [p.id for p in load_hardmath()[:5]]


def test_physics_counts_and_subjects() -> None:
    text_only = load_physics()
    assert len(text_only) == 231
    assert Counter(p.kind for p in text_only) == {
        "atomic": 43, "electro": 38, "mechanics": 33, "optics": 23, "quantum": 43, "statistics": 51,
    }
    assert physics_subjects() == ["atomic", "electro", "mechanics", "optics", "quantum", "statistics"]
    assert all(p.extra["n_images"] == 0 and p.answers for p in text_only)
    everything = load_physics(text_only=False)
    assert len(everything) == 297
    assert sum(p.extra["n_images"] > 0 for p in everything) == 66
    assert len({p.id for p in everything}) == 297


def test_physics_filters() -> None:
    optics = load_physics(subjects="optics")
    assert len(optics) == 23 and all(p.id.startswith("physics/optics/") for p in optics)
    assert len(load_physics(limit=7, subjects=["quantum", "atomic"])) == 7
    assert load_physics(limit=3, subjects=["quantum", "atomic"])[0].kind == "atomic"  # canonical order


@pytest.mark.parametrize(
    "call",
    [lambda: load_hardmath(kinds=["ode"]), lambda: load_physics(subjects="thermo"), lambda: load_physics(limit=-1)],
)
def test_unknown_names_raise_clear_errors(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "choose from" in message or "limit" in message
