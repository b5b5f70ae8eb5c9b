"""Tensor parallelism: which query and KV heads a rank holds, and the bank slots that rank keeps and reads.

vLLM shards attention by heads: rank r of `size` holds query heads `[r H/size, (r+1) H/size)` and, when there are
at least `size` KV heads, KV heads `[r H_kv/size, (r+1) H_kv/size)`; with fewer KV heads than ranks each rank holds
one KV head, replicated on `size / H_kv` ranks (`QKVParallelLinear`). Banks shard exactly like the KV heads: a rank
keeps the bank keys and values of its own KV heads, its site heads are mapped to local indices, and the mixture is
per head, so tensor parallelism adds no communication.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from memory_inception.core.architecture import ModelGeometry
from memory_inception.core.plan import LayerPlan
from memory_inception.errors import SteeringError


@dataclass(frozen=True)
class Shard:
    """The heads of tensor-parallel rank `rank` of `size` on a model of geometry `geometry`."""

    geometry: ModelGeometry
    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        geo = self.geometry
        if geo.num_heads % self.size:
            raise SteeringError(f"tensor parallel size {self.size} does not divide the {geo.num_heads} query heads")
        if geo.num_kv_heads % self.size and self.size % geo.num_kv_heads:
            raise SteeringError(f"tensor parallel size {self.size} and the {geo.num_kv_heads} KV heads: one must "
                                "divide the other (vLLM's KV head sharding)")

    @property
    def num_heads(self) -> int:
        """Query heads on this rank."""
        return self.geometry.num_heads // self.size

    @property
    def first_head(self) -> int:
        return self.rank * self.num_heads

    @property
    def num_kv_heads(self) -> int:
        """KV heads on this rank (1, replicated, when the model has fewer KV heads than ranks)."""
        return max(1, self.geometry.num_kv_heads // self.size)

    @property
    def first_kv_head(self) -> int:
        kv = self.geometry.num_kv_heads
        return self.rank * kv // self.size if kv >= self.size else self.rank // (self.size // kv)

    @property
    def group_size(self) -> int:
        """Local query heads per local KV head (the model's group size)."""
        return self.num_heads // self.num_kv_heads

    def check(self, num_heads: int, num_kv_heads: int) -> None:
        """Raise unless an attention layer's local head counts are this shard's."""
        if (num_heads, num_kv_heads) != (self.num_heads, self.num_kv_heads):
            raise SteeringError(
                f"the attention layer holds {num_heads} query / {num_kv_heads} KV heads but tensor-parallel rank "
                f"{self.rank} of {self.size} should hold {self.num_heads} / {self.num_kv_heads} of the model's "
                f"{self.geometry.num_heads} / {self.geometry.num_kv_heads}: an unsupported head sharding"
            )


@dataclass
class LocalBanks:
    """One request's banks at one site layer, on one rank: the slots of its local KV heads and its slot layout.

    `keys` / `values` are `[H_kv local, M, d]`; `heads` marks the steered local query heads (None: all of them).
    `target` / `reference` / `others` are slot indices (target and reference only when the gate applies).
    """

    keys: torch.Tensor
    values: torch.Tensor
    heads: torch.Tensor | None  # bool [H local]
    bias: torch.Tensor  # [M]
    target: list[int]
    reference: list[int]
    others: list[int]
    positive: float
    negative: float
    gate_scale: float
    normalize: bool

    @property
    def gated(self) -> bool:
        return bool(self.target)


def local_banks(plan: LayerPlan, shard: Shard) -> LocalBanks | None:
    """The part of `plan` that `shard`'s rank reads (None: none of the plan's heads is on this rank)."""
    if getattr(plan, "memory", None) is not None:
        raise SteeringError("memory banks (top-k read) are not supported by the vLLM plugin; serve them through the "
                            "transformers path (mi.inject, mi serve --engine transformers)")
    kv0, kv_n, h0, h_n = shard.first_kv_head, shard.num_kv_heads, shard.first_head, shard.num_heads
    if plan.all_heads:  # keys per KV head, every local head steered
        keys, values, heads = plan.bank_keys[kv0 : kv0 + kv_n], plan.bank_values[kv0 : kv0 + kv_n], None
    else:  # keys per selected head: keep the local ones, placed at their local KV head
        local = [(i, h - h0) for i, h in enumerate(plan.heads.tolist()) if h0 <= h < h0 + h_n]
        if not local:
            return None
        m, d = plan.bank_keys.shape[-2:]
        keys = plan.bank_keys.new_zeros((kv_n, m, d))
        values = plan.bank_values.new_zeros((kv_n, m, d))
        heads = torch.zeros(h_n, dtype=torch.bool)
        for i, head in local:
            keys[head // shard.group_size] = plan.bank_keys[i]
            values[head // shard.group_size] = plan.bank_values[i]
            heads[head] = True
        if bool(heads.all()):
            heads = None
    m = plan.slot_bias.shape[0]
    target = list(range(m)[plan.target]) if plan.target is not None else []
    reference = list(range(m)[plan.reference]) if plan.reference is not None else []
    taken = set(target) | set(reference)
    return LocalBanks(
        keys=keys.contiguous(), values=values.contiguous(), heads=heads, bias=plan.slot_bias, target=target,
        reference=reference, others=[i for i in range(m) if i not in taken], positive=float(plan.positive),
        negative=float(plan.negative), gate_scale=float(plan.gate_scale), normalize=bool(plan.normalize),
    )


def stack_banks(members: list[LocalBanks], layer: int, group_size: int) -> tuple[LayerPlan, torch.Tensor | None,
                                                                                 torch.Tensor | None]:
    """The banks of several requests as one `LayerPlan` whose tensors carry a leading request dimension.

    `core.operator.bank_evidence` and `mix_prompt_and_banks` broadcast over it, so one call steers every request:
    each request's slots in one layout, the gated target slots first, then the reference slots, then the rest, each
    region padded to the longest with a copy of one of the request's own slots under a -inf bias (a pad never gets
    weight, and the gate's maxima over a region are the request's own). Requests without the gate get zero gate
    gains. When every member is the same plan the request dimension is 1 (broadcast). Also returns the steered-heads
    mask `[n or 1, H local, 1, 1]` (None: every local head of every request) and the per-request normalization flag
    `[n, 1, 1, 1]` (None: every request normalizes, or none does).
    """
    first = members[0]
    same = all(m is first for m in members)
    if same:  # one plan: its own tensors, broadcast over the rows
        rows = [first]
        regions = (len(first.target), len(first.reference), len(first.others))
        order = [first.target + first.reference + first.others]
        real = [[True] * first.bias.shape[0]]
    else:
        rows = members
        regions = (max(len(m.target) for m in rows), max(len(m.reference) for m in rows),
                   max(len(m.others) for m in rows))
        order, real = [], []
        for m in rows:
            idx, ok = [], []
            for slots, width in zip((m.target, m.reference, m.others), regions):
                fill = slots[0] if slots else 0
                idx += slots + [fill] * (width - len(slots))
                ok += [True] * len(slots) + [False] * (width - len(slots))
            order.append(idx)
            real.append(ok)
    index = torch.tensor(order, dtype=torch.long)  # [rows, M]
    keys = torch.stack([m.keys[:, i] for m, i in zip(rows, index)])  # [rows, H_kv, M, d]
    values = torch.stack([m.values[:, i] for m, i in zip(rows, index)])
    bias = torch.stack([m.bias[i] for m, i in zip(rows, index)])
    bias = bias.masked_fill(~torch.tensor(real), -math.inf).view(len(rows), 1, 1, -1)
    t, r, _ = regions
    gated = [m.gated for m in rows]

    def per_row(values: list[float]) -> torch.Tensor | float:
        if len(values) == 1:
            return values[0]
        return torch.tensor(values, dtype=keys.dtype).view(-1, 1, 1, 1)

    normalize = [m.normalize for m in rows]
    plan = LayerPlan(
        layer=layer, heads=torch.zeros(0, dtype=torch.long), kv_index=torch.zeros(0, dtype=torch.long),
        all_heads=True, group_size=group_size, bank_keys=keys, bank_values=values, slot_bias=bias, target=None,
        reference=None, positive=per_row([m.positive if g else 0.0 for m, g in zip(rows, gated)]),
        negative=per_row([m.negative if g else 0.0 for m, g in zip(rows, gated)]),
        gate_scale=per_row([m.gate_scale for m in rows]), canonical=True, normalize=any(normalize),
    )
    if any(gated):  # the gate's regions, the same slots for every row
        plan.target, plan.reference = slice(0, t), slice(t, t + r)
        on_target, on_reference = keys.new_zeros(index.shape[1]), keys.new_zeros(index.shape[1])
        on_target[:t], on_reference[t : t + r] = 1.0, 1.0
        plan.gate_masks = (on_target, on_reference)
    heads = None
    masks = [m.heads for m in rows]
    if any(h is not None for h in masks):
        full = next(h for h in masks if h is not None)
        heads = torch.stack([h if h is not None else torch.ones_like(full) for h in masks]).view(len(rows), -1, 1, 1)
    flag = None
    if any(normalize) and not all(normalize):
        flag = torch.tensor([float(x) for x in normalize], dtype=keys.dtype).view(len(rows), 1, 1, 1)
    return plan, heads, flag
