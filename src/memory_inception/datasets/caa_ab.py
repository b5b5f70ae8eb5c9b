"""The CAA A/B behaviour sets and the Anthropic persona files shipped in `data/` (see their SOURCE.md)."""

from __future__ import annotations

import json
from importlib import resources

from memory_inception.errors import CAAError

AB_SPLITS = ("generate", "test")


def ab_behaviors() -> tuple[str, ...]:
    """The CAA behaviours shipped with the library."""
    root = resources.files("memory_inception") / "data" / "caa" / "generate"
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))


def persona_traits() -> tuple[str, ...]:
    """The Anthropic persona traits shipped with the library."""
    root = resources.files("memory_inception") / "data" / "anthropic_persona"
    return tuple(sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl")))


def load_ab_items(behavior: str, split: str = "test") -> list[dict[str, str]]:
    """The raw CAA A/B items of `behavior`: dicts with question, answer_matching_behavior, answer_not_matching_behavior."""
    available = ab_behaviors()
    if behavior not in available:
        raise CAAError(f"unknown CAA behaviour {behavior!r}; choose one of {', '.join(available)}")
    if split not in AB_SPLITS:
        raise CAAError(f"unknown split {split!r}; choose 'generate' (vector building) or 'test' (A/B evaluation)")
    name = "generate_dataset.json" if split == "generate" else "test_dataset_ab.json"
    source = resources.files("memory_inception") / "data" / "caa" / split / behavior / name
    items = json.loads(source.read_text(encoding="utf-8"))
    for i, item in enumerate(items):
        missing = {"question", "answer_matching_behavior", "answer_not_matching_behavior"} - set(item)
        if missing:
            raise CAAError(f"{behavior}/{split} item {i} lacks {sorted(missing)}; the data files are damaged")
    return items


def answer_letter(answer: str) -> str | None:
    """The letter of an A/B answer such as "(A)" or " (B)", or None if it is not one bracketed capital letter."""
    text = answer.strip()
    if len(text) == 3 and text[0] == "(" and text[2] == ")" and "A" <= text[1] <= "Z":
        return text[1]
    return None
