"""Teacher-forced continuation scoring with generation semantics (every continuation token steered)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from memory_inception.core.steering import Steering
from memory_inception.errors import SteeringError
from memory_inception.hf.inject import STEER_MASK_KWARG, inject
from memory_inception.hf.text import left_pad, model_device

TokensLike = str | Sequence[int] | torch.Tensor


def continuation_logprobs(
    model: nn.Module,
    tokenizer: Any | None,
    prompt_ids: TokensLike | Sequence[TokensLike],
    continuation_ids: TokensLike | Sequence[TokensLike],
    steering: Steering | None = None,
    *,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """Per-token log-probabilities of each continuation after its prompt, one 1-D tensor per pair.

    Steered positions follow generation: the prompt per `steering.prefill`, then every continuation token,
    exactly as if the continuation had been generated (one forward per batch, no cache).
    Strings need a tokenizer (prompts get special tokens per the tokenizer, continuations do not).
    """
    prompts = _as_batch(prompt_ids, tokenizer, special=True)
    conts = _as_batch(continuation_ids, tokenizer, special=False)
    if len(prompts) != len(conts):
        raise SteeringError(f"got {len(prompts)} prompts but {len(conts)} continuations; pass one per prompt")
    for i, (p, c) in enumerate(zip(prompts, conts)):
        if not p or not c:
            raise SteeringError(f"pair {i} has an empty {'prompt' if not p else 'continuation'}")
    steering = steering if steering is not None else Steering()
    results: list[torch.Tensor] = []
    with torch.no_grad(), inject(model, steering) as injection:
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            results += score_batch(model, prompts[chunk], conts[chunk], steering.prefill, bool(injection.plans))
    return results


def steered_positions(width: int, prompt_lengths: list[int], continuation_lengths: list[int], prefill: str) -> torch.Tensor:
    """`[N, width]` bool: the positions generation would steer in left-padded rows of prompt + continuation.

    Every continuation position, plus the prompt per `prefill` ("all": every prompt token, "last": the last one).
    """
    pos = torch.arange(width).view(1, -1)
    cont_start = torch.tensor([width - c for c in continuation_lengths]).view(-1, 1)
    steer = pos >= cont_start
    if prefill == "all":
        prompt_start = cont_start - torch.tensor(prompt_lengths).view(-1, 1)
        steer |= pos >= prompt_start
    elif prefill == "last":
        steer |= pos == cont_start - 1
    return steer


def score_batch(
    model: nn.Module, prompts: list[list[int]], conts: list[list[int]], prefill: str, steered: bool
) -> list[torch.Tensor]:
    """One left-padded uncached forward; `steered` passes MI the generation-semantics positions explicitly.

    Position ids are the real positions of each row, so position-based hooks (CAA) see the same positions
    as in generation.
    """
    device = model_device(model)
    batch = left_pad([p + c for p, c in zip(prompts, conts)], 0, device)
    width = batch["input_ids"].shape[1]
    steer = steered_positions(width, [len(p) for p in prompts], [len(c) for c in conts], prefill)
    logits = model(**batch, use_cache=False, **({STEER_MASK_KWARG: steer.to(device)} if steered else {})).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for row, c in enumerate(conts):
        first = width - len(c)  # position of the first continuation token
        target = batch["input_ids"][row, first:]
        out.append(logprobs[row, first - 1 : width - 1].gather(-1, target.unsqueeze(-1)).squeeze(-1).cpu())
    return out


def next_token_batch(model: nn.Module, prompts: list[list[int]], prefill: str, steered: bool) -> torch.Tensor:
    """Log-probabilities `[N, vocab]` of the token after each prompt, steered as its generation would be.

    One left-padded uncached forward; only the last position's logits are computed (`logits_to_keep=1`).
    """
    device = model_device(model)
    batch = left_pad(prompts, 0, device)
    width = batch["input_ids"].shape[1]
    steer = steered_positions(width, [len(p) for p in prompts], [0] * len(prompts), prefill)
    logits = model(
        **batch, use_cache=False, logits_to_keep=1, **({STEER_MASK_KWARG: steer.to(device)} if steered else {})
    ).logits
    return torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()


def _as_batch(x: TokensLike | Sequence[TokensLike], tokenizer: Any | None, special: bool) -> list[list[int]]:
    if isinstance(x, torch.Tensor):
        return [x.tolist()] if x.dim() == 1 else [row.tolist() for row in x]
    if isinstance(x, str) or (isinstance(x, Sequence) and x and isinstance(x[0], int)):
        return [_as_ids(x, tokenizer, special)]
    return [_as_ids(item, tokenizer, special) for item in x]


def _as_ids(x: TokensLike, tokenizer: Any | None, special: bool) -> list[int]:
    if isinstance(x, str):
        if tokenizer is None:
            raise SteeringError("got text but no tokenizer; pass the tokenizer or token ids")
        return list(tokenizer(x, add_special_tokens=special)["input_ids"])
    if isinstance(x, torch.Tensor):
        return [int(t) for t in x.flatten().tolist()]
    return [int(t) for t in x]
