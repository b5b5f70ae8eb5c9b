"""The steered requests' post-RoPE keys at the site layers, in one tensor per layer: `[slots, H_kv local, T, d]`.

The stock CPU kernel returns no log-sum-exp and its paged layout depends on the instruction set (AVX2 / AVX-512 /
AMX / NEON), so the plugin keeps its own layout-independent copy of the keys its steered rows need: only keys (the
prompt's attention output is the stock kernel's, `core.operator.mix_prompt_and_banks` needs only its log-sum-exp),
only the site layers on this rank, only this rank's KV heads. Each steered request owns one slot (a row of every
layer's tensor) from admission until it is freed; slots are handed out lowest first, so the steered requests of a
batch usually sit in consecutive slots and are read as a view, without a gather. Tensors grow by doubling.
"""

from __future__ import annotations

import torch

MIN_SLOTS = 8
MIN_LENGTH = 64


class KeyPool:
    """Per site layer, the keys of every steered request: `keys[layer][slot, kv_head, position]`."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self._free: list[int] = []
        self._next = 0

    # ---- slots -----------------------------------------------------------------------------------------
    def acquire(self) -> int:
        """A free slot, the lowest one."""
        if self._free:
            self._free.sort()
            return self._free.pop(0)
        self._next += 1
        return self._next - 1

    def release(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def slots_in_use(self) -> int:
        return self._next - len(self._free)

    # ---- keys ------------------------------------------------------------------------------------------
    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, num_slots: int,
              length: int) -> None:
        """Store `keys` `[T, H_kv, d]` at `(slots[t], positions[t])`; `num_slots` / `length` bound both indices."""
        pool = self._room(layer, keys, num_slots, length)
        pool[slots, :, positions] = keys

    def read(self, layer: int, slots: torch.Tensor | slice, length: int) -> torch.Tensor:
        """The keys of positions `0 .. length - 1` of `slots` (a slice is a view): `[n, H_kv, length, d]`."""
        return self.keys[layer][slots, :, :length]

    def _room(self, layer: int, like: torch.Tensor, num_slots: int, length: int) -> torch.Tensor:
        pool = self.keys.get(layer)
        have_slots, have_length = (0, 0) if pool is None else (pool.shape[0], pool.shape[2])
        if pool is not None and num_slots <= have_slots and length <= have_length:
            return pool
        slots = max(num_slots, MIN_SLOTS, 2 * have_slots if num_slots > have_slots else have_slots)
        positions = max(length, MIN_LENGTH, 2 * have_length if length > have_length else have_length)
        grown = like.new_zeros((slots, like.shape[1], positions, like.shape[2]))
        if pool is not None:
            grown[:have_slots, :, :have_length] = pool
        self.keys[layer] = grown
        return grown
