"""The IPIP-NEO-120 inventory: shipped items, MPI wording, option tokens and keyed scoring with known answers."""

from __future__ import annotations

import collections

import pytest
import torch

from conftest import WORDS
from memory_inception.datasets.traits import TRAITS
from memory_inception.errors import EvaluationError
from memory_inception.evaluation.inventory import (
    LIKERT_LABELS,
    LIKERT_LETTERS,
    InventoryItem,
    ItemScore,
    item_messages,
    item_scores,
    keyed_argmax,
    keyed_expectation,
    letter_logprobs,
    load_inventory,
    option_tokens,
    trait_scores,
)
from memory_inception.methods.interface import Plain
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import next_token_logprobs


def _tokenizer(merged: bool):
    """A word-level tokenizer with the letters; `merged` keeps "(A" as one token (like Qwen2.5), else "(" "A"."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    extra = ["(", *LIKERT_LETTERS] + ([f"({x}" for x in LIKERT_LETTERS] if merged else [])
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS) | set(extra)))}
    assert len(vocab) <= 128
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    if merged:
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|end|>",
        additional_special_tokens=specials[2:],
    )
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    fast.padding_side = "left"
    return fast


@pytest.fixture(scope="module")
def letter_tokenizer():
    return _tokenizer(merged=False)


# ---- data ---------------------------------------------------------------------------------------------
def test_the_shipped_inventory():
    items = load_inventory()
    assert len(items) == 120 and [it.id for it in items] == list(range(120))
    assert collections.Counter(it.trait for it in items) == {t: 24 for t in TRAITS}
    assert {it.key for it in items} == {1, -1}
    for trait in TRAITS:
        assert {it.key for it in items if it.trait == trait} == {1, -1}
    first = items[0]
    assert (first.text, first.trait, first.key, first.facet) == ("Worry about things", "neuroticism", 1, "Anxiety")
    assert all(it.text and it.facet for it in items)


@pytest.mark.parametrize("k", [1, 2, 5, 10, 24])
def test_limit_per_trait_takes_balanced_first_items(k):
    items = load_inventory(limit_per_trait=k)
    full = load_inventory()
    assert len(items) == 5 * k
    assert [it.id for it in items] == sorted(it.id for it in items)  # file order kept
    for trait in TRAITS:
        mine = [it for it in items if it.trait == trait]
        plus = [it.id for it in full if it.trait == trait and it.key == 1]
        minus = [it.id for it in full if it.trait == trait and it.key == -1]
        n_plus = sum(it.key == 1 for it in mine)
        # as balanced as the file allows: ceil(k/2) positive unless fewer exist
        want_plus = min(len(plus), max((k + 1) // 2, k - len(minus)))
        assert n_plus == want_plus
        # the first items of each key, in file order
        assert {it.id for it in mine} == set(plus[:n_plus]) | set(minus[: k - n_plus])


def test_limit_larger_than_the_pool_keeps_everything():
    assert len(load_inventory(limit_per_trait=100)) == 120


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_bad_limit_raises(bad):
    with pytest.raises(EvaluationError, match="limit_per_trait"):
        load_inventory(limit_per_trait=bad)


def test_item_messages_follow_mpi():
    item = load_inventory()[0]
    messages = item_messages(item)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert content.startswith('Given a statement of you: "You worry about things."\n')
    assert "how accurately this statement describes you" in content
    for letter, label in zip(LIKERT_LETTERS, LIKERT_LABELS):
        assert f"({letter}). {label}\n" in content + "\n"
    assert content.index("(A). Very Accurate") < content.index("(E). Very Inaccurate")


# ---- scoring math -------------------------------------------------------------------------------------
def test_keyed_expectation_known_answers():
    one_a = [1, 0, 0, 0, 0]
    one_e = [0, 0, 0, 0, 1]
    assert keyed_expectation(one_a, 1) == 5 and keyed_expectation(one_a, -1) == 1
    assert keyed_expectation(one_e, 1) == 1 and keyed_expectation(one_e, -1) == 5
    assert keyed_expectation([0.2] * 5, 1) == pytest.approx(3) and keyed_expectation([0.2] * 5, -1) == pytest.approx(3)
    assert keyed_expectation([0.5, 0.5, 0, 0, 0], 1) == pytest.approx(4.5)
    assert keyed_expectation([0, 0.5, 0, 0, 0.5], -1) == pytest.approx(3.5)  # (2 + 5) / 2
    assert keyed_expectation([2, 0, 0, 0, 2], 1) == pytest.approx(3)  # renormalized
    assert keyed_argmax([0.1, 0.6, 0.1, 0.1, 0.1], 1) == 4 and keyed_argmax([0.1, 0.6, 0.1, 0.1, 0.1], -1) == 2
    with pytest.raises(EvaluationError):
        keyed_expectation([1, 0, 0, 0, 0], 0)
    with pytest.raises(EvaluationError):
        keyed_expectation([1, 0, 0], 1)


def _score(trait, expected, id=0):
    return ItemScore(id=id, trait=trait, key=1, probs=(0.2,) * 5, option_mass=1.0, expected=expected, argmax_score=3)


def test_trait_scores_average_per_trait():
    scores = [_score("neuroticism", 5.0), _score("openness", 2.0), _score("neuroticism", 2.0), _score("openness", 3.0),
              _score("openness", 4.0)]
    assert trait_scores(scores) == {"openness": pytest.approx(3.0), "neuroticism": pytest.approx(3.5)}
    assert list(trait_scores(scores)) == ["openness", "neuroticism"]
    assert trait_scores([]) == {}


# ---- tokens -------------------------------------------------------------------------------------------
def test_option_tokens_after_a_separate_paren(letter_tokenizer):
    prefix, ids = option_tokens(letter_tokenizer)
    assert prefix == "("
    assert ids == [(letter_tokenizer.convert_tokens_to_ids(x),) for x in LIKERT_LETTERS]


def test_option_tokens_merged_paren_letter():
    tok = _tokenizer(merged=True)
    prefix, ids = option_tokens(tok)
    assert prefix == ""
    # both ways of starting the answer: the merged "(A" and the bare letter "A"
    assert ids == [(tok.convert_tokens_to_ids(f"({x}"), tok.convert_tokens_to_ids(x)) for x in LIKERT_LETTERS]


def test_letter_logprobs_sum_the_variants_of_a_letter():
    # vocab of 4: letter 0 starts with token 0 or 2, letter 1 with token 1 only
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    got = letter_logprobs(probs.log(), [(0, 2), (1,)]).exp()
    assert torch.allclose(got, torch.tensor([[0.4, 0.2]], dtype=torch.double))


def test_option_tokens_refuse_a_tokenizer_without_the_letters(tiny_tokenizer):
    # the shared tiny tokenizer maps every letter to [UNK]: not distinct, so scoring would be meaningless
    with pytest.raises(EvaluationError, match="single distinct tokens"):
        option_tokens(tiny_tokenizer)


# ---- a model ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("merged", [False, True])
def test_item_scores_on_a_tiny_model(tiny_models, letter_tokenizer, merged, one_thread):
    model = tiny_models("qwen2")
    tok = _tokenizer(merged=True) if merged else letter_tokenizer
    items = load_inventory(limit_per_trait=2)
    for method in (Plain(), Prompting("you are a cheerful pirate")):
        scores = item_scores(model, tok, method, items, batch_size=3)
        assert [s.id for s in scores] == [it.id for it in items]
        prefix, ids = option_tokens(tok)
        table = next_token_logprobs(model, tok, method, [item_messages(it) for it in items], answer_prefix=prefix)
        per_letter = torch.stack([table[:, list(v)].double().exp().sum(-1) for v in ids], dim=-1)
        want = per_letter / per_letter.sum(-1, keepdim=True)
        mass = per_letter.sum(-1)
        for row, (s, item) in enumerate(zip(scores, items)):
            assert (s.trait, s.key) == (item.trait, item.key)
            assert sum(s.probs) == pytest.approx(1.0, abs=1e-9)
            assert torch.allclose(torch.tensor(s.probs, dtype=torch.double), want[row], atol=1e-5)
            assert 0 < s.option_mass <= 1 and s.option_mass == pytest.approx(float(mass[row]), rel=1e-4)
            assert s.expected == pytest.approx(keyed_expectation(s.probs, s.key))
            assert 1 <= s.expected <= 5 and s.argmax_score == keyed_argmax(s.probs, s.key)
        traits = trait_scores(scores)
        assert list(traits) == list(TRAITS)
        for trait in TRAITS:
            mine = [s.expected for s in scores if s.trait == trait]
            assert traits[trait] == pytest.approx(sum(mine) / len(mine))
    assert item_scores(model, tok, Plain(), []) == []


def test_inventory_item_is_frozen():
    item = InventoryItem(0, "Worry about things", "neuroticism", "Anxiety", 1)
    with pytest.raises(AttributeError):
        item.key = -1  # type: ignore[misc]
