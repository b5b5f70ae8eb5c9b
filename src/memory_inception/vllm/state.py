"""Per-worker request state: which batch row is which request, its layer plans and its copy of the site keys.

The batch tracker (a no-op logits processor) replays vLLM's persistent-batch updates here before every forward;
the attention backend reads it at the site layers. `WORKER` is the one registry of a worker process.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memory_inception.core.plan import LayerPlan, plan_layers
from memory_inception.errors import MemoryInceptionError, SteeringError
from memory_inception.vllm.bankdir import BankDirectory
from memory_inception.vllm.checkpoint import Checkpoint
from memory_inception.vllm.spec import EXTRA_ARGS_KEY, RequestSteering

logger = logging.getLogger(__name__)

BANK_DIR_ENV = "MEMORY_INCEPTION_BANK_DIR"
MAX_PARKED = 1024  # a backstop: requests out of the batch (unscheduled or preempted) whose copies are kept


class SiteCopy:
    """A layout-independent copy of one layer's post-RoPE keys and values of one request, `[T, H_kv, d]`."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0

    def write(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store the keys/values of positions `start ..`; recomputed positions (after preemption) overwrite."""
        if start > self.length:
            raise MemoryInceptionError(
                f"a steered request resumed at position {start} but its key copy holds {self.length} positions: "
                "its prompt prefix came from vLLM's prefix cache. Give steered prompts a cache_salt "
                "(memory_inception.vllm.steered_prompt does) or start vLLM with enable_prefix_caching=False"
            )
        end = start + keys.shape[0]
        if self.keys is None or end > self.keys.shape[0]:
            capacity = max(end, 2 * (self.keys.shape[0] if self.keys is not None else 64))
            grown_k = keys.new_empty((capacity, *keys.shape[1:]))
            grown_v = values.new_empty((capacity, *values.shape[1:]))
            if self.keys is not None:
                grown_k[: self.length] = self.keys[: self.length]
                grown_v[: self.length] = self.values[: self.length]
            self.keys, self.values = grown_k, grown_v
        self.keys[start:end] = keys
        self.values[start:end] = values
        self.length = end


@dataclass
class StepRows:
    """A request's steered rows in one forward, shared by all its site layers: which rows, their positions,
    the inverse RoPE tables, the causal mask over the copy and log N_t."""

    local: torch.Tensor  # [R] indices within the request's tokens of this forward
    positions: torch.Tensor  # [R]
    cos: torch.Tensor  # [R, d]
    sin: torch.Tensor  # [R, d]
    length: int  # keys visible to the last row (= its position + 1)
    mask: torch.Tensor | None  # additive [1, 1, R, length]; None when every row sees every key (one decode row)
    log_visible: torch.Tensor  # [1, 1, R, 1]


@dataclass
class RequestState:
    """One steered request in the worker: its plans per site layer, prompt length and key copies."""

    steering: RequestSteering
    prefill: str
    num_prompt: int
    plans: dict[int, LayerPlan]
    outputs: list[int]  # the request's running output token list (its identity across leaving the batch)
    copies: dict[int, SiteCopy] = field(default_factory=dict)
    _step: tuple[tuple[int, int], StepRows | None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.copies = {layer: SiteCopy() for layer in self.plans}

    def step_rows(self, start: int, count: int, checkpoint: Checkpoint, dtype: torch.dtype) -> StepRows | None:
        """The steered rows of this forward (None: none steered), computed once for all site layers."""
        key = (start, count)
        if self._step is not None and self._step[0] == key:
            return self._step[1]
        local = self.steered(start, count)
        rows = None
        if local.numel():
            positions = start + local
            cos, sin = checkpoint.inverse_rope(positions, dtype)
            length = int(positions[-1]) + 1
            n = positions.numel()
            mask = None
            if n > 1:
                visible = torch.arange(length).view(1, length) <= positions.view(-1, 1)  # causal: [R, S]
                mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf")).view(1, 1, n, length)
            log_visible = (positions + 1).to(dtype).log().view(1, 1, n, 1)
            rows = StepRows(local, positions, cos, sin, length, mask, log_visible)
        self._step = (key, rows)
        return rows

    def steered(self, start: int, count: int) -> torch.Tensor:
        """Indices (within this forward's `count` tokens from position `start`) of the steered positions."""
        pos = torch.arange(start, start + count)
        decode = pos >= self.num_prompt  # generated tokens: always steered
        if self.prefill == "all":
            prompt = pos < self.num_prompt
        elif self.prefill == "last":
            prompt = pos == self.num_prompt - 1
        else:
            prompt = torch.zeros_like(decode)
        return torch.nonzero(decode | prompt).flatten()


class WorkerRegistry:
    """The worker's view of the persistent batch: row index -> steered request (None for plain rows)."""

    def __init__(self) -> None:
        self.rows: list[RequestState | None] = []
        self.parked: OrderedDict[int, RequestState] = OrderedDict()
        self.checkpoint: Checkpoint | None = None
        self.bank_dir: BankDirectory | None = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self._plans: OrderedDict[str, dict[int, LayerPlan]] = OrderedDict()

    # ---- configuration (once per worker) -------------------------------------------------------------
    def configure(self, vllm_config: Any) -> None:
        """Read the served checkpoint, dtype and bank directory from the engine's config."""
        model_config = vllm_config.model_config
        self.checkpoint = Checkpoint(Path(model_config.model))
        self.dtype = model_config.dtype
        options = (getattr(vllm_config, "additional_config", None) or {}).get(EXTRA_ARGS_KEY, {})
        bank_dir = options.get("bank_dir") or os.environ.get(BANK_DIR_ENV)
        self.bank_dir = BankDirectory(bank_dir) if bank_dir else None
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size * parallel.pipeline_parallel_size > 1:
            logger.warning("memory-inception: tensor/pipeline parallelism is not supported; steered requests will fail")

    # ---- batch updates (from the tracker, before every forward) --------------------------------------
    def apply(self, batch_update: Any) -> None:
        """Replay one vLLM `BatchUpdate`: removed, then added, then moved (vLLM's documented order)."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            if index < len(self.rows) and self.rows[index] is not None:
                self._park(self.rows[index])
                self.rows[index] = None
        for index, params, prompt_ids, outputs in batch_update.added:
            self._grow(index + 1)
            self.rows[index] = self._admit(params, prompt_ids, outputs)
        for a, b, direction in batch_update.moved:
            self._grow(max(a, b) + 1)
            if direction.name == "SWAP":
                self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
            else:
                self.rows[b], self.rows[a] = self.rows[a], None
        del self.rows[batch_update.batch_size :]
        self._sweep()

    def _sweep(self) -> None:
        """Free the parked requests vLLM has finished: nothing but their state holds their output list any more
        (vLLM drops its request state on completion; a live request's state still references the list)."""
        for key in [k for k, state in self.parked.items() if sys.getrefcount(state.outputs) <= 2]:
            del self.parked[key]

    def _grow(self, size: int) -> None:
        self.rows += [None] * (size - len(self.rows))

    def _park(self, state: RequestState) -> None:
        self.parked[id(state.outputs)] = state
        while len(self.parked) > MAX_PARKED:
            self.parked.popitem(last=False)

    def _admit(self, params: Any, prompt_ids: list[int] | None, outputs: list[int]) -> RequestState | None:
        parked = self.parked.pop(id(outputs), None)
        if parked is not None and parked.outputs is outputs:
            return parked  # back in the batch (after being unscheduled or preempted): keep its copies
        steering = RequestSteering.from_extra_args(getattr(params, "extra_args", None))
        if steering is None or not steering.banks:
            return None
        plans = self.plans_for(steering)
        if not plans:
            return None
        return RequestState(steering, steering.prefill, len(prompt_ids or ()), plans, outputs)

    def plans_for(self, steering: RequestSteering) -> dict[int, LayerPlan]:
        """The layer plans of `steering` (banks loaded, checked against the served model); cached."""
        key = steering.cache_key()
        plans = self._plans.get(key)
        if plans is not None:
            self._plans.move_to_end(key)
            return plans
        if self.checkpoint is None:
            raise SteeringError("the memory-inception vLLM plugin is not configured in this process")
        if self.bank_dir is None:
            raise SteeringError(
                f"no bank directory: start the engine with additional_config={{'{EXTRA_ARGS_KEY}': "
                f"{{'bank_dir': DIR}}}} (MIEngine does) or set {BANK_DIR_ENV}"
            )
        core = steering.resolve(self.bank_dir, self.checkpoint.fingerprint)
        plans = plan_layers(core, self.checkpoint.geometry, fingerprint=self.checkpoint.fingerprint,
                            device=self.device, dtype=self.dtype)
        self._plans[key] = plans
        while len(self._plans) > 64:
            self._plans.popitem(last=False)
        return plans

    @property
    def active(self) -> bool:
        """Whether any row of the current batch is steered."""
        return any(state is not None for state in self.rows)


WORKER = WorkerRegistry()
