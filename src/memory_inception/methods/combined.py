"""Several methods at once (for example prompting plus MI)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from memory_inception.errors import SteeringError
from memory_inception.methods.interface import Cost, Messages, Method


@dataclass(repr=False)
class Combined(Method):
    """Several methods at once (for example prompting plus MI); conversations change in order."""

    methods: Sequence[Method] = field(default_factory=tuple)
    name: str = "combined"

    def conversation(self, messages: Messages) -> Messages:
        for method in self.methods:
            messages = method.conversation(messages)
        return messages

    @contextlib.contextmanager
    def active(self, model: nn.Module, steer_from: int | Sequence[int] | None = None) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for method in self.methods:
                stack.enter_context(method.active(model, steer_from))
            yield

    @property
    def mi_prefill(self) -> str | None:
        modes = [m.mi_prefill for m in self.methods if m.mi_prefill is not None]
        if len(modes) > 1:
            raise SteeringError("a combined method can inject banks once only; merge the banks into one Steering")
        return modes[0] if modes else None

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        costs = [m.cost(model, tokenizer) for m in self.methods]
        return Cost(*(sum(getattr(c, f) for c in costs) for f in ("visible_tokens", "cache_bytes", "stored_bytes")))
