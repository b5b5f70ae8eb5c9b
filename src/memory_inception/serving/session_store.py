"""Sessions as the server keeps them: in SQLite (the standard library's sqlite3, WAL mode), so each session's
transcript, memory settings and bank names survive a restart or a kill -9, and in memory (`SessionState`: the
prepared steering, the engine's cache and the turn lock), rebuilt from the database when needed.

Every change is one transaction that bumps the session's `version`; a state whose version is behind the database
(another app or process on the same file changed the session) is reloaded before its next turn.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memory_inception.errors import MemoryInceptionError
from memory_inception.serving.schemas import ApiError, MemorySpec

logger = logging.getLogger(__name__)

DEFAULT_MAX_SESSIONS = 1000
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, created INTEGER NOT NULL, memory TEXT, version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
"""


def default_sessions_db(bank_dir: str | Path) -> Path:
    """Where a server keeps its sessions by default: `<bank_dir>.sessions.db`, next to the bank directory."""
    bank_dir = Path(bank_dir).resolve()
    return bank_dir.with_name(bank_dir.name + ".sessions.db")


class SessionState:
    """One session as this app holds it: the transcript and memory spec (as last read from or written to the
    database, at `version`), the prepared steering for that memory (`steering_ready` once the engine's `steering`
    returned it; None without banks), and `cache` — the engine's own per-session state (its `open_session(id)`).

    `lock` serializes the session's turns and guidance changes (a PATCH waits for a running turn)."""

    def __init__(self, session_id: str, created: int, memory: MemorySpec | None, messages: list[dict[str, str]],
                 version: int):
        self.id, self.created, self.memory, self.messages, self.version = session_id, created, memory, messages, version
        self.steering: Any = None
        self.steering_ready = memory is None or not memory.banks
        self.cache: Any = None
        self.lock = threading.Lock()


def _memory_json(memory: MemorySpec | None) -> str | None:
    return memory.model_dump_json() if memory is not None else None


def _memory(text: str | None) -> MemorySpec | None:
    return MemorySpec.model_validate_json(text) if text is not None else None


class SessionStore:
    """The sessions in the SQLite file `path`, at most `max_sessions` of them (thread-safe; several apps or
    processes may share the file)."""

    def __init__(self, path: str | Path, max_sessions: int = DEFAULT_MAX_SESSIONS):
        self.path = Path(path)
        self.max_sessions = max_sessions
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._live: dict[str, SessionState] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise MemoryInceptionError(f"cannot open the sessions database {self.path} ({exc}); pass another path "
                                       "(mi serve --sessions-db PATH) or fix the file's permissions") from exc
        if mode.lower() != "wal":
            logger.warning("the sessions database %s is in %s mode, not WAL", self.path, mode)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _sql(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, in a transaction when `write`; database failures become a 503 (no path in it)."""
        with self._lock:
            try:
                if write:
                    self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if write:
                        self._db.execute("ROLLBACK")
                    raise
                if write:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                logger.exception("the sessions database %s failed", self.path)
                raise ApiError(503, f"the session store failed ({exc}); retry, or ask the operator to check the "
                                    "server's sessions database", "server_error", "session_store_failed") from exc

    def __len__(self) -> int:
        with self._sql() as db:
            return int(db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])

    def create(self, memory: MemorySpec | None, system: str | None) -> SessionState:
        """A new stored session (429 when the store holds `max_sessions`)."""
        session_id, created = "sess_" + secrets.token_hex(12), int(time.time())
        messages = [{"role": "system", "content": system}] if system else []
        with self._sql(write=True) as db:
            if db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] >= self.max_sessions:
                raise ApiError(429, f"this server holds its limit of {self.max_sessions} sessions; DELETE "
                                    "/v1/sessions/{id} the ones you no longer need", code="too_many_sessions")
            db.execute("INSERT INTO sessions (id, created, memory, version) VALUES (?, ?, ?, 0)",
                       (session_id, created, _memory_json(memory)))
            db.executemany("INSERT INTO messages (session_id, seq, role, content) VALUES (?, ?, ?, ?)",
                           [(session_id, i, m["role"], m["content"]) for i, m in enumerate(messages)])
        state = SessionState(session_id, created, memory, messages, 0)
        with self._lock:
            self._live[session_id] = state
        return state

    def _row(self, db: sqlite3.Connection, session_id: str) -> tuple[int, str | None, int]:
        row = db.execute("SELECT created, memory, version FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise ApiError(404, f"no session {session_id!r}; create one with POST /v1/sessions",
                           code="session_not_found")
        return row

    def _messages(self, db: sqlite3.Connection, session_id: str) -> list[dict[str, str]]:
        rows = db.execute("SELECT role, content FROM messages WHERE session_id = ? ORDER BY seq", (session_id,))
        return [{"role": role, "content": content} for role, content in rows]

    def get(self, session_id: str) -> SessionState:
        """The session `session_id` (404 if the database has none): this app's live state, or one loaded from the
        database (a session from before a restart: its engine cache is None, to be opened)."""
        try:
            with self._sql() as db:
                created, memory, version = self._row(db, session_id)
                live = self._live.get(session_id)
                if live is not None:
                    return live
                state = SessionState(session_id, created, _memory(memory), self._messages(db, session_id), version)
                self._live[session_id] = state
                return state
        except ApiError as exc:
            if exc.status == 404:
                with self._lock:
                    self._live.pop(session_id, None)
            raise

    def refresh(self, state: SessionState) -> None:
        """Bring `state` up to the database's version (call under `state.lock`); a changed memory must be prepared
        again (`steering_ready` False). 404 if the session was deleted."""
        with self._sql() as db:
            _, memory, version = self._row(db, state.id)
            if version == state.version:
                return
            state.messages = self._messages(db, state.id)
        if memory != _memory_json(state.memory):
            state.memory = _memory(memory)
            state.steering, state.steering_ready = None, state.memory is None or not state.memory.banks
        state.version = version

    def _bump(self, db: sqlite3.Connection, state: SessionState) -> None:
        updated = db.execute("UPDATE sessions SET version = version + 1 WHERE id = ? AND version = ?",
                             (state.id, state.version)).rowcount
        if updated == 0:
            self._row(db, state.id)  # 404 if it was deleted meanwhile
            raise ApiError(409, f"session {state.id!r} changed while this request ran (another request or server "
                                "wrote to it); GET it and try again", code="session_conflict")

    def append(self, state: SessionState, messages: list[dict[str, str]]) -> None:
        """Add `messages` to the transcript, in one transaction (call under `state.lock`)."""
        start = len(state.messages)
        with self._sql(write=True) as db:
            self._bump(db, state)
            db.executemany("INSERT INTO messages (session_id, seq, role, content) VALUES (?, ?, ?, ?)",
                           [(state.id, start + i, m["role"], m["content"]) for i, m in enumerate(messages)])
        state.messages = state.messages + messages
        state.version += 1

    def set_memory(self, state: SessionState, memory: MemorySpec | None, steering: Any) -> None:
        """Store the session's new memory with its prepared steering (call under `state.lock`)."""
        with self._sql(write=True) as db:
            self._bump(db, state)
            db.execute("UPDATE sessions SET memory = ? WHERE id = ?", (_memory_json(memory), state.id))
        state.memory, state.steering, state.steering_ready = memory, steering, True
        state.version += 1

    def view(self, session_id: str) -> tuple[int, MemorySpec | None, list[dict[str, str]]]:
        """What the database holds for `session_id`: created, memory, transcript (404 if none)."""
        with self._sql() as db:
            created, memory, _ = self._row(db, session_id)
            return created, _memory(memory), self._messages(db, session_id)

    def delete(self, session_id: str) -> SessionState | None:
        """Delete the session (404 if there is none); returns this app's live state of it, if any."""
        with self._sql(write=True) as db:
            self._row(db, session_id)
            db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        with self._lock:
            return self._live.pop(session_id, None)
