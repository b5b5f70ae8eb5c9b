"""Sessions as the server keeps them (`SessionState`: transcript, memory, prepared steering, the engine's cache) and
the registry that holds them within the server's session limit."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from memory_inception.serving.schemas import ApiError, MemorySpec

DEFAULT_MAX_SESSIONS = 1000


class SessionState:
    """One session: the transcript, the memory spec and its prepared steering (what the engine's `steering`
    returned), and `cache` — the engine's own per-session state (its `open_session(id)`).

    `lock` serializes the session's turns and guidance changes (a PATCH waits for a running turn)."""

    def __init__(self, memory: MemorySpec | None, steering: Any, system: str | None, cache: Any = None):
        self.id = "sess_" + secrets.token_hex(12)
        self.memory = memory
        self.steering = steering
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.cache = cache
        self.lock = threading.Lock()
        self.created = int(time.time())


class SessionRegistry:
    """The open sessions by id, at most `max_sessions` of them (thread-safe)."""

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS):
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionState] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def add(self, state: SessionState) -> None:
        """Register `state` (429 when the registry is full)."""
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise ApiError(429, f"this server holds its limit of {self.max_sessions} sessions; DELETE "
                                    "/v1/sessions/{id} the ones you no longer need", code="too_many_sessions")
            self._sessions[state.id] = state

    def get(self, session_id: str) -> SessionState:
        """The session `session_id` (404 if there is none)."""
        with self._lock:
            state = self._sessions.get(session_id)
        if state is None:
            raise ApiError(404, f"no session {session_id!r}; create one with POST /v1/sessions",
                           code="session_not_found")
        return state

    def remove(self, session_id: str) -> SessionState:
        """Unregister the session `session_id` and return it (404 if there is none)."""
        state = self.get(session_id)
        with self._lock:
            self._sessions.pop(session_id, None)
        return state
