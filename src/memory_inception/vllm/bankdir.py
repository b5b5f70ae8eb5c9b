"""A directory of bank files (`<name>.safetensors`, written by `Bank.save`), loaded once and checked per model.

Inline banks (the server's `{"text": ...}` banks) live beside them as content-addressed files in the hidden
subdirectory `.inline/`, named `.inline/<hash>`: a name no user bank can have (user names have no '.' or '/'), so
`GET /v1/banks` never lists them and a vLLM worker loads them like any other bank. `InlineBankStore` writes them,
pins the ones running requests use and evicts the rest, least recently used first, within its bounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from memory_inception.core.banks import Bank
from memory_inception.errors import BankError

logger = logging.getLogger(__name__)

BANK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the server's bank names
INLINE_DIR = ".inline"
INLINE_NAME = re.compile(r"\.inline/([0-9a-f]{32})")
MAX_LOADED = 64  # banks a BankDirectory keeps loaded (inline banks make the set of names open-ended)


def inline_name(text: str, layers: Sequence[int], fingerprint: str) -> str:
    """The content address of an inline bank: the same text, layers and model always give the same name."""
    key = json.dumps({"fingerprint": fingerprint, "layers": [int(x) for x in layers], "text": text})
    return f"{INLINE_DIR}/{hashlib.sha256(key.encode()).hexdigest()[:32]}"


class BankDirectory:
    """Loads banks by name from one directory; a file is re-read when its size or mtime changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[tuple[int, int], Bank]] = OrderedDict()

    def file(self, name: str) -> Path:
        """The file of bank `name` (the name is checked, so it cannot leave the directory)."""
        if isinstance(name, str) and BANK_NAME.fullmatch(name):
            return self.path / f"{name}.safetensors"
        inline = INLINE_NAME.fullmatch(name) if isinstance(name, str) else None
        if inline is not None:
            return self.path / INLINE_DIR / f"{inline[1]}.safetensors"
        raise BankError(f"invalid bank name {name!r}: use 1-64 letters, digits, '-' or '_'")

    def load(self, name: str, fingerprint: str | None = None) -> Bank:
        """The bank `name`; with `fingerprint`, refused unless it was built by that model."""
        path = self.file(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            if INLINE_NAME.fullmatch(name):
                raise BankError(
                    f"the inline bank {name!r} is no longer in {self.path / INLINE_DIR} (evicted); the server writes "
                    "it again for every request that uses it: send the request again"
                ) from None
            raise BankError(
                f"no bank named {name!r} in {self.path} (looked for {path.name}); build it with "
                f"`mi bank build TEXT -o {path}` or Bank.save"
            ) from None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None:
                self._cache.move_to_end(name)
        if hit is not None and hit[0] == key:
            bank = hit[1]
        else:
            bank = Bank.load(path)
            with self._lock:
                self._cache[name] = (key, bank)
                while len(self._cache) > MAX_LOADED:
                    self._cache.popitem(last=False)
        if fingerprint is not None:
            bank.check_model(None, fingerprint)
        return bank


class InlineBankStore:
    """Inline banks as files in `<bank_dir>/.inline/`, at most `max_files` of them and `max_bytes` in all.

    `pinned` keeps a request's inline banks on disk while it runs (writing any that are missing); unpinned files
    are evicted, least recently used first, whenever the bounds are exceeded. Files left by an earlier run count
    toward the bounds (oldest first). Thread-safe; one server process per bank directory owns `.inline/`.
    """

    def __init__(self, bank_dir: str | Path, *, max_files: int, max_bytes: int) -> None:
        if max_files < 1 or max_bytes < 1:
            raise BankError(f"the inline bank store needs max_files >= 1 and max_bytes >= 1, got {max_files}, "
                            f"{max_bytes}")
        self.directory = BankDirectory(bank_dir)
        self.root = self.directory.path / INLINE_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_files, self.max_bytes = max_files, max_bytes
        self._lock = threading.Lock()
        self._files: OrderedDict[str, int] = OrderedDict()  # name -> file bytes, least recently used first
        self._pins: Counter[str] = Counter()
        found = [p for p in self.root.glob("*.safetensors") if INLINE_NAME.fullmatch(f"{INLINE_DIR}/{p.stem}")]
        for path in sorted(found, key=lambda p: p.stat().st_mtime_ns):
            self._files[f"{INLINE_DIR}/{path.stem}"] = path.stat().st_size
        with self._lock:
            self._evict()

    @property
    def names(self) -> list[str]:
        """The inline banks on disk, least recently used first."""
        with self._lock:
            return list(self._files)

    @contextmanager
    def pinned(self, banks: Sequence[tuple[str, Callable[[], Bank]]]) -> Iterator[None]:
        """Keep the banks `(name, build)` on disk for the block; a missing one is written from `build()`."""
        held: list[str] = []
        try:
            for name, build in banks:
                self._acquire(name, build)
                held.append(name)
            yield
        finally:
            with self._lock:
                for name in held:
                    self._pins[name] -= 1
                    if self._pins[name] <= 0:
                        del self._pins[name]
                self._evict()

    def _acquire(self, name: str, build: Callable[[], Bank]) -> None:
        path = self.directory.file(name)
        with self._lock:
            if name in self._files and path.is_file():
                self._pins[name] += 1
                self._files.move_to_end(name)
                return
        bank = build()  # outside the lock: building runs the model
        with self._lock:
            if name not in self._files or not path.is_file():
                bank.save(path)  # atomic (a temporary file, then a rename); writes are serialized by the lock
                self._files[name] = path.stat().st_size
            self._files.move_to_end(name)
            self._pins[name] += 1
            self._evict()

    def _evict(self) -> None:
        """Delete unpinned files, least recently used first, until the bounds hold (the lock is held)."""
        total = sum(self._files.values())
        for name in list(self._files):
            if len(self._files) <= self.max_files and total <= self.max_bytes:
                break
            if self._pins[name]:
                continue
            total -= self._files.pop(name)
            self.directory.file(name).unlink(missing_ok=True)
            logger.debug("evicted inline bank %s", name)
