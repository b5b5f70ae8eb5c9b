"""Banks: key/value slots built from text (spec section 1), saved as safetensors with metadata."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from memory_inception.core.architecture import (
    ModelGeometry,
    attention_modules,
    cache_kwargs,
    geometry,
    inverse_tables,
    is_steered,
    model_fingerprint,
    rotary_embedding,
    undo_rope,
)
from memory_inception.core.artifacts import (
    ArtifactKind,
    by_layer,
    read_artifact,
    write_artifact,
)
from memory_inception.core.quantize import (
    Quantization,
    QuantizedTensor,
    parse_quantization,
    quantize_tensor,
    stored,
    stored_nbytes,
)
from memory_inception.core.sites import Sites
from memory_inception.errors import BankError

logger = logging.getLogger(__name__)

# format 3: quantized banks (int8 / int4 values with their scales, `quantization` metadata); 2: kv_heads; 1: every
# KV head of every layer. Older formats are still read.
BANK_FILE = ArtifactKind(
    format="memory-inception-bank", version=3, what="bank", title="memory-inception bank", error=BankError,
    rebuild="build one with `mi bank build TEXT -o FILE` (or mi.build_bank(...).save(FILE))",
)

Variants = Literal["full", "lines"]
Keep = Literal["descriptor", "all"]
Pooling = Literal["concat", "mean"]


@dataclass
class Bank:
    """Per layer, pre-RoPE keys and values `[H_stored, M, d]` built from one text (or token ids) by one model.

    `kv_heads` names, for the layers that keep fewer than all KV heads, which ones they keep (a bank built for
    sites stores only the layers and KV groups the site heads read); other layers keep every KV head. A quantized
    bank (`quantize`) stores `QuantizedTensor`s and dequantizes what is read (`keys`, `values`, `kv_rows`).
    """

    name: str
    text: str | None
    token_ids: tuple[int, ...]
    fingerprint: str
    num_kv_heads: int
    head_dim: int
    options: dict[str, Any] = field(default_factory=dict)
    kv_heads: dict[int, tuple[int, ...]] = field(default_factory=dict)
    _keys: dict[int, torch.Tensor | QuantizedTensor] = field(default_factory=dict, repr=False)
    _values: dict[int, torch.Tensor | QuantizedTensor] = field(default_factory=dict, repr=False)
    # what readers built from this bank keep with it (memory banks' search indexes, core.memory), never saved
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    # ---- access -------------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        """The decoder layers this bank has slots for, ascending."""
        return tuple(sorted(self._keys))

    @property
    def num_slots(self) -> int:
        """M: slots per layer (the same at every layer)."""
        return next(iter(self._keys.values())).shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of all stored keys and values (spec section 7); quantized: the values plus their scales."""
        return sum(stored_nbytes(t) for t in (*self._keys.values(), *self._values.values()))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype keys and values are read in (a quantized bank's dtype before quantization)."""
        return next(iter(self._keys.values())).dtype

    @property
    def quantization(self) -> Quantization | None:
        """How the slots are stored: None (in `dtype`) or a `Quantization` (int8 / int4 with their scales)."""
        return parse_quantization(self.options.get("quantization"))

    def keys(self, layer: int) -> torch.Tensor:
        """Pre-RoPE keys `[H_stored, M, d]` of `layer` (its stored KV heads, `stored_kv_heads(layer)`)."""
        return stored(self._keys[self._check_layer(layer)])

    def values(self, layer: int) -> torch.Tensor:
        """Values `[H_stored, M, d]` of `layer`."""
        return stored(self._values[self._check_layer(layer)])

    def stored_kv_heads(self, layer: int) -> tuple[int, ...]:
        """The model's KV heads whose slots `layer` keeps, in storage order."""
        self._check_layer(layer)
        return self.kv_heads.get(layer, tuple(range(self.num_kv_heads)))

    def kv_rows(self, layer: int, kv_heads: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[len(kv_heads), M, d]` of `layer` for these model KV heads (in this order)."""
        keys, values = self._rows(layer, kv_heads)
        return stored(keys), stored(values)

    def _rows(
        self, layer: int, kv_heads: Sequence[int]
    ) -> tuple[torch.Tensor | QuantizedTensor, torch.Tensor | QuantizedTensor]:
        """The stored (possibly quantized) keys and values of `layer` for these model KV heads."""
        kept = self.stored_kv_heads(layer)
        if len(kept) == self.num_kv_heads and list(kv_heads) == list(kept):
            return self._keys[layer], self._values[layer]
        where = {h: i for i, h in enumerate(kept)}
        missing = sorted({int(h) for h in kv_heads} - set(where))
        if missing:
            raise BankError(
                f"bank {self.name!r} keeps KV heads {list(kept)} at layer {layer}, but the sites read KV heads "
                f"{missing} too; build the bank for these sites (build_bank(..., sites=...)) or with every head"
            )
        index = torch.tensor([where[int(h)] for h in kv_heads], dtype=torch.long)
        keys, values = self._keys[layer], self._values[layer]
        if isinstance(keys, QuantizedTensor):
            return keys.rows(index), values.rows(index)  # type: ignore[union-attr]
        return keys[index], values[index]

    def restrict(self, layers: Sequence[int] | None = None, kv_heads: dict[int, Sequence[int]] | None = None) -> Bank:
        """A bank keeping only `layers` (default: all its layers) and, per layer in `kv_heads`, only those KV heads.

        Nothing is recomputed: the kept slots are the same tensors' rows, so steering at sites inside the
        restriction is unchanged.
        """
        chosen = list(self.layers) if layers is None else sorted({int(layer) for layer in layers})
        for layer in chosen:
            self._check_layer(layer)
        keys, values, heads = {}, {}, {}
        for layer in chosen:
            wanted = (kv_heads or {}).get(layer)
            if wanted is None:
                keys[layer], values[layer] = self._keys[layer], self._values[layer]
                if layer in self.kv_heads:
                    heads[layer] = self.kv_heads[layer]
                continue
            wanted = tuple(sorted({int(h) for h in wanted}))
            k, v = self._rows(layer, wanted)
            keys[layer], values[layer] = (t if isinstance(t, QuantizedTensor) else t.contiguous() for t in (k, v))
            if len(wanted) < self.num_kv_heads:
                heads[layer] = wanted
        return Bank(self.name, self.text, self.token_ids, self.fingerprint, self.num_kv_heads, self.head_dim,
                    dict(self.options), heads, keys, values)

    def quantize(self, spec: str | Quantization) -> Bank:
        """This bank stored quantized: 'int8' / 'int4' (keys and values scaled per slot and KV head), or
        'int8-channel' / 'int4-channel' (keys scaled per channel), or a `Quantization`. A quantized bank is first
        dequantized (quantizing twice loses more than once: quantize the original where you have it)."""
        q = parse_quantization(spec)
        if q is None:
            raise BankError("quantize needs a quantization ('int8', 'int4', 'int8-channel' or 'int4-channel')")
        source = self.dequantize() if self.quantization is not None else self
        keys = {layer: quantize_tensor(t, q.bits, q.key_scales) for layer, t in source._keys.items()}  # type: ignore[arg-type]
        values = {layer: quantize_tensor(t, q.bits, "slot") for layer, t in source._values.items()}  # type: ignore[arg-type]
        options = {**self.options, "quantization": q.name}
        return Bank(self.name, self.text, self.token_ids, self.fingerprint, self.num_kv_heads, self.head_dim,
                    options, dict(self.kv_heads), keys, values)

    def dequantize(self) -> Bank:
        """This bank with its slots as plain tensors of `dtype` (itself when it is not quantized)."""
        if self.quantization is None:
            return self
        options = {k: v for k, v in self.options.items() if k != "quantization"}
        return Bank(self.name, self.text, self.token_ids, self.fingerprint, self.num_kv_heads, self.head_dim, options,
                    dict(self.kv_heads), {l: stored(t) for l, t in self._keys.items()},
                    {l: stored(t) for l, t in self._values.items()})

    def for_sites(self, sites: Sites, geo: ModelGeometry) -> Bank:
        """This bank restricted to what `sites` read: their layers and, per layer, the KV groups of their heads."""
        heads = sites.resolve(geo)
        return self.restrict(list(heads), {layer: sorted({geo.kv_head_of(h) for h in hs}) for layer, hs in heads.items()})

    def _check_layer(self, layer: int) -> int:
        if layer not in self._keys:
            raise BankError(
                f"bank {self.name!r} has no slots for layer {layer} (it has layers {list(self.layers)}); build the "
                "bank for the sites you use (build_bank(..., sites=...)), with those layers, or with layers='all'"
            )
        return layer

    def check_model(self, model: nn.Module, fingerprint: str | None = None) -> None:
        """Raise unless this bank was built by `model` (same geometry and weights).

        Pass the model's `fingerprint` when checking several banks, so it is hashed once.
        """
        fp = fingerprint or model_fingerprint(model)
        if fp != self.fingerprint:
            raise BankError(
                f"bank {self.name!r} was built by another model (bank fingerprint {self.fingerprint}, "
                f"this model {fp}); rebuild the bank with this model (mi.build_bank or `mi bank build`)"
            )

    def __repr__(self) -> str:
        quantized = f", quantization={self.quantization.name!r}" if self.quantization is not None else ""
        return (
            f"Bank(name={self.name!r}, slots={self.num_slots}, layers={len(self.layers)}, "
            f"kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, nbytes={self.nbytes}{quantized})"
        )

    # ---- files ----------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the bank as one safetensors file with its metadata; returns the path."""
        tensors: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            for kind, t in (("keys", self._keys[layer]), ("values", self._values[layer])):
                if isinstance(t, QuantizedTensor):
                    tensors[f"{kind}.{layer}"], tensors[f"{kind}_scales.{layer}"] = t.data, t.scale
                else:
                    tensors[f"{kind}.{layer}"] = t
        metadata = {
            "name": self.name,
            "text": json.dumps(self.text),
            "token_ids": json.dumps(list(self.token_ids)),
            "fingerprint": self.fingerprint,
            "num_kv_heads": str(self.num_kv_heads),
            "head_dim": str(self.head_dim),
            "options": json.dumps(self.options),
            "kv_heads": json.dumps({str(layer): list(heads) for layer, heads in self.kv_heads.items()}),
        }
        if self.quantization is not None:
            metadata["quantization"] = json.dumps(
                {**self.quantization.to_json(), "dtype": str(self.dtype).removeprefix("torch.")}
            )
        return write_artifact(path, BANK_FILE, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Bank:
        """Read a bank file; with `model`, also check it was built by that model."""
        tensors, metadata = read_artifact(path, BANK_FILE)
        keys, values = by_layer(tensors, "keys"), by_layer(tensors, "values")
        if not keys or keys.keys() != values.keys():
            raise BankError(f"{path} is damaged: keys and values do not cover the same layers")
        options = json.loads(metadata["options"])
        if "quantization" in metadata:  # format 3: quantized values with their scales
            keys, values = _read_quantized(path, tensors, metadata, keys, values)
        bank = cls(
            name=metadata["name"],
            text=json.loads(metadata["text"]),
            token_ids=tuple(json.loads(metadata["token_ids"])),
            fingerprint=metadata["fingerprint"],
            num_kv_heads=int(metadata["num_kv_heads"]),
            head_dim=int(metadata["head_dim"]),
            options=options,
            kv_heads={int(k): tuple(v) for k, v in json.loads(metadata.get("kv_heads", "{}")).items()},
            _keys=keys,
            _values=values,
        )
        if model is not None:
            bank.check_model(model)
        return bank

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_token_ids(
        cls,
        model: nn.Module,
        token_ids: Sequence[int] | torch.Tensor,
        *,
        layers: Sequence[int] | None = None,
        name: str | None = None,
    ) -> Bank:
        """A bank of exactly these tokens at positions 0..M-1: no template, every token kept."""
        ids = [int(t) for t in (token_ids.flatten().tolist() if isinstance(token_ids, torch.Tensor) else token_ids)]
        if not ids:
            raise BankError("token_ids is empty; a bank needs at least one token")
        layer_list = resolve_layers(model, layers)
        keys, values = run_and_read(model, ids, layer_list)
        return cls._assemble(
            model, name or "tokens", None, ids, [(keys, values)], layer_list, "concat",
            {"source": "token_ids", "pooling": "concat", "keep": "all"},
        )

    @classmethod
    def _assemble(
        cls,
        model: nn.Module,
        name: str,
        text: str | None,
        token_ids: list[int],
        parts: list[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]],
        layers: list[int],
        pooling: str,
        options: dict[str, Any],
    ) -> Bank:
        geo = geometry(model)
        keys: dict[int, torch.Tensor] = {}
        values: dict[int, torch.Tensor] = {}
        for layer in layers:
            ks = [p[0][layer] for p in parts]
            vs = [p[1][layer] for p in parts]
            if pooling == "mean":
                ks = [k.mean(dim=1, keepdim=True) for k in ks]
                vs = [v.mean(dim=1, keepdim=True) for v in vs]
            keys[layer] = torch.cat(ks, dim=1).contiguous()
            values[layer] = torch.cat(vs, dim=1).contiguous()
        return cls(
            name=name,
            text=text,
            token_ids=tuple(token_ids),
            fingerprint=model_fingerprint(model),
            num_kv_heads=geo.num_kv_heads,
            head_dim=geo.head_dim,
            options=options,
            _keys=keys,
            _values=values,
        )


def _read_quantized(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
    keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor],
) -> tuple[dict[int, torch.Tensor | QuantizedTensor], dict[int, torch.Tensor | QuantizedTensor]]:
    """A quantized file's keys and values as `QuantizedTensor`s (their scales are `keys_scales.L` / `values_scales.L`)."""
    info = json.loads(metadata["quantization"])
    q = Quantization.from_json(info)
    dtype = getattr(torch, info.get("dtype", "float32"))
    head_dim = int(metadata["head_dim"])
    out: list[dict[int, torch.Tensor | QuantizedTensor]] = []
    for kind, data in (("keys", keys), ("values", values)):
        scales = by_layer(tensors, f"{kind}_scales")
        if scales.keys() != data.keys():
            raise BankError(f"{path} is damaged: the {kind} scales do not cover the same layers as the {kind}")
        out.append({layer: QuantizedTensor(t, scales[layer], q.bits, head_dim, dtype) for layer, t in data.items()})
    return out[0], out[1]


def build_bank(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    *,
    layers: Sequence[int] | Literal["all"] | None = None,
    sites: Sites | None = None,
    name: str | None = None,
    templates: Sequence[str] = ("{descriptor}",),
    variants: Variants = "full",
    keep: Keep = "descriptor",
    pooling: Pooling = "concat",
    chat_template: bool = True,
    quantize: str | Quantization | None = None,
) -> Bank:
    """Build a bank from `text` (spec section 1): one unsteered forward per (variant, template) pair.

    What it stores: with `sites`, only the layers and KV groups those sites read; with `layers`, every KV head of
    those layers ("all": every layer); with neither, the model's default sites (`core.defaults`). `quantize`
    ('int8', 'int4', 'int8-channel', 'int4-channel') stores the slots quantized (`Bank.quantize`).
    """
    quantization = parse_quantization(quantize)
    if not isinstance(text, str) or not text.strip():
        raise BankError("the bank text is empty; pass the guidance text (a persona, reminder, fact or checklist)")
    if variants not in ("full", "lines"):
        raise BankError(f"variants must be 'full' or 'lines', not {variants!r}")
    if keep not in ("descriptor", "all"):
        raise BankError(f"keep must be 'descriptor' or 'all', not {keep!r}")
    if pooling not in ("concat", "mean"):
        raise BankError(f"pooling must be 'concat' or 'mean', not {pooling!r}")
    templates = tuple(templates)
    if not templates:
        raise BankError("templates is empty; the default is ('{descriptor}',)")
    for t in templates:
        if "{descriptor}" not in t:
            raise BankError(f"template {t!r} has no '{{descriptor}}' placeholder")
    use_chat = bool(chat_template and getattr(tokenizer, "chat_template", None))
    texts = [text]
    if variants == "lines":
        texts += [line for line in text.splitlines() if line.strip() and line != text]
    if sites is not None and layers is not None:
        raise BankError("give either sites (the bank keeps what they read) or layers, not both")
    if sites is None and layers is None:
        sites = Sites.default(model)
    layer_list = resolve_layers(model, list(sites.layers) if sites is not None else layers)

    parts = []
    kept_ids: list[int] = []
    for variant in texts:
        for template in templates:
            ids, kept = _render(tokenizer, template, variant, use_chat, keep)
            if not kept:
                raise BankError(
                    f"no token of the text survived rendering with template {template!r}; "
                    "check the template, or use keep='all'"
                )
            keys, values = run_and_read(model, ids, layer_list)
            index = torch.tensor(kept)
            parts.append(
                ({l: k[:, index] for l, k in keys.items()}, {l: v[:, index] for l, v in values.items()})
            )
            kept_ids += [ids[i] for i in kept]
    options = {
        "source": "text",
        "templates": list(templates),
        "variants": variants,
        "keep": keep,
        "pooling": pooling,
        "chat_template": use_chat,
    }
    bank = Bank._assemble(model, name or _default_name(text), text, kept_ids, parts, layer_list, pooling, options)
    bank = bank.for_sites(sites, geometry(model)) if sites is not None else bank
    return bank.quantize(quantization) if quantization is not None else bank


def _default_name(text: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return "-".join(words[:4]) or "bank"


def resolve_layers(model: nn.Module, layers: Sequence[int] | Literal["all"] | None) -> list[int]:
    n = geometry(model).num_layers
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(n))
    out = sorted({int(layer) for layer in layers})
    if not out:
        raise BankError("layers is empty; pass None for all layers or a list of layer indices")
    bad = [layer for layer in out if not 0 <= layer < n]
    if bad:
        raise BankError(f"bank layers {bad} are out of range: this model has layers 0..{n - 1}")
    return out


def _render(tokenizer: Any, template: str, descriptor: str, use_chat: bool, keep: str) -> tuple[list[int], list[int]]:
    """Token ids of the rendered text and the indices of the kept tokens."""
    start = template.index("{descriptor}")
    filled = template.replace("{descriptor}", descriptor, 1)
    if use_chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": filled}], tokenize=False, add_generation_prompt=False
        )
        pos = rendered.find(filled)
        if pos < 0:
            raise BankError("the chat template changed the text (for example stripped it); pass chat_template=False")
        special = False
    else:
        rendered, pos, special = filled, 0, True
    span = (pos + start, pos + start + len(descriptor))
    enc = tokenizer(rendered, add_special_tokens=special, return_offsets_mapping=keep == "descriptor")
    ids = list(enc["input_ids"])
    if keep == "all":
        return ids, list(range(len(ids)))
    kept = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < span[1] and e > span[0]]
    return ids, kept


@torch.no_grad()
def run_and_read(
    model: nn.Module, ids: list[int], layers: list[int]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """One unsteered forward; per layer the cache's keys with RoPE undone, `[H_kv, T, d]`, and values."""
    from transformers import DynamicCache

    if is_steered(model):
        raise BankError("banks must be built from the unsteered model: build them outside `mi.inject(...)`")
    attention_modules(model)  # fails early, with a clear message, on unsupported architectures
    device = next(model.parameters()).device
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    rotary = rotary_embedding(model)
    hook = rotary.register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        cache = DynamicCache()
        # logits_to_keep=1: the output projection runs on one position (its logits are not read)
        model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1,
              **cache_kwargs(model, cache))
    finally:
        hook.remove()
    cos, sin = inverse_tables(rotary, *captured[-1])
    keys, values = {}, {}
    for layer in layers:
        k = cache.layers[layer].keys[0]
        if k.shape[1] != len(ids):
            raise BankError(f"layer {layer}'s cache holds {k.shape[1]} of {len(ids)} tokens (sliding window?)")
        keys[layer] = undo_rope(k, cos[0].to(k.dtype), sin[0].to(k.dtype))
        values[layer] = cache.layers[layer].values[0]
    return keys, values
