"""Text quality measures against hand-computed values, and perplexity against a plain forward."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import ARCHS, make_tiny, make_tiny_tokenizer
from memory_inception.errors import EvaluationError
from memory_inception.evaluation.metrics import perplexity
from memory_inception.tuning.fluency import (
    Fluency,
    compression_ratio,
    distinct_n,
    fluency,
    repeated_ngram_rate,
    words,
)


def test_words_lowercase_and_keep_inner_apostrophes():
    assert words("I don't KNOW, 42 cats!") == ["i", "don't", "know", "42", "cats"]


def test_repeated_ngram_rate_by_hand():
    # trigrams: abc bca cab abc bca cab abc -> 7, of which the last 4 repeat an earlier one
    assert repeated_ngram_rate("a b c a b c a b c", n=3) == pytest.approx(4 / 7)
    assert repeated_ngram_rate("A b, c. a B c", n=3) == pytest.approx(1 / 4)  # case and punctuation ignored
    assert repeated_ngram_rate("the quick brown fox jumps", n=3) == 0.0
    assert repeated_ngram_rate("go go go go go", n=1) == pytest.approx(4 / 5)


def test_repeated_ngram_rate_short_and_looping():
    assert repeated_ngram_rate("", n=3) == 0.0
    assert repeated_ngram_rate("two words", n=3) == 0.0
    assert repeated_ngram_rate("I am here. " * 200) > 0.99


def test_distinct_n_by_hand():
    # bigrams: ab bc ca ab bc ca ab bc -> 8 total, 3 unique
    assert distinct_n("a b c a b c a b c", n=2) == pytest.approx(3 / 8)
    assert distinct_n("one two three four", n=2) == 1.0
    assert distinct_n("x x x x", n=1) == pytest.approx(1 / 4)
    assert distinct_n("", n=2) == 1.0
    assert distinct_n("single", n=2) == 1.0


def test_ngram_size_must_be_positive():
    with pytest.raises(EvaluationError, match="n >= 1"):
        distinct_n("a b", n=0)


def test_compression_ratio():
    looping = "I love the sea. " * 30
    varied = (
        "Pirates sailed across the cold northern ocean while gulls screamed overhead; the captain checked "
        "her brass compass, muttered about storms, and ordered the crew to trim the mainsail before dusk."
    )
    assert compression_ratio(looping) > 5.0
    assert compression_ratio(looping) > 2 * compression_ratio(varied)
    assert compression_ratio("") == 0.0
    assert compression_ratio("hi") < 1.0  # zlib overhead dominates short texts
    raw = "é" * 10
    assert compression_ratio(raw) == pytest.approx(20 / len(__import__("zlib").compress(raw.encode())))


def test_fluency_means():
    texts = ["a b c a b c a b c", "one two three four"]
    result = fluency(texts)
    assert isinstance(result, Fluency)
    assert result.n_texts == 2
    assert result.repeated_3gram_rate == pytest.approx((4 / 7 + 0.0) / 2)
    assert result.distinct_2 == pytest.approx((3 / 8 + 1.0) / 2)
    assert result.compression_ratio == pytest.approx((compression_ratio(texts[0]) + compression_ratio(texts[1])) / 2)
    with pytest.raises(EvaluationError):
        fluency([])
    with pytest.raises(EvaluationError):
        fluency("a single string")


def _hand_perplexity(model, prompt_ids, reply_ids):
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), -1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(reply_ids) - 1)
    picked = [logprobs[pos, tok].item() for pos, tok in zip(positions, reply_ids)]
    return math.exp(-sum(picked) / len(picked))


@pytest.mark.parametrize("arch", ARCHS)
def test_perplexity_matches_plain_forward(arch):
    model, tok = make_tiny(arch), make_tiny_tokenizer()
    prompts = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello how is weather today"}],
        "tell me about cats",
        [{"role": "user", "content": "what do you like to eat"}],
    ]
    replies = ["yes very calm .", "cats are friendly and curious and quiet", ""]
    got = perplexity(model, tok, prompts, replies, batch_size=2)

    chat = tok.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
    p0 = tok(chat, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(p0)[-1] == "<|assistant|>"
    r0 = tok(replies[0], add_special_tokens=False)["input_ids"]
    p1 = tok(prompts[1])["input_ids"]
    r1 = tok(replies[1], add_special_tokens=False)["input_ids"]
    assert got[0] == pytest.approx(_hand_perplexity(model, p0, r0), rel=1e-4)
    assert got[1] == pytest.approx(_hand_perplexity(model, p1, r1), rel=1e-4)
    assert math.isnan(got[2])  # empty reply: nan, no crash
    assert 1.0 < got[0] < 1000.0  # a random 128-token model sits near uniform


def test_perplexity_input_errors():
    model, tok = make_tiny("llama"), make_tiny_tokenizer()
    with pytest.raises(EvaluationError, match="2 prompts but 1 replies"):
        perplexity(model, tok, ["hello", "cats"], ["yes"])
    with pytest.raises(EvaluationError, match="one message list"):
        perplexity(model, tok, [{"role": "user", "content": "hello"}], ["yes"])
    with pytest.raises(EvaluationError, match="no tokens"):
        perplexity(model, tok, [""], ["yes"])
    assert perplexity(model, tok, [], []) == []


def test_relevance_on_topic_beats_off_topic():
    from memory_inception.evaluation.judges import load_encoder
    from memory_inception.evaluation.metrics import relevance

    encoder = load_encoder()
    prompt = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "How do I bake bread?"}]
    replies = [
        "Mix flour, water, yeast and salt, knead the dough, let it rise, then bake it in a hot oven.",
        "The stock market closed lower today after the central bank raised interest rates.",
        "",
    ]
    on, off, empty = relevance(encoder, [prompt] * 3, replies)
    assert on > off + 0.3
    assert -1.0 <= off < on <= 1.0
    assert math.isnan(empty)
    # the user message, not the system message, is what the reply answers
    assert relevance(encoder, ["How do I bake bread?"], [replies[0]])[0] == pytest.approx(on, abs=1e-5)
