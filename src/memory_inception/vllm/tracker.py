"""The batch tracker: a no-op logits processor whose `update_state` keeps the worker registry in step.

vLLM calls `update_state` with every change of the persistent batch before each forward, in the worker that
runs the model; `validate_params` checks a request's `extra_args` at admission (a bad setting is a 400).
"""

from __future__ import annotations

import os

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from memory_inception.errors import BankError
from memory_inception.vllm.bankdir import BankDirectory
from memory_inception.vllm.spec import RequestSteering
from memory_inception.vllm.state import BANK_DIR_ENV, WORKER


class BatchTracker(LogitsProcessor):
    """Leaves logits unchanged; replays batch updates into `state.WORKER`."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        WORKER.configure(vllm_config)

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        steering = RequestSteering.from_extra_args(sampling_params.extra_args)  # raises SteeringError (a ValueError)
        bank_dir = os.environ.get(BANK_DIR_ENV)
        if steering is not None and bank_dir:  # the front end knows the bank directory only from the environment
            directory = BankDirectory(bank_dir)
            missing = [use.name for use in steering.banks if not directory.file(use.name).is_file()]
            if missing:
                raise BankError(f"no bank named {', '.join(map(repr, missing))} in {bank_dir}; build it with "
                                "`mi bank build TEXT -o DIR/NAME.safetensors` or Bank.save")

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        WORKER.apply(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True
