"""The server's banks: files `<name>.safetensors` in the bank directory (create, load, list, delete), the inline
`text` banks of requests, built with the transformers model and kept in a small cache, and the limits on both (a
bank's text in tokens, a request's bank slots in all), checked before any model work. Errors name the bank, never
its file."""

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
DEFAULT_MAX_BANK_TOKENS = 1024  # tokens of one bank's text (inline, or POST /v1/banks)
DEFAULT_MAX_MEMORY_SLOTS = 4096  # bank slots one request's memory may hold, all its banks together


class BankStore:
    """Banks by name in `bank_dir` (loaded once per file version) and inline banks built from text (cached).

    Banks are built with `model` under its lock (`locks.model_lock`), whichever engine generates. A bank's text
    may hold `max_bank_tokens` tokens, a request's banks `max_memory_slots` slots in all (`check_memory`).
    """

    def __init__(self, model: Any, tokenizer: Any, bank_dir: str | Path, *,
                 max_bank_tokens: int = DEFAULT_MAX_BANK_TOKENS, max_memory_slots: int = DEFAULT_MAX_MEMORY_SLOTS):
        self.model, self.tokenizer = model, tokenizer
        self.max_bank_tokens, self.max_memory_slots = max_bank_tokens, max_memory_slots
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
        try:
            bank = Bank.load(path, model=self.model)
        except MemoryInceptionError as exc:
            logger.warning("bank %s (%s) was refused: %s", name, path, exc)
            reason = str(exc).replace(str(path), f"bank {name!r}")
            raise ApiError(400, f"bank {name!r} cannot be used: {reason}; rebuild it (DELETE /v1/banks/{name}, then "
                                "POST /v1/banks)", code="bank_unreadable") from None
        with self._state_lock:
            self._loaded[name] = (key, bank)
        return bank

    def create(self, name: str, text: str, layers: list[int] | None) -> Bank:
        """Build the bank `name` from `text` at `layers` (every layer when None, so any request's layers can use
        it) and save it (409 if it exists)."""
        path = self.path(name)
        self.check_layers(layers)
        self.check_text(text)
        with self.lock:  # also makes check-then-write atomic between concurrent creations
            if path.exists():
                raise ApiError(409, f"a bank named {name!r} exists; DELETE /v1/banks/{name} first",
                               code="bank_exists")
            bank = build_bank(self.model, self.tokenizer, text, layers=layers if layers is not None else "all",
                              name=name)
            try:
                bank.save(path)
            except OSError as exc:
                logger.error("could not write bank %s to %s: %s", name, path, exc)
                raise ApiError(507, f"bank {name!r} could not be saved ({exc.strerror or type(exc).__name__}); the "
                                    "server's bank storage is full or not writable: ask its operator",
                               "server_error", "bank_not_saved") from None
        logger.info("built bank %s: %d slots x %d layers, %d bytes", name, bank.num_slots, len(bank.layers),
                    bank.nbytes)
        return bank

    def delete(self, name: str) -> None:
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ApiError(404, f"no bank named {name!r}", code="bank_not_found") from None
        except OSError as exc:
            logger.error("could not delete bank %s (%s): %s", name, path, exc)
            raise ApiError(500, f"bank {name!r} could not be deleted ({exc.strerror or type(exc).__name__}); ask "
                                "the server's operator", "server_error", "bank_not_deleted") from None
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
        try:
            stat = self.path(name).stat()
        except FileNotFoundError:
            raise ApiError(404, f"no bank named {name!r}", code="bank_not_found") from None
        return {
            "object": "bank", "name": name, "slots": bank.num_slots, "layers": list(bank.layers),
            "bytes": bank.nbytes, "file_bytes": stat.st_size, "text": bank.text, "created": int(stat.st_mtime),
        }

    # ---- limits (no model work: a refused request never waits for the model) ------------------------------
    def text_tokens(self, text: str) -> int:
        """The tokens of a bank's `text` (what its slots will be, give or take the template's edges)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_text(self, text: str, what: str = "the bank's text") -> int:
        """422 unless `text` fits `max_bank_tokens`; returns its tokens. A long text is judged by a head of it first
        (cut at a space, with a margin for the cut), so a huge one is refused without tokenizing all of it."""
        limit = self.max_bank_tokens
        head = len(text) > 16 * limit and text[: 16 * limit].rsplit(" ", 1)[0]
        tokens = self.text_tokens(head) if head else 0
        if tokens > limit + 16:
            count = f"more than {limit} tokens ({tokens} in its first {len(head)} characters)"
        else:
            tokens = self.text_tokens(text)
            count = f"{tokens} tokens"
        if tokens > limit:
            raise ApiError(422, f"{what} has {count}; this server's limit is {limit} tokens per bank "
                                "(max_bank_tokens): shorten it or split it into several banks", code="bank_too_large")
        return tokens

    def check_memory(self, memory: MemorySpec) -> int:
        """Check a memory without model work: its layers, its named banks (404, foreign: 400), each inline text
        (`check_text`) and the slots of all its banks together (422 above `max_memory_slots`). Returns the slots."""
        self.check_layers(memory.layers)
        slots = 0
        for i, ref in enumerate(memory.banks):
            if ref.name is not None:
                slots += self.load(ref.name).num_slots
            else:
                slots += self.check_text(ref.text, f"memory.banks[{i}].text")
        if slots > self.max_memory_slots:
            raise ApiError(422, f"the request's banks hold {slots} slots in all; this server's limit is "
                                f"{self.max_memory_slots} (max_memory_slots): use fewer or shorter banks",
                           code="memory_too_large")
        return slots

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
