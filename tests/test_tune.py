"""mi.tune and what it stands on: the bootstrap, the reply contrast, KV-group selection, the fluent search, the
record, the tuned bank file and the defaults table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import memory_inception as mi
from memory_inception.core.architecture import geometry, model_fingerprint
from memory_inception.core.defaults import TABLE, model_defaults, rule_layers
from memory_inception.methods.runners import score
from memory_inception.tuning.group_selection import (
    GroupScore,
    GroupSelection,
    Pair,
    choose_groups,
    compare_sites,
    group_sites,
    random_groups,
    score_groups,
)
from memory_inception.tuning.objective import ReplyContrast, neutral_text
from memory_inception.tuning.statistics import Interval, bootstrap, mean_interval, paired_difference
from memory_inception.tuning.tune import Trial, Tuning, candidate_sites, choose_fluent, tune

PROMPTS = ["tell me about cats", "how is weather today", "what do you like to eat"]
TARGET = "you are a cheerful pirate who loves the sea"
REFERENCE = "you are quiet grumpy and never friendly"


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


# ---- the reply contrast ------------------------------------------------------------------------------------------
def _contrast(model, tok, prompts=PROMPTS, tokens=5):
    return ReplyContrast(model, tok, TARGET, REFERENCE, prompts, max_new_tokens=tokens)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_reply_contrast_equals_scoring_each_reply(tiny_models, tiny_tokenizer, arch):
    model, tok = tiny_models(arch), tiny_tokenizer
    contrast = _contrast(model, tok)
    bank = mi.build_bank(model, tok, TARGET, layers="all")
    steering = mi.Steering(target=bank, sites=mi.Sites({1: None, 2: [0, 3]}), rho=2.0)
    conversations = contrast.conversations
    expected = []
    for method in (mi.MI(steering), mi.Plain()):  # independent: runners.score, no cache, one reply at a time
        t = score(model, tok, method, conversations, contrast.target_replies)
        r = score(model, tok, method, conversations, contrast.reference_replies)
        expected.append(np.array([float(a.mean() - b.mean()) for a, b in zip(t, r)]))
    assert contrast.per_prompt(steering) == pytest.approx(expected[0], abs=1e-4)
    assert contrast.plain == pytest.approx(expected[1], abs=1e-4)
    assert contrast(steering) == pytest.approx(float((expected[0] - expected[1]).mean()), abs=1e-4)
    assert contrast(None) == pytest.approx(0.0, abs=1e-6)
    # the target and reference replies come from visible prompting with each text (prompts with an empty reply are
    # left out)
    assert contrast.target_replies == mi.generate(model, tok, mi.Prompting(TARGET), conversations, max_new_tokens=5)
    assert all(contrast.target_replies) and all(contrast.reference_replies) and len(conversations) >= 1


def test_reply_contrast_rejects_what_it_cannot_score(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("llama"), tiny_tokenizer
    contrast = _contrast(model, tok)
    bank = mi.build_bank(model, tok, TARGET, layers="all")
    with pytest.raises(mi.SteeringError, match="prefill='last'"):
        contrast(mi.Steering(target=bank, prefill="all"))
    with pytest.raises(mi.SteeringError, match="at least one prompt"):
        ReplyContrast(model, tok, TARGET, REFERENCE, [])
    with pytest.raises(mi.SteeringError, match="reference text"):
        ReplyContrast(model, tok, TARGET, " ", PROMPTS)


def test_neutral_text_matches_the_length(tiny_tokenizer):
    tok = tiny_tokenizer

    class Words:  # a tokenizer of one token per word (independent of the tiny tokenizer's vocabulary)
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text.split())))}

    for words in (1, 5, 12, 80):
        text = neutral_text(Words(), " ".join(["x"] * words))
        assert len(text.split()) == words
    assert neutral_text(tok, TARGET)


# ---- KV-group selection -------------------------------------------------------------------------------------------
def test_group_sites_and_random_groups(tiny_models):
    model = tiny_models("llama")  # 4 heads, 2 KV groups of 2
    geo = geometry(model)
    assert dict(group_sites(geo, [(1, 1), (3, 0), (1, 0)]).heads) == {1: (0, 1, 2, 3), 3: (0, 1)}
    assert group_sites(geo, [(2, 1)]) == mi.Sites.from_kv_groups(model, {2: [1]})
    with pytest.raises(mi.SiteError, match="out of range"):
        group_sites(geo, [(0, 2)])
    for seed in range(3):
        sites = random_groups(geo, 3, torch.Generator().manual_seed(seed))
        units = {(layer, h // geo.group_size) for layer, hs in sites.heads.items() for h in hs}
        assert len(units) == 3 and sum(len(h) for h in sites.heads.values()) == 3 * geo.group_size


def test_choose_groups_keeps_the_best_positive_units(tiny_models):
    geo = geometry(tiny_models("llama"))
    scores = [GroupScore(0, 0, 1.5, (0.1,)), GroupScore(0, 1, -0.2, (0.0,)), GroupScore(2, 1, 0.7, (0.2,)),
              GroupScore(3, 0, 0.9, (0.3,))]
    assert dict(choose_groups(geo, scores, 2).heads) == {0: (0, 1), 3: (0, 1)}
    assert dict(choose_groups(geo, scores, 10).heads) == {0: (0, 1), 2: (2, 3), 3: (0, 1)}  # never a negative one
    with pytest.raises(mi.SiteError, match="no KV group"):
        choose_groups(geo, [GroupScore(0, 0, -1.0, (0.0,))], 1)
    with pytest.raises(mi.SiteError, match="at least 1"):
        choose_groups(geo, scores, 0)


def test_score_groups_probes_each_unit_alone(tiny_models, tiny_tokenizer, tmp_path):
    model, tok = tiny_models("qwen2"), tiny_tokenizer
    geo = geometry(model)
    pairs = [Pair(mi.build_bank(model, tok, TARGET, layers="all"), REFERENCE, "pirate"),
             Pair(mi.build_bank(model, tok, REFERENCE, layers="all"), TARGET, "grump")]
    groups = score_groups(model, tok, pairs, PROMPTS[:2], layers=[1, 3], rho=1.0, max_new_tokens=3)
    assert [(g.layer, g.kv_group) for g in groups] == [(1, 0), (1, 1), (3, 0), (3, 1)]
    # each raw contrast is the contrast of that unit alone (an independent ReplyContrast per pair)
    for j, pair in enumerate(pairs):
        contrast = ReplyContrast(model, tok, pair.target.text, pair.reference_text, PROMPTS[:2], max_new_tokens=3)
        for g in groups:
            one = mi.Steering(target=pair.target, sites=group_sites(geo, [(g.layer, g.kv_group)]), rho=1.0)
            assert g.contrasts[j] == pytest.approx(contrast(one), abs=1e-5)
    raw = np.array([g.contrasts for g in groups])
    z = (raw - raw.mean(0)) / raw.std(0)
    assert [g.score for g in groups] == pytest.approx(z.mean(1).tolist(), abs=1e-6)
    selection = GroupSelection(choose_groups(geo, groups, 2), tuple(groups), {"pairs": ["pirate", "grump"]})
    best = max(groups, key=lambda g: g.score)
    assert selection.ranking()[0] == (best.layer, best.kv_group) and len(selection.ranking()) == 4
    path = selection.save(tmp_path / "groups.json")
    again = GroupSelection.load(path)
    assert again.sites == selection.sites == mi.Sites.load(path) and again.groups == selection.groups
    check = compare_sites(model, tok, pairs[:1], {"picked": selection.sites}, PROMPTS[:2], rho=1.0, max_new_tokens=3)
    direct = ReplyContrast(model, tok, TARGET, REFERENCE, PROMPTS[:2], max_new_tokens=3)
    assert check["picked"] == pytest.approx([direct(mi.Steering(target=pairs[0].target, sites=selection.sites, rho=1.0))])


# ---- the fluent search -------------------------------------------------------------------------------------------
def _trials():
    # two site sets; contrast grows with rho, repetition too (fluent up to rho 2 for "a", up to rho 0 for "b")
    out = []
    for label, slope, limit in (("a", 1.0, 2.0), ("b", 1.5, 0.0)):
        for rho in (-2.0, 0.0, 2.0, 4.0):
            out.append(Trial(label, {"0": None}, rho, slope * rho))
    return out


def _checker(calls, limits=None):
    limits = {"a": 2.0, "b": 0.0} if limits is None else limits

    def check(t):
        calls.append((t.label, t.rho))
        rep = 0.1 if t.rho <= limits[t.label] else 0.5
        return Trial(t.label, t.sites, t.rho, t.contrast, rep, 0.9, rep < 0.2, "reply")
    return check


def test_choose_fluent_takes_the_largest_fluent_contrast_and_prunes_by_rho():
    calls = []
    trials, chosen, reason = choose_fluent(_trials(), _checker(calls), lambda: False)
    assert (trials[chosen].label, trials[chosen].rho) == ("a", 2.0) and reason.startswith("the largest")
    # falling contrast: b@4 (6) fails, a@4 (4) fails, b@2 (3) fails, a@2 (2) passes; nothing weaker is needed
    assert calls == [("b", 4.0), ("a", 4.0), ("b", 2.0), ("a", 2.0)]
    # every trial the search did not need stays unchecked
    assert sum(t.feasible is None for t in trials) == len(trials) - 4


def test_choose_fluent_skips_stronger_rhos_of_sites_that_failed():
    calls = []
    trials = [Trial("a", {"0": None}, rho, c) for rho, c in ((0.0, 1.0), (1.0, 3.0), (2.0, 2.0))]
    choose_fluent(trials, _checker(calls, {"a": 0.0}), lambda: False)
    assert calls == [("a", 1.0), ("a", 0.0)]  # rho 2 (contrast 2) is skipped: a already failed at rho 1


def test_choose_fluent_fallbacks():
    calls = []
    never = {"a": -9.0, "b": -9.0}
    trials, chosen, reason = choose_fluent(_trials(), _checker(calls, never), lambda: False)
    assert reason.startswith("no candidate within the fluency bound") and trials[chosen].repetition == 0.5
    trials, chosen, reason = choose_fluent(_trials(), _checker([]), lambda: True, ran_out=True)
    assert reason.startswith("budget ran out before any fluency check")
    assert (trials[chosen].label, trials[chosen].rho) == ("a", -2.0)
    budget = iter([False, True])
    trials, chosen, reason = choose_fluent(_trials(), _checker([], never), lambda: next(budget))
    assert reason.startswith("budget ran out before a fluent candidate") and trials[chosen].repetition is not None
    with pytest.raises(mi.SteeringError, match="no trials"):
        choose_fluent([], _checker([]), lambda: False)


# ---- tune ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tune_returns_the_chosen_steering_and_its_record(tiny_models, tiny_tokenizer, tmp_path, arch):
    model, tok = tiny_models(arch), tiny_tokenizer
    geo, fp = geometry(model), model_fingerprint(model)
    bank = mi.build_bank(model, tok, TARGET, layers="all")
    seen = []
    steering = tune(model, tok, bank, prompts=PROMPTS, time_budget_s=600, progress=seen.append,
                    candidates=[("layers 1-2", mi.Sites({1: None, 2: None})), ("layer 3 group 1", group_sites(geo, [(3, 1)]))],
                    rhos=(-2.0, 0.0, 2.0))
    record = Tuning.of(steering)
    assert isinstance(steering, mi.Steering) and steering.reference is None
    assert (steering.sites, steering.rho) == (record.sites, record.rho)
    assert len(record.trials) == 6 and len(seen) >= 6
    best = record.best
    if best.feasible:  # the largest contrast among the fluent ones
        fluent = [t.contrast for t in record.trials if t.feasible]
        assert best.contrast == max(fluent) and best.repetition <= record.bound
    # the target bank stores only the chosen sites, and carries them
    assert list(steering.target.layers) == sorted(steering.sites.heads)
    assert steering.target.options["tuned"]["rho"] == record.rho
    # the record prints, saves and loads
    assert "chosen" in str(record) and record.best.label in str(record)
    assert Tuning.load(record.save(tmp_path / "tune.json")) == record
    # a saved tuned bank steers with its tuned sites and strength, and steers exactly as the returned steering
    loaded = mi.Bank.load(steering.target.save(tmp_path / "tuned.safetensors"), model=model)
    assert mi.Steering(target=loaded).resolved(geo, fp) == (record.sites, record.rho)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), mi.inject(model, steering):
        a = model(ids).logits
    with torch.no_grad(), mi.inject(model, mi.Steering(target=loaded)):
        b = model(ids).logits
    assert torch.equal(a, b)
    assert Tuning.of(loaded) == record


def test_tune_with_a_reference_and_text_and_a_spent_budget(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("mistral"), tiny_tokenizer
    steering = tune(model, tok, TARGET, reference=REFERENCE, prompts=PROMPTS, time_budget_s=0.0,
                    candidates=[("layer 2", mi.Sites({2: None}))], rhos=(0.0, 1.0))
    record = Tuning.of(steering)
    assert steering.reference is not None and list(steering.reference.layers) == [2]
    assert record.reference == REFERENCE and record.target == TARGET
    assert record.reason.startswith("budget ran out") and len(record.trials) == 1


def test_tune_errors(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("llama"), tiny_tokenizer
    ids_bank = mi.Bank.from_token_ids(model, [5, 6, 7], layers=[1])
    with pytest.raises(mi.SteeringError, match="rebuild"):
        tune(model, tok, ids_bank, candidates=[("l2", mi.Sites({2: None}))], rhos=(0.0,))
    with pytest.raises(mi.SteeringError, match="at least one candidate"):
        tune(model, tok, TARGET, candidates=[], rhos=(0.0,))
    with pytest.raises(mi.SteeringError, match="no tuning record"):
        Tuning.of(mi.build_bank(model, tok, TARGET))


def test_tune_rebuilds_a_bank_stored_at_fewer_layers(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("llama"), tiny_tokenizer
    small = mi.build_bank(model, tok, TARGET, layers=[1])
    steering = tune(model, tok, small, prompts=PROMPTS, time_budget_s=600,
                    candidates=[("l3", mi.Sites({3: None}))], rhos=(0.0,))
    full = mi.build_bank(model, tok, TARGET, layers=[3])
    assert torch.equal(steering.target.keys(3), full.keys(3))


# ---- candidates and the defaults table -----------------------------------------------------------------------------
def test_candidate_sites_cover_the_default_sites(tiny_models):
    model = tiny_models("qwen2")
    geo, fp = geometry(model), model_fingerprint(model)
    candidates, rhos = candidate_sites(geo, fp)
    labels = [label for label, _ in candidates]
    assert len(set(labels)) == len(labels) and rhos
    defaults = model_defaults(geo, fingerprint=fp)
    assert candidates[0][1] == mi.Sites(defaults.site_heads(geo))
    for _, sites in candidates:
        assert all(0 <= layer < geo.num_layers for layer in sites.heads)


def test_the_table_entries_are_consistent():
    for entry in TABLE:
        assert entry.fingerprint and entry.name and entry.source
        assert all(0 <= g for _, g in entry.ranking) and len(set(entry.ranking)) == len(entry.ranking)
        if entry.kv_groups is not None:
            assert sorted({layer for layer, _ in entry.kv_groups}) == list(entry.layers)
        assert entry.rho == entry.rho  # finite
    assert rule_layers(30) == tuple(range(21, 27))


# ---- the command line ------------------------------------------------------------------------------------------------
def test_mi_tune_and_bank_build_tune_are_on_the_command_line():
    from typer.testing import CliRunner

    from memory_inception.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["--help"], terminal_width=200)
    assert listed.exit_code == 0 and " tune " in listed.output
    helped = runner.invoke(app, ["tune", "--help"], terminal_width=200)
    assert helped.exit_code == 0, helped.output
    for option in ("--reference", "--output", "--record", "--budget", "--prompts", "--device "):
        assert option in helped.output, option
    build = runner.invoke(app, ["bank", "build", "--help"], terminal_width=200)
    assert "--tune" in build.output and "--budget" in build.output
    # refused before any weights are read
    both = runner.invoke(app, ["bank", "build", "x", "-o", "b.safetensors", "--tune", "--layers", "21-26"])
    assert both.exit_code == 2 and "drop --layers" in " ".join(both.output.split())
    bad = runner.invoke(app, ["tune", "x", "--device", "gpu"], terminal_width=200)
    assert bad.exit_code == 2 and "not a device name" in " ".join(bad.output.split())
