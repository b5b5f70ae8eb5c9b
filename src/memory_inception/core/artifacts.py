"""Artifact files: named tensors plus string metadata in one safetensors file, tagged with a format and version.

Banks and CAA steering vectors are stored this way. Writes go through a temporary file and a rename, so a reader
never sees half a file; reads name the file and the fix when it is missing, damaged, foreign or too new.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from memory_inception.errors import MemoryInceptionError


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact file: its format tag and version, what it is called and how to make a new one."""

    format: str
    version: int
    what: str  # "bank", "steering vector"
    title: str  # "memory-inception bank", "CAA steering vector"
    error: type[MemoryInceptionError]
    rebuild: str  # the fix, e.g. "rebuild it with `mi bank build`"


def write_artifact(path: str | Path, kind: ArtifactKind, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write `tensors` (moved to the CPU, contiguous) and `metadata` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    tagged = {"format": kind.format, "version": str(kind.version), **metadata}
    tmp = path.with_name(path.name + ".tmp")
    save_file(cpu, str(tmp), metadata=tagged)
    tmp.replace(path)
    return path


def read_artifact(path: str | Path, kind: ArtifactKind) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an artifact file of `kind`; a clear `kind.error` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise kind.error(f"no {kind.what} file at {path}; {kind.rebuild}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise kind.error(f"{path} is not a readable {kind.what} file ({exc}); {kind.rebuild}") from exc
    if metadata.get("format") != kind.format:
        raise kind.error(f"{path} is a safetensors file but not a {kind.title} (no {kind.what} metadata)")
    if int(metadata.get("version", "0")) > kind.version:
        raise kind.error(f"{path} was written by a newer memory-inception (format {metadata['version']}); upgrade")
    return tensors, metadata


def by_layer(tensors: dict[str, torch.Tensor], prefix: str) -> dict[int, torch.Tensor]:
    """`{layer: tensor}` of the tensors named `prefix.<layer>`."""
    return {int(name.split(".", 1)[1]): t for name, t in tensors.items() if name.startswith(prefix + ".")}
