"""The batched operator (one call for every steered row of a batch) equals the explicit operator run request by
request (`core.operator.site_attention`), on every tensor-parallel shard; no vLLM engine (fast).

Two forwards like vLLM's: a prefill of every request (chunks of different lengths), then one decode token each;
requests with different banks, gates, heads, prefill modes and normalization, and a plain request between them.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import memory_inception as mi
from memory_inception.core.architecture import ModelGeometry, undo_rope
from memory_inception.core.operator import site_attention
from memory_inception.core.plan import plan_layers
from memory_inception.errors import MemoryInceptionError, SteeringError
from memory_inception.vllm.batching import Stacked, StepPlan, prompt_lse, steer_layer
from memory_inception.vllm.checkpoint import Checkpoint
from memory_inception.vllm.keypool import KeyPool
from memory_inception.vllm.shard import Shard, local_banks, stack_banks
from memory_inception.vllm.spec import BankUse, RequestSteering
from memory_inception.vllm.state import RequestState

HEADS, KV_HEADS, DIM = 4, 2, 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=HEADS * DIM, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=DIM)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    checkpoint = Checkpoint(path)
    gen = torch.Generator().manual_seed(1)
    banks = {name: mi.Bank.from_token_ids(model, torch.randint(3, 60, (m,), generator=gen), name=name)
             for name, m in (("t", 7), ("r", 4), ("a", 3))}
    return model, checkpoint, banks


def steerings(banks):
    return [
        (mi.Steering(target=banks["t"], sites=mi.Sites({1: None, 3: None}), rho=3.0), "last"),
        None,
        (mi.Steering(target=banks["t"], reference=banks["r"], auxiliary=[(banks["a"], 0.5)],
                     sites=mi.Sites({1: None, 3: [1, 2]}), rho=4.0, gate_scale=2.0, prefill="all"), "all"),
        (mi.Steering(target=banks["a"], sites=mi.Sites({1: [0, 3], 2: None}), rho=-2.0, normalize="none",
                     schedule="flat", prefill="none"), "none"),
        (mi.Steering(target=banks["r"], sites=mi.Sites({3: [3]}), rho=5.0), "last"),
        # a second gated request with other bank sizes: the gate's regions are padded for both
        (mi.Steering(target=banks["a"], reference=banks["t"], sites=mi.Sites({3: None, 1: [1]}), rho=-3.0,
                     schedule="flat"), "last"),
    ]


def causal_attention(q, k, v, scale):
    """Stock attention of one request: q [T, H, d] at positions start.., k / v [S, H_kv, d] (all its keys)."""
    t, h, _ = q.shape
    s, kv, _ = k.shape
    g = h // kv
    kk, vv = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = torch.einsum("thd,shd->hts", q, kk) * scale
    pos = torch.arange(s - t, s).view(-1, 1)
    scores = scores.masked_fill(torch.arange(s).view(1, -1) > pos, -math.inf)
    return torch.einsum("hts,shd->thd", torch.softmax(scores, -1), vv)


def reference_row(plan, q, keys, values, pos, checkpoint, scale, group):
    """The explicit operator for one steered row (the per-request path the plugin used before batching)."""
    cos, sin = checkpoint.inverse_rope(torch.tensor([pos]), torch.float32)
    query = q.view(1, HEADS, 1, DIM)
    if not plan.all_heads:
        query = query[:, plan.heads]
    bank_query = undo_rope(query, cos, sin)
    k = keys[: pos + 1].transpose(0, 1).unsqueeze(0)
    v = values[: pos + 1].transpose(0, 1).unsqueeze(0)
    if plan.all_heads:
        query, bank_query = query.reshape(1, KV_HEADS, group, DIM), bank_query.reshape(1, KV_HEADS, group, DIM)
    else:
        k, v = k[:, plan.kv_index], v[:, plan.kv_index]
    out = site_attention(query, bank_query, k, v, None, math.log(pos + 1), scale, plan)
    return out.reshape(-1, DIM)  # [Hs, d]


@pytest.mark.parametrize("size", [1, 2, 4])
def test_batched_operator_equals_the_explicit_operator_per_request_on_every_shard(tiny, size):
    _, checkpoint, banks = tiny
    geo, fp = checkpoint.geometry, checkpoint.fingerprint
    scale = DIM**-0.5
    gen = torch.Generator().manual_seed(2)
    cases = steerings(banks)
    prompts = [5, 9, 3, 12, 7, 4]
    plans = [plan_layers(c[0], geo, fingerprint=fp) if c else {} for c in cases]
    total = [p + 1 for p in prompts]  # prompt, then one decode token
    q_all = [torch.randn(n, HEADS, DIM, generator=gen) for n in total]
    k_all = [torch.randn(n, KV_HEADS, DIM, generator=gen) for n in total]
    v_all = [torch.randn(n, KV_HEADS, DIM, generator=gen) for n in total]
    # what the explicit operator gives, request by request, on the whole model (every head)
    want = {}  # (request, layer, position) -> [H, d] (stock where not steered)
    for i, (case, plan) in enumerate(zip(cases, plans)):
        stock = causal_attention(q_all[i], k_all[i], v_all[i], scale)
        for layer in range(4):
            for pos in range(total[i]):
                row = stock[pos].clone()
                steered = pos >= prompts[i] or (case and (case[1] == "all" or (case[1] == "last" and pos == prompts[i] - 1)))
                if case and layer in plan and steered:
                    row[plan[layer].heads] = reference_row(plan[layer], q_all[i][pos], k_all[i], v_all[i], pos,
                                                           checkpoint, scale, geo.group_size)
                want[i, layer, pos] = row
    changed = 0
    for rank in range(size):
        shard = Shard(geo, rank, size)
        h0, kv0 = shard.first_head, shard.first_kv_head
        heads = slice(h0, h0 + shard.num_heads)
        kvs = slice(kv0, kv0 + shard.num_kv_heads)
        pool = KeyPool()
        rows = []
        for case, plan, n in zip(cases, plans, prompts):
            if not case:
                rows.append(None)
                continue
            local = {layer: part for layer, p in plan.items() if (part := local_banks(p, shard)) is not None}
            state = RequestState(RequestSteering(banks=(BankUse("x"),)), case[1], n, plan, [], local)
            state.slot = pool.acquire() if local else None
            rows.append(state)
        # forward 1: prefill (positions 0 .. p-1); forward 2: one decode token each
        for first, count in ((lambda i: 0, lambda i: prompts[i]), (lambda i: prompts[i], lambda i: 1)):
            idx = [(i, pos) for i in range(len(cases)) for pos in range(first(i), first(i) + count(i))]
            starts = [0]
            for i in range(len(cases)):
                starts.append(starts[-1] + count(i))
            seq_lens = [first(i) + count(i) for i in range(len(cases))]
            step = StepPlan.build(rows, starts, seq_lens, checkpoint, torch.float32)
            for layer in range(4):
                query = torch.stack([q_all[i][p, heads] for i, p in idx])
                key = torch.stack([k_all[i][p, kvs] for i, p in idx])
                output = torch.stack([want_stock(q_all, k_all, v_all, i, p, scale)[heads] for i, p in idx])
                before = output.clone()
                work = step.layer(layer)
                if work is not None:
                    steer_layer(work, lambda rows, g, layer=layer: Stacked(*stack_banks(
                        [local[layer] for local in rows.locals], layer, g)),
                                pool, layer, query, key, output, scale)
                expected = torch.stack([want[i, layer, p][heads] for i, p in idx])
                torch.testing.assert_close(output, expected, atol=2e-5, rtol=1e-5)
                changed += int((output - before).abs().amax() > 1e-3)
    assert changed >= 4  # the banks moved outputs (the comparison is not stock against stock)


def want_stock(q_all, k_all, v_all, i, pos, scale):
    return causal_attention(q_all[i][pos : pos + 1], k_all[i][: pos + 1], v_all[i][: pos + 1], scale)[0]


def test_shards_follow_vllm_head_sharding():
    qwen = ModelGeometry("qwen2", 24, 14, 2, 64)  # Qwen2.5-0.5B: 14 query heads, 2 KV heads
    assert [(s.first_head, s.num_heads, s.first_kv_head, s.num_kv_heads) for s in
            (Shard(qwen, r, 2) for r in range(2))] == [(0, 7, 0, 1), (7, 7, 1, 1)]
    tiny = ModelGeometry("llama", 4, 4, 2, 16)  # fewer KV heads than ranks: each KV head on two ranks
    assert [(s.first_head, s.first_kv_head, s.num_kv_heads) for s in (Shard(tiny, r, 4) for r in range(4))] == [
        (0, 0, 1), (1, 0, 1), (2, 1, 1), (3, 1, 1)]
    with pytest.raises(SteeringError, match="does not divide the 9 query heads"):
        Shard(ModelGeometry("llama", 30, 9, 3, 64), 0, 2)  # SmolLM2-135M cannot run at TP 2
    with pytest.raises(SteeringError, match="unsupported head sharding"):
        Shard(qwen, 0, 2).check(14, 2)


def test_the_prompt_log_sum_exp_in_row_blocks_equals_one_block(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 2, 3 * 5, 8, generator=gen)
    k = torch.randn(2, 2, 11, 8, generator=gen)
    pos = torch.tensor([[6, 7, 8, 9, 10], [2, 3, 4, 4, 4]])
    mask = torch.zeros(2, 5, 11).masked_fill_(torch.arange(11).view(1, 1, -1) > pos.unsqueeze(-1), -math.inf)
    mask = mask.view(2, 1, 1, 5, 11)
    whole = prompt_lse(q, k, mask, 0.3, 3, 5)
    scores = (q.view(2, 2, 3, 5, 8) @ k.unsqueeze(2).transpose(-1, -2)) * 0.3 + mask
    torch.testing.assert_close(whole, torch.logsumexp(scores, -1).reshape(2, 2, 15))
    monkeypatch.setattr("memory_inception.vllm.batching.LSE_BLOCK", 2 * 2 * 3 * 11 * 2)  # two rows per block
    torch.testing.assert_close(prompt_lse(q, k, mask, 0.3, 3, 5), whole)


def test_a_pool_with_missing_positions_refuses_instead_of_guessing():
    pool = KeyPool()
    state = RequestState(RequestSteering(banks=(BankUse("x"),)), "last", 3, {}, [], {})
    state.slot = pool.acquire()
    state.advance(0, 3)
    pool.write(0, torch.tensor([0, 0, 0]), torch.arange(3), torch.zeros(3, 1, 4), 1, 3)
    state.advance(1, 4)  # recomputed positions overwrite (preemption)
    pool.write(0, torch.tensor([0] * 4), torch.arange(1, 5), torch.ones(4, 1, 4), 1, 5)
    assert state.length == 5 and bool(pool.read(0, slice(0, 1), 5)[0, 0, 1:5].eq(1).all())
    assert bool(pool.read(0, torch.tensor([0]), 1).eq(0).all())
    with pytest.raises(MemoryInceptionError, match="cache_salt"):
        state.advance(9, 1)


def test_slots_are_reused_lowest_first_and_the_pool_grows_keeping_its_keys():
    pool = KeyPool()
    slots = [pool.acquire() for _ in range(3)]
    assert slots == [0, 1, 2]
    pool.write(3, torch.tensor([2]), torch.tensor([5]), torch.full((1, 2, 4), 7.0), 3, 6)
    pool.release(1)
    pool.release(0)
    assert pool.acquire() == 0 and pool.slots_in_use == 2
    pool.write(3, torch.tensor([40]), torch.tensor([300]), torch.ones(1, 2, 4), 41, 301)  # grows both ways
    assert pool.keys[3].shape[0] >= 41 and pool.keys[3].shape[2] >= 301
    assert bool(pool.read(3, torch.tensor([2]), 6)[0, :, 5].eq(7).all())


def test_memory_banks_are_refused_with_the_fix(tiny):
    _, checkpoint, banks = tiny
    plan = plan_layers(mi.Steering(target=banks["t"], sites=mi.Sites({1: None})), checkpoint.geometry,
                       fingerprint=checkpoint.fingerprint)[1]
    plan.memory = object()  # what plan_layers sets for a memory bank
    with pytest.raises(SteeringError, match="memory banks .* not supported by the vLLM plugin"):
        local_banks(plan, Shard(checkpoint.geometry))
