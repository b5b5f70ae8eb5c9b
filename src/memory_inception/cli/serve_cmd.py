"""`mi serve`: the OpenAI-compatible HTTP server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from memory_inception.cli.common import DeviceMapOpt, DeviceOpt, DtypeOpt, ModelOpt, fail, parse_device_map
from memory_inception.errors import MemoryInceptionError
from memory_inception.hf.models import resolve_device, resolve_dtype


def serve(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    bank_dir: Annotated[Path, typer.Option(help="Directory holding the banks (<name>.safetensors).")] = Path("banks"),
    api_key: Annotated[Optional[str], typer.Option(envvar="MI_API_KEY", help="Require 'Authorization: Bearer KEY'.")] = None,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    session_cache_bytes: Annotated[int, typer.Option(help="Budget for the sessions' KV caches, in bytes.")] = 512 << 20,
    engine: Annotated[str, typer.Option(help="Generation engine: transformers, or vllm (continuous batching; the [vllm] extra, docs/vllm.md).")] = "transformers",
    sessions_db: Annotated[Optional[Path], typer.Option(help="SQLite file holding the sessions (default: <bank-dir>.sessions.db, next to the bank directory).")] = None,
    max_queue: Annotated[Optional[int], typer.Option(help="Requests that may wait for the engine; more are refused with 503 and Retry-After (default: the server's, README Server).")] = None,
    request_timeout: Annotated[Optional[float], typer.Option(help="Seconds a request may take from arrival to its last token; 0: no deadline (default: the server's).")] = None,
    max_bank_tokens: Annotated[Optional[int], typer.Option(help="Tokens one bank's text may hold, inline or POST /v1/banks (default: the server's).")] = None,
    max_memory_slots: Annotated[Optional[int], typer.Option(help="Bank slots one request's banks may hold in all (default: the server's).")] = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API with banks and sessions."""
    from memory_inception.serving.app import run_server

    if engine not in ("transformers", "vllm"):
        fail(MemoryInceptionError(f"--engine must be 'transformers' or 'vllm', not {engine!r}"))
    placement = {"device": device, "dtype": dtype, "device_map": parse_device_map(device_map)}
    try:
        resolve_dtype(dtype, resolve_device(device, device_map=placement["device_map"]))  # refused before loading
    except MemoryInceptionError as exc:
        fail(exc)
    bounds = {key: value for key, value in {"sessions_db": sessions_db, "max_queue": max_queue,
                                            "max_bank_tokens": max_bank_tokens,
                                            "max_memory_slots": max_memory_slots}.items() if value is not None}
    if request_timeout is not None:
        bounds["request_timeout_s"] = request_timeout or None  # 0: no deadline
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_server(model, host=host, port=port, bank_dir=bank_dir, api_key=api_key, engine=engine,
                   max_tokens_limit=max_tokens_limit, session_cache_bytes=session_cache_bytes, **bounds, **placement)
    except MemoryInceptionError as exc:
        fail(exc)
