"""`mi serve`: the OpenAI-compatible HTTP server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from memory_inception.cli.common import ModelOpt, fail
from memory_inception.errors import MemoryInceptionError


def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    bank_dir: Annotated[Path, typer.Option(help="Directory holding the banks (<name>.safetensors).")] = Path("banks"),
    api_key: Annotated[Optional[str], typer.Option(envvar="MI_API_KEY", help="Require 'Authorization: Bearer KEY'.")] = None,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    session_cache_bytes: Annotated[int, typer.Option(help="Budget for the sessions' KV caches, in bytes.")] = 512 << 20,
    engine: Annotated[str, typer.Option(help="Generation engine: transformers, or vllm (continuous batching; the [vllm] extra, docs/vllm.md).")] = "transformers",
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API with banks and sessions."""
    from memory_inception.serving.app import run_server

    if engine not in ("transformers", "vllm"):
        fail(MemoryInceptionError(f"--engine must be 'transformers' or 'vllm', not {engine!r}"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_server(model, host=host, port=port, bank_dir=bank_dir, api_key=api_key, engine=engine,
                   max_tokens_limit=max_tokens_limit, session_cache_bytes=session_cache_bytes)
    except MemoryInceptionError as exc:
        fail(exc)
