"""The method interface every steering method implements, its cost, and the plain model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Cost:
    """What a method costs one conversation.

    `visible_tokens`: tokens it adds to the transcript; `cache_bytes`: bytes those add to the KV cache;
    `stored_bytes`: bytes it keeps outside the cache (bank slots at the sites, steering vectors).
    """

    visible_tokens: int = 0
    cache_bytes: int = 0
    stored_bytes: int = 0


class Method:
    """Base class: the plain model. Subclasses override what they change."""

    name: str = "plain"

    def conversation(self, messages: Messages) -> Messages:
        """The conversation as the model sees it (visible changes only)."""
        return [dict(m) for m in messages]

    @contextlib.contextmanager
    def active(self, model: nn.Module, steer_from: int | Sequence[int] | None = None) -> Iterator[None]:
        """Steer `model` inside the block. `steer_from`: the first position after the instruction (one int, or per row)."""
        yield

    @property
    def mi_prefill(self) -> str | None:
        """The MI prefill mode if this method injects banks (scoring then names steered positions), else None."""
        return None

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        """Extra visible tokens, cache bytes and stored bytes (see `Cost`)."""
        return Cost()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Plain(Method):
    """No steering."""
