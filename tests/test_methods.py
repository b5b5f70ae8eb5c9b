"""Every method behind one interface: each equals its direct implementation and leaves the model untouched."""

from __future__ import annotations

import pytest
import torch

import memory_inception as mi
from conftest import ARCHS
from memory_inception.core.storage import prompt_kv_bytes
from memory_inception.methods.caa.hooks import ActivationAddition
from memory_inception.methods.caa.method import CAA
from memory_inception.methods.caa.vectors import SteeringVector
from memory_inception.methods.combined import Combined
from memory_inception.methods.interface import Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import (
    generate,
    next_token_logprobs,
    render,
    score,
    score_shared,
    statement_margin,
)

CONV = [{"role": "user", "content": "tell me about cats"}]
CONVS = [CONV, [{"role": "user", "content": "how is weather today please"}]]
PERSONA = "you are a cheerful pirate who loves the sea"


def _state(model):
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    return hooks, model.config._attn_implementation


def _vector(model, seed=0):
    torch.manual_seed(seed)
    hidden = model.config.hidden_size
    return SteeringVector({layer: torch.randn(hidden) for layer in range(4)}, placement="residual", name="rand")


def _methods(model, tok):
    bank = mi.build_bank(model, tok, PERSONA)
    return {
        "plain": Plain(),
        "prompting": Prompting.from_bank(bank),
        "caa": CAA(_vector(model), multiplier=2.0, layers=[1, 2]),
        "mi": MI(mi.Steering(target=bank, sites=mi.Sites({2: None, 3: [1]}), rho=4.0)),
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_methods_leave_the_model_untouched(tiny_models, tiny_tokenizer, arch):
    model, tok = tiny_models(arch), tiny_tokenizer
    ids = torch.tensor([[7, 8, 9, 10, 11]])
    with torch.no_grad():
        before = model(ids).logits
    state = _state(model)
    for method in _methods(model, tok).values():
        generate(model, tok, method, CONVS, max_new_tokens=3)
        score(model, tok, method, CONVS, ["yes", "no maybe"])
        assert _state(model) == state
        with pytest.raises(RuntimeError, match="boom"), method.active(model, steer_from=[0]):
            raise RuntimeError("boom")
        assert _state(model) == state
        with torch.no_grad():
            assert torch.equal(model(ids).logits, before)


def test_steering_methods_change_replies_and_scores(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("llama"), tiny_tokenizer
    methods = _methods(model, tok)
    plain = score(model, tok, methods["plain"], CONVS, ["yes", "no maybe"])
    for name in ("prompting", "caa", "mi"):
        got = score(model, tok, methods[name], CONVS, ["yes", "no maybe"])
        assert any(not torch.allclose(g, p) for g, p in zip(got, plain)), name


def test_prompting_is_a_visible_system_message_like_the_bank(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("llama"), tiny_tokenizer
    bank = mi.build_bank(model, tok, PERSONA, templates=("persona : {descriptor}",))
    method = Prompting.from_bank(bank)
    assert method.conversation(CONV)[0] == {"role": "system", "content": f"persona : {PERSONA}"}
    with_system = method.conversation([{"role": "system", "content": "be brief"}] + CONV)
    assert with_system[0]["content"] == f"persona : {PERSONA}\n\nbe brief" and len(with_system) == 2
    assert CONV == [{"role": "user", "content": "tell me about cats"}]  # the caller's conversation is not mutated
    cost = method.cost(model, tok)
    assert cost.visible_tokens == len(f"persona : {PERSONA}".split())
    assert cost.cache_bytes == prompt_kv_bytes(model, cost.visible_tokens) and cost.stored_bytes == 0
    with pytest.raises(mi.SteeringError, match="non-empty"):
        Prompting("  ")


def test_mi_equals_inject_and_continuation_logprobs(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("qwen3"), tiny_tokenizer
    method = _methods(model, tok)["mi"]
    ids, _ = render(tok, Plain(), CONV)
    with torch.no_grad(), mi.inject(model, method.steering):
        out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    want = tok.decode(out[0, len(ids) :], skip_special_tokens=True).strip()
    assert generate(model, tok, method, [CONV], max_new_tokens=4) == [want]
    cont = tok("yes no maybe", add_special_tokens=False)["input_ids"]
    [direct] = mi.continuation_logprobs(model, None, ids, cont, method.steering)
    [got] = score(model, tok, method, [CONV], ["yes no maybe"])
    assert torch.allclose(got, direct, atol=1e-6)


def test_caa_steers_every_position_after_the_instruction(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("mistral"), tiny_tokenizer
    method = _methods(model, tok)["caa"]
    ids, end = render(tok, Plain(), CONV)
    bare = tok.apply_chat_template(CONV, tokenize=False)
    assert end == len(tok(bare, add_special_tokens=False)["input_ids"]) and end < len(ids)
    cont = tok("yes no", add_special_tokens=False)["input_ids"]
    full = torch.tensor([ids + cont])
    with torch.no_grad(), ActivationAddition(model, method.vector, 2.0, layers=[1, 2], steer_from=end):
        logits = model(full).logits[0]
    want = torch.log_softmax(logits, -1)[len(ids) - 1 : -1].gather(-1, torch.tensor(cont).unsqueeze(-1)).squeeze(-1)
    [got] = score(model, tok, method, [CONV], ["yes no"])
    assert torch.allclose(got, want, atol=1e-5)
    # generation: the same tokens as a manual greedy loop under the hook
    with torch.no_grad(), ActivationAddition(model, method.vector, 2.0, layers=[1, 2], steer_from=end):
        out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generate(model, tok, method, [CONV], max_new_tokens=4) == [
        tok.decode(out[0, len(ids) :], skip_special_tokens=True).strip()
    ]


def test_combined_prompting_and_mi(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("llama"), tiny_tokenizer
    methods = _methods(model, tok)
    both = Combined([methods["prompting"], methods["mi"]])
    [got] = score(model, tok, both, [CONV], ["yes no"])
    [want] = score(model, tok, methods["mi"], [methods["prompting"].conversation(CONV)], ["yes no"])
    assert torch.allclose(got, want, atol=1e-6)
    cost = both.cost(model, tok)
    assert cost.visible_tokens == methods["prompting"].cost(model, tok).visible_tokens
    assert cost.stored_bytes == methods["mi"].cost(model, tok).stored_bytes > 0
    with pytest.raises(mi.SteeringError, match="once"):
        Combined([methods["mi"], methods["mi"]]).mi_prefill


def test_costs(tiny_models, tiny_tokenizer):
    model, tok = tiny_models("llama"), tiny_tokenizer  # 4 heads, 2 KV heads, head_dim 16, fp32
    methods = _methods(model, tok)
    bank = methods["mi"].steering.target
    # layer 2: all heads -> both KV groups; layer 3: head 1 -> KV group 0 only
    assert methods["mi"].cost(model, tok).stored_bytes == (2 + 1) * bank.num_slots * 2 * 16 * 4
    assert methods["caa"].cost(model, tok).stored_bytes == 2 * 64 * 4
    assert methods["plain"].cost(model, tok) == mi.Cost()


def test_statement_margin_is_the_mean_log_probability_gap(tiny_models, tiny_tokenizer):
    from memory_inception.methods.runners import ASK

    model, tok = tiny_models("llama"), tiny_tokenizer
    yes, no = ["you are a cheerful pirate", "yes always friendly"], ["you are quiet grumpy"]
    method = _methods(model, tok)["mi"]
    ask = [{"role": "user", "content": ASK}]
    lps = [float(lp.mean()) for lp in score(model, tok, method, [ask] * 3, yes + no)]
    want = (lps[0] + lps[1]) / 2 - lps[2]
    assert statement_margin(model, tok, method, yes, no) == pytest.approx(want, abs=1e-5)
    with pytest.raises(mi.SteeringError, match="matching"):
        statement_margin(model, tok, Plain(), [], no)


@pytest.mark.parametrize("prefill", ["last", "all", "none"])
def test_next_token_logprobs_equal_scoring_each_option(tiny_models, tiny_tokenizer, prefill):
    model, tok = tiny_models("qwen2"), tiny_tokenizer
    methods = _methods(model, tok)
    methods["mi"] = MI(mi.Steering(target=methods["mi"].steering.target, rho=4.0, prefill=prefill))
    options = [tok(x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B", "C")]
    for name, method in methods.items():
        table = next_token_logprobs(model, tok, method, CONVS, answer_prefix="(", batch_size=2)
        assert table.shape == (2, model.config.vocab_size)
        for option in options:
            want = score(model, tok, method, CONVS, [[option]] * 2, answer_prefix="(")
            got = table[:, option]
            assert torch.allclose(got, torch.stack([w[0] for w in want]), atol=1e-5), name
    # the first token is predicted at the last prompt position: steered unless prefill is "none"
    plain = next_token_logprobs(model, tok, Plain(), CONVS)
    same = torch.allclose(plain, next_token_logprobs(model, tok, methods["mi"], CONVS))
    assert same == (prefill == "none")


@pytest.mark.parametrize("prefill", ["last", "all", "none"])
def test_score_shared_equals_score(tiny_models, tiny_tokenizer, prefill):
    model, tok = tiny_models("llama"), tiny_tokenizer
    methods = _methods(model, tok)
    methods["mi"] = MI(mi.Steering(target=methods["mi"].steering.target, rho=4.0, prefill=prefill))
    history = [
        {"role": "user", "content": "tell me about cats"},
        {"role": "assistant", "content": "cats are small and they sleep a lot"},
        {"role": "user", "content": "and dogs please"},
    ]
    conts = ["yes no maybe", "no", "a much longer reply than the others here"]
    for name, method in methods.items():
        want = score(model, tok, method, [history] * 3, conts, answer_prefix="(")
        got = score_shared(model, tok, method, history, conts, answer_prefix="(", batch_size=2)
        for w, g in zip(want, got):
            assert torch.allclose(w, g, atol=1e-5), name


def test_conversation_must_end_with_a_user_turn(tiny_tokenizer):
    with pytest.raises(mi.SteeringError, match="end with a user"):
        render(tiny_tokenizer, Plain(), CONV + [{"role": "assistant", "content": "hello"}])
