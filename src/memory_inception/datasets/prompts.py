"""Shipped open-ended prompts (Vicuna bench and MT-Bench first turns) for generation-based evaluation."""

from __future__ import annotations

import json
from importlib.resources import files

from memory_inception.errors import SteeringError

# Categories where a persona or a style can show (no math or code, whose answers leave it no room).
CONVERSATIONAL = ("generic", "roleplay", "common-sense", "counterfactual", "writing", "knowledge", "humanities")
SOURCES = ("vicuna", "mt_bench")


def open_ended_prompts(
    source: str = "vicuna", categories: tuple[str, ...] | None = CONVERSATIONAL, limit: int | None = None
) -> list[str]:
    """First-turn questions of a shipped set, in file order, optionally filtered by category.

    Rows are interleaved across categories (round robin) so that a small `limit` still covers every category.
    """
    if source not in SOURCES:
        raise SteeringError(f"unknown prompt source {source!r}; use one of {', '.join(SOURCES)}")
    name = "vicuna_bench_questions.jsonl" if source == "vicuna" else "mt_bench_questions.jsonl"
    rows = [json.loads(line) for line in (files("memory_inception") / "data" / "instructions" / name).read_text().splitlines()]
    by_category: dict[str, list[str]] = {}
    for row in rows:
        if categories is None or row["category"] in categories:
            by_category.setdefault(row["category"], []).append(row["turns"][0])
    out: list[str] = []
    queues = list(by_category.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out[:limit] if limit is not None else out
