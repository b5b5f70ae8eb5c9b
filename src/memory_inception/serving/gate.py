"""The ASGI middleware in front of every route: the API key (401), the body size limit (413), JSON bodies without a
JSON content type, one log line per request and its route, status and duration for the metrics."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from memory_inception.serving.schemas import error_response


class Gate:
    """Pure ASGI middleware: one line per request on `log`, the body size limit (413) and the API key (401).

    `/health` and `/` (the static playground page, whose own API calls send the key) need no key. `observe(route,
    status, seconds)` gets every answered request, `route` the matched route's template ("other" when none
    matched, so hostile paths do not become metric labels).
    """

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, log: logging.Logger,
                 observe: Callable[[str, int, float], None] | None = None):
        self.app, self.api_key, self.max_body_bytes, self.log = app, api_key, max_body_bytes, log
        self.observe = observe

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        seen: dict[str, dict] = {"scope": scope}

        async def send_logged(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_logged, seen)
        finally:
            seconds = time.perf_counter() - started
            self.log.info("%s %s %d %.1fms", scope["method"], scope["path"], status["code"], seconds * 1000)
            if self.observe is not None:
                route = getattr(seen["scope"].get("route"), "path", None) or "other"
                self.observe(route, status["code"], seconds)

    async def _handle(self, scope: dict, receive: Any, send: Any, seen: dict[str, dict]) -> None:
        if self.api_key is not None and scope["path"] not in ("/health", "/"):  # "/": the static playground
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                response = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                          "authentication_error", "invalid_api_key",
                                          headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            too_large = error_response(413, f"request body too large: the limit is {self.max_body_bytes} bytes",
                                       code="body_too_large")
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await too_large(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            # every body this API takes is JSON: accept it without a content type, or with curl's default
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            kind = dict(scope["headers"]).get(b"content-type", b"")
            if not kind or kind.startswith(b"application/x-www-form-urlencoded"):
                kind = b"application/json"
            scope = seen["scope"] = {**scope, "headers": headers + [(b"content-type", kind)]}
            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)
