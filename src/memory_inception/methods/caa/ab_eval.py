"""The CAA paper's A/B measure: p(matching letter) after "(", with and without steering."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from memory_inception.core.architecture import cache_kwargs
from memory_inception.datasets.caa_ab import answer_letter
from memory_inception.errors import CAAError
from memory_inception.hf.text import encode, left_pad, pad_token_id
from memory_inception.methods.caa.hooks import ActivationAddition
from memory_inception.methods.caa.vectors import SteeringVector


# ---- A/B evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def ab_match_probability(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Mapping[str, str]],
    vector: SteeringVector | None = None,
    multiplier: float = 0.0,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Per A/B item, p(matching letter) / (p(matching) + p(non-matching)) for the token after "(".

    The prompt is the chat template (user = question, with the generation prompt) followed by "(".
    Steering starts at the end of the instruction: the assistant header and the "(" are steered, as in CAA.
    """
    if batch_size < 1:
        raise CAAError(f"batch_size must be at least 1, not {batch_size}")
    prepared = [prepare_ab_item(tokenizer, item, i) for i, item in enumerate(items)]
    steer = vector is not None and multiplier != 0.0
    addition = ActivationAddition(model, vector, multiplier, layers) if steer else None
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    out: list[float] = []
    if addition is not None:
        addition.__enter__()
    try:
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start : start + batch_size]
            if addition is not None:
                addition.steer_from = [p[1] for p in chunk]
            logits = model(**left_pad([p[0] for p in chunk], pad, device), use_cache=False, logits_to_keep=1).logits
            probs = torch.softmax(logits[:, -1].float(), dim=-1)
            for row, (_, _, match, other) in enumerate(chunk):
                pm, po = float(probs[row, match]), float(probs[row, other])
                out.append(pm / (pm + po) if pm + po > 0 else 0.5)
    finally:
        if addition is not None:
            addition.__exit__(None, None, None)
    return out


def ab_match_curve(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Mapping[str, str]],
    vector: SteeringVector,
    multipliers: Sequence[float],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> dict[float, list[float]]:
    """`ab_match_probability` for several multipliers, sharing one unsteered forward of each instruction.

    The instruction is never steered, so its cache is computed once per batch and only the steered tail
    (assistant header and "(") is run again per multiplier. Returns multiplier -> per-item probabilities.
    """
    settings = [(float(m), None if layers is None else tuple(layers)) for m in multipliers]
    out = _ab_shared_instruction(model, tokenizer, items, vector, settings, batch_size)
    return {m: out[(m, layer_set)] for m, layer_set in settings}


def ab_layer_sweep(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Mapping[str, str]],
    vector: SteeringVector,
    layers: Sequence[int] | None = None,
    multipliers: Sequence[float] = (-1.0, 1.0),
    batch_size: int = 8,
) -> dict[int, dict[float, list[float]]]:
    """A/B probabilities steering one layer at a time (CAA's layer choice): layer -> multiplier -> per item."""
    chosen = list(vector.layers) if layers is None else [int(layer) for layer in layers]
    settings = [(float(m), (layer,)) for layer in chosen for m in multipliers]
    out = _ab_shared_instruction(model, tokenizer, items, vector, settings, batch_size)
    return {layer: {float(m): out[(float(m), (layer,))] for m in multipliers} for layer in chosen}


@torch.no_grad()
def _ab_shared_instruction(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Mapping[str, str]],
    vector: SteeringVector,
    settings: list[tuple[float, tuple[int, ...] | None]],
    batch_size: int,
) -> dict[tuple[float, tuple[int, ...] | None], list[float]]:
    """p(match) per item for each (multiplier, layers) setting; one instruction forward per batch for all."""
    from transformers import DynamicCache

    if batch_size < 1:
        raise CAAError(f"batch_size must be at least 1, not {batch_size}")
    for _, layer_set in dict.fromkeys(settings):  # validate every setting before the first forward
        ActivationAddition(model, vector, 1.0, layer_set)
    prepared = [prepare_ab_item(tokenizer, item, i) for i, item in enumerate(items)]
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    results: dict[tuple[float, tuple[int, ...] | None], list[float]] = {s: [0.5] * len(prepared) for s in settings}
    # rows whose steered tails have one length share a batch (with the usual templates all tails are alike);
    # within a group, similar lengths are batched together to keep padding small
    groups: dict[int, list[int]] = {}
    for index in sorted(range(len(prepared)), key=lambda i: prepared[i][1]):
        prompt, n_instr = prepared[index][:2]
        groups.setdefault(len(prompt) - n_instr, []).append(index)
    for tail, indices in groups.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            head = left_pad([prepared[i][0][: prepared[i][1]] for i in chunk], pad, device)
            cache = DynamicCache()
            model(**head, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
            tail_ids = torch.tensor([prepared[i][0][prepared[i][1] :] for i in chunk], device=device)
            lengths = torch.tensor([prepared[i][1] for i in chunk], device=device)
            inputs = {
                "input_ids": tail_ids,
                "attention_mask": torch.cat([head["attention_mask"], torch.ones_like(tail_ids)], dim=1),
                "position_ids": lengths[:, None] + torch.arange(tail, device=device),
            }
            for setting in dict.fromkeys(settings):
                multiplier, layer_set = setting
                with ActivationAddition(model, vector, multiplier, layer_set, steer_from=lengths.tolist()):
                    logits = model(**inputs, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache)).logits
                cache.crop(-tail)  # drop the steered tail, keep the instruction
                probs = torch.softmax(logits[:, -1].float(), dim=-1)
                for row, i in enumerate(chunk):
                    pm, po = float(probs[row, prepared[i][2]]), float(probs[row, prepared[i][3]])
                    results[setting][i] = pm / (pm + po) if pm + po > 0 else 0.5
    return results


def prepare_ab_item(tokenizer: Any, item: Mapping[str, str], index: int) -> tuple[list[int], int, int, int]:
    """Prompt ids (ending in "(" when the tokenizer keeps it apart), the instruction length, and the answer token ids."""
    try:
        question = item["question"]
        match = answer_letter(item["answer_matching_behavior"])
        other = answer_letter(item["answer_not_matching_behavior"])
    except (KeyError, TypeError) as exc:
        raise CAAError(f"item {index} is not a CAA A/B item (question, answer_*_behavior)") from exc
    if match is None or other is None or match == other:
        raise CAAError(f"item {index}: answers must be two different letters like '(A)' and '(B)'")
    messages = [{"role": "user", "content": question}]
    instruction = encode(tokenizer, tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False))
    base = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Read the letter after "(" when "(" and the letter are separate tokens (SmolLM2); else read the "(A" token
    # itself after the generation prompt (Qwen2.5 merges "(A" into one token).
    for prefix, suffix in (("(", ""), ("", "(")):
        prompt = encode(tokenizer, base + prefix)
        letters = []
        for letter in (match, other):
            ids = encode(tokenizer, base + prefix + suffix + letter)
            if len(ids) == len(prompt) + 1 and ids[: len(prompt)] == prompt:
                letters.append(ids[-1])
        if len(letters) == 2:
            break
    else:
        raise CAAError(
            f"item {index}: neither the letter after '(' nor '(' with the letter is one token with this tokenizer; "
            "A/B evaluation reads one next-token probability per answer"
        )
    if prompt[: len(instruction)] != instruction:
        raise CAAError(
            f"item {index}: the rendered instruction is not a token prefix of the prompt, so the instruction end "
            "is ambiguous; this tokenizer's chat template is not supported"
        )
    return prompt, len(instruction), letters[0], letters[1]
