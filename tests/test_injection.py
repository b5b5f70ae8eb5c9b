"""The spec's invariants (section 6) and clean injection / removal, on the five tiny architectures."""

from __future__ import annotations

import pytest
import torch

import memory_inception as mi
from conftest import ARCHS, make_tiny
from memory_inception.core.architecture import output_cache
from memory_inception.errors import SteeringError

TOL = 1e-4
PROMPT = torch.tensor([[20, 21, 22, 23, 24, 25]])


def _steering(model, **kw):
    target = mi.Bank.from_token_ids(model, [3, 4, 5, 6, 7], name="target")
    reference = mi.Bank.from_token_ids(model, [8, 9, 10], name="reference")
    defaults = dict(target=target, reference=reference, sites=mi.Sites({1: [0, 2], 3: None}), rho=2.0)
    return mi.Steering(**{**defaults, **kw})


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
@pytest.mark.parametrize("arch", ARCHS)
def test_no_banks_or_no_sites_is_bit_identical(tiny_models, arch, attn):
    """Invariant 1."""
    model = tiny_models(arch, attn)
    with torch.no_grad():
        base = model(PROMPT).logits
        with mi.inject(model, mi.Steering(sites=mi.Sites.all(model))):
            no_banks = model(PROMPT).logits
        with mi.inject(model, _steering(model, sites=mi.Sites({}))):
            no_sites = model(PROMPT).logits
        # banks at one layer only: the other layers still take the stock path, bit for bit, before that layer
        with mi.inject(model, _steering(model, sites=mi.Sites({3: [1]}))):
            out = model(PROMPT, output_hidden_states=True)
        plain = model(PROMPT, output_hidden_states=True)
    assert torch.equal(base, no_banks) and torch.equal(base, no_sites)
    for layer in range(4):  # hidden_states[l] enters layer l: identical up to and including the input of layer 3
        assert torch.equal(out.hidden_states[layer], plain.hidden_states[layer])
    assert not torch.equal(out.logits, plain.logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_oracle(tiny_models, arch):
    """Invariant 2: a token-id bank at every layer and head in prefix mode is a hidden visible prefix."""
    model = tiny_models(arch)
    tokens = [3, 4, 5, 6, 7, 8, 9]
    bank = mi.Bank.from_token_ids(model, tokens)
    steering = mi.Steering(
        target=bank, sites=mi.Sites.all(model), positions="prefix", normalize="none", rho=0.0, prefill="all"
    )
    with torch.no_grad():
        want = model(torch.tensor([tokens + PROMPT[0].tolist()])).logits[:, len(tokens) :]
        with mi.inject(model, steering):
            got = model(PROMPT).logits
    assert (got - want).abs().max().item() < TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_group_sites_equal_their_query_heads(tiny_models, arch):
    """Invariant 4."""
    model = tiny_models(arch)
    by_group = _steering(model, sites=mi.Sites.from_kv_groups(model, {1: [1], 2: [0]}))
    by_heads = _steering(model, sites=mi.Sites({1: [2, 3], 2: [0, 1]}))
    with torch.no_grad():
        with mi.inject(model, by_group):
            a = model(PROMPT).logits
        with mi.inject(model, by_heads):
            b = model(PROMPT).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("prefill", ["last", "all"])
@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_rows_equal_rows_alone(tiny_models, arch, prefill):
    """Invariant 5, for prefill logits and cached greedy generation (left padding)."""
    model = tiny_models(arch)
    steering = _steering(model, prefill=prefill)
    rows = [[20, 21, 22, 23, 24, 25], [30, 31, 32]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad(), mi.inject(model, steering):
        batch = model.generate(ids, attention_mask=mask, **gen)
        for i, r in enumerate(rows):
            alone = model.generate(torch.tensor([r]), **gen)
            assert batch[i, width:].tolist() == alone[0, len(r) :].tolist()
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(ids, attention_mask=mask, position_ids=position_ids).logits
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r])).logits[0]
            assert (logits[i, width - len(r) :] - alone).abs().max().item() < TOL


@pytest.mark.parametrize("prefill", ["last", "all", "none"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generation_equals_uncached_rerun(tiny_models, arch, prefill):
    """Invariants 6 and 7: the same steered positions without a cache give the same logits; banks stay out."""
    model = tiny_models(arch)
    steering = _steering(model, prefill=prefill)
    n = PROMPT.shape[1]
    with torch.no_grad(), mi.inject(model, steering):
        out = model.generate(PROMPT, max_new_tokens=6, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        seq = out.sequences
        steer = torch.zeros_like(seq, dtype=torch.bool)
        steer[:, n:] = True  # every generated token
        if prefill == "all":
            steer[:, :n] = True
        elif prefill == "last":
            steer[:, n - 1] = True
        rerun = model(seq, mi_steer_mask=steer, use_cache=False).logits
        cached = torch.stack(out.logits, 1)
        assert (rerun[:, n - 1 : -1] - cached).abs().max().item() < TOL
        assert output_cache(out).get_seq_length() == seq.shape[1] - 1  # visible tokens only
        for layer in output_cache(out).layers:
            assert layer.keys.shape[-2] == seq.shape[1] - 1


def test_moe_blocks_are_untouched(tiny_models):
    """Invariant 8: under steering every sparse MoE block computes exactly the stock function of its input."""
    model = tiny_models("qwen3_moe")
    blocks = [m for m in model.modules() if type(m).__name__ == "Qwen3MoeSparseMoeBlock"]
    assert len(blocks) == 4
    steering = _steering(model, sites=mi.Sites.all(model))
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, o: seen.append((m, a[0].clone(), o.clone()))) for b in blocks]
    try:
        with torch.no_grad(), mi.inject(model, steering):
            model(PROMPT)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for block, inp, out in seen:
            assert torch.equal(block(inp), out)
    assert len(seen) == 4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_model_is_exactly_restored_even_when_the_body_raises(attn):
    model = make_tiny("llama", attn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base = model(PROMPT).logits
    with pytest.raises(RuntimeError, match="boom"):
        with mi.inject(model, _steering(model)):
            assert model.config._attn_implementation == f"mi_{attn}"
            raise RuntimeError("boom")
    assert model.config._attn_implementation == attn
    assert not any(hasattr(m, "_mi_plan") for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(PROMPT).logits, base)


def test_sdpa_and_eager_agree(tiny_models):
    outs = []
    for attn in ("sdpa", "eager"):
        model = tiny_models("qwen3", attn)
        with torch.no_grad(), mi.inject(model, _steering(model, prefill="all")):
            outs.append(model(PROMPT).logits)
    assert (outs[0] - outs[1]).abs().max().item() < TOL


def test_unsupported_attention_and_nesting_are_refused():
    model = make_tiny("llama", "sdpa")
    steering = _steering(model)
    with mi.inject(model, steering):
        with pytest.raises(SteeringError, match="already steered"):
            with mi.inject(model, steering):
                pass
    model.config._attn_implementation_internal = "flash_attention_3"
    with pytest.raises(SteeringError, match="'sdpa' or 'eager'"):
        with mi.inject(model, steering):
            pass


def test_bank_from_another_model_is_refused(tiny_models):
    a, b = tiny_models("llama"), make_tiny("llama", seed=1)
    bank = mi.Bank.from_token_ids(b, [3, 4, 5])
    with pytest.raises(mi.BankError, match="another model"):
        mi.inject(a, mi.Steering(target=bank, sites=mi.Sites({1: None})))


def test_site_layer_without_bank_slots_is_refused(tiny_models):
    model = tiny_models("llama")
    bank = mi.Bank.from_token_ids(model, [3, 4, 5], layers=[0, 1])
    with pytest.raises(SteeringError, match=r"no slots for site layers \[3\]"):
        mi.inject(model, mi.Steering(target=bank, sites=mi.Sites({1: None, 3: None})))


def test_explicit_steer_mask_shape_is_checked(tiny_models):
    model = tiny_models("llama")
    with mi.inject(model, _steering(model)), pytest.raises(SteeringError, match="expected"):
        model(PROMPT, mi_steer_mask=torch.ones(1, 3, dtype=torch.bool))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_right_padding_steers_each_rows_last_real_token(tiny_models, arch):
    model = tiny_models(arch)
    rows = [[20, 21, 22, 23, 24, 25], [30, 31, 32]]
    ids = torch.tensor([r + [0] * (6 - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (6 - len(r)) for r in rows])
    with torch.no_grad(), mi.inject(model, _steering(model)):
        batch = model(ids, attention_mask=mask).logits
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r])).logits[0]
            assert (batch[i, : len(r)] - alone).abs().max().item() < TOL


def test_canonical_query_is_unrotated_under_scaled_rope(tiny_models):
    """Canonical bank scores do not depend on where the prompt sits (padding shift, absolute offset), also
    under YaRN RoPE (whose keys' exact un-rotation is checked in test_banks)."""
    model = tiny_models("llama_yarn")
    steering = _steering(model, prefill="all")
    ids = PROMPT
    shifted = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad(), mi.inject(model, steering):
        a = model(ids).logits
        b = model(shifted, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, 3:]
        c = model(ids, position_ids=torch.arange(5, 5 + ids.shape[1]).unsqueeze(0)).logits
    assert (a - b).abs().max().item() < TOL
    assert (a - c).abs().max().item() < TOL
