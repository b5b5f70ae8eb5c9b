"""Model-based measures of replies: perplexity under a model and relevance to the prompt (offline embeddings)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from memory_inception.errors import EvaluationError
from memory_inception.hf.scoring import continuation_logprobs

logger = logging.getLogger(__name__)


Messages = Sequence[Mapping[str, str]]


Prompt = str | Messages


def _is_messages(prompt: Any) -> bool:
    return not isinstance(prompt, str) and isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt)


def _check_pairs(prompts: Sequence[Prompt], replies: Sequence[str]) -> None:
    if isinstance(replies, str) or isinstance(prompts, str):
        raise EvaluationError("pass lists of prompts and replies, not single strings; wrap them as [prompt], [reply]")
    if prompts and isinstance(prompts[0], Mapping):
        raise EvaluationError("prompts is one message list; pass a list of prompts, e.g. [messages]")
    if len(prompts) != len(replies):
        raise EvaluationError(f"got {len(prompts)} prompts but {len(replies)} replies; pass one reply per prompt")


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: message lists via the chat template (generation prompt added), strings as is."""
    if _is_messages(prompt):
        text = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    raise EvaluationError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


def perplexity(
    model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], replies: Sequence[str], batch_size: int = 8
) -> list[float]:
    """Perplexity exp(-mean token log-prob) of each reply after its prompt under the plain model; nan if empty.

    Replies are tokenized on their own without special tokens; string prompts get the tokenizer's special tokens.
    """
    _check_pairs(prompts, replies)
    ids = [
        (prompt_ids(tokenizer, p), list(tokenizer(r, add_special_tokens=False)["input_ids"]))
        for p, r in zip(prompts, replies)
    ]
    for i, (p, _) in enumerate(ids):
        if not p:
            raise EvaluationError(f"prompt {i} has no tokens; give a non-empty prompt (the first reply needs context)")
    scored = [i for i, (_, r) in enumerate(ids) if r]
    if len(scored) < len(ids):
        logger.info("perplexity: %d empty replies score nan", len(ids) - len(scored))
    out = [math.nan] * len(ids)
    if scored:
        logprobs = continuation_logprobs(
            model, None, [ids[i][0] for i in scored], [ids[i][1] for i in scored], steering=None, batch_size=batch_size
        )
        for i, lp in zip(scored, logprobs):
            out[i] = math.exp(-float(lp.double().mean()))
    return out


def _prompt_text(prompt: Prompt) -> str:
    """The text a reply should be relevant to: the prompt string, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    if _is_messages(prompt):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return users[-1] if users else (prompt[-1]["content"] if prompt else "")
    raise EvaluationError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


def relevance(judge_or_encoder: Any, prompts: Sequence[Prompt], replies: Sequence[str]) -> list[float]:
    """Cosine similarity of prompt and reply embeddings (chat prompts: the last user message); nan if either is empty.

    Takes a sentence-transformers encoder (judges.load_encoder) or anything with an `.encoder` (a TraitJudge).
    """
    from memory_inception.evaluation.judges import embed

    _check_pairs(prompts, replies)
    encoder = getattr(judge_or_encoder, "encoder", judge_or_encoder)
    texts = [_prompt_text(p) for p in prompts]
    keep = [i for i, (p, r) in enumerate(zip(texts, replies)) if p.strip() and r.strip()]
    out = [math.nan] * len(texts)
    if keep:
        a = embed(encoder, [texts[i] for i in keep])
        b = embed(encoder, [replies[i] for i in keep])
        for i, cos in zip(keep, (a * b).sum(axis=1)):
            out[i] = float(cos)
    return out
