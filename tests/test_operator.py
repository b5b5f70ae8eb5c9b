"""The operator against an independent implementation of the spec (tests/reference.py), on five architectures."""

from __future__ import annotations

import math

import pytest
import torch

import memory_inception as mi
from conftest import ARCHS
from memory_inception.core.architecture import geometry
from memory_inception.core.operator import site_attention
from memory_inception.core.plan import LayerPlan
from reference import reference_steering

TOL = 1e-4


def _banks(model):
    return (
        mi.Bank.from_token_ids(model, [3, 4, 5, 6, 7], name="target"),
        mi.Bank.from_token_ids(model, [8, 9, 10], name="reference"),
        mi.Bank.from_token_ids(model, [11, 12, 13, 14], name="aux"),
    )


SCENARIOS = {
    # name: (roles, gate, schedule, prefill, positions, normalize, sites kind)
    "target-only": (("target",), True, "middle_heavy", "last", "canonical", "paper", "heads"),
    "gated-mixture": (("target", "reference", "auxiliary"), True, "middle_heavy", "last", "canonical", "paper", "heads"),
    "ungated-mixture": (("target", "reference", "auxiliary"), False, "flat", "all", "canonical", "paper", "kv"),
    "late-prefix": (("target", "reference"), True, "late_heavy", "all", "prefix", "paper", "heads"),
    "early-none": (("target", "auxiliary"), True, "early_heavy", "none", "canonical", "none", "kv"),
    "full-per-layer": (("target", "reference", "auxiliary"), True, "full_per_layer", "last", "prefix", "none", "kv"),
    "rank-linear": (("target", "reference"), True, "rank_linear", "all", "canonical", "paper", "heads"),
}


def _setup(model, scenario):
    roles, gate, schedule, prefill, positions, normalize, kind = SCENARIOS[scenario]
    target, reference, aux = _banks(model)
    if kind == "heads":
        sites = mi.Sites({1: [0, 3], 2: None, 3: [1]}, layer_scores={1: 0.2, 2: 0.9, 3: 0.5})
    else:
        sites = mi.Sites.from_kv_groups(model, {0: [1], 2: [0, 1], 3: [0]})
    steering = mi.Steering(
        target=target,
        reference=reference if "reference" in roles else None,
        auxiliary=[(aux, 0.7)] if "auxiliary" in roles else (),
        sites=sites, rho=2.5, positive_gain=1.2, negative_gain=0.8, gate=gate, gate_scale=1.5,
        schedule=schedule, prefill=prefill, positions=positions, normalize=normalize,
    )
    ref_banks = [("target", target, 1.0)]
    if "reference" in roles:
        ref_banks.append(("reference", reference, 1.0))
    if "auxiliary" in roles:
        ref_banks.append(("auxiliary", aux, 0.7))
    ranks = sites.layer_ranks() if schedule == "rank_linear" else None
    ref_kwargs = dict(
        banks=ref_banks, heads=sites.resolve(geometry(model)), rho=2.5, schedule=schedule, ranks=ranks,
        positive_gain=1.2, negative_gain=0.8, gate=gate, gate_scale=1.5, prefill=prefill, positions=positions,
        normalize=normalize, full_per_layer=schedule == "full_per_layer",
    )
    return steering, ref_kwargs


ATTENTION = ["sdpa", "eager", "flex_attention"]


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_logits_match_reference(tiny_models, arch, scenario, attn):
    model = tiny_models(arch, attn)
    steering, ref_kwargs = _setup(model, scenario)
    prompt = torch.tensor([[20, 21, 22, 23, 24, 25, 26], [30, 31, 32, 33, 34, 35, 36]])
    with torch.no_grad():
        base = model(prompt).logits
        with mi.inject(model, steering):
            got = model(prompt).logits
        with reference_steering(model, **ref_kwargs):
            want = model(prompt).logits
    assert (got - want).abs().max().item() < TOL
    if steering.prefill != "none":
        assert (got - base).abs().max().item() > 1e-2  # the banks do something


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("scenario", ["gated-mixture", "late-prefix", "early-none", "full-per-layer"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_greedy_generation_matches_reference(tiny_models, arch, scenario, attn):
    model = tiny_models(arch, attn)
    steering, ref_kwargs = _setup(model, scenario)
    prompt = torch.tensor([[40, 41, 42, 43, 44]])
    kwargs = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        with mi.inject(model, steering):
            got = model.generate(prompt, **kwargs)
        with reference_steering(model, **ref_kwargs):
            want = model.generate(prompt, **kwargs)
        plain = model.generate(prompt, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        assert (a - b).abs().max().item() < TOL
    assert not all(torch.equal(a, b) for a, b in zip(got.scores, plain.scores))


def _explicit_mixture(q, q_bank, k, v, banks, gains, scaling, normalize):
    """Spec section 3 written source by source: evidences, pi, and the pi-weighted per-source outputs."""
    x = scaling * q @ k.T
    ev = [torch.logsumexp(x, -1) - (math.log(k.shape[0]) if normalize else 0.0)]
    outs = [torch.softmax(x, -1) @ v]
    for (bk, bv), c in zip(banks, gains):
        b = scaling * q_bank @ bk.T
        ev.append(torch.logsumexp(b, -1) - (math.log(bk.shape[0]) if normalize else 0.0) + c)
        outs.append(torch.softmax(b, -1) @ bv)
    pi = torch.softmax(torch.stack(ev, -1), -1)
    return sum(pi[..., i : i + 1] * o for i, o in enumerate(outs))


@pytest.mark.parametrize("normalize", [True, False])
def test_fused_softmax_equals_explicit_mixture(normalize):
    torch.manual_seed(0)
    d, s, sizes, gains = 8, 11, (5, 3, 4), (0.9, -0.4, 0.3)
    q, q_bank = torch.randn(3, d, dtype=torch.float64), torch.randn(3, d, dtype=torch.float64)
    k, v = torch.randn(s, d, dtype=torch.float64), torch.randn(s, d, dtype=torch.float64)
    banks = [(torch.randn(m, d, dtype=torch.float64), torch.randn(m, d, dtype=torch.float64)) for m in sizes]
    bias = torch.cat([torch.full((m,), c - (math.log(m) if normalize else 0.0)) for m, c in zip(sizes, gains)])
    plan = LayerPlan(
        layer=0, heads=torch.tensor([0]), kv_index=torch.tensor([0]), all_heads=True, group_size=1,
        bank_keys=torch.cat([b[0] for b in banks]).unsqueeze(0), bank_values=torch.cat([b[1] for b in banks]).unsqueeze(0),
        slot_bias=bias.double(), target=None, reference=None, positive=0.0, negative=0.0, gate_scale=1.0,
        canonical=True, normalize=normalize,
    )
    fused = site_attention(
        q.view(1, 1, 3, d), q_bank.view(1, 1, 3, d), k.view(1, 1, s, d), v.view(1, 1, s, d), None,
        math.log(s), 0.3, plan,
    )
    want = _explicit_mixture(q, q_bank, k, v, banks, gains, 0.3, normalize)
    assert torch.allclose(fused.view(3, d), want, atol=1e-12)
