"""Layer plans: what the operator needs at one site layer, prepared once per `inject` (or per vLLM request),
and the per-forward state shared by every site layer of one forward."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from memory_inception.core.architecture import ModelGeometry, apply_rope
from memory_inception.core.memory import MemoryLayer, memory_read, plan_memory
from memory_inception.core.steering import Steering, layer_strengths
from memory_inception.errors import SteeringError


@dataclass
class ForwardState:
    """What one forward pass needs at every site: which rows are steered and the RoPE it applied.

    `rows` is None (no row steered), "all", or a LongTensor `[B, R]` of steered positions per batch row;
    `row_valid` `[B, R]` marks the real entries when rows list different numbers of positions (else None).
    """

    rows: None | str | torch.Tensor = None
    row_valid: torch.Tensor | None = None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    # what every site layer of this forward shares (masks, log N, gathered RoPE tables), made by the first site
    # layer that sees each attention mask; `begin` clears it at the start of every forward
    prepared: list[tuple[object, object]] = field(default_factory=list, repr=False)

    def begin(self, rows: None | str | torch.Tensor, row_valid: torch.Tensor | None = None) -> None:
        """A new forward: its steered rows; nothing prepared yet (its RoPE tables come from the rotary hook)."""
        self.rows, self.row_valid = rows, row_valid
        self.prepared.clear()

    def clear(self) -> None:
        self.rows = self.row_valid = self.cos = self.sin = None
        self.prepared.clear()


@dataclass
class LayerPlan:
    """Everything the operator needs at one layer, prepared once per `inject` (no work on the hot path)."""

    layer: int
    heads: torch.Tensor  # [Hs] selected query heads
    kv_index: torch.Tensor  # [Hs] KV head each selected head reads
    all_heads: bool
    group_size: int
    bank_keys: torch.Tensor  # [Hs or H_kv when all heads, M, d]: pre-RoPE (canonical) or at prefix positions
    bank_values: torch.Tensor  # [Hs or H_kv when all heads, M, d]
    slot_bias: torch.Tensor  # [M]: -log M_b (normalize="paper") plus every gain that does not depend on the gate
    target: slice | None  # slots of the target bank, when the gate applies
    reference: slice | None  # slots of the reference bank, when the gate applies
    positive: float  # rho_l * positive_gain
    negative: float  # rho_l * negative_gain
    gate_scale: float
    canonical: bool
    normalize: bool
    state: ForwardState = field(repr=False, default_factory=ForwardState)
    # a memory bank's slots, read top-k per query row (core.memory); None: no memory. Its retrieved slots follow
    # the ordinary banks' in the mixture (and in what `trace` sees)
    memory: MemoryLayer | None = field(repr=False, default=None)
    # diagnostics (site selection): trace(plan, bank_scores, slot_weights, prompt_weight) after each mixture, with
    # each bank slot's and the prompt's share of the mixture ([B, Hs, R, M], [B, Hs, R, M], [B, Hs, R])
    trace: Callable[[LayerPlan, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = field(repr=False, default=None)
    # [M] 1.0 on the target / reference slots: where the gate's gains go (made from the slices, gate only)
    gate_masks: tuple[torch.Tensor, torch.Tensor] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.target is not None and self.reference is not None:
            on_target, on_reference = torch.zeros_like(self.slot_bias), torch.zeros_like(self.slot_bias)
            on_target[self.target], on_reference[self.reference] = 1.0, 1.0
            self.gate_masks = (on_target, on_reference)


def plan_layers(
    steering: Steering,
    geo: ModelGeometry,
    *,
    fingerprint: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    prefix_rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    state: ForwardState | None = None,
) -> dict[int, LayerPlan]:
    """Per site layer, the `LayerPlan` of `steering` on a model of geometry `geo` (no model needed).

    Checks every bank against the model `fingerprint` and the site layers; `prefix_rope` is the cos/sin of
    the prefix positions (needed for `positions="prefix"`). Shared by `inject` and the vLLM plugin.
    """
    st = steering
    if not st.banks:
        return {}
    sites, rho = st.resolved(geo, fingerprint)
    heads_per_layer = sites.resolve(geo)
    if not heads_per_layer:
        return {}
    for role, bank in st.banks:
        bank.check_model(None, fingerprint)
        missing = [layer for layer in heads_per_layer if layer not in bank.layers]
        if missing:
            raise SteeringError(
                f"the {role} bank {bank.name!r} has no slots for site layers {missing}; build it for these sites "
                "(build_bank(..., sites=...)), with layers covering them, or with layers='all'"
            )
    if st.positions == "prefix" and prefix_rope is None:
        raise SteeringError("positions='prefix' needs the cos/sin of the prefix positions (prefix_rope)")
    ranks = sites.layer_ranks() if st.schedule == "rank_linear" else None
    strengths = layer_strengths(list(heads_per_layer), rho, st.schedule, ranks)
    gains = _constant_gains(st)
    memory = _memory_bank(st)
    state = state if state is not None else ForwardState()
    target = slice(0, st.target.num_slots) if st.gated else None
    reference = slice(st.target.num_slots, st.target.num_slots + st.reference.num_slots) if st.gated else None
    plans = {}
    for layer, heads in heads_per_layer.items():
        rho_l = strengths[layer]
        head_t = torch.tensor(heads, dtype=torch.long, device=device)
        kv_index = head_t // geo.group_size
        all_heads = len(heads) == geo.num_heads
        # per bank, the KV heads the plan reads: every KV head (all heads, grouped) or the selected heads' own
        read = list(range(geo.num_kv_heads)) if all_heads else kv_index.tolist()
        rows = [b.kv_rows(layer, read) for i, (_, b) in enumerate(st.banks) if i != memory]
        if rows:
            keys = torch.cat([k for k, _ in rows], dim=1).to(device, dtype)
            values = torch.cat([v for _, v in rows], dim=1).to(device, dtype)
        else:  # only a memory: no ordinary slots
            keys = values = torch.zeros(len(read), 0, geo.head_dim, device=device, dtype=dtype)
        if prefix_rope is not None:
            keys = apply_rope(keys, *prefix_rope)
        bias = [torch.zeros(0)]
        layer_memory = None
        for i, ((role, bank), gain) in enumerate(zip(st.banks, gains)):
            if i == memory:
                layer_memory = plan_memory(bank, memory_read(bank), layer, read, rho_l * gain,  # type: ignore[arg-type]
                                           st.normalize == "paper", device, dtype)
                continue
            m = bank.num_slots
            constant = 0.0 if (st.gated and role in ("target", "reference")) else rho_l * gain
            norm = -math.log(m) if st.normalize == "paper" else 0.0
            bias.append(torch.full((m,), constant + norm))
        plans[layer] = LayerPlan(
            layer=layer,
            heads=head_t,
            kv_index=kv_index,
            all_heads=all_heads,
            group_size=geo.group_size,
            bank_keys=keys.contiguous(),
            bank_values=values.contiguous(),
            slot_bias=torch.cat(bias).to(device, dtype),
            target=target,
            reference=reference,
            positive=rho_l * st.positive_gain,
            negative=rho_l * st.negative_gain,
            gate_scale=st.gate_scale,
            canonical=st.positions == "canonical",
            normalize=st.normalize == "paper",
            state=state,
            memory=layer_memory,
        )
    return plans


def _memory_bank(st: Steering) -> int | None:
    """The position in `st.banks` of its memory bank (read top-k, `core.memory`), if any; checks it can be read."""
    found = [i for i, (_, bank) in enumerate(st.banks) if memory_read(bank) is not None]
    if not found:
        return None
    if len(found) > 1:
        raise SteeringError("a steering reads at most one memory bank; merge the documents into one memory")
    role, bank = st.banks[found[0]]
    if st.positions != "canonical":
        raise SteeringError(f"memory bank {bank.name!r} is read at canonical positions only (its top-k slots change "
                            "with every query, so they have no prefix positions); use positions='canonical'")
    if st.gated and role in ("target", "reference"):
        raise SteeringError(f"memory bank {bank.name!r} is the {role} of a gated steering; the query gate compares "
                            "whole banks, so pass gate=False or give the memory the role 'auxiliary'")
    return found[0]


def _constant_gains(st: Steering) -> list[float]:
    """Per bank, the gain multiplying rho_l when no gate applies (section 3's `c` without rho_l)."""
    out = []
    for role, _bank in st.banks:
        if role == "target":
            out.append(st.positive_gain)
        elif role == "reference":
            out.append(-st.negative_gain)
    out += [gain for _, gain in st.auxiliary]
    return out
