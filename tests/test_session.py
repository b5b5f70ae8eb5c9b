"""Sessions keep transcript and cache across turns; guidance changes touch neither."""

from __future__ import annotations

import torch

import memory_inception as mi


def test_turns_reuse_the_cache_and_steering_swaps_leave_the_transcript(tiny_models, tiny_tokenizer):
    model = tiny_models("qwen3")
    pirate = mi.build_bank(model, tiny_tokenizer, "you are a cheerful pirate who loves the sea")
    calm = mi.build_bank(model, tiny_tokenizer, "be calm quiet and careful")
    session = mi.Session(model, tiny_tokenizer, mi.Steering(target=pirate, sites=mi.Sites.all(model), rho=4.0))
    first = session.send("hello how is the weather today", max_new_tokens=5)
    cache_after_first = [layer.keys.clone() for layer in session.cache.layers]
    ids_after_first = list(session.cache_ids)

    session.steering = mi.Steering(target=calm, sites=mi.Sites.all(model), rho=4.0)
    second = session.send("tell me about ships", max_new_tokens=5)
    assert isinstance(first, str) and isinstance(second, str)
    # the transcript is only what was said: no guidance text anywhere
    transcript = session.transcript()
    assert "pirate" not in transcript and "calm" not in transcript
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    # the second turn extended the first turn's cache instead of recomputing it: at least the first prompt's
    # K/V are reused as they were (random replies may not survive decode + re-render, so the rest may differ)
    first_prompt = tiny_tokenizer.apply_chat_template(session.messages[:1], add_generation_prompt=True, tokenize=False)
    n = len(tiny_tokenizer(first_prompt, add_special_tokens=False)["input_ids"])
    assert session.cache_ids[:n] == ids_after_first[:n]
    for before, layer in zip(cache_after_first, session.cache.layers):
        assert torch.equal(layer.keys[:, :, :n], before[:, :, :n])
    # the cache holds visible tokens only
    assert session.cache.get_seq_length() == len(session.cache_ids)


def test_cached_turns_equal_an_uncached_run_of_the_transcript(tiny_models, tiny_tokenizer):
    """Without steering, the second reply from the reused cache equals generating from scratch."""
    model = tiny_models("llama")
    session = mi.Session(model, tiny_tokenizer)
    session.send("hello", max_new_tokens=4)
    reply = session.send("tell me about cats", max_new_tokens=4)
    prompt = tiny_tokenizer.apply_chat_template(session.messages[:-1], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert tiny_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip() == reply
