"""The one place that renders chats, tokenizes, pads and generates: every caller (methods, CLI, server, sessions)
goes through these helpers, so chat rendering and left padding mean the same thing everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from memory_inception.errors import SteeringError

Messages = list[dict[str, str]]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of already-rendered text (the chat template wrote every special token itself)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad or 0)


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]], *, generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` rendered with the chat template (with the assistant's generation prompt)."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=False)
    return encode(tokenizer, text)


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], int]:
    """Token ids of a conversation ready to generate, and where the instruction ends.

    The instruction ends where the assistant's turn begins: positions from there on (the assistant header,
    any answer prefix, every generated token) are "after the instruction" for CAA.
    """
    if not messages or messages[-1].get("role") not in ("user", "system"):
        raise SteeringError("a conversation must end with a user (or system) message for the assistant to answer")
    ids = render_chat(tokenizer, messages)
    instruction = render_chat(tokenizer, messages, generation_prompt=False)
    end = len(instruction) if ids[: len(instruction)] == instruction else len(ids)
    return ids, min(end, len(ids))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Left-padded `input_ids`, `attention_mask` and real `position_ids` (cumsum(mask) - 1), as in generation."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": position_ids.to(device)}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters: where inputs go."""
    return next(model.parameters()).device


@torch.no_grad()
def generate_batch(model: nn.Module, tokenizer: Any, rows: Sequence[Sequence[int]], **options: Any) -> list[list[int]]:
    """The new token ids after each prompt of one left-padded batch (greedy unless `options` say otherwise)."""
    pad = pad_token_id(tokenizer)
    batch = left_pad(rows, pad, model_device(model))
    width = batch["input_ids"].shape[1]
    out = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pad_token_id=pad,
        **{"do_sample": False, **options},
    )
    return [row[width:] for row in out.tolist()]


def decode_reply(tokenizer: Any, ids: Sequence[int]) -> str:
    """A reply's text: special tokens dropped, surrounding space stripped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()
