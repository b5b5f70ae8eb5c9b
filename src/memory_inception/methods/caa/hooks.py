"""Activation addition by forward hooks, removed exactly on exit."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import torch
from torch import nn

from memory_inception.core.architecture import attention_modules, decoder_layers
from memory_inception.errors import CAAError
from memory_inception.methods.caa.vectors import SteeringVector, hidden_states_of


# ---- steering -----------------------------------------------------------------------------------------
class ActivationAddition:
    """Context manager that adds `multiplier * vector[layer]` at positions >= `steer_from` (CAA steering).

    `steer_from` is None (every position), an int, or one int per batch row; it is compared with the
    absolute positions each decoder layer receives (`position_ids`), so with left padding and
    position_ids = cumsum(mask) - 1 it is a real position. It may be reassigned between forwards.
    In cached generation every new token lies beyond the instruction and is steered.
    """

    def __init__(
        self,
        model: nn.Module,
        vector: SteeringVector,
        multiplier: float = 1.0,
        layers: Sequence[int] | None = None,
        steer_from: int | Sequence[int] | None = None,
    ) -> None:
        if not isinstance(vector, SteeringVector):
            raise CAAError(f"vector must be a SteeringVector, not {type(vector).__name__}")
        vector.check_model(model)
        chosen = list(vector.layers) if layers is None else sorted({int(layer) for layer in layers})
        missing = [layer for layer in chosen if layer not in vector.vectors]
        if missing:
            raise CAAError(
                f"steering vector {vector.name!r} has no direction for layers {missing} "
                f"(it has layers {list(vector.layers)}); pick layers from those"
            )
        self.model = model
        self.vector = vector
        self.multiplier = float(multiplier)
        self.layers = tuple(chosen)
        self.steer_from = steer_from
        self._exit = ExitStack()  # what __exit__ undoes
        self._deltas: dict[int, torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor | None] = {}
        self._active = False

    def __enter__(self) -> ActivationAddition:
        if self._active:
            raise CAAError("this ActivationAddition is already active; create a new one to nest steering")
        with ExitStack() as stack:  # undone in reverse order on exit, or at once if a hook cannot be placed
            stack.callback(self._forget)
            self._active = True
            if self.multiplier != 0.0 and self.layers:  # else an exact no-op: no hook at all
                param = next(self.model.parameters())
                modules = decoder_layers(self.model)
                attention = attention_modules(self.model)
                for layer in self.layers:
                    self._deltas[layer] = (self.multiplier * self.vector.vectors[layer]).to(
                        device=param.device, dtype=param.dtype
                    )
                    stack.enter_context(
                        modules[layer].register_forward_pre_hook(self._pre_hook(layer), with_kwargs=True)
                    )
                    if self.vector.placement == "attention":
                        stack.enter_context(attention[layer].register_forward_hook(self._attention_hook(layer)))
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _forget(self) -> None:
        self._deltas.clear()
        self._masks.clear()
        self._active = False

    def _steer_mask(self, hidden: torch.Tensor, kwargs: dict, layer: int) -> torch.Tensor | None:
        """`[B, T]` bool of the positions to steer, or None for all of them."""
        if self.steer_from is None:
            return None
        batch, length = hidden.shape[:2]
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = kwargs.get("cache_position")
        if positions is None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.20+ passes `cache`
            past = int(cache.get_seq_length(layer)) if cache is not None else 0
            positions = torch.arange(past, past + length, device=hidden.device)
        positions = positions.reshape(-1, length).to(hidden.device)
        if isinstance(self.steer_from, int):
            start = torch.tensor([self.steer_from], device=hidden.device)
        else:
            start = torch.as_tensor(list(self.steer_from), device=hidden.device)
            if start.numel() != batch:
                raise CAAError(f"steer_from has {start.numel()} entries but the batch has {batch} rows; pass one per row")
        return positions >= start.reshape(-1, 1)

    def _add(self, hidden: torch.Tensor, layer: int, mask: torch.Tensor | None) -> torch.Tensor:
        delta = self._deltas[layer]
        if delta.dtype != hidden.dtype or delta.device != hidden.device:
            delta = self._deltas[layer] = delta.to(device=hidden.device, dtype=hidden.dtype)
        if mask is None:
            return hidden + delta
        return torch.where(mask.unsqueeze(-1), hidden + delta, hidden)

    def _pre_hook(self, layer: int):
        def hook(_module, args, kwargs):
            hidden = hidden_states_of(args, kwargs)
            mask = self._steer_mask(hidden, kwargs, layer)
            if self.vector.placement == "attention":
                self._masks[layer] = mask
                return None
            steered = self._add(hidden, layer, mask)
            if args:
                return (steered, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": steered}

        return hook

    def _attention_hook(self, layer: int):
        def hook(_module, _args, output):
            mask = self._masks.pop(layer, None)
            if isinstance(output, tuple):
                return (self._add(output[0], layer, mask), *output[1:])
            return self._add(output, layer, mask)

        return hook
