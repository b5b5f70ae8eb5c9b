"""Running any method: generate replies, score continuations with generation semantics, statement margins."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from memory_inception.core.architecture import (
    cache_kwargs,
    is_steered,
    output_cache,
)
from memory_inception.errors import SteeringError
from memory_inception.hf.inject import STEER_MASK_KWARG
from memory_inception.hf.scoring import next_token_batch, score_batch
from memory_inception.hf.text import decode_reply, encode, generate_batch, render_prompt
from memory_inception.methods.interface import Messages, Method

# The question persona statements answer in `statement_margin` (the statement is the assistant's reply).
ASK = "Tell me something about yourself, in one sentence."


# ---- running any method -------------------------------------------------------------------------------
def render(tokenizer: Any, method: Method, messages: Messages) -> tuple[list[int], int]:
    """Token ids of the conversation as `method` shows it, ready to generate, and where the instruction ends
    (see `hf.text.render_prompt`)."""
    return render_prompt(tokenizer, method.conversation(messages))


def generate(
    model: nn.Module, tokenizer: Any, method: Method,
    conversations: Sequence[Messages],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    **generation_options: Any,
) -> list[str]:
    """The assistant's reply to each conversation under `method` (greedy unless told; left-padded batches)."""
    rendered = [render(tokenizer, method, conv) for conv in conversations]
    options = {"max_new_tokens": max_new_tokens, **generation_options}
    replies: list[str] = []
    for start in range(0, len(rendered), batch_size):
        chunk = rendered[start : start + batch_size]
        with method.active(model, steer_from=[end for _, end in chunk]):
            new = generate_batch(model, tokenizer, [ids for ids, _ in chunk], **options)
        replies += [decode_reply(tokenizer, ids) for ids in new]
    return replies


def score(
    model: nn.Module, tokenizer: Any, method: Method,
    conversations: Sequence[Messages],
    continuations: Sequence[str | Sequence[int]],
    *,
    answer_prefix: str = "",
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """Per-token log-probabilities of each continuation as the assistant's reply, with generation semantics.

    Each method steers exactly the positions it would steer had it generated the continuation itself.
    `answer_prefix` is text the reply starts with (for example "(" before an A/B letter).
    """
    if len(conversations) != len(continuations):
        raise SteeringError(f"got {len(conversations)} conversations but {len(continuations)} continuations")
    prefix = encode(tokenizer, answer_prefix) if answer_prefix else []
    prompts, ends = [], []
    for conv in conversations:
        ids, end = render(tokenizer, method, conv)
        prompts.append(ids + prefix)
        ends.append(end)
    conts = _continuations(tokenizer, continuations)
    prefill = method.mi_prefill
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            with method.active(model, steer_from=ends[chunk]):
                out += score_batch(model, prompts[chunk], conts[chunk], prefill or "last", is_steered(model))
    return out


def next_token_logprobs(
    model: nn.Module, tokenizer: Any, method: Method,
    conversations: Sequence[Messages],
    *,
    answer_prefix: str = "",
    batch_size: int = 8,
) -> torch.Tensor:
    """Log-probabilities `[N, vocab]` of the assistant's first token (after `answer_prefix`) under `method`.

    One forward per batch; the method steers what it would steer before generating that token. For
    multiple-choice scoring (Likert letters, MMLU answers) read the option tokens' columns.
    """
    prefix = encode(tokenizer, answer_prefix) if answer_prefix else []
    rendered = [render(tokenizer, method, conv) for conv in conversations]
    prefill = method.mi_prefill
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(rendered), batch_size):
            chunk = rendered[start : start + batch_size]
            with method.active(model, steer_from=[end for _, end in chunk]):
                out.append(next_token_batch(model, [ids + prefix for ids, _ in chunk], prefill or "last", is_steered(model)))
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def score_shared(
    model: nn.Module, tokenizer: Any, method: Method,
    conversation: Messages,
    continuations: Sequence[str | Sequence[int]],
    *,
    answer_prefix: str = "",
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """`score` for many continuations of ONE conversation: its prompt is run once and its KV cache reused.

    Equal to `score(..., [conversation] * n, continuations)`; the saving grows with the conversation's length
    (long histories in persistence tests, statement margins).
    """
    prefix = encode(tokenizer, answer_prefix) if answer_prefix else []
    ids, end = render(tokenizer, method, conversation)
    ids = ids + prefix
    conts = _continuations(tokenizer, continuations)
    device = next(model.parameters()).device
    prefill = method.mi_prefill or "last"
    head, last = ids[:-1], ids[-1]
    out: list[torch.Tensor] = []
    with torch.no_grad(), method.active(model, steer_from=end):  # one int: every row of every forward
        steered = is_steered(model)
        cache = None
        if head:
            steer = torch.full((1, len(head)), prefill == "all", dtype=torch.bool)
            cache = output_cache(model(
                input_ids=torch.tensor([head], device=device),
                position_ids=torch.arange(len(head), device=device)[None],
                use_cache=True,
                **({STEER_MASK_KWARG: steer.to(device)} if steered else {}),
            ))
        for start in range(0, len(conts), batch_size):
            chunk = conts[start : start + batch_size]
            n, width = len(chunk), 1 + max(len(c) for c in chunk)
            suffix = torch.zeros((n, width), dtype=torch.long)
            mask = torch.zeros((n, len(head) + width), dtype=torch.long)
            mask[:, : len(head)] = 1
            steer = torch.zeros((n, width), dtype=torch.bool)
            for row, c in enumerate(chunk):  # right padding: later pads cannot change earlier logits
                suffix[row, : 1 + len(c)] = torch.tensor([last] + c)
                mask[row, len(head) : len(head) + 1 + len(c)] = 1
                steer[row, 0] = prefill != "none"
                steer[row, 1 : 1 + len(c)] = True
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(n)
            logits = model(
                input_ids=suffix.to(device),
                attention_mask=mask.to(device),
                position_ids=(len(head) + torch.arange(width, device=device))[None].expand(n, -1),
                use_cache=past is not None,
                **cache_kwargs(model, past),
                **({STEER_MASK_KWARG: steer.to(device)} if steered else {}),
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, c in enumerate(chunk):
                target = torch.tensor(c, device=device).unsqueeze(-1)
                out.append(logprobs[row, : len(c)].gather(-1, target).squeeze(-1).cpu())
    return out


def statement_margin(
    model: nn.Module, tokenizer: Any, method: Method,
    matching: Sequence[str],
    nonmatching: Sequence[str],
    *,
    ask: str = ASK,
    batch_size: int = 16,
) -> float:
    """Mean per-token log-probability of trait-matching statements as the model's own reply, minus non-matching.

    Judge-free and expressible by small models; steering toward a trait's high pole should raise it.
    """
    if not matching or not nonmatching:
        raise SteeringError("statement_margin needs matching and non-matching statements")
    statements = list(matching) + list(nonmatching)
    conversation: Messages = [{"role": "user", "content": ask}]
    lps = score_shared(model, tokenizer, method, conversation, statements, batch_size=batch_size)
    means = [float(lp.mean()) for lp in lps]
    k = len(matching)
    return sum(means[:k]) / k - sum(means[k:]) / len(nonmatching)


def _continuations(tokenizer: Any, continuations: Sequence[str | Sequence[int]]) -> list[list[int]]:
    """Token ids of each continuation (text or ids); an empty one is an error."""
    conts = [encode(tokenizer, c) if isinstance(c, str) else [int(t) for t in c] for c in continuations]
    for i, c in enumerate(conts):
        if not c:
            raise SteeringError(f"continuation {i} is empty")
    return conts
