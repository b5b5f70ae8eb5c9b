"""CAA steering vectors: the mean activation difference at the answer token, and their files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from memory_inception.core.architecture import (
    attention_modules,
    decoder_layers,
    model_fingerprint,
    text_config,
)
from memory_inception.core.artifacts import (
    ArtifactKind,
    by_layer,
    read_artifact,
    write_artifact,
)
from memory_inception.errors import CAAError
from memory_inception.hf.text import encode, left_pad, pad_token_id
from memory_inception.methods.caa.pairs import ContrastPair

Placement = Literal["residual", "attention"]
PLACEMENTS = ("residual", "attention")
VECTOR_FILE = ArtifactKind(
    format="memory-inception-caa-vector", version=1, what="steering vector", title="CAA steering vector", error=CAAError,
    rebuild="build one with build_steering_vector(...).save(path)",
)


# ---- vectors ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SteeringVector:
    """Per layer a `[hidden_size]` float32 direction, and where it is added (`placement`)."""

    vectors: dict[int, torch.Tensor]
    placement: Placement = "residual"
    name: str = ""
    fingerprint: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise CAAError(f"placement={self.placement!r} is not one of {', '.join(PLACEMENTS)}")
        if not self.vectors:
            raise CAAError("a steering vector needs at least one layer")
        vectors = {}
        for layer, v in self.vectors.items():
            if not isinstance(v, torch.Tensor) or v.dim() != 1:
                raise CAAError(f"the vector of layer {layer} must be a 1-D tensor [hidden_size]")
            vectors[int(layer)] = v.detach().to(device="cpu", dtype=torch.float32)
        if len({v.numel() for v in vectors.values()}) != 1:
            raise CAAError("the per-layer vectors have different sizes; they must all be [hidden_size]")
        object.__setattr__(self, "vectors", dict(sorted(vectors.items())))

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers this vector has a direction for, ascending."""
        return tuple(self.vectors)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.vectors.values())).numel()

    def check_model(self, model: nn.Module) -> None:
        """Raise unless this vector fits `model` (hidden size, layers and, if recorded, fingerprint)."""
        size = text_config(model).hidden_size
        if size != self.hidden_size:
            raise CAAError(
                f"steering vector {self.name!r} has size {self.hidden_size} but this model's hidden size is {size}; "
                "build the vector with this model"
            )
        n = len(decoder_layers(model))
        bad = [layer for layer in self.layers if not 0 <= layer < n]
        if bad:
            raise CAAError(f"steering vector {self.name!r} has layers {bad} but this model has layers 0..{n - 1}")
        if self.fingerprint is not None:
            fp = model_fingerprint(model)
            if fp != self.fingerprint:
                raise CAAError(
                    f"steering vector {self.name!r} was built by another model (vector fingerprint "
                    f"{self.fingerprint}, this model {fp}); build it again with this model"
                )

    def save(self, path: str | Path) -> Path:
        """Write the vector as one safetensors file with its metadata; returns the path."""
        tensors = {f"vector.{layer}": v for layer, v in self.vectors.items()}
        metadata = {
            "placement": self.placement,
            "name": self.name,
            "fingerprint": json.dumps(self.fingerprint),
            "meta": json.dumps(self.meta),
        }
        return write_artifact(path, VECTOR_FILE, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> SteeringVector:
        """Read a vector file; with `model`, also check the vector fits that model."""
        tensors, metadata = read_artifact(path, VECTOR_FILE)
        try:
            vectors = by_layer(tensors, "vector")
            vector = cls(
                vectors=vectors,
                placement=metadata["placement"],  # type: ignore[arg-type]
                name=metadata.get("name", ""),
                fingerprint=json.loads(metadata.get("fingerprint", "null")),
                meta=json.loads(metadata.get("meta", "{}")),
            )
        except (KeyError, ValueError) as exc:
            raise CAAError(f"{path} is damaged ({exc}); build the vector again") from exc
        if model is not None:
            vector.check_model(model)
        return vector


def _resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    out = sorted({int(layer) for layer in layers})
    bad = [layer for layer in out if not 0 <= layer < n]
    if bad:
        raise CAAError(f"layers {bad} are out of range: this model has layers 0..{n - 1}")
    return out


def hidden_states_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def build_steering_vector(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int] | None = None,
    placement: Placement = "residual",
    batch_size: int = 8,
    name: str = "",
) -> SteeringVector:
    """Per layer, mean activation at the last answer token of the positive completions minus the negative ones.

    Each text is the chat template with a generation prompt followed by the answer; the activation is read
    at the text's last token (the answer letter for A/B pairs, Yes/No for statements). No steering must be
    active while building (the model's own activations are read).
    """
    if placement not in PLACEMENTS:
        raise CAAError(f"placement={placement!r} is not one of {', '.join(PLACEMENTS)}")
    pairs = list(pairs)
    if not pairs:
        raise CAAError("pairs is empty; pass ContrastPairs (see ab_pairs and statement_pairs)")
    if batch_size < 1:
        raise CAAError(f"batch_size must be at least 1, not {batch_size}")
    layer_list = _resolve_layers(model, layers)
    if not layer_list:
        raise CAAError("layers is empty; pass None for all layers or a list of layer indices")
    rows: list[list[int]] = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, ContrastPair):
            raise CAAError(f"pairs[{i}] is a {type(pair).__name__}, not a ContrastPair")
        if not pair.positive.strip() or not pair.negative.strip():
            raise CAAError(f"pairs[{i}] has an empty answer; both positive and negative need text")
        prompt = tokenizer.apply_chat_template(pair.messages, add_generation_prompt=True, tokenize=False)
        rows += [encode(tokenizer, prompt + pair.positive), encode(tokenizer, prompt + pair.negative)]
    # batch pairs of similar length together (less padding); the means do not depend on the order
    order = sorted(range(len(pairs)), key=lambda i: max(len(rows[2 * i]), len(rows[2 * i + 1])))
    rows = [row for i in order for row in (rows[2 * i], rows[2 * i + 1])]

    modules = decoder_layers(model)
    attention = attention_modules(model)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}

    def residual_hook(layer: int):
        def hook(_module, args, kwargs):
            captured[layer].append(hidden_states_of(args, kwargs)[:, -1].float().cpu())

        return hook

    def attention_hook(layer: int):
        def hook(_module, _args, output):
            out = output[0] if isinstance(output, tuple) else output
            captured[layer].append(out[:, -1].float().cpu())

        return hook

    handles = []
    try:
        for layer in layer_list:
            if placement == "residual":
                handles.append(modules[layer].register_forward_pre_hook(residual_hook(layer), with_kwargs=True))
            else:
                handles.append(attention[layer].register_forward_hook(attention_hook(layer)))
        device = next(model.parameters()).device
        pad = pad_token_id(tokenizer)
        for start in range(0, len(rows), 2 * batch_size):
            model(**left_pad(rows[start : start + 2 * batch_size], pad, device), use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    vectors = {}
    for layer in layer_list:
        acts = torch.cat(captured[layer])  # rows alternate positive, negative
        vectors[layer] = acts[0::2].mean(0) - acts[1::2].mean(0)
    meta = {"pairs": len(pairs), "method": "CAA mean difference at the last answer token"}
    return SteeringVector(vectors, placement, name, model_fingerprint(model), meta)
