"""General-capability checks: shipped GSM8K/MMLU data, answer extraction, and both evals on a tiny model."""

from __future__ import annotations

import pytest
import torch

from conftest import WORDS
from memory_inception.errors import EvaluationError
from memory_inception.evaluation import gsm8k_mmlu as cap
from memory_inception.evaluation.gsm8k_mmlu import (
    LETTERS,
    MathProblem,
    Question,
    accuracy,
    extract_number,
    gsm8k_correct,
    gsm8k_eval,
    gsm8k_messages,
    letter_token_ids,
    load_gsm8k,
    load_mmlu,
    mmlu_eval,
    mmlu_messages,
    mmlu_subjects,
)
from memory_inception.methods.caa.method import CAA
from memory_inception.methods.caa.vectors import SteeringVector
from memory_inception.methods.interface import Plain
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import next_token_logprobs


def _letter_tokenizer():
    """The conftest word-level tokenizer plus single tokens 'A'..'D' (vocab still < 128)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS) | set(LETTERS)))}
    assert len(vocab) <= 128
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
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


# ---- data ---------------------------------------------------------------------------------------------
def test_gsm8k_data():
    problems = load_gsm8k()
    assert len(problems) == 1319
    assert problems[0] == MathProblem(0, problems[0].question, "18")
    assert problems[0].question.startswith("Janet")
    assert [p.id for p in problems] == list(range(1319))
    for p in problems:
        assert "," not in p.answer and p.answer
        float(p.answer)  # every answer is a plain number
        assert extract_number(f"#### {p.answer}") == p.answer
        assert gsm8k_correct(f"so\n#### {p.answer}", p.answer)
    assert [p.id for p in load_gsm8k(limit=3, offset=10)] == [10, 11, 12]
    assert [p.id for p in load_gsm8k(limit=5, offset=1317)] == [1317, 1318]


@pytest.mark.parametrize(
    "kwargs", [dict(limit=0), dict(limit=-1), dict(offset=-1), dict(offset=1319), dict(limit=2.5)]
)
def test_gsm8k_bad_arguments(kwargs):
    with pytest.raises(EvaluationError, match="must be"):
        load_gsm8k(**kwargs)


def test_mmlu_data():
    subjects = mmlu_subjects()
    assert len(subjects) == 57 and subjects == sorted(subjects)
    assert subjects[0] == "abstract_algebra"
    questions = load_mmlu()
    assert len(questions) == 57 * 20
    assert len({q.id for q in questions}) == len(questions)
    for q in questions:
        assert isinstance(q, Question) and len(q.choices) == 4 and q.answer in LETTERS
        assert q.question and q.subject in subjects
    first = questions[0]
    assert first.id == "abstract_algebra/0" and first.answer == "B"
    assert first.question.startswith("Find the degree for the given field extension")
    assert first.choices == ("0", "4", "2", "6")
    assert load_mmlu() == questions  # deterministic


def test_mmlu_round_robin_and_per_subject():
    subjects = mmlu_subjects()
    small = load_mmlu(limit=10)
    assert [q.subject for q in small] == subjects[:10]
    assert all(q.id.endswith("/0") for q in small)
    spread = load_mmlu(limit=60)
    assert len({q.subject for q in spread}) == 57
    assert [q.id for q in spread[57:]] == [f"{s}/1" for s in subjects[:3]]
    two = load_mmlu(per_subject=2)
    assert len(two) == 114
    assert [q.id for q in two[:3]] == ["abstract_algebra/0", "abstract_algebra/1", "anatomy/0"]
    picked = load_mmlu(subjects=["virology", "anatomy"], per_subject=3)
    assert [q.id for q in picked] == [f"anatomy/{i}" for i in range(3)] + [f"virology/{i}" for i in range(3)]
    capped = load_mmlu(limit=5, subjects="anatomy", per_subject=3)
    assert [q.id for q in capped] == [f"anatomy/{i}" for i in range(3)]
    assert len(load_mmlu(subjects=["anatomy"])) == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(subjects=["astrology"]), "unknown MMLU subject"),
        (dict(subjects=[]), "subjects is empty"),
        (dict(per_subject=0), "per_subject"),
        (dict(per_subject=21), "per_subject"),
        (dict(limit=0), "limit"),
    ],
)
def test_mmlu_bad_arguments(kwargs, match):
    with pytest.raises(EvaluationError, match=match):
        load_mmlu(**kwargs)


# ---- answer extraction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, want",
    [
        ("She sells 9 eggs at $2 each.\n#### 18", "18"),
        ("####18", "18"),
        ("#### $1,234.", "1234"),
        ("The answer is $1,234.", "1234"),
        ("So the answer is: 72 clips", "72"),
        ("Answer: 5", "5"),
        ("\\boxed{42}", "42"),
        ("First 3 + 4 = 7, so \\boxed{42} and not 7", "42"),
        ("The final answer is \\boxed{\\frac{3}{4}}", "3/4"),
        ("#### -7", "-7"),
        ("The temperature fell to -12 degrees.", "-12"),
        ("It lost -$5 overall", "-5"),
        ("16-3-4=9", "9"),
        ("#### 18.00", "18"),
        ("Total: 18.0", "18"),
        ("It costs 2.50 dollars.", "2.5"),
        ("about .5 of it", "0.5"),
        ("#### 3/4", "3/4"),
        ("we had 3 cats and 7 dogs; in total 10.", "10"),
        ("#### 25\nCheck: 5 * 5 = 25, and 100 - 75 = 25. Not 30.", "25"),
        ("The answer is 8. (I first thought 12.)", "8"),
        ("1,000,000 people", "1000000"),
        ("I do not know.", None),
        ("", None),
    ],
)
def test_extract_number(reply, want):
    assert extract_number(reply) == want


@pytest.mark.parametrize(
    "reply, answer, want",
    [
        ("#### 18", "18", True),
        ("#### 18.00", "18", True),
        ("The answer is $1,234.", "1234", True),
        ("The answer is $1,234.", "1,234", True),
        ("\\boxed{42}", "42", True),
        ("#### -3", "-3", True),
        ("#### 3", "-3", False),
        ("#### 0.75", "3/4", True),
        ("#### 3/4", "0.75", True),
        ("#### 1/0", "0", False),
        ("I first got 18 but then 20", "18", False),
        ("I first got 20 but then 18", "18", True),
        ("no idea", "18", False),
        ("#### 18.0000001", "18", True),
        ("#### 18.01", "18", False),
    ],
)
def test_gsm8k_correct(reply, answer, want):
    assert gsm8k_correct(reply, answer) is want


def test_gsm8k_correct_needs_a_numeric_reference():
    with pytest.raises(EvaluationError, match="not a number"):
        gsm8k_correct("#### 3", "three")


def test_messages():
    p = load_gsm8k(limit=1)[0]
    msgs = gsm8k_messages(p)
    assert msgs == [{"role": "user", "content": f"{cap.GSM8K_INSTRUCTION}\n\n{p.question}"}]
    assert gsm8k_messages(p.question) == msgs
    q = load_mmlu(limit=1)[0]
    zero = mmlu_messages(q)
    assert len(zero) == 1 and zero[0]["role"] == "user"
    text = zero[0]["content"]
    assert q.question in text and "Answer with the letter of the correct choice." in text
    for letter, choice in zip(LETTERS, q.choices):
        assert f"{letter}. {choice}" in text
    few = mmlu_messages(q, shots=2)
    assert [m["role"] for m in few] == ["user", "assistant", "user", "assistant", "user"]
    assert all(few[i]["content"] in LETTERS for i in (1, 3))
    assert few[-1] == zero[0]
    with pytest.raises(EvaluationError, match="shots"):
        mmlu_messages(q, shots=6)


def test_accuracy():
    assert accuracy([{"correct": True}, {"correct": False}, {"correct": True}, {"correct": True}]) == 0.75
    assert accuracy([{"correct": False}]) == 0.0
    with pytest.raises(EvaluationError, match="no rows"):
        accuracy([])
    with pytest.raises(EvaluationError, match="no 'correct' key"):
        accuracy([{"id": 1}])


# ---- evals on a tiny model ----------------------------------------------------------------------------
def test_letter_ids_need_single_known_tokens(tiny_tokenizer):
    with pytest.raises(EvaluationError, match="unknown token"):
        letter_token_ids(tiny_tokenizer)  # 'A' is not in the conftest vocabulary
    tok = _letter_tokenizer()
    assert letter_token_ids(tok) == tok.convert_tokens_to_ids(list(LETTERS))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_mmlu_eval_on_tiny_model(tiny_models, tiny_tokenizer, arch, one_thread):
    model, tok = tiny_models(arch), _letter_tokenizer()
    questions = load_mmlu(limit=5)
    ids = tok.convert_tokens_to_ids(list(LETTERS))
    torch.manual_seed(1)
    vector = SteeringVector({1: torch.randn(model.config.hidden_size)}, placement="residual", name="r")
    caa = CAA(vector, multiplier=3.0)
    methods = [Plain(), Prompting("be brief kind calm"), caa]
    for method in methods:
        rows = mmlu_eval(model, tok, method, questions, batch_size=2)
        table = next_token_logprobs(model, tok, method, [mmlu_messages(q) for q in questions])
        want = torch.softmax(table[:, ids], dim=-1)
        assert [r["id"] for r in rows] == [q.id for q in questions]
        for row, q, w, lp in zip(rows, questions, want, table):
            assert set(row) == {"id", "subject", "probs", "predicted", "answer", "correct", "option_mass"}
            assert row["subject"] == q.subject and row["answer"] == q.answer
            assert sum(row["probs"]) == pytest.approx(1.0, abs=1e-6)
            assert torch.allclose(torch.tensor(row["probs"]), w, atol=1e-5)
            assert row["predicted"] == LETTERS[int(w.argmax())]
            assert row["correct"] == (row["predicted"] == q.answer)
            assert row["option_mass"] == pytest.approx(float(lp[ids].exp().sum()), rel=1e-5)
            assert 0 < row["option_mass"] <= 1
    few = mmlu_eval(model, tok, Plain(), questions[:2], shots=2)
    assert len(few) == 2
    assert mmlu_eval(model, tok, Plain(), []) == []
    with pytest.raises(EvaluationError, match="unknown token"):
        mmlu_eval(model, tiny_tokenizer, Plain(), questions)


def test_gsm8k_eval_on_tiny_model(tiny_models, tiny_tokenizer, one_thread):
    model = tiny_models("llama")
    problems = load_gsm8k(limit=3)
    rows = gsm8k_eval(model, tiny_tokenizer, Plain(), problems, max_new_tokens=4, batch_size=2)
    assert [r["id"] for r in rows] == [0, 1, 2]
    for row, p in zip(rows, problems):
        assert set(row) == {"id", "reply", "extracted", "answer", "correct"}
        assert row["answer"] == p.answer and isinstance(row["reply"], str)
        assert row["extracted"] == extract_number(row["reply"])
        assert row["correct"] == gsm8k_correct(row["reply"], p.answer)
    assert gsm8k_eval(model, tiny_tokenizer, Plain(), []) == []


def test_gsm8k_eval_scores_replies(monkeypatch, tiny_models, tiny_tokenizer):
    """With canned replies the rows carry known answers and accuracy."""
    problems = load_gsm8k(limit=4)
    canned = [
        f"work...\n#### {problems[0].answer}",
        "The answer is 999999.",
        "no idea",
        f"\\boxed{{{problems[3].answer}}}",
    ]
    seen = {}

    def fake_generate(model, tokenizer, method, conversations, *, max_new_tokens, batch_size):
        seen.update(conversations=conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)
        return canned

    monkeypatch.setattr(cap, "generate", fake_generate)
    rows = gsm8k_eval(tiny_models("llama"), tiny_tokenizer, Plain(), problems, max_new_tokens=7, batch_size=3)
    assert seen["conversations"] == [gsm8k_messages(p) for p in problems]
    assert (seen["max_new_tokens"], seen["batch_size"]) == (7, 3)
    assert [r["correct"] for r in rows] == [True, False, False, True]
    assert [r["extracted"] for r in rows] == [problems[0].answer, "999999", None, problems[3].answer]
    assert accuracy(rows) == 0.5
