"""Memory Inception inside vLLM: a plugin (attention backend + batch tracker) and a small typed API.

`RequestSteering` names a request's banks (files in a bank directory) and settings; `MIEngine` builds a vLLM
engine with the plugin and runs steered and plain requests in one batch. See docs/vllm.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory_inception.vllm.spec import EXTRA_ARGS_KEY, BankUse, RequestSteering

if TYPE_CHECKING:  # the engine needs vllm; import it only when used
    from memory_inception.vllm.engine import (
        Generation,
        MIEngine,
        steered_prompt,
        steering_params,
    )

__all__ = [
    "EXTRA_ARGS_KEY",
    "BankUse",
    "Generation",
    "MIEngine",
    "RequestSteering",
    "steered_prompt",
    "steering_params",
]


def __getattr__(name: str) -> Any:
    if name in ("Generation", "MIEngine", "steered_prompt", "steering_params"):
        from memory_inception.vllm import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
