"""The worker registry follows vLLM's batch updates (no engine: fake updates, the real registry and banks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from memory_inception.vllm import BankUse, RequestSteering, steering_params
from memory_inception.vllm.bankdir import BankDirectory
from memory_inception.vllm.checkpoint import Checkpoint
from memory_inception.vllm.engine import checkpoint_dir
from memory_inception.vllm.state import WorkerRegistry


@dataclass
class FakeRequest:
    """What vLLM's cached request state holds for the registry: params, prompt and the running output list."""

    params: object
    prompt: list[int]
    outputs: list[int] = field(default_factory=list)


def registry(bank_dir) -> WorkerRegistry:
    reg = WorkerRegistry()
    reg.checkpoint, reg.bank_dir = Checkpoint(checkpoint_dir(None)), BankDirectory(bank_dir)
    return reg


def update(size, removed=(), added=(), moved=()) -> BatchUpdate:
    return BatchUpdate(batch_size=size, removed=list(removed), added=[(i, r.params, r.prompt, r.outputs) for i, r in added],
                       moved=list(moved))


def test_rows_follow_adds_moves_swaps_and_parking(bank_dir):
    reg = registry(bank_dir)
    steered = FakeRequest(steering_params(RequestSteering(banks=(BankUse("pirate"),))), [1, 2, 3])
    plain = FakeRequest(steering_params(None), [4, 5])
    other = FakeRequest(steering_params(RequestSteering(banks=(BankUse("poet"),), prefill="all")), [6])
    reg.apply(update(3, added=[(0, plain), (1, steered), (2, other)]))
    assert reg.rows[0] is None and reg.rows[1].steering.banks[0].name == "pirate" and reg.rows[2].prefill == "all"
    assert set(reg.rows[1].plans) == set(range(21, 27))
    state, other_state = reg.rows[1], reg.rows[2]
    reg.apply(update(3, moved=[(1, 2, MoveDirectionality.SWAP)]))
    assert reg.rows[2] is state and reg.rows[1] is other_state
    reg.apply(update(2, removed=[2]))  # unscheduled for a step: parked, with its copies
    assert reg.rows == [None, other_state] and len(reg.parked) == 1
    reg.apply(update(3, added=[(2, steered)]))  # back: the same state
    assert reg.rows[2] is state and not reg.parked
    reg.apply(update(3, moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert reg.rows[0] is state and reg.rows[2] is None


def test_finished_requests_are_freed(bank_dir):
    reg = registry(bank_dir)
    request = FakeRequest(steering_params(RequestSteering(banks=(BankUse("pirate"),))), [1, 2])
    reg.apply(update(1, added=[(0, request)]))
    reg.apply(update(0, removed=[0]))
    assert len(reg.parked) == 1  # vLLM still holds the request (unscheduled or preempted)
    del request  # vLLM finished it and dropped its state
    reg.apply(update(0))
    assert not reg.parked


def test_steered_positions_follow_the_prefill_mode():
    def state(prefill):
        return SimpleNamespace(num_prompt=5, prefill=prefill)

    from memory_inception.vllm.state import RequestState

    for prefill, want in (("last", [4, 5, 6]), ("all", [0, 1, 2, 3, 4, 5, 6]), ("none", [5, 6])):
        assert (RequestState.steered(state(prefill), 0, 7) + 0).tolist() == want, prefill
    assert RequestState.steered(state("last"), 3, 2).tolist() == [1]  # a chunk: positions 3, 4 -> the last prompt token
