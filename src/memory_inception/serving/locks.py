"""One lock per model object: every forward of a served transformers model (generation, bank building) holds it,
even across several apps serving the same model in one process (`mi.inject` refuses nesting, and interleaved
forwards would corrupt each other)."""

from __future__ import annotations

import threading
import weakref
from typing import Any

_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.Lock:
    """The lock that serializes every use of `model` in this process."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock
