"""Shipped trait descriptors, persona statements and open-ended prompts."""

from __future__ import annotations

import pytest

import memory_inception as mi
from memory_inception.datasets.prompts import CONVERSATIONAL, open_ended_prompts
from memory_inception.datasets.traits import DESCRIPTORS, TRAITS, statements


def test_every_trait_has_two_distinct_poles():
    assert set(DESCRIPTORS) == set(TRAITS)
    for poles in DESCRIPTORS.values():
        assert poles.high.startswith("You are") and poles.low.startswith("You are") and poles.high != poles.low


def test_statements_split_by_answer_and_slice_disjointly():
    yes, no = statements("extraversion")
    assert len(yes) == len(no) == 500 and not set(yes) & set(no)
    first, first_no = statements("extraversion", 30)
    second, _ = statements("extraversion", 30, offset=30)
    assert first == yes[:30] and second == yes[30:60] and first_no == no[:30]
    with pytest.raises(mi.SteeringError, match="unknown trait"):
        statements("grumpiness")


def test_open_ended_prompts_interleave_categories():
    prompts = open_ended_prompts(limit=7)
    assert len(prompts) == 7 and len(set(prompts)) == 7
    assert len(open_ended_prompts()) == 60  # Vicuna bench, the six conversational categories it has (10 each)
    assert len(open_ended_prompts("mt_bench", categories=("writing",))) == 10
    assert "humanities" in CONVERSATIONAL
    with pytest.raises(mi.SteeringError, match="unknown prompt source"):
        open_ended_prompts("alpaca")
