"""Contrast pairs for CAA: A/B questions and persona statements with matching / non-matching answers."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from memory_inception.datasets.caa_ab import (
    answer_letter,
    load_ab_items,
    persona_traits,
)
from memory_inception.errors import CAAError

logger = logging.getLogger(__name__)


STATEMENT_PROMPT = 'Is the following statement something you would say?\n"{statement}"'


# ---- data ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContrastPair:
    """A chat prompt and the assistant answers that match (`positive`) and do not match (`negative`) a behaviour."""

    messages: list[dict[str, str]]
    positive: str
    negative: str


def ab_pairs(behavior: str, split: str = "generate", limit: int | None = None) -> list[ContrastPair]:
    """Contrast pairs from a CAA A/B set: user = the question, answers "(A" / "(B" (read at the letter, as in CAA).

    Items whose answers are not single bracketed letters are skipped (none are, in the shipped data).
    """
    pairs = []
    for item in load_ab_items(behavior, split):
        pos, neg = answer_letter(item["answer_matching_behavior"]), answer_letter(item["answer_not_matching_behavior"])
        if pos is None or neg is None or pos == neg:
            logger.debug("skipping %s item with answers %r / %r", behavior, pos, neg)
            continue
        pairs.append(ContrastPair([{"role": "user", "content": item["question"]}], f"({pos}", f"({neg}"))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def statement_pairs(trait_or_path: str | Path, limit: int | None = None) -> list[ContrastPair]:
    """Contrast pairs from Anthropic persona statements: "Is the following statement ...?", answers Yes / No.

    `trait_or_path` is a shipped trait name (see `persona_traits`) or a path to a persona .jsonl file.
    Pairs come in file order, and the shipped files list every Yes-matching row first: interleave Yes and
    No pairs before taking a subset, or the vector is merely "Yes minus No".
    """
    path = Path(trait_or_path)
    if isinstance(trait_or_path, str) and trait_or_path in persona_traits():
        source: Any = resources.files("memory_inception") / "data" / "anthropic_persona" / f"{trait_or_path}.jsonl"
    elif path.suffix == ".jsonl" and path.is_file():
        source = path
    else:
        raise CAAError(
            f"unknown persona trait {str(trait_or_path)!r} (and not a .jsonl file); choose one of "
            f"{', '.join(persona_traits())} or pass the path of a persona .jsonl file"
        )
    pairs = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            statement, match, other = row["statement"], row["answer_matching_behavior"].strip(), row[
                "answer_not_matching_behavior"
            ].strip()
        except (KeyError, AttributeError) as exc:
            raise CAAError(f"{source} line {number} is not a persona row (statement, answer_*_behavior)") from exc
        if {match, other} != {"Yes", "No"}:
            raise CAAError(f"{source} line {number}: answers {match!r} / {other!r} are not Yes / No")
        messages = [{"role": "user", "content": STATEMENT_PROMPT.format(statement=statement)}]
        pairs.append(ContrastPair(messages, match, other))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs
