"""Sites, their validation, and the strength schedules."""

from __future__ import annotations

import pytest

import memory_inception as mi
from memory_inception.core.architecture import geometry


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("qwen2")  # 4 layers, 4 query heads, 2 KV heads


def test_resolve_and_kv_groups(model):
    geo = geometry(model)
    assert mi.Sites({2: None, 0: [3, 1, 1]}).resolve(geo) == {0: (1, 3), 2: (0, 1, 2, 3)}
    assert mi.Sites.from_kv_groups(model, {1: [1]}).resolve(geo) == {1: (2, 3)}
    assert mi.Sites.all(model).layers == (0, 1, 2, 3)
    assert not mi.Sites({1: []})  # an empty head list selects nothing


def test_default_band(model, tiny_models):
    assert mi.Sites.default(model).layers == (0, 1, 2, 3)  # fewer than six layers: all of them


@pytest.mark.parametrize(
    "sites, message",
    [
        ({4: None}, "layer 4 is out of range"),
        ({1: [4]}, r"heads \[4\] at layer 1 are out of range"),
        ({-1: [0]}, "out of range"),
    ],
)
def test_out_of_range(model, sites, message):
    with pytest.raises(mi.SiteError, match=message):
        mi.Sites(sites).resolve(geometry(model))


def test_kv_group_out_of_range(model):
    with pytest.raises(mi.SiteError, match="KV groups"):
        mi.Sites.from_kv_groups(model, {0: [2]})


def test_save_load(tmp_path):
    sites = mi.Sites({3: [1, 2], 5: None}, layer_scores={3: 0.5, 5: 0.9})
    loaded = mi.Sites.load(sites.save(tmp_path / "sites.json"))
    assert loaded == sites and loaded.layer_ranks() == {5: 0, 3: 1}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(mi.SiteError, match="not a sites file"):
        mi.Sites.load(tmp_path / "bad.json")
    with pytest.raises(mi.SiteError, match="layer scores"):
        mi.Sites({1: None}).layer_ranks()


@pytest.mark.parametrize(
    "schedule, weights",
    [
        ("flat", [1, 1, 1, 1, 1]),
        ("middle_heavy", [1, 2, 3, 2, 1]),
        ("late_heavy", [1, 2, 3, 4, 5]),
        ("early_heavy", [5, 4, 3, 2, 1]),
    ],
)
def test_schedules(schedule, weights):
    got = mi.layer_strengths([9, 3, 5, 7, 11], 4.5, schedule)
    total = sum(weights)
    assert got == pytest.approx({l: 4.5 * w / total for l, w in zip([3, 5, 7, 9, 11], weights)})


def test_rank_linear_and_full_per_layer():
    got = mi.layer_strengths([1, 2, 3], 6.0, "rank_linear", ranks={1: 2, 2: 0, 3: 1})
    assert got == pytest.approx({1: 1.0, 2: 3.0, 3: 2.0})
    assert mi.layer_strengths([1, 2], 2.0, "full_per_layer") == {1: 2.0, 2: 2.0}


def test_steering_validation(model):
    with pytest.raises(mi.SteeringError, match="schedule"):
        mi.Steering(schedule="random")
    with pytest.raises(mi.SteeringError, match="prefill"):
        mi.Steering(prefill="first")
    with pytest.raises(mi.SteeringError, match="auxiliary"):
        mi.Steering(auxiliary=["not a pair"])
    with pytest.raises(mi.SteeringError, match="target must be a Bank"):
        mi.Steering(target="text")
