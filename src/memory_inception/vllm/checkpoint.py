"""What the plugin needs to know about the served checkpoint, read from its directory (no transformers model).

Geometry and fingerprint are the core's (`config_geometry`, `weights_fingerprint`), so banks built by the
transformers path are accepted exactly when the core would accept them; RoPE comes from the architecture's own
transformers rotary module, so canonical queries are un-rotated with the transformers path's tables.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from memory_inception.core.architecture import (
    ModelGeometry,
    config_geometry,
    inverse_tables,
    weights_fingerprint,
)
from memory_inception.errors import ModelLoadError

KEY_PROJECTION_SUFFIX = "layers.0.self_attn.k_proj.weight"


@dataclass
class Checkpoint:
    """A transformers checkpoint directory as the vLLM plugin sees it."""

    path: Path

    @cached_property
    def config(self):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(self.path))
        get_text = getattr(config, "get_text_config", None)
        return get_text() if callable(get_text) else config

    @cached_property
    def geometry(self) -> ModelGeometry:
        return config_geometry(self.config)

    @cached_property
    def fingerprint(self) -> str:
        """The core's `model_fingerprint` of this checkpoint (geometry + layer 0's key projection)."""
        return weights_fingerprint(self.geometry, self._key_projection())

    @cached_property
    def rotary(self) -> nn.Module:
        """The architecture's transformers rotary embedding, built from this config."""
        model_type = self.geometry.model_type
        try:
            module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        except ImportError:
            raise ModelLoadError(f"transformers has no modeling module for model type {model_type!r}") from None
        found = [getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding") and "Multimodal" not in n]
        found = [c for c in found if isinstance(c, type) and issubclass(c, nn.Module)]
        if len(found) != 1:
            raise ModelLoadError(
                f"expected one rotary embedding class for {model_type!r}, found {[c.__name__ for c in found]}; "
                "canonical positions need the model's RoPE"
            )
        return found[0](config=self.config).eval()

    def inverse_rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin `[R, d]` for `undo_rope` at `positions` (the transformers path's tables, inverted)."""
        with torch.no_grad():
            cos, sin = self.rotary(torch.zeros(1, dtype=dtype), positions.view(1, -1))
        cos, sin = inverse_tables(self.rotary, cos[0], sin[0])
        return cos.to(dtype), sin.to(dtype)

    def _key_projection(self) -> torch.Tensor:
        files = sorted(self.path.glob("*.safetensors"))
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            names = [n for n in weight_map if n.endswith(KEY_PROJECTION_SUFFIX)]
            files = [self.path / weight_map[names[0]]] if names else []
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    if name.endswith(KEY_PROJECTION_SUFFIX):
                        return f.get_tensor(name)
        raise ModelLoadError(
            f"no '{KEY_PROJECTION_SUFFIX}' weight in the safetensors files of {self.path}; the plugin needs a "
            "transformers checkpoint with separate q/k/v projections (Llama, Mistral, Qwen2, Qwen3 layouts)"
        )
