"""A directory of bank files (`<name>.safetensors`, written by `Bank.save`), loaded once and checked per model."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from ..banks import Bank
from ..errors import BankError

BANK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the server's bank names


class BankDirectory:
    """Loads banks by name from one directory; a file is re-read when its size or mtime changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int], Bank]] = {}

    def file(self, name: str) -> Path:
        """The file of bank `name` (the name is checked, so it cannot leave the directory)."""
        if not isinstance(name, str) or not BANK_NAME.fullmatch(name):
            raise BankError(f"invalid bank name {name!r}: use 1-64 letters, digits, '-' or '_'")
        return self.path / f"{name}.safetensors"

    def load(self, name: str, fingerprint: str | None = None) -> Bank:
        """The bank `name`; with `fingerprint`, refused unless it was built by that model."""
        path = self.file(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise BankError(
                f"no bank named {name!r} in {self.path} (looked for {path.name}); build it with "
                f"`mi bank build TEXT -o {path}` or Bank.save"
            ) from None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            bank = hit[1]
        else:
            bank = Bank.load(path)
            with self._lock:
                self._cache[name] = (key, bank)
        if fingerprint is not None:
            bank.check_model(None, fingerprint)
        return bank
