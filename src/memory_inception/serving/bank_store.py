"""The server's banks: files `<name>.safetensors` in the bank directory (create, load, list, delete), and the
inline `text` banks of requests, built with the transformers model and kept in a small cache."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from memory_inception.core.architecture import geometry, model_fingerprint
from memory_inception.core.banks import Bank, build_bank
from memory_inception.core.steering import Steering
from memory_inception.errors import MemoryInceptionError
from memory_inception.serving.locks import model_lock
from memory_inception.serving.schemas import ApiError, MemorySpec
from memory_inception.vllm.bankdir import BANK_NAME

logger = logging.getLogger(__name__)

TEXT_BANK_CACHE_SIZE = 32  # inline banks kept built (least recently used dropped)


class BankStore:
    """Banks by name in `bank_dir` (loaded once per file version) and inline banks built from text (cached).

    Banks are built with `model` under its lock (`locks.model_lock`), whichever engine generates.
    """

    def __init__(self, model: Any, tokenizer: Any, bank_dir: str | Path):
        self.model, self.tokenizer = model, tokenizer
        self.bank_dir = Path(bank_dir)
        self.bank_dir.mkdir(parents=True, exist_ok=True)
        self.geometry = geometry(model)
        self.fingerprint = model_fingerprint(model)
        self.num_layers = self.geometry.num_layers
        self.lock = model_lock(model)
        self._state_lock = threading.Lock()  # guards the caches below (never held while the model runs)
        self._loaded: dict[str, tuple[tuple[int, int], Bank]] = {}
        self._text_banks: OrderedDict[tuple[str, tuple[int, ...]], Bank] = OrderedDict()

    def path(self, name: str) -> Path:
        """The file of bank `name` (400 for a name that is not a bank name, so it cannot leave the directory)."""
        if not BANK_NAME.fullmatch(name):
            raise ApiError(400, f"invalid bank name {name!r}: use 1-64 letters, digits, '-' or '_'")
        return self.bank_dir / f"{name}.safetensors"

    def check_layers(self, layers: list[int] | None) -> None:
        """400 unless every layer is one of the model's."""
        bad = [layer for layer in layers or [] if not 0 <= layer < self.num_layers]
        if bad:
            raise ApiError(400, f"layers {bad} are out of range: this model has layers 0..{self.num_layers - 1}")

    def load(self, name: str) -> Bank:
        """The bank `name` (404 if there is none; a foreign bank is refused by `Bank.load`)."""
        path = self.path(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ApiError(404, f"no bank named {name!r}; create it with POST /v1/banks or list them with "
                                "GET /v1/banks", code="bank_not_found") from None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._state_lock:
            hit = self._loaded.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        bank = Bank.load(path, model=self.model)
        with self._state_lock:
            self._loaded[name] = (key, bank)
        return bank

    def create(self, name: str, text: str, layers: list[int] | None) -> Bank:
        """Build the bank `name` from `text` at `layers` (every layer when None, so any request's layers can use
        it) and save it (409 if it exists)."""
        path = self.path(name)
        self.check_layers(layers)
        with self.lock:  # also makes check-then-write atomic between concurrent creations
            if path.exists():
                raise ApiError(409, f"a bank named {name!r} exists; DELETE /v1/banks/{name} first",
                               code="bank_exists")
            bank = build_bank(self.model, self.tokenizer, text, layers=layers if layers is not None else "all",
                              name=name)
            bank.save(path)
        logger.info("built bank %s: %d slots x %d layers, %d bytes", name, bank.num_slots, len(bank.layers),
                    bank.nbytes)
        return bank

    def delete(self, name: str) -> None:
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ApiError(404, f"no bank named {name!r}", code="bank_not_found") from None
        with self._state_lock:
            self._loaded.pop(name, None)

    def list_all(self) -> list[dict]:
        """Every readable bank's `info` (unreadable files are logged and skipped)."""
        out = []
        for path in sorted(self.bank_dir.glob("*.safetensors")):
            if BANK_NAME.fullmatch(path.stem):
                try:
                    out.append(self.info(path.stem))
                except (ApiError, MemoryInceptionError) as exc:
                    logger.warning("skipping unreadable bank file %s: %s", path, exc)
        return out

    def info(self, name: str) -> dict:
        """The API's view of bank `name`."""
        bank = self.load(name)
        path = self.path(name)
        return {
            "object": "bank", "name": name, "slots": bank.num_slots, "layers": list(bank.layers),
            "bytes": bank.nbytes, "file_bytes": path.stat().st_size, "text": bank.text,
            "created": int(path.stat().st_mtime),
        }

    def inline_layers(self, memory: MemorySpec) -> list[int]:
        """The layers a memory's inline banks are built for: the memory's own, else the sites its steering will
        use (`Steering.resolved`: the named target bank's tuned sites, else the model's default sites)."""
        if memory.layers:
            return list(memory.layers)
        target = next((ref.name for ref in memory.banks if ref.role == "target" and ref.name is not None), None)
        steering = Steering(target=self.load(target)) if target is not None else Steering()
        return list(steering.resolved(self.geometry, self.fingerprint)[0].layers)

    def text_bank(self, text: str, layers: list[int]) -> Bank:
        """An inline bank: `text` built for `layers` (the last TEXT_BANK_CACHE_SIZE are kept built)."""
        key = (text, tuple(layers))
        with self._state_lock:
            bank = self._text_banks.get(key)
            if bank is not None:
                self._text_banks.move_to_end(key)
                return bank
        with self.lock:
            bank = build_bank(self.model, self.tokenizer, text, layers=layers, name="inline")
        with self._state_lock:
            self._text_banks[key] = bank
            while len(self._text_banks) > TEXT_BANK_CACHE_SIZE:
                self._text_banks.popitem(last=False)
        return bank
