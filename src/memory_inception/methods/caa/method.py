"""CAA as a method: a steering vector added after the instruction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from memory_inception.methods.caa.hooks import ActivationAddition
from memory_inception.methods.caa.vectors import SteeringVector
from memory_inception.methods.interface import Cost, Method


@dataclass(repr=False)
class CAA(Method):
    """Contrastive activation addition: `multiplier * vector` added at every position after the instruction."""

    vector: SteeringVector
    multiplier: float = 1.0
    layers: Sequence[int] | None = None
    name: str = "caa"

    @contextlib.contextmanager
    def active(self, model: nn.Module, steer_from: int | Sequence[int] | None = None) -> Iterator[None]:
        with ActivationAddition(model, self.vector, self.multiplier, layers=self.layers, steer_from=steer_from):
            yield

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        layers = self.layers if self.layers is not None else self.vector.layers
        stored = sum(self.vector.vectors[layer].numel() * next(model.parameters()).element_size() for layer in layers)
        return Cost(stored_bytes=stored)
