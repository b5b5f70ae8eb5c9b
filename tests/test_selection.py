"""Site selection (spec section 8): the selection rules, the recorded statistics, the artifact."""

from __future__ import annotations

import pytest
import torch

import memory_inception as mi
from conftest import ARCHS
from memory_inception.core.architecture import attention_modules, geometry
from memory_inception.tuning.selection import (
    Selection,
    UnitScore,
    choose_sites,
    random_sites,
    score_units,
    select_sites,
)

PROMPTS = ["tell me about cats", "how is weather today", "what do you like to eat"]


def _unit(layer, head, score, group_size=2):
    return UnitScore(layer, head, head // group_size, score, 0.1, 0.9, 0.0, score, 1)


def test_one_head_per_kv_group_top_k_and_top_m():
    units = [
        # layer 0: group 0 heads 0,1 (1 wins), group 1 heads 2,3 (2 wins)
        _unit(0, 0, 1.0), _unit(0, 1, 3.0), _unit(0, 2, 2.0), _unit(0, 3, -1.0),
        # layer 1: both groups weak
        _unit(1, 0, 0.5), _unit(1, 1, 0.1), _unit(1, 2, 0.2), _unit(1, 3, 0.3),
        # layer 2: one strong group
        _unit(2, 0, -5.0), _unit(2, 1, -4.0), _unit(2, 2, 4.5), _unit(2, 3, 0.0),
    ]
    sites = choose_sites(units, heads_per_layer=None, num_layers=None)
    assert dict(sites.heads) == {0: (1, 2), 1: (0, 3), 2: (1, 2)}
    assert sites.layer_scores == {0: 5.0, 1: 0.8, 2: 0.5}
    top1 = choose_sites(units, heads_per_layer=1, num_layers=None)
    assert dict(top1.heads) == {0: (1,), 1: (0,), 2: (2,)}
    assert top1.layer_scores == {0: 3.0, 1: 0.5, 2: 4.5}
    best2 = choose_sites(units, heads_per_layer=1, num_layers=2)
    assert dict(best2.heads) == {0: (1,), 2: (2,)}
    assert best2.layer_ranks() == {2: 0, 0: 1}


def test_choose_sites_rejects_bad_arguments():
    with pytest.raises(mi.SiteError, match="heads_per_layer"):
        choose_sites([_unit(0, 0, 1.0)], heads_per_layer=0)
    with pytest.raises(mi.SiteError, match="num_layers"):
        choose_sites([_unit(0, 0, 1.0)], num_layers=0)
    with pytest.raises(mi.SiteError, match="no scored units"):
        choose_sites([])


def _banks(model, tok):
    target = mi.build_bank(model, tok, "you are a cheerful pirate who loves the sea")
    reference = mi.build_bank(model, tok, "you are quiet grumpy and never friendly")
    return target, reference


def _query_margin(model, tok, prompt, layer, target, reference):
    """Independent: pre-RoPE query of the last prompt token at `layer`, scored against both banks."""
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(ids, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[layer][0, -1]
        decoder = model.model.layers[layer]
        attn = attention_modules(model)[layer]
        geo = geometry(model)
        q = attn.q_proj(decoder.input_layernorm(hidden)).view(geo.num_heads, geo.head_dim)
        if hasattr(attn, "q_norm"):
            q = attn.q_norm(q)
    out = []
    for head in range(geo.num_heads):
        g = head // geo.group_size
        bt = (target.keys(layer)[g].float() @ q[head]) * attn.scaling
        br = (reference.keys(layer)[g].float() @ q[head]) * attn.scaling
        out.append(float(bt.max() - br.max()))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_margin_equals_an_independent_computation(tiny_models, tiny_tokenizer, arch):
    model, tok = tiny_models(arch), tiny_tokenizer
    target, reference = _banks(model, tok)
    layer = 2
    units = score_units(model, tok, target, reference, PROMPTS[:1], layers=[layer], max_new_tokens=1)
    assert [(u.layer, u.head, u.rows) for u in units] == [(layer, h, 1) for h in range(4)]
    want = _query_margin(model, tok, PROMPTS[0], layer, target, reference)
    assert [u.margin for u in units] == pytest.approx(want, abs=1e-4)
    # swapping the banks negates the margin (the query at the first site layer does not depend on the banks)
    swapped = score_units(model, tok, reference, target, PROMPTS[:1], layers=[layer], max_new_tokens=1)
    assert [u.margin for u in swapped] == pytest.approx([-u.margin for u in units], abs=1e-5)
    for u in units:
        assert 0 < u.target_weight < 1 and 0 < u.prompt_weight < 1
        assert u.score == pytest.approx(u.margin * u.target_weight / (u.target_weight + u.prompt_weight))


def test_rows_count_every_steered_row(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("qwen2"), tiny_tokenizer
    target, reference = _banks(model, tok)
    units = score_units(model, tok, target, reference, PROMPTS, layers=[1, 3], max_new_tokens=4)
    # per prompt: the last prompt token, then 3 decode steps (the 4th token is sampled, never fed back)
    assert {u.rows for u in units} == {len(PROMPTS) * 4}
    assert {u.layer for u in units} == {1, 3}


def test_select_sites_artifact_round_trip(tiny_models, tiny_tokenizer, tmp_path):
    model, tok = tiny_models("llama"), tiny_tokenizer
    target, reference = _banks(model, tok)
    selection = select_sites(model, tok, target, reference, PROMPTS, heads_per_layer=1, num_layers=2, max_new_tokens=3)
    assert len(selection.sites.layers) == 2
    assert all(len(h) == 1 for h in selection.sites.heads.values())
    assert len(selection.units) == 4 * 4  # every head of every candidate layer is scored
    path = selection.save(tmp_path / "sites.json")
    loaded = mi.Sites.load(path)
    assert loaded == selection.sites and loaded.layer_scores == pytest.approx(selection.sites.layer_scores)
    again = Selection.load(path)
    assert again.units == selection.units and again.config["num_layers"] == 2
    # the artifact drives steering, including the rank_linear schedule that needs its layer scores
    steering = mi.Steering(target=target, sites=loaded, schedule="rank_linear")
    ids = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        plain = model(ids).logits
        with mi.inject(model, steering):
            steered = model(ids).logits
    assert not torch.equal(plain, steered)


def test_random_sites_match_the_shape(tiny_models):
    model = tiny_models("llama")
    geo = geometry(model)
    like = mi.Sites({1: [0, 3], 2: [1]})
    for seed in range(5):
        sites = random_sites(geo, like, torch.Generator().manual_seed(seed))
        assert sorted(len(h) for h in sites.heads.values()) == [1, 2]
        for heads in sites.heads.values():
            assert len({h // geo.group_size for h in heads}) == len(heads)
