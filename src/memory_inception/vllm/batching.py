"""One forward's steered rows, prepared once, and the batched operator at a site layer.

`StepPlan.build` runs at the first site layer of a forward (the only place that loops over requests): each steered
request's tokens in this forward, the positions its key-pool slot receives, its steered rows (every generated token;
of the prompt the last / all / none) with their inverse RoPE tables, causal masks and log N_t. At each site layer
`steer_layer` then writes the new keys of every steered request into the pool in one indexed copy and steers the
steered rows of every request, whatever their banks and settings, in one operator call: the prompt part is the stock
kernel's output with a log-sum-exp over the pooled keys, the bank part `core.operator.mix_prompt_and_banks` over the
requests' banks stacked into one `LayerPlan` (`shard.stack_banks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from memory_inception.core.architecture import undo_rope
from memory_inception.core.operator import mix_prompt_and_banks
from memory_inception.core.plan import LayerPlan
from memory_inception.vllm.keypool import KeyPool

# scores materialized at once by the prompt log-sum-exp (floats); larger problems run in row blocks
LSE_BLOCK = 1 << 23


def steered_positions(num_prompt: int, prefill: str, start: int, count: int) -> list[int]:
    """Indices (within a forward's `count` tokens from position `start`) of the steered positions: every generated
    token, and of the prompt the last one (`prefill="last"`), all (`"all"`) or none (`"none"`)."""
    first = start if prefill == "all" else max(start, num_prompt)
    out = list(range(first - start, count))
    if prefill == "last" and start <= num_prompt - 1 < start + count:
        out.insert(0, num_prompt - 1 - start)
    return out


@dataclass
class Stacked:
    """The banks of a layer's steered requests as one `LayerPlan` (see `shard.stack_banks`), the steered-heads mask
    `[n or 1, H, 1, 1]` (None: all) and the per-request normalization flag `[n, 1, 1, 1]` (None: uniform)."""

    plan: LayerPlan
    heads: torch.Tensor | None
    normalize: torch.Tensor | None


@dataclass
class Member:
    """One steered request in this forward: its state, its tokens `[a, b)` and their first position."""

    state: Any  # state.RequestState
    a: int
    b: int
    start: int
    rows: list[int]  # steered indices within [a, b)


@dataclass
class Rows:
    """The steered rows of a layer's requests, padded to `[n, R]` (a short request repeats its last row)."""

    members: list[Member]
    tokens: torch.Tensor  # [n * R] indices into this forward's tokens
    rows: int  # R
    slots: torch.Tensor | slice  # the requests' pool slots (a slice when consecutive)
    length: int  # keys the longest row sees
    mask: torch.Tensor | None  # additive [n, 1, 1, R, S]; None: every row sees every key
    log_n: torch.Tensor  # [n, 1, R, 1]: log N_t, the keys each row sees
    cos: torch.Tensor  # [n, 1, R, d]: the inverse RoPE tables of the rows' positions
    sin: torch.Tensor
    valid: torch.Tensor | None  # flat indices of the real (not repeated) rows; None: every row is real
    locals: tuple[dict, ...] = ()  # the members' `RequestState.local` (shared by requests with equal settings)
    identity: tuple[int, ...] = ()  # their ids: with the layer, the key of the stacked banks
    grouped_log_n: dict[int, torch.Tensor] = field(default_factory=dict)

    def log_n_for(self, group_size: int) -> torch.Tensor:
        """log N repeated for the `group_size` query heads folded into each KV head's rows."""
        if group_size not in self.grouped_log_n:
            self.grouped_log_n[group_size] = self.log_n.repeat(1, 1, group_size, 1)
        return self.grouped_log_n[group_size]


@dataclass
class LayerWork:
    """What one site layer does in this forward: the keys it writes to the pool and the rows it steers."""

    members: list[Member]
    write_tokens: torch.Tensor  # [T] indices into this forward's tokens
    write_slots: torch.Tensor  # [T]
    write_positions: torch.Tensor  # [T]
    num_slots: int  # 1 + the largest slot written
    length: int  # 1 + the largest position written
    steer: Rows | None


class StepPlan:
    """This forward's steered requests (in pool-slot order) and, per site layer, its `LayerWork` (made on first use
    and shared by every layer with the same requests)."""

    def __init__(self, members: list[Member], checkpoint: Any, dtype: torch.dtype) -> None:
        self.members = members
        self.checkpoint = checkpoint
        self.dtype = dtype
        self._layers: dict[int, LayerWork | None] = {}
        self._works: dict[tuple[int, ...], LayerWork] = {}
        chosen: dict[int, list[int]] = {}  # site layer -> the members that steer it on this rank
        for i, m in enumerate(members):
            for layer in m.state.local:
                chosen.setdefault(layer, []).append(i)
        self._chosen = {layer: tuple(found) for layer, found in chosen.items()}

    @classmethod
    def build(cls, rows: list[Any], starts: list[int], seq_lens: list[int], checkpoint: Any,
              dtype: torch.dtype) -> StepPlan:
        members = []
        for row, state in enumerate(rows[: len(seq_lens)]):
            if state is None or not state.local:
                continue
            a, b = starts[row], starts[row + 1]
            if b == a:
                continue
            start = seq_lens[row] - (b - a)
            state.advance(start, b - a)
            members.append(Member(state, a, b, start, steered_positions(state.num_prompt, state.prefill, start, b - a)))
        members.sort(key=lambda m: m.state.slot)
        return cls(members, checkpoint, dtype)

    def layer(self, index: int) -> LayerWork | None:
        """The work of site layer `index` (None: no request of this forward steers it on this rank)."""
        if index not in self._layers:
            chosen = self._chosen.get(index)
            work = None
            if chosen:
                work = self._works.get(chosen)
                if work is None:
                    work = self._works[chosen] = self._work([self.members[i] for i in chosen])
            self._layers[index] = work
        return self._layers[index]

    def _work(self, members: list[Member]) -> LayerWork:
        tokens, slots, positions = [], [], []
        for m in members:
            tokens.extend(range(m.a, m.b))
            slots.extend([m.state.slot] * (m.b - m.a))
            positions.extend(range(m.start, m.start + m.b - m.a))
        steered = [m for m in members if m.rows]
        return LayerWork(
            members=members, write_tokens=torch.tensor(tokens), write_slots=torch.tensor(slots),
            write_positions=torch.tensor(positions), num_slots=1 + max(m.state.slot for m in members),
            length=max(m.start + m.b - m.a for m in members), steer=self._rows(steered) if steered else None,
        )

    def _rows(self, members: list[Member]) -> Rows:
        width = max(len(m.rows) for m in members)
        tokens, positions, valid = [], [], []
        for i, m in enumerate(members):
            local = m.rows + [m.rows[-1]] * (width - len(m.rows))
            tokens += [m.a + r for r in local]
            positions += [m.start + r for r in local]
            valid += [i * width + j for j in range(len(m.rows))]
        n = len(members)
        pos = torch.tensor(positions).view(n, width)
        length = max(positions) + 1
        mask = None
        if width > 1 or any(p != length - 1 for p in positions):
            visible = torch.arange(length).view(1, 1, length) <= pos.unsqueeze(-1)  # causal: [n, R, S]
            mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill_(~visible, -math.inf)
            mask = mask.view(n, 1, 1, width, length)
        cos, sin = self.checkpoint.inverse_rope(pos.flatten(), self.dtype)
        slot_ids = [m.state.slot for m in members]
        consecutive = slot_ids == list(range(slot_ids[0], slot_ids[0] + n))
        return Rows(
            members=members, tokens=torch.tensor(tokens), rows=width,
            slots=slice(slot_ids[0], slot_ids[0] + n) if consecutive else torch.tensor(slot_ids), length=length,
            mask=mask, log_n=(pos + 1).to(self.dtype).log().view(n, 1, width, 1),
            cos=cos.view(n, 1, width, -1), sin=sin.view(n, 1, width, -1),
            valid=None if len(valid) == n * width else torch.tensor(valid),
            locals=tuple(m.state.local for m in members), identity=tuple(id(m.state.local) for m in members),
        )


def prompt_lse(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None, scale: float, group_size: int,
               rows: int) -> torch.Tensor:
    """The log-sum-exp of the prompt scores `s <q_t, k_j>` over each row's visible keys, `[n, H_kv, g R]` (fp32).

    query `[n, H_kv, g R, d]` (each KV head's g query heads folded into rows), keys `[n, H_kv, S, d]`, mask
    additive `[n, 1, 1, R, S]` (or None). Runs in blocks of rows when the scores would be large.
    """
    n, kv, folded, dim = query.shape
    length = keys.shape[-2]
    block = max(1, LSE_BLOCK // max(1, n * kv * group_size * length))
    q = query.view(n, kv, group_size, rows, dim)
    out = []
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        part = q[:, :, :, r0:r1].reshape(n, kv, group_size * (r1 - r0), dim) if block < rows else query
        scores = torch.matmul(part, keys.transpose(-1, -2)).view(n, kv, group_size, r1 - r0, length).float()
        scores = scores.mul_(scale)
        if mask is not None:
            scores = scores.add_(mask[..., r0:r1, :])
        out.append(torch.logsumexp(scores, dim=-1))
    lse = out[0] if len(out) == 1 else torch.cat(out, dim=-1)
    return lse.reshape(n, kv, folded)


def steer_layer(work: LayerWork, stacked_for, pool: KeyPool, layer: int, query: torch.Tensor, key: torch.Tensor,
                output: torch.Tensor, scale: float) -> None:
    """Write this layer's new keys to the pool, then overwrite the steered rows' steered heads of `output` with the
    operator: every steered request of the batch in one call. `stacked_for(rows, group_size)` gives the stacked
    banks of `rows.locals` at this layer. query / output `[T, H, d]`, key `[T, H_kv, d]` (this rank's heads)."""
    pool.write(layer, work.write_slots, work.write_positions, key.index_select(0, work.write_tokens),
               work.num_slots, work.length)
    rows = work.steer
    if rows is None:
        return
    num_heads, dim = query.shape[1], query.shape[2]
    num_kv = key.shape[1]
    g = num_heads // num_kv
    n, width = len(rows.members), rows.rows
    out = output.view(output.shape[0], num_heads, dim)
    q = query.index_select(0, rows.tokens).view(n, width, num_heads, dim).transpose(1, 2)  # [n, H, R, d]
    stock = out.index_select(0, rows.tokens).view(n, width, num_heads, dim).transpose(1, 2)
    bank_query = undo_rope(q, rows.cos, rows.sin)  # the pre-RoPE query q~_t
    folded = (n, num_kv, g * width, dim)  # each KV head's query heads folded into rows
    keys = pool.read(layer, rows.slots, rows.length)
    lse = prompt_lse(q.reshape(folded), keys, rows.mask, scale, g, width)
    banks = stacked_for(rows, g)
    log_n = rows.log_n_for(g)
    if banks.normalize is not None:
        log_n = log_n * banks.normalize
    steered = mix_prompt_and_banks(stock.reshape(folded), lse, bank_query.reshape(folded), log_n, scale, banks.plan)
    steered = steered.view(n, num_heads, width, dim)
    if banks.heads is not None:  # heads a request does not steer keep the stock output
        steered = torch.where(banks.heads, steered, stock)
    steered = steered.transpose(1, 2).reshape(n * width, num_heads, dim).to(out.dtype)
    tokens = rows.tokens
    if rows.valid is not None:
        steered, tokens = steered.index_select(0, rows.valid), tokens.index_select(0, rows.valid)
    out.index_copy_(0, tokens, steered)
