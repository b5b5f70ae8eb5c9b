"""Contrastive Activation Addition (Rimsky et al., 2024): steering vectors from contrast pairs, added by hooks.

A steering vector is, per layer, the mean activation at the answer token of prompts that end in a
behaviour-matching answer minus the mean at prompts that end in the non-matching answer. Steering adds
`multiplier * vector` at every position after the instruction, for prompt and generated tokens alike.
Two placements: "residual" (the residual stream entering a decoder layer) and "attention" (the output of
that layer's self-attention). Split by concern: `pairs` (contrast data), `vectors` (building and files),
`hooks` (the addition), `method` (CAA as a `Method`), `ab_eval` (the paper's A/B measure).
"""

from memory_inception.datasets.caa_ab import (
    ab_behaviors,
    answer_letter,
    load_ab_items,
    persona_traits,
)
from memory_inception.methods.caa.ab_eval import (
    ab_layer_sweep,
    ab_match_curve,
    ab_match_probability,
    prepare_ab_item,
)
from memory_inception.methods.caa.hooks import ActivationAddition
from memory_inception.methods.caa.method import CAA
from memory_inception.methods.caa.pairs import (
    STATEMENT_PROMPT,
    ContrastPair,
    ab_pairs,
    statement_pairs,
)
from memory_inception.methods.caa.vectors import (
    PLACEMENTS,
    SteeringVector,
    build_steering_vector,
)

__all__ = [
    "CAA", "PLACEMENTS", "STATEMENT_PROMPT", "ActivationAddition", "ContrastPair", "SteeringVector", "ab_behaviors",
    "ab_layer_sweep", "ab_match_curve", "ab_match_probability", "ab_pairs", "answer_letter", "build_steering_vector",
    "load_ab_items", "persona_traits", "prepare_ab_item", "statement_pairs",
]
