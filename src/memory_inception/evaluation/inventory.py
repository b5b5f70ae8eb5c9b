"""The IPIP-NEO-120 Big Five self-report inventory, scored from next-token probabilities (MPI style).

Following Jiang et al. (2023, "Evaluating and Inducing Personality in Pre-trained Language Models"), each
item is asked as a five-option multiple-choice question ("You worry about things." -> (A) Very Accurate ...
(E) Very Inaccurate) and the model's answer is read from the probabilities of the five option letters as
its first reply token. An item's keyed score is 5 for "Very Accurate" down to 1 ("Very Inaccurate"),
reversed for negatively keyed items; a trait's score is the mean keyed score of its items (1..5, 3 neutral).
Any `memory_inception.methods.Method` can be scored, so steered and unsteered models compare directly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

from memory_inception.datasets.traits import TRAITS
from memory_inception.errors import EvaluationError
from memory_inception.methods.interface import Method
from memory_inception.methods.runners import next_token_logprobs

LIKERT_LETTERS = ("A", "B", "C", "D", "E")
LIKERT_LABELS = (
    "Very Accurate",
    "Moderately Accurate",
    "Neither Accurate Nor Inaccurate",
    "Moderately Inaccurate",
    "Very Inaccurate",
)
ANSWER_PREFIX = "("  # the reply starts "(" and the letter follows, unless the tokenizer merges "(A" (see option_tokens)
# MPI's template (templates/gpt-3.txt), asked as one user message with a format instruction instead of "Answer:"
TEMPLATE = (
    'Given a statement of you: "You {statement}."\n'
    "Please choose from the following options to identify how accurately this statement describes you.\n"
    "Options:\n{options}\n\nAnswer with the letter only."
)
_OCEAN = {trait[0].upper(): trait for trait in TRAITS}
_ITEMS = ("data", "ipip", "mpi_120.csv")


@dataclass(frozen=True)
class InventoryItem:
    """One IPIP-NEO-120 item in MPI's second-person wording."""

    id: int  # 0-based row in mpi_120.csv
    text: str  # e.g. "Worry about things"
    trait: str  # a name from TRAITS
    facet: str  # the IPIP facet, e.g. "Anxiety"
    key: int  # +1 scored directly, -1 reversed


@dataclass(frozen=True)
class ItemScore:
    """A model's answer to one item: the letter distribution and its keyed scores."""

    id: int
    trait: str
    key: int
    probs: tuple[float, ...]  # over LIKERT_LETTERS, renormalized to sum to 1
    option_mass: float  # total probability of the five letters before renormalizing (answers in format?)
    expected: float  # expected keyed score, 1..5
    argmax_score: int  # keyed score of the most likely letter


def load_inventory(limit_per_trait: int | None = None) -> list[InventoryItem]:
    """The 120 items in file order; with `limit_per_trait`, the first k of each trait with both keys balanced.

    The subset alternates positively and negatively keyed items of a trait (in file order, starting with +),
    taking the rest from the other key once one runs out; the result keeps file order.
    """
    text = resources.files("memory_inception").joinpath(*_ITEMS).read_text(encoding="utf-8")
    items = [
        InventoryItem(
            id=i,
            text=row["text"].strip(),
            trait=_OCEAN[row["label_ocean"].strip()],
            facet=row["label_raw"].strip(),
            key=int(row["key"]),
        )
        for i, row in enumerate(csv.DictReader(io.StringIO(text)))
    ]
    if limit_per_trait is None:
        return items
    if isinstance(limit_per_trait, bool) or not isinstance(limit_per_trait, int) or limit_per_trait < 1:
        raise EvaluationError(f"limit_per_trait must be a positive integer or None, not {limit_per_trait!r}")
    chosen: set[int] = set()
    for trait in TRAITS:
        plus = [it.id for it in items if it.trait == trait and it.key > 0]
        minus = [it.id for it in items if it.trait == trait and it.key < 0]
        order = [x for pair in zip(plus, minus) for x in pair]
        order += plus[len(minus) :] + minus[len(plus) :]
        chosen.update(order[:limit_per_trait])
    return [it for it in items if it.id in chosen]


def item_messages(item: InventoryItem) -> list[dict[str, str]]:
    """The item as one user message in MPI's wording, with the five lettered options."""
    statement = item.text[:1].lower() + item.text[1:]
    options = "\n".join(f"({letter}). {label}" for letter, label in zip(LIKERT_LETTERS, LIKERT_LABELS))
    return [{"role": "user", "content": TEMPLATE.format(statement=statement, options=options)}]


def option_tokens(tokenizer: Any) -> tuple[str, list[tuple[int, ...]]]:
    """The answer prefix and, per option letter, the token ids that start the reply with that letter.

    Normally the reply is prefilled with "(" and the letter token after it is read (SmolLM2). When the tokenizer
    merges "(" with the letter into one token (Qwen2.5's "(A"), nothing is prefilled and both ways of starting
    the answer are read: the merged "(A" and the bare letter "A" (Qwen2.5 mostly answers with the bare letter).
    """
    base = tokenizer.apply_chat_template(
        item_messages(InventoryItem(0, "Worry about things", "neuroticism", "Anxiety", 1)),
        add_generation_prompt=True,
        tokenize=False,
    )

    def single(prompt: list[int], text: str) -> int | None:
        full = _encode(tokenizer, text)
        return full[-1] if len(full) == len(prompt) + 1 and full[: len(prompt)] == prompt else None

    prompt = _encode(tokenizer, base + ANSWER_PREFIX)
    if prompt == _encode(tokenizer, base) + _encode(tokenizer, ANSWER_PREFIX):  # "(" appends as its own tokens
        ids = [single(prompt, base + ANSWER_PREFIX + letter) for letter in LIKERT_LETTERS]
        if None not in ids and len(set(ids)) == len(ids):
            return ANSWER_PREFIX, [(i,) for i in ids]  # type: ignore[misc]
    prompt = _encode(tokenizer, base)
    merged = [single(prompt, base + ANSWER_PREFIX + letter) for letter in LIKERT_LETTERS]
    if None not in merged and len(set(merged)) == len(merged):
        bare = [single(prompt, base + letter) for letter in LIKERT_LETTERS]
        use_bare = None not in bare and len(set(bare) | set(merged)) == 2 * len(bare)
        return "", [(m, b) if use_bare else (m,) for m, b in zip(merged, bare)]  # type: ignore[misc]
    raise EvaluationError(
        "neither the letters after '(' nor '(' with each letter are single distinct tokens with this tokenizer; "
        "the inventory reads one next-token probability per option letter"
    )


def letter_logprobs(table: torch.Tensor, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """`[N, 5]` log-probability of each option letter: log-sum-exp over the tokens that start it."""
    return torch.stack([torch.logsumexp(table[:, list(variants)].double(), dim=-1) for variants in ids], dim=-1)


def keyed_values(key: int) -> tuple[int, ...]:
    """The score of each letter A..E for an item of this key: 5..1 when +1, 1..5 when -1."""
    if key not in (1, -1):
        raise EvaluationError(f"an item's key must be +1 or -1, not {key!r}")
    values = (5, 4, 3, 2, 1)
    return values if key == 1 else values[::-1]


def keyed_expectation(probs: Sequence[float], key: int) -> float:
    """Expected keyed score (1..5) of a distribution over A..E (renormalized if it does not sum to 1)."""
    if len(probs) != len(LIKERT_LETTERS):
        raise EvaluationError(f"expected {len(LIKERT_LETTERS)} option probabilities, got {len(probs)}")
    total = float(sum(probs))
    if not total > 0:
        raise EvaluationError("option probabilities must have a positive sum")
    return sum(float(p) * v for p, v in zip(probs, keyed_values(key))) / total


def keyed_argmax(probs: Sequence[float], key: int) -> int:
    """Keyed score (1..5) of the most likely letter (the first one on ties)."""
    best = max(range(len(probs)), key=lambda i: (float(probs[i]), -i))
    return keyed_values(key)[best]


def item_scores(
    model: nn.Module,
    tokenizer: Any,
    method: Method,
    items: Sequence[InventoryItem],
    *,
    batch_size: int = 8,
) -> list[ItemScore]:
    """Ask every item under `method` and score it from the option letters' next-token probabilities."""
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, not {batch_size}")
    if not items:
        return []
    prefix, ids = option_tokens(tokenizer)
    table = next_token_logprobs(
        model, tokenizer, method, [item_messages(it) for it in items], answer_prefix=prefix, batch_size=batch_size
    )
    letters = letter_logprobs(table, ids)
    mass = letters.exp().sum(dim=-1)
    probs = torch.softmax(letters, dim=-1)
    out = []
    for row, item in enumerate(items):
        p = tuple(float(x) for x in probs[row])
        out.append(
            ItemScore(
                id=item.id,
                trait=item.trait,
                key=item.key,
                probs=p,
                option_mass=min(float(mass[row]), 1.0),
                expected=keyed_expectation(p, item.key),
                argmax_score=keyed_argmax(p, item.key),
            )
        )
    return out


def trait_scores(scores: Sequence[ItemScore]) -> dict[str, float]:
    """Mean expected keyed score per trait (1..5; only the traits present, in TRAITS order)."""
    sums: dict[str, list[float]] = {}
    for s in scores:
        sums.setdefault(s.trait, []).append(s.expected)
    order = [t for t in TRAITS if t in sums] + [t for t in sums if t not in TRAITS]
    return {t: sum(sums[t]) / len(sums[t]) for t in order}


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of already-rendered text (the chat template wrote every special token itself)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
