"""Visible prompting: the guidance as a system message, rendered as the bank is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from memory_inception.core.banks import Bank
from memory_inception.core.storage import prompt_kv_bytes
from memory_inception.errors import SteeringError
from memory_inception.methods.interface import Cost, Messages, Method


@dataclass(repr=False)
class Prompting(Method):
    """The guidance as a visible system message, rendered as the bank is (`template` around `text`)."""

    text: str
    template: str = "{descriptor}"
    name: str = "prompting"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise SteeringError("prompting needs a non-empty guidance text")
        if "{descriptor}" not in self.template:
            raise SteeringError(f"template {self.template!r} has no '{{descriptor}}' placeholder")

    @classmethod
    def from_bank(cls, bank: Bank, name: str = "prompting") -> Prompting:
        """Prompting with the bank's own text and first template, so only the delivery differs."""
        templates = bank.options.get("templates") or ["{descriptor}"]
        return cls(bank.text, templates[0], name)

    @property
    def guidance(self) -> str:
        return self.template.replace("{descriptor}", self.text, 1)

    def conversation(self, messages: Messages) -> Messages:
        out = [dict(m) for m in messages]
        if out and out[0].get("role") == "system":  # keep the conversation's own system text after the guidance
            out[0]["content"] = f"{self.guidance}\n\n{out[0]['content']}"
            return out
        return [{"role": "system", "content": self.guidance}] + out

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        """The guidance tokens the transcript (and so the KV cache, at every layer) carries."""
        tokens = len(tokenizer(self.guidance, add_special_tokens=False)["input_ids"])
        return Cost(visible_tokens=tokens, cache_bytes=prompt_kv_bytes(model, tokens))
