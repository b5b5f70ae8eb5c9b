"""Error messages as clients read them: the server's own paths replaced by what they are (a bank by its name, an
inline bank, the bank directory, the session store), so no reply names a file on the server."""

from __future__ import annotations

import os
import re
from pathlib import Path

from memory_inception.vllm.bankdir import INLINE_DIR


class Redactor:
    """Rewrites the server's paths in a message: `<bank_dir>/NAME.safetensors` -> "bank 'NAME'", files under its
    `.inline/` -> "an inline bank", the directories themselves and the sessions database by role."""

    def __init__(self, bank_dir: str | Path, sessions_db: str | Path | None = None):
        # the directory as given, absolute and resolved (longest first, so a prefix never matches early)
        self._bank_roots = sorted({str(bank_dir), os.path.abspath(bank_dir), str(Path(bank_dir).resolve())}, key=len,
                                  reverse=True)
        self._plain: list[tuple[str, str]] = []
        if sessions_db is not None:
            for given in {str(sessions_db), str(Path(sessions_db).resolve())}:
                self._plain.append((given, "the session store"))
        self._plain.sort(key=lambda pair: len(pair[0]), reverse=True)
        alternatives = "|".join(re.escape(root) for root in self._bank_roots)
        self._inline = re.compile(rf"(?:{alternatives})/{re.escape(INLINE_DIR)}/[0-9a-f]+\.safetensors(?:\.tmp)?")
        self._inline_dir = re.compile(rf"(?:{alternatives})/{re.escape(INLINE_DIR)}\b/?")
        self._bank = re.compile(rf"(?:{alternatives})/([A-Za-z0-9_-]+)\.safetensors(?:\.tmp)?")
        self._root = re.compile(rf"(?:{alternatives})(?![\w.-])/?")

    def __call__(self, message: str) -> str:
        for path, role in self._plain:
            message = message.replace(path, role)
        message = self._inline.sub("an inline bank", message)
        message = self._inline_dir.sub("the inline bank store", message)
        message = self._bank.sub(lambda m: f"bank {m[1]!r}", message)
        return self._root.sub("the bank directory", message)
