"""The `vllm.general_plugins` entry point: run in every vLLM process, it puts the MI backend over CPU_ATTN."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

BACKEND = "memory_inception.vllm.backend.MIAttentionBackend"


def register() -> None:
    """Register the steered CPU attention backend (idempotent; vLLM may call it several times per process)."""
    from vllm.v1.attention.backends.registry import (
        AttentionBackendEnum,
        register_backend,
    )

    register_backend(AttentionBackendEnum.CPU_ATTN, BACKEND)
    logger.debug("memory-inception: CPU_ATTN -> %s", BACKEND)
