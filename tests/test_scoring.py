"""continuation_logprobs follows generation semantics: it equals token-by-token cached decoding."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import memory_inception as mi
from conftest import ARCHS
from memory_inception.core.architecture import cache_kwargs


def _steering(model, prefill):
    target = mi.Bank.from_token_ids(model, [3, 4, 5, 6, 7])
    reference = mi.Bank.from_token_ids(model, [8, 9, 10])
    return mi.Steering(target=target, reference=reference, sites=mi.Sites({1: None, 2: [0, 3]}), rho=3.0, prefill=prefill)


def _decode_token_by_token(model, prompt, continuation, steering):
    """Prefill the prompt with a cache, then feed each continuation token alone, as generation does."""
    logprobs = []
    with torch.no_grad(), mi.inject(model, steering):
        cache = DynamicCache()
        logits = model(torch.tensor([prompt]), use_cache=True, **cache_kwargs(model, cache)).logits[0, -1]
        for tok in continuation:
            logprobs.append(torch.log_softmax(logits.float(), -1)[tok])
            logits = model(torch.tensor([[tok]]), use_cache=True, **cache_kwargs(model, cache)).logits[0, -1]
    return torch.stack(logprobs)


@pytest.mark.parametrize("prefill", ["last", "all", "none"])
@pytest.mark.parametrize("arch", ARCHS)
def test_matches_token_by_token_decoding(tiny_models, arch, prefill):
    model = tiny_models(arch)
    steering = _steering(model, prefill)
    prompts = [[20, 21, 22, 23, 24, 25], [30, 31, 32], [40, 41, 42, 43]]
    conts = [[50, 51, 52], [60, 61, 62, 63, 64], [70]]
    got = mi.continuation_logprobs(model, None, prompts, conts, steering, batch_size=2)
    plain = mi.continuation_logprobs(model, None, prompts, conts, batch_size=2)  # the same batches: bit-comparable
    for p, c, g, u in zip(prompts, conts, got, plain):
        want = _decode_token_by_token(model, p, c, steering)
        assert g.shape == (len(c),)
        assert (g - want).abs().max().item() < 1e-4
        # every continuation token is steered; with prefill="none" the first one is predicted by the unsteered prompt
        first = 1 if prefill == "none" else 0
        if len(c) > first:
            assert (g[first:] - u[first:]).abs().max().item() > 1e-3
        if prefill == "none":
            assert torch.equal(g[0], u[0])


def test_unsteered_scores_equal_a_plain_forward(tiny_models):
    model = tiny_models("llama")
    prompt, cont = [20, 21, 22], [23, 24]
    [got] = mi.continuation_logprobs(model, None, prompt, cont)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + cont])).logits[0]
    want = torch.log_softmax(logits, -1)[[2, 3], cont]
    assert torch.allclose(got, want, atol=1e-5)


def test_text_inputs_and_errors(tiny_models, tiny_tokenizer):
    model = tiny_models("llama")
    [a] = mi.continuation_logprobs(model, tiny_tokenizer, "tell me about cats", "cats are friendly")
    ids = tiny_tokenizer("cats are friendly", add_special_tokens=False)["input_ids"]
    assert a.shape == (len(ids),) and bool((a <= 0).all())
    with pytest.raises(mi.SteeringError, match="no tokenizer"):
        mi.continuation_logprobs(model, None, "text", [1, 2])
    with pytest.raises(mi.SteeringError, match="2 prompts but 1"):
        mi.continuation_logprobs(model, None, [[1, 2], [3]], [[4]])
    with pytest.raises(mi.SteeringError, match="empty continuation"):
        mi.continuation_logprobs(model, None, [[1, 2]], [[]])
