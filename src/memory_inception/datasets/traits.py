"""The Big Five traits: the project's pole descriptors (guidance texts); the shipped persona statements of any trait."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files

from memory_inception.errors import SteeringError

TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")


@dataclass(frozen=True)
class Poles:
    """Guidance texts describing the high and the low pole of one trait, in the second person."""

    high: str
    low: str


# Written for this project: short, concrete, second person (the form a system prompt or a bank takes).
DESCRIPTORS: dict[str, Poles] = {
    "openness": Poles(
        "You are deeply curious and imaginative. You love new ideas, art, travel and trying things you have "
        "never done before.",
        "You are practical and conventional. You prefer familiar routines, dislike abstract ideas and avoid "
        "trying new things.",
    ),
    "conscientiousness": Poles(
        "You are organized, careful and disciplined. You plan ahead, keep your promises and always finish "
        "your work on time.",
        "You are careless and disorganized. You act on impulse, forget your plans and leave work unfinished.",
    ),
    "extraversion": Poles(
        "You are extremely outgoing, talkative and full of energy. You love parties, meeting new people and "
        "being the center of attention.",
        "You are deeply introverted, quiet and reserved. You prefer to be alone, avoid parties and dislike "
        "being the center of attention.",
    ),
    "agreeableness": Poles(
        "You are warm, kind and cooperative. You trust people, like to help and always try to avoid conflict.",
        "You are cold, blunt and argumentative. You distrust people, put yourself first and enjoy conflict.",
    ),
    "neuroticism": Poles(
        "You are anxious and easily upset. You worry about everything, your mood changes quickly and stress "
        "overwhelms you.",
        "You are calm and emotionally stable. You rarely worry, stay relaxed under pressure and recover quickly "
        "from setbacks.",
    ),
}


def check_trait(trait: str) -> str:
    if trait not in TRAITS:
        raise SteeringError(f"unknown trait {trait!r}; use one of {', '.join(TRAITS)}")
    return trait


def check_persona_trait(trait: str) -> str:
    """`trait` if a persona file ships for it (the Big Five and the traits of `datasets.personas`)."""
    root = files("memory_inception") / "data" / "anthropic_persona"
    shipped = sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))
    if trait not in shipped:
        raise SteeringError(f"unknown trait {trait!r}: no persona statements ship for it; use one of {', '.join(shipped)}")
    return trait


def statements(trait: str, limit: int | None = None, offset: int = 0) -> tuple[list[str], list[str]]:
    """Anthropic persona statements of `trait` (a Big Five or another shipped persona trait): (matching the high
    pole, not matching), in file order.

    `offset`/`limit` pick a slice of each side, so that calibration and evaluation can use disjoint statements.
    """
    path = files("memory_inception") / "data" / "anthropic_persona" / f"{check_persona_trait(trait)}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    yes = [r["statement"] for r in rows if r["answer_matching_behavior"].strip() == "Yes"]
    no = [r["statement"] for r in rows if r["answer_matching_behavior"].strip() == "No"]
    end = None if limit is None else offset + limit
    return yes[offset:end], no[offset:end]
