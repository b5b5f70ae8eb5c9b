"""General-capability checks: does a steering method hurt arithmetic (GSM8K) or knowledge QA (MMLU)?

Both run any `memory_inception.methods.Method` through the same interface as the persona evaluations:
GSM8K by greedy generation and answer extraction, MMLU by the next-token probabilities of the letters
A-D as the assistant's first token. Data ship inside the package (see `data/gsm8k/SOURCE.md` and
`data/mmlu/SOURCE.md`; MMLU is a fixed subset: the first 20 test rows of each of the 57 subjects).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from typing import Any

import torch
from torch import nn

from memory_inception.errors import EvaluationError
from memory_inception.methods.interface import Method
from memory_inception.methods.runners import generate, next_token_logprobs

__all__ = [
    "GSM8K_INSTRUCTION",
    "LETTERS",
    "MMLU_INSTRUCTION",
    "MathProblem",
    "Question",
    "accuracy",
    "extract_number",
    "gsm8k_correct",
    "gsm8k_eval",
    "gsm8k_messages",
    "letter_token_ids",
    "load_gsm8k",
    "load_mmlu",
    "mmlu_eval",
    "mmlu_messages",
    "mmlu_subjects",
]

Messages = list[dict[str, str]]

GSM8K_INSTRUCTION = (
    "Solve the problem. Think step by step, then give the final answer on its own line as '#### <number>'."
)
MMLU_INSTRUCTION = "Answer with the letter of the correct choice."
LETTERS = ("A", "B", "C", "D")
MMLU_PER_SUBJECT = 20  # rows per subject in the shipped test subset


def _data_file(*parts: str) -> Any:
    return resources.files("memory_inception").joinpath("data", *parts)


# ---- GSM8K --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MathProblem:
    """One GSM8K test problem: `id` is its 0-based line, `answer` the text after '#### ' without commas."""

    id: int
    question: str
    answer: str


@functools.lru_cache(maxsize=1)
def _gsm8k_all() -> tuple[MathProblem, ...]:
    problems = []
    text = _data_file("gsm8k", "test.jsonl").read_text(encoding="utf-8")
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        answer = row["answer"].split("####")[-1].strip().replace(",", "")
        problems.append(MathProblem(id=i, question=row["question"], answer=answer))
    return tuple(problems)


def load_gsm8k(limit: int | None = None, offset: int = 0) -> list[MathProblem]:
    """GSM8K test problems in file order, from `offset`, at most `limit` of them (all 1,319 by default)."""
    problems = _gsm8k_all()
    if not isinstance(offset, int) or offset < 0 or offset >= len(problems):
        raise EvaluationError(f"offset must be an integer in [0, {len(problems)}), got {offset!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise EvaluationError(f"limit must be a positive integer or None (all problems), got {limit!r}")
    end = len(problems) if limit is None else offset + limit
    return list(problems[offset:end])


# a number: optional sign (not a binary minus), optional $, digits with thousands commas, decimals, a fraction
_NUM = re.compile(
    r"(?:(?<![\w)\]])-)?(?:\$\s?-?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?"
    r"|(?<![\w.])-?\.\d+"
)
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_FRAC = re.compile(r"\\d?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


def _normalise(token: str) -> str:
    s = token.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    negative = s.count("-") % 2 == 1
    s = s.replace("-", "")
    if "/" in s:
        num, den = s.split("/", 1)
        s = f"{_plain(num)}/{_plain(den)}"
    else:
        s = _plain(s)
    return f"-{s}" if negative and s not in ("0", "0/0") else s


def _plain(s: str) -> str:
    if s.startswith("."):
        s = "0" + s
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("0") or "0"
    return "0" + s if s.startswith(".") else s


def _first_number(text: str) -> str | None:
    match = _NUM.search(text)
    return _normalise(match.group(0)) if match else None


def extract_number(text: str) -> str | None:
    """The final numeric answer of a reply, normalised ('$1,234.00' -> '1234', '3/4' stays '3/4'), or None.

    Prefers the last '#### x', then the last 'answer is x' / '\\boxed{x}', else the last number in the text.
    """
    text = _FRAC.sub(r"\1/\2", text.replace("\u2212", "-"))
    for pattern in (_HASHES, _BOXED, _ANSWER_IS):
        for match in reversed(list(pattern.finditer(text))):
            number = _first_number(match.group(1))
            if number is not None:
                return number
    numbers = _NUM.findall(text)
    return _normalise(numbers[-1]) if numbers else None


def _value(number: str) -> float | None:
    try:
        return float(Fraction(number))
    except (ValueError, ZeroDivisionError):
        return None


def gsm8k_correct(reply: str, answer: str) -> bool:
    """Whether the number extracted from `reply` equals `answer` (relative tolerance 1e-6; no number: False)."""
    want = _value(_normalise(answer))
    if want is None:
        raise EvaluationError(f"the reference answer {answer!r} is not a number; pass the text after '#### '")
    got = extract_number(reply)
    value = None if got is None else _value(got)
    return value is not None and math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-9)


def gsm8k_messages(problem: MathProblem | str) -> Messages:
    """The one-turn conversation asking `problem` (a MathProblem or its question text) with the instruction."""
    question = problem if isinstance(problem, str) else problem.question
    return [{"role": "user", "content": f"{GSM8K_INSTRUCTION}\n\n{question}"}]


def gsm8k_eval(
    model: nn.Module,
    tokenizer: Any,
    method: Method,
    problems: Sequence[MathProblem],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Greedy replies under `method`, one row per problem: {id, reply, extracted, answer, correct}."""
    if max_new_tokens < 1 or batch_size < 1:
        raise EvaluationError("max_new_tokens and batch_size must be positive integers")
    problems = list(problems)
    if not problems:
        return []
    replies = generate(
        model, tokenizer, method, [gsm8k_messages(p) for p in problems],
        max_new_tokens=max_new_tokens, batch_size=batch_size,
    )
    return [
        {
            "id": p.id,
            "reply": reply,
            "extracted": extract_number(reply),
            "answer": p.answer,
            "correct": gsm8k_correct(reply, p.answer),
        }
        for p, reply in zip(problems, replies)
    ]


# ---- MMLU ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    """One MMLU question: `id` is '<subject>/<row>', `answer` the correct letter A-D."""

    id: str
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str


def _read_mmlu(name: str) -> dict[str, tuple[Question, ...]]:
    text = _data_file("mmlu", name).read_text(encoding="utf-8")
    by_subject: dict[str, list[Question]] = {}
    for row in csv.reader(io.StringIO(text, newline="")):
        if not row:
            continue
        subject, question, a, b, c, d, answer = row
        rows = by_subject.setdefault(subject, [])
        rows.append(Question(f"{subject}/{len(rows)}", subject, question, (a, b, c, d), answer.strip()))
    return {s: tuple(qs) for s, qs in sorted(by_subject.items())}


@functools.lru_cache(maxsize=1)
def _mmlu_test() -> dict[str, tuple[Question, ...]]:
    return _read_mmlu("test_subset.csv")


@functools.lru_cache(maxsize=1)
def _mmlu_dev() -> dict[str, tuple[Question, ...]]:
    return _read_mmlu("dev.csv")


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subjects, alphabetical (file-name keys such as 'abstract_algebra')."""
    return list(_mmlu_test())


def load_mmlu(
    limit: int | None = None,
    subjects: Sequence[str] | str | None = None,
    per_subject: int | None = None,
) -> list[Question]:
    """Questions from the shipped subset (20 per subject), deterministic.

    `subjects` restricts to those subjects (kept in alphabetical order); `per_subject` keeps the first k
    of each. Without `limit` the order is subject by subject; with `limit` questions are taken round-robin
    over the subjects (row 0 of each subject, then row 1, ...), so a small limit still spans subjects.
    """
    table = _mmlu_test()
    if subjects is None:
        chosen = list(table)
    else:
        if isinstance(subjects, str):
            subjects = [subjects]
        unknown = [s for s in subjects if s not in table]
        if unknown:
            raise EvaluationError(f"unknown MMLU subject(s) {unknown}; choose from mmlu_subjects(): {list(table)}")
        if not subjects:
            raise EvaluationError("subjects is empty; pass None for all 57 subjects or name at least one")
        chosen = [s for s in table if s in set(subjects)]  # alphabetical, whatever the order given
    if per_subject is not None and (not isinstance(per_subject, int) or not 1 <= per_subject <= MMLU_PER_SUBJECT):
        raise EvaluationError(
            f"per_subject must be an integer in [1, {MMLU_PER_SUBJECT}] (the shipped subset holds "
            f"{MMLU_PER_SUBJECT} per subject), got {per_subject!r}"
        )
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise EvaluationError(f"limit must be a positive integer or None (all questions), got {limit!r}")
    pools = [table[s][:per_subject] for s in chosen]
    if limit is None:
        return [q for pool in pools for q in pool]
    out: list[Question] = []
    for row in range(max(len(p) for p in pools)):
        out += [pool[row] for pool in pools if row < len(pool)]
    return out[:limit]


def _format_question(q: Question) -> str:
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices))
    return f"{q.question}\n\n{options}\n\n{MMLU_INSTRUCTION}"


def mmlu_messages(question: Question, shots: int = 0) -> Messages:
    """The conversation asking `question` (zero-shot by default; `shots` dev examples of its subject first)."""
    dev = _mmlu_dev().get(question.subject, ())
    if not isinstance(shots, int) or not 0 <= shots <= len(dev):
        raise EvaluationError(
            f"shots must be an integer in [0, {len(dev)}] (dev examples for {question.subject!r}), got {shots!r}"
        )
    messages: Messages = []
    for example in dev[:shots]:
        messages.append({"role": "user", "content": _format_question(example)})
        messages.append({"role": "assistant", "content": example.answer})
    messages.append({"role": "user", "content": _format_question(question)})
    return messages


def letter_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of 'A'..'D' as an assistant reply's first token (each letter must be exactly one token)."""
    ids = []
    for letter in LETTERS:
        tokens = list(tokenizer(letter, add_special_tokens=False)["input_ids"])
        if len(tokens) != 1:
            raise EvaluationError(
                f"the letter {letter!r} encodes to {len(tokens)} tokens {tokens}; MMLU scoring needs each of "
                "A-D to be one token; use a tokenizer with single-token capital letters"
            )
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and tokens[0] == unk:
            raise EvaluationError(
                f"the letter {letter!r} is the unknown token; use a tokenizer whose vocabulary holds A-D"
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise EvaluationError(f"the letters A-D share token ids {ids}; use a tokenizer that tells them apart")
    return ids


def mmlu_eval(
    model: nn.Module,
    tokenizer: Any,
    method: Method,
    questions: Sequence[Question],
    *,
    shots: int = 0,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Letter probabilities under `method`, one row per question.

    Rows: {id, subject, probs (A-D, renormalised), predicted, answer, correct, option_mass (the
    unrenormalised probability the first reply token is one of the four letters)}.
    """
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be a positive integer, got {batch_size!r}")
    questions = list(questions)
    if not questions:
        return []
    ids = letter_token_ids(tokenizer)
    conversations = [mmlu_messages(q, shots) for q in questions]
    table = next_token_logprobs(model, tokenizer, method, conversations, batch_size=batch_size)
    letters = table[:, ids].float()
    mass = letters.exp().sum(-1)
    probs = torch.softmax(letters, dim=-1)
    rows = []
    for q, p, m in zip(questions, probs.tolist(), mass.tolist()):
        predicted = LETTERS[max(range(4), key=lambda i: p[i])]
        rows.append(
            {
                "id": q.id,
                "subject": q.subject,
                "probs": p,
                "predicted": predicted,
                "answer": q.answer,
                "correct": predicted == q.answer,
                "option_mass": m,
            }
        )
    return rows


def accuracy(rows: Sequence[dict[str, Any]]) -> float:
    """Fraction of rows whose 'correct' is true (rows from gsm8k_eval or mmlu_eval)."""
    rows = list(rows)
    if not rows:
        raise EvaluationError("accuracy of no rows is undefined; evaluate at least one problem first")
    missing = [i for i, r in enumerate(rows) if "correct" not in r]
    if missing:
        raise EvaluationError(f"rows {missing[:5]} have no 'correct' key; pass rows from gsm8k_eval or mmlu_eval")
    return sum(bool(r["correct"]) for r in rows) / len(rows)
