"""Memory Inception as a method: banks read by the site heads; nothing visible changes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from memory_inception.core.architecture import geometry, model_fingerprint
from memory_inception.core.steering import Steering
from memory_inception.hf.inject import inject
from memory_inception.methods.interface import Cost, Method


@dataclass(repr=False)
class MI(Method):
    """Memory Inception: banks read by the site heads; nothing visible changes."""

    steering: Steering
    name: str = "mi"

    @contextlib.contextmanager
    def active(self, model: nn.Module, steer_from: int | Sequence[int] | None = None) -> Iterator[None]:
        with inject(model, self.steering):
            yield

    @property
    def mi_prefill(self) -> str | None:
        return self.steering.prefill

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        """Bank bytes kept at the sites: the site layers and, per layer, the KV groups the site heads read."""
        geo = geometry(model)
        sites, _ = self.steering.resolved(geo, model_fingerprint(model))
        stored = sum(bank.for_sites(sites, geo).nbytes for _, bank in self.steering.banks)
        return Cost(stored_bytes=stored)
