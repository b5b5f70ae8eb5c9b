"""An OpenAI-compatible HTTP server with Memory Inception steering (FastAPI + uvicorn): the app and its routes.

Endpoints: ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (plain and SSE streaming, log-probabilities, a ``memory`` extension object), banks as files
(``/v1/banks``) and multi-turn sessions stored in SQLite whose KV cache persists (``/v1/sessions``, turns plain or
streamed). The routes parse and format; `service.Service` does the work with an engine (`hf_engine.HFEngine` by
default, one request at a time on the shared model; `vllm_engine.VLLMEngine`), admitted in order within a bounded
queue and a per-request deadline.

``create_app(model, tokenizer, bank_dir=...)`` builds the app (tests use it directly); ``run_server(...)``
loads a model and serves it with uvicorn (``mi serve``).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from memory_inception.errors import MemoryInceptionError
from memory_inception.serving.admission import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S
from memory_inception.serving.bank_store import DEFAULT_MAX_BANK_TOKENS, DEFAULT_MAX_MEMORY_SLOTS
from memory_inception.serving.gate import Gate
from memory_inception.serving.hf_engine import DEFAULT_SESSION_CACHE_BYTES, HFEngine
from memory_inception.serving.protocol import Engine
from memory_inception.serving.schemas import (
    ApiError,
    BankCreate,
    ChatRequest,
    CompletionRequest,
    SessionCreate,
    SessionMessage,
    SessionPatch,
    describe_validation,
    error_response,
)
from memory_inception.serving.service import Service
from memory_inception.serving.session_store import DEFAULT_MAX_SESSIONS
from memory_inception.serving.streaming import EventStream

logger = logging.getLogger(__name__)  # also the request log (one line per request, from the gate)

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MAX_TOKENS = 128
DEFAULT_MAX_TOKENS_LIMIT = 1024
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB


class EventResponse(StreamingResponse):
    """An `EventStream` as an SSE response; it is closed however the response ends (finished, client gone, never
    started), so the generation stops and the engine is freed."""

    def __init__(self, stream: EventStream):
        self.stream = stream

        async def body() -> Any:
            async for item in iterate_in_threadpool(iter(stream)):
                yield item

        super().__init__(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stream.close()


LIMIT_STATUSES = (413, 422, 429, 503, 504)  # refusals that bound the work, counted by code in mi_rejected


def create_app(
    model: Any,
    tokenizer: Any,
    *,
    bank_dir: str | Path,
    api_key: str | None = None,
    model_id: str | None = None,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    session_cache_bytes: int = DEFAULT_SESSION_CACHE_BYTES,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    sessions_db: str | Path | None = None,
    max_bank_tokens: int = DEFAULT_MAX_BANK_TOKENS,
    max_memory_slots: int = DEFAULT_MAX_MEMORY_SLOTS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    engine: Engine | None = None,
) -> FastAPI:
    """The FastAPI app serving `model` with banks stored in `bank_dir` and sessions in the SQLite file
    `sessions_db` (default: `<bank_dir>.sessions.db`, next to the bank directory).

    `engine` generates the replies (e.g. a `vllm_engine.VLLMEngine`); by default an `hf_engine.HFEngine` on
    `model` (shared, one request at a time) whose session caches share `session_cache_bytes`. Bounds: a bank's text
    `max_bank_tokens`, a request's banks `max_memory_slots` slots, `max_queue` requests waiting for the engine
    (then 503 with Retry-After), `request_timeout_s` from arrival to the last token (None: no deadline).
    """
    if engine is None:
        engine = HFEngine(model, tokenizer, session_cache_bytes=session_cache_bytes)
    service = Service(model, tokenizer, engine, bank_dir=bank_dir, model_id=model_id or DEFAULT_MODEL_ID,
                      max_tokens_limit=max_tokens_limit, default_max_tokens=default_max_tokens,
                      max_sessions=max_sessions, sessions_db=sessions_db, max_bank_tokens=max_bank_tokens,
                      max_memory_slots=max_memory_slots, max_queue=max_queue, request_timeout_s=request_timeout_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        # every waiting request holds a worker thread: enough of them that a full line never starves the rest
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, engine.concurrency + max_queue + 32)
        yield

    app = FastAPI(title="memory-inception", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    redact = service.redact

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        if exc.status in LIMIT_STATUSES:
            service.telemetry.rejected.labels(reason=exc.code or str(exc.status)).inc()
        return error_response(exc.status, redact(exc.message), exc.type, exc.code, headers=exc.headers)

    @app.exception_handler(MemoryInceptionError)
    async def _mi_error(_request: Request, exc: MemoryInceptionError) -> JSONResponse:
        return error_response(400, redact(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, redact(describe_validation(list(exc.errors()))))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(exc.status_code,
                                                                                           str(exc.detail))
        return error_response(exc.status_code, redact(message), type_)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return error_response(500, redact(f"internal error: {type(exc).__name__}: {exc}"), "server_error")

    # ---- the playground (a static page; its API calls send the key the user types) -------------------
    @app.get("/", include_in_schema=False)
    def playground() -> HTMLResponse:
        return HTMLResponse((Path(__file__).parent / "playground.html").read_text(encoding="utf-8"))

    # ---- health, metrics and models (async: answered even while every worker thread waits) ---------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.model_id, "sessions": len(service.sessions),
                "queue": {"running": service.admission.running, "waiting": service.admission.waiting,
                          "limit": service.admission.max_queue},
                "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(service.telemetry.render(), media_type=service.telemetry.content_type)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [
            {"id": service.model_id, "object": "model", "created": int(service.started), "owned_by": "local"}
        ]}

    # ---- chat and text completions ------------------------------------------------------------------
    def respond(call: Any, stream: bool, deadline: Any) -> Any:
        """A prepared call's reply: one JSON body, or its SSE stream."""
        return EventResponse(service.stream(call, deadline)) if stream else service.complete(call, deadline)

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest) -> Any:
        deadline = service.deadline()  # the clock starts at arrival, before preparing
        return respond(service.prepare_chat(req), req.stream, deadline)

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> Any:
        deadline = service.deadline()
        return respond(service.prepare_completion(req), req.stream, deadline)

    # ---- banks --------------------------------------------------------------------------------------
    @app.post("/v1/banks", status_code=201)
    def create_bank(req: BankCreate) -> dict:
        deadline = service.deadline()
        service.banks.path(req.name)
        service.banks.check_layers(req.layers)
        service.banks.check_text(req.text)
        with service.admitted(deadline):
            service.banks.create(req.name, req.text, req.layers)
        return service.banks.info(req.name)

    @app.get("/v1/banks")
    def list_banks() -> dict:
        return {"object": "list", "data": service.banks.list_all()}

    @app.get("/v1/banks/{name:path}")
    def get_bank(name: str) -> dict:
        return service.banks.info(name)

    @app.delete("/v1/banks/{name:path}")
    def delete_bank(name: str) -> dict:
        service.banks.delete(name)
        return {"object": "bank.deleted", "name": name, "deleted": True}

    # ---- sessions -----------------------------------------------------------------------------------
    @app.post("/v1/sessions", status_code=201)
    def create_session(req: SessionCreate | None = None) -> dict:
        state = service.open_session(req or SessionCreate(), service.deadline())
        return service.session_view(state.id)

    @app.get("/v1/sessions/{session_id}")
    def get_session(session_id: str) -> dict:
        return service.session_view(session_id)

    @app.post("/v1/sessions/{session_id}/messages")
    def session_message(session_id: str, req: SessionMessage) -> Any:
        deadline = service.deadline()
        out = service.session_turn(service.get_session(session_id), req, deadline)
        return EventResponse(out) if isinstance(out, EventStream) else out

    @app.patch("/v1/sessions/{session_id}")
    def patch_session(session_id: str, req: SessionPatch) -> dict:
        deadline = service.deadline()
        service.patch_session(service.get_session(session_id), req.memory, deadline)
        return service.session_view(session_id)

    @app.delete("/v1/sessions/{session_id}")
    def delete_session(session_id: str) -> dict:
        service.delete_session(session_id)
        return {"object": "session.deleted", "id": session_id, "deleted": True}

    app.add_middleware(Gate, api_key=api_key, max_body_bytes=max_body_bytes, log=logger,
                       observe=service.telemetry.request)
    return app


def run_server(
    model_name: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    bank_dir: str | Path = "banks",
    api_key: str | None = None,
    engine: Literal["transformers", "vllm"] = "transformers",
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | dict | None = None,
    **options: Any,
) -> None:
    """Load `model_name` (default model if None; `device`, `dtype`, `device_map` as for `load_model`) and serve it
    with uvicorn until interrupted.

    `engine="vllm"` generates with a vLLM engine (continuous batching; needs the `[vllm]` extra, docs/vllm.md);
    the transformers model is still loaded, for building banks. `options` go to `create_app`.
    """
    import uvicorn

    from memory_inception.hf.models import load_model

    if engine not in ("transformers", "vllm"):
        raise ValueError(f"engine must be 'transformers' or 'vllm', not {engine!r}")
    model, tokenizer = load_model(model_name, device=device, dtype=dtype, device_map=device_map)
    if engine == "vllm":
        from memory_inception.serving.vllm_engine import VLLMEngine

        options["engine"] = VLLMEngine(model, bank_dir=bank_dir, model_name=model_name)
    app = create_app(model, tokenizer, bank_dir=bank_dir, api_key=api_key, model_id=model_name or DEFAULT_MODEL_ID,
                     **options)
    logger.info("serving %s with %s on http://%s:%d (banks in %s)", model_name or DEFAULT_MODEL_ID, engine, host,
                port, bank_dir)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
