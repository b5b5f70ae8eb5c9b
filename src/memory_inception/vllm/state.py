"""Per-worker request state: which batch row is which request, its layer plans (and what this rank reads of them),
its key-pool slot.

The batch tracker (a no-op logits processor) replays vLLM's persistent-batch updates here before every forward;
the attention backend reads it at the site layers. `WORKER` is the one registry of a worker process (one per
tensor- or pipeline-parallel rank: every rank sees the same batch updates).
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
from memory_inception.vllm.batching import Rows, Stacked, StepPlan, steered_positions
from memory_inception.vllm.checkpoint import Checkpoint
from memory_inception.vllm.keypool import KeyPool
from memory_inception.vllm.shard import LocalBanks, Shard, local_banks, stack_banks
from memory_inception.vllm.spec import EXTRA_ARGS_KEY, RequestSteering

logger = logging.getLogger(__name__)

BANK_DIR_ENV = "MEMORY_INCEPTION_BANK_DIR"
MAX_PARKED = 1024  # a backstop: requests out of the batch (unscheduled or preempted) whose keys are kept
MAX_PLANS = 64  # settings whose plans are kept
MAX_STACKS = 256  # stacked banks (per layer and set of steered requests) kept


@dataclass
class RequestState:
    """One steered request in the worker: its plans per site layer, what this rank reads of them (`local`), its
    prompt length, its key-pool slot and how many of its positions the pool holds (`length`)."""

    steering: RequestSteering
    prefill: str
    num_prompt: int
    plans: dict[int, LayerPlan]
    outputs: list[int]  # the request's running output token list (its identity across leaving the batch)
    local: dict[int, LocalBanks] = field(default_factory=dict)
    slot: int | None = None
    length: int = 0

    def advance(self, start: int, count: int) -> None:
        """This forward writes positions `start .. start + count - 1`; recomputed positions (after preemption)
        overwrite, a gap (a prefix the pool never saw) is refused."""
        if start > self.length:
            raise MemoryInceptionError(
                f"a steered request resumed at position {start} but its key copy holds {self.length} positions: "
                "its prompt prefix came from vLLM's prefix cache. Give steered prompts a cache_salt "
                "(memory_inception.vllm.steered_prompt does) or start vLLM with enable_prefix_caching=False"
            )
        self.length = start + count

    def steered(self, start: int, count: int) -> torch.Tensor:
        """`steered_positions` of this request as a tensor."""
        return torch.tensor(steered_positions(self.num_prompt, self.prefill, start, count), dtype=torch.long)


class WorkerRegistry:
    """The worker's view of the persistent batch: row index -> steered request (None for plain rows), the key
    pool of the steered requests, and this forward's `StepPlan`."""

    def __init__(self) -> None:
        self.rows: list[RequestState | None] = []
        self.parked: OrderedDict[int, RequestState] = OrderedDict()
        self.checkpoint: Checkpoint | None = None
        self.bank_dir: BankDirectory | None = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.pool = KeyPool()
        self.steered_rows = 0  # rows of the batch that are steered (on any rank)
        self._shard: Shard | None = None
        self._plans: OrderedDict[str, tuple[dict[int, LayerPlan], dict[int, LocalBanks]]] = OrderedDict()
        self._stacks: OrderedDict[tuple, tuple[tuple[dict, ...], Stacked]] = OrderedDict()
        self._step: tuple[Any, StepPlan] | None = None

    # ---- configuration (once per worker) -------------------------------------------------------------
    def configure(self, vllm_config: Any) -> None:
        """Read the served checkpoint, dtype and bank directory from the engine's config."""
        model_config = vllm_config.model_config
        self.checkpoint = Checkpoint(Path(model_config.model))
        self.dtype = model_config.dtype
        options = (getattr(vllm_config, "additional_config", None) or {}).get(EXTRA_ARGS_KEY, {})
        bank_dir = options.get("bank_dir") or os.environ.get(BANK_DIR_ENV)
        self.bank_dir = BankDirectory(bank_dir) if bank_dir else None
        self._shard = None

    @property
    def shard(self) -> Shard:
        """This worker's tensor-parallel rank (rank 0 of 1 outside a distributed vLLM worker)."""
        if self._shard is None:
            if self.checkpoint is None:
                raise SteeringError("the memory-inception vLLM plugin is not configured in this process")
            rank, size = tensor_parallel_rank()
            self._shard = Shard(self.checkpoint.geometry, rank, size)
        return self._shard

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
        self.steered_rows = sum(state is not None for state in self.rows)
        self._sweep()

    def _sweep(self) -> None:
        """Free the parked requests vLLM has finished: nothing but their state holds their output list any more
        (vLLM drops its request state on completion; a live request's state still references the list)."""
        for key in [k for k, state in self.parked.items() if sys.getrefcount(state.outputs) <= 2]:
            self._free(self.parked.pop(key))

    def _grow(self, size: int) -> None:
        self.rows += [None] * (size - len(self.rows))

    def _park(self, state: RequestState) -> None:
        self.parked[id(state.outputs)] = state
        while len(self.parked) > MAX_PARKED:
            self._free(self.parked.popitem(last=False)[1])

    def _free(self, state: RequestState) -> None:
        if state.slot is not None:
            self.pool.release(state.slot)
            state.slot = None

    def _admit(self, params: Any, prompt_ids: list[int] | None, outputs: list[int]) -> RequestState | None:
        parked = self.parked.pop(id(outputs), None)
        if parked is not None and parked.outputs is outputs:
            return parked  # back in the batch (after being unscheduled or preempted): keep its keys
        if parked is not None:
            self._free(parked)
        steering = RequestSteering.from_extra_args(getattr(params, "extra_args", None))
        if steering is None or not steering.banks:
            return None
        plans, local = self.plans_for(steering, with_local=True)
        if not plans:
            return None
        state = RequestState(steering, steering.prefill, len(prompt_ids or ()), plans, outputs, local)
        if local:
            state.slot = self.pool.acquire()
        return state

    def plans_for(self, steering: RequestSteering, *, with_local: bool = False):
        """The layer plans of `steering` (banks loaded, checked against the served model), cached; with
        `with_local`, also what this rank reads of each (`LocalBanks` per site layer with a local head)."""
        key = steering.cache_key()
        hit = self._plans.get(key)
        if hit is not None:
            self._plans.move_to_end(key)
        else:
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
            local = {layer: part for layer, plan in plans.items()
                     if (part := local_banks(plan, self.shard)) is not None}
            hit = self._plans[key] = (plans, local)
            while len(self._plans) > MAX_PLANS:
                self._plans.popitem(last=False)
        return hit if with_local else hit[0]

    # ---- the forward (from the attention backend) ----------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether any row of the current batch is steered."""
        return self.steered_rows > 0

    def step_for(self, attn_metadata: Any) -> StepPlan:
        """This forward's `StepPlan`, made at its first site layer (vLLM hands every layer one metadata object)."""
        if self._step is not None and self._step[0] is attn_metadata:
            return self._step[1]
        if self.checkpoint is None:
            raise SteeringError("the memory-inception vLLM plugin is not configured in this process")
        step = StepPlan.build(self.rows, attn_metadata.query_start_loc.tolist(), attn_metadata.seq_lens.tolist(),
                              self.checkpoint, self.dtype)
        self._step = (attn_metadata, step)
        return step

    def stacked(self, layer: int, rows: Rows, group_size: int) -> Stacked:
        """`stack_banks` of the banks of `rows`' requests at `layer`, cached per layer and sequence of settings
        (requests with equal settings share their `local` banks, so a batch of the same mix hits the cache)."""
        key = (layer, group_size, rows.identity)
        hit = self._stacks.get(key)
        if hit is not None:
            self._stacks.move_to_end(key)
            return hit[1]
        stacked = Stacked(*stack_banks([local[layer] for local in rows.locals], layer, group_size))
        self._stacks[key] = (rows.locals, stacked)  # the banks are held, so their ids stay theirs
        while len(self._stacks) > MAX_STACKS:
            self._stacks.popitem(last=False)
        return stacked


def tensor_parallel_rank() -> tuple[int, int]:
    """(rank, size) of this process's tensor-parallel group; (0, 1) outside an initialized vLLM worker."""
    from vllm.distributed import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


WORKER = WorkerRegistry()
