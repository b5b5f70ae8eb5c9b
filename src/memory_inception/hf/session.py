"""Sessions (spec section 9): a multi-turn chat whose KV cache persists and whose guidance can change."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from memory_inception.core.architecture import cache_kwargs
from memory_inception.core.steering import Steering
from memory_inception.hf.inject import Injection, inject
from memory_inception.hf.text import decode_reply, render_chat

logger = logging.getLogger(__name__)


class Session:
    """A chat with one model: the transcript and its KV cache live across turns.

    Assigning `session.steering` between turns changes the guidance; the transcript and the cache are
    untouched (banks never enter either). It may hold a planned `Injection`, reused every turn.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, steering: Steering | Injection | None = None,
                 system: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.steering = steering
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.cache = DynamicCache()
        self.cache_ids: list[int] = []  # the visible tokens whose K/V the cache holds, in order

    def send(self, text: str, **generation_options: Any) -> str:
        """Add a user turn, generate the assistant's reply (greedy, 128 new tokens unless told), return it."""
        self.messages.append({"role": "user", "content": text})
        new = self.generate(self._render(), **generation_options)
        reply = decode_reply(self.tokenizer, new)
        self.messages.append({"role": "assistant", "content": reply})
        return reply

    def generate(self, ids: list[int], **generation_options: Any) -> list[int]:
        """The new token ids after the rendered conversation `ids`, with the current steering.

        The cache's common prefix with `ids` is reused and the rest computed; the cache then holds `ids` and the
        reply. The transcript is not touched (`send` is this plus the transcript; the server keeps its own).
        """
        keep = common_prefix(ids, self.cache_ids)
        keep = min(keep, len(ids) - 1)  # generate needs at least one new token to read
        surplus = self.cache.get_seq_length() - keep
        if surplus > 0:
            self.cache.crop(-surplus)
        options = {"max_new_tokens": 128, "do_sample": False, **generation_options}
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        with torch.no_grad(), inject(self.model, self.steering):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **cache_kwargs(self.model, self.cache),
                pad_token_id=self.tokenizer.pad_token_id,
                **options,
            )
        new = output[0, len(ids) :].tolist()
        self.cache_ids = (ids + new)[: self.cache.get_seq_length()]
        return new

    def transcript(self) -> str:
        """The visible conversation as the model reads it (chat template applied)."""
        return self.tokenizer.apply_chat_template(self.messages, tokenize=False)

    def reset(self) -> None:
        """Forget the conversation (keeps the system message and the steering)."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.cache = DynamicCache()
        self.cache_ids = []

    def _render(self) -> list[int]:
        return render_chat(self.tokenizer, self.messages)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
