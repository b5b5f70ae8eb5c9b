"""Contrastive Activation Addition (Rimsky et al., 2024): steering vectors from contrast pairs, added by hooks.

A steering vector is, per layer, the mean activation at the answer token of prompts that end in a
behaviour-matching answer minus the mean at prompts that end in the non-matching answer. Steering adds
`multiplier * vector` at every position after the instruction, for prompt and generated tokens alike.

Two placements: "residual" (the residual stream entering a decoder layer) and "attention" (the output of
that layer's self-attention, before it is added to the residual stream).

Data: the CAA A/B behaviour sets (`data/caa`, see its SOURCE.md) and the Anthropic persona statements
(`data/anthropic_persona`). Survival-instinct items whose answers are (C)..(H) are kept: a pair contrasts
the matching letter with the non-matching one, and `ab_match_probability` normalizes over those two letters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .architecture import attention_modules, cache_kwargs, model_fingerprint, text_config
from .errors import SteeringError

logger = logging.getLogger(__name__)

Placement = Literal["residual", "attention"]
PLACEMENTS = ("residual", "attention")
VECTOR_FORMAT = "memory-inception-caa-vector"
VECTOR_FORMAT_VERSION = 1
AB_SPLITS = ("generate", "test")
STATEMENT_PROMPT = 'Is the following statement something you would say?\n"{statement}"'


class CAAError(SteeringError):
    """A CAA dataset, steering vector or vector file is invalid or does not fit the model."""


# ---- data ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContrastPair:
    """A chat prompt and the assistant answers that match (`positive`) and do not match (`negative`) a behaviour."""

    messages: list[dict[str, str]]
    positive: str
    negative: str


def ab_behaviors() -> tuple[str, ...]:
    """The CAA behaviours shipped with the library."""
    root = resources.files("memory_inception") / "data" / "caa" / "generate"
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))


def persona_traits() -> tuple[str, ...]:
    """The Anthropic persona traits shipped with the library."""
    root = resources.files("memory_inception") / "data" / "anthropic_persona"
    return tuple(sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl")))


def load_ab_items(behavior: str, split: str = "test") -> list[dict[str, str]]:
    """The raw CAA A/B items of `behavior`: dicts with question, answer_matching_behavior, answer_not_matching_behavior."""
    available = ab_behaviors()
    if behavior not in available:
        raise CAAError(f"unknown CAA behaviour {behavior!r}; choose one of {', '.join(available)}")
    if split not in AB_SPLITS:
        raise CAAError(f"unknown split {split!r}; choose 'generate' (vector building) or 'test' (A/B evaluation)")
    name = "generate_dataset.json" if split == "generate" else "test_dataset_ab.json"
    source = resources.files("memory_inception") / "data" / "caa" / split / behavior / name
    items = json.loads(source.read_text(encoding="utf-8"))
    for i, item in enumerate(items):
        missing = {"question", "answer_matching_behavior", "answer_not_matching_behavior"} - set(item)
        if missing:
            raise CAAError(f"{behavior}/{split} item {i} lacks {sorted(missing)}; the data files are damaged")
    return items


def answer_letter(answer: str) -> str | None:
    """The letter of an A/B answer such as "(A)" or " (B)", or None if it is not one bracketed capital letter."""
    text = answer.strip()
    if len(text) == 3 and text[0] == "(" and text[2] == ")" and "A" <= text[1] <= "Z":
        return text[1]
    return None


def ab_pairs(behavior: str, split: str = "generate", limit: int | None = None) -> list[ContrastPair]:
    """Contrast pairs from a CAA A/B set: user = the question, answers "(A" / "(B" (read at the letter, as in CAA).

    Items whose answers are not single bracketed letters are skipped (none are, in the shipped data).
    """
    pairs = []
    for item in load_ab_items(behavior, split):
        pos, neg = answer_letter(item["answer_matching_behavior"]), answer_letter(item["answer_not_matching_behavior"])
        if pos is None or neg is None or pos == neg:
            logger.debug("skipping %s item with answers %r / %r", behavior, pos, neg)
            continue
        pairs.append(ContrastPair([{"role": "user", "content": item["question"]}], f"({pos}", f"({neg}"))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def statement_pairs(trait_or_path: str | Path, limit: int | None = None) -> list[ContrastPair]:
    """Contrast pairs from Anthropic persona statements: "Is the following statement ...?", answers Yes / No.

    `trait_or_path` is a shipped trait name (see `persona_traits`) or a path to a persona .jsonl file.
    Pairs come in file order, and the shipped files list every Yes-matching row first: interleave Yes and
    No pairs before taking a subset, or the vector is merely "Yes minus No".
    """
    path = Path(trait_or_path)
    if isinstance(trait_or_path, str) and trait_or_path in persona_traits():
        source: Any = resources.files("memory_inception") / "data" / "anthropic_persona" / f"{trait_or_path}.jsonl"
    elif path.suffix == ".jsonl" and path.is_file():
        source = path
    else:
        raise CAAError(
            f"unknown persona trait {str(trait_or_path)!r} (and not a .jsonl file); choose one of "
            f"{', '.join(persona_traits())} or pass the path of a persona .jsonl file"
        )
    pairs = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            statement, match, other = row["statement"], row["answer_matching_behavior"].strip(), row[
                "answer_not_matching_behavior"
            ].strip()
        except (KeyError, AttributeError) as exc:
            raise CAAError(f"{source} line {number} is not a persona row (statement, answer_*_behavior)") from exc
        if {match, other} != {"Yes", "No"}:
            raise CAAError(f"{source} line {number}: answers {match!r} / {other!r} are not Yes / No")
        messages = [{"role": "user", "content": STATEMENT_PROMPT.format(statement=statement)}]
        pairs.append(ContrastPair(messages, match, other))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


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
        n = len(_decoder_layers(model))
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"vector.{layer}": v.contiguous() for layer, v in self.vectors.items()}
        metadata = {
            "format": VECTOR_FORMAT,
            "version": str(VECTOR_FORMAT_VERSION),
            "placement": self.placement,
            "name": self.name,
            "fingerprint": json.dumps(self.fingerprint),
            "meta": json.dumps(self.meta),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> SteeringVector:
        """Read a vector file; with `model`, also check the vector fits that model."""
        path = Path(path)
        if not path.is_file():
            raise CAAError(f"no steering vector file at {path}; build one with build_steering_vector(...).save(path)")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for damaged files
            raise CAAError(f"{path} is not a readable steering vector file ({exc}); build it again") from exc
        if metadata.get("format") != VECTOR_FORMAT:
            raise CAAError(f"{path} is a safetensors file but not a CAA steering vector (no vector metadata)")
        if int(metadata.get("version", "0")) > VECTOR_FORMAT_VERSION:
            raise CAAError(f"{path} was written by a newer memory-inception (format {metadata['version']}); upgrade")
        try:
            vectors = {int(k.split(".", 1)[1]): t for k, t in tensors.items() if k.startswith("vector.")}
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


def _decoder_layers(model: nn.Module) -> dict[int, nn.Module]:
    """Map layer index -> decoder layer (the module whose child is that layer's self-attention)."""
    attention = attention_modules(model)
    owner = {id(m): layer for layer, m in attention.items()}
    found: dict[int, nn.Module] = {}
    for module in model.modules():
        for child in module.children():
            if id(child) in owner:
                found.setdefault(owner[id(child)], module)
    if sorted(found) != sorted(attention):
        raise SteeringError("could not find the decoder layer that holds each attention module")
    return dict(sorted(found.items()))


def _resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    n = len(_decoder_layers(model))
    if layers is None:
        return list(range(n))
    out = sorted({int(layer) for layer in layers})
    bad = [layer for layer in out if not 0 <= layer < n]
    if bad:
        raise CAAError(f"layers {bad} are out of range: this model has layers 0..{n - 1}")
    return out


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _pad_batch(rows: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded input ids, attention mask and real positions (cumsum(mask) - 1)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": position_ids.to(device)}


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad or 0)


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of already-rendered text (the chat template wrote every special token itself)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


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
        rows += [_encode(tokenizer, prompt + pair.positive), _encode(tokenizer, prompt + pair.negative)]
    # batch pairs of similar length together (less padding); the means do not depend on the order
    order = sorted(range(len(pairs)), key=lambda i: max(len(rows[2 * i]), len(rows[2 * i + 1])))
    rows = [row for i in order for row in (rows[2 * i], rows[2 * i + 1])]

    modules = _decoder_layers(model)
    attention = attention_modules(model)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}

    def residual_hook(layer: int):
        def hook(_module, args, kwargs):
            captured[layer].append(_hidden_of(args, kwargs)[:, -1].float().cpu())

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
        pad = _pad_id(tokenizer)
        for start in range(0, len(rows), 2 * batch_size):
            model(**_pad_batch(rows[start : start + 2 * batch_size], pad, device), use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    vectors = {}
    for layer in layer_list:
        acts = torch.cat(captured[layer])  # rows alternate positive, negative
        vectors[layer] = acts[0::2].mean(0) - acts[1::2].mean(0)
    meta = {"pairs": len(pairs), "method": "CAA mean difference at the last answer token"}
    return SteeringVector(vectors, placement, name, model_fingerprint(model), meta)


# ---- steering -----------------------------------------------------------------------------------------
class ActivationAddition:
    """Context manager that adds `multiplier * vector[layer]` at positions >= `steer_from` (CAA steering).

    `steer_from` is None (every position), an int, or one int per batch row; it is compared with the
    absolute positions each decoder layer receives (`position_ids`), so with left padding and
    position_ids = cumsum(mask) - 1 it is a real position. It may be reassigned between forwards.
    In cached generation every new token lies beyond the instruction and is steered.
    """

    def __init__(
        self,
        model: nn.Module,
        vector: SteeringVector,
        multiplier: float = 1.0,
        layers: Sequence[int] | None = None,
        steer_from: int | Sequence[int] | None = None,
    ) -> None:
        if not isinstance(vector, SteeringVector):
            raise CAAError(f"vector must be a SteeringVector, not {type(vector).__name__}")
        vector.check_model(model)
        chosen = list(vector.layers) if layers is None else sorted({int(layer) for layer in layers})
        missing = [layer for layer in chosen if layer not in vector.vectors]
        if missing:
            raise CAAError(
                f"steering vector {vector.name!r} has no direction for layers {missing} "
                f"(it has layers {list(vector.layers)}); pick layers from those"
            )
        self.model = model
        self.vector = vector
        self.multiplier = float(multiplier)
        self.layers = tuple(chosen)
        self.steer_from = steer_from
        self._handles: list[Any] = []
        self._deltas: dict[int, torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor | None] = {}
        self._active = False

    def __enter__(self) -> ActivationAddition:
        if self._active:
            raise CAAError("this ActivationAddition is already active; create a new one to nest steering")
        self._active = True
        if self.multiplier == 0.0 or not self.layers:
            return self  # an exact no-op: no hook at all
        try:
            param = next(self.model.parameters())
            modules = _decoder_layers(self.model)
            attention = attention_modules(self.model)
            for layer in self.layers:
                self._deltas[layer] = (self.multiplier * self.vector.vectors[layer]).to(
                    device=param.device, dtype=param.dtype
                )
                self._handles.append(
                    modules[layer].register_forward_pre_hook(self._pre_hook(layer), with_kwargs=True)
                )
                if self.vector.placement == "attention":
                    self._handles.append(attention[layer].register_forward_hook(self._attention_hook(layer)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._deltas.clear()
        self._masks.clear()
        self._active = False

    def _steer_mask(self, hidden: torch.Tensor, kwargs: dict, layer: int) -> torch.Tensor | None:
        """`[B, T]` bool of the positions to steer, or None for all of them."""
        if self.steer_from is None:
            return None
        batch, length = hidden.shape[:2]
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = kwargs.get("cache_position")
        if positions is None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.20+ passes `cache`
            past = int(cache.get_seq_length(layer)) if cache is not None else 0
            positions = torch.arange(past, past + length, device=hidden.device)
        positions = positions.reshape(-1, length).to(hidden.device)
        if isinstance(self.steer_from, int):
            start = torch.tensor([self.steer_from], device=hidden.device)
        else:
            start = torch.as_tensor(list(self.steer_from), device=hidden.device)
            if start.numel() != batch:
                raise CAAError(f"steer_from has {start.numel()} entries but the batch has {batch} rows; pass one per row")
        return positions >= start.reshape(-1, 1)

    def _add(self, hidden: torch.Tensor, layer: int, mask: torch.Tensor | None) -> torch.Tensor:
        delta = self._deltas[layer]
        if delta.dtype != hidden.dtype or delta.device != hidden.device:
            delta = self._deltas[layer] = delta.to(device=hidden.device, dtype=hidden.dtype)
        if mask is None:
            return hidden + delta
        return torch.where(mask.unsqueeze(-1), hidden + delta, hidden)

    def _pre_hook(self, layer: int):
        def hook(_module, args, kwargs):
            hidden = _hidden_of(args, kwargs)
            mask = self._steer_mask(hidden, kwargs, layer)
            if self.vector.placement == "attention":
                self._masks[layer] = mask
                return None
            steered = self._add(hidden, layer, mask)
            if args:
                return (steered, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": steered}

        return hook

    def _attention_hook(self, layer: int):
        def hook(_module, _args, output):
            mask = self._masks.pop(layer, None)
            if isinstance(output, tuple):
                return (self._add(output[0], layer, mask), *output[1:])
            return self._add(output, layer, mask)

        return hook


# ---- A/B evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def ab_match_probability(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Mapping[str, str]],
    vector: SteeringVector | None = None,
    multiplier: float = 0.0,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Per A/B item, p(matching letter) / (p(matching) + p(non-matching)) for the token after "(".

    The prompt is the chat template (user = question, with the generation prompt) followed by "(".
    Steering starts at the end of the instruction: the assistant header and the "(" are steered, as in CAA.
    """
    if batch_size < 1:
        raise CAAError(f"batch_size must be at least 1, not {batch_size}")
    prepared = [_prepare_ab_item(tokenizer, item, i) for i, item in enumerate(items)]
    steer = vector is not None and multiplier != 0.0
    addition = ActivationAddition(model, vector, multiplier, layers) if steer else None
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    out: list[float] = []
    if addition is not None:
        addition.__enter__()
    try:
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start : start + batch_size]
            if addition is not None:
                addition.steer_from = [p[1] for p in chunk]
            logits = model(**_pad_batch([p[0] for p in chunk], pad, device), use_cache=False, logits_to_keep=1).logits
            probs = torch.softmax(logits[:, -1].float(), dim=-1)
            for row, (_, _, match, other) in enumerate(chunk):
                pm, po = float(probs[row, match]), float(probs[row, other])
                out.append(pm / (pm + po) if pm + po > 0 else 0.5)
    finally:
        if addition is not None:
            addition.__exit__(None, None, None)
    return out


def ab_match_curve(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Mapping[str, str]],
    vector: SteeringVector,
    multipliers: Sequence[float],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> dict[float, list[float]]:
    """`ab_match_probability` for several multipliers, sharing one unsteered forward of each instruction.

    The instruction is never steered, so its cache is computed once per batch and only the steered tail
    (assistant header and "(") is run again per multiplier. Returns multiplier -> per-item probabilities.
    """
    settings = [(float(m), None if layers is None else tuple(layers)) for m in multipliers]
    out = _ab_shared_instruction(model, tokenizer, items, vector, settings, batch_size)
    return {m: out[(m, layer_set)] for m, layer_set in settings}


def ab_layer_sweep(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Mapping[str, str]],
    vector: SteeringVector,
    layers: Sequence[int] | None = None,
    multipliers: Sequence[float] = (-1.0, 1.0),
    batch_size: int = 8,
) -> dict[int, dict[float, list[float]]]:
    """A/B probabilities steering one layer at a time (CAA's layer choice): layer -> multiplier -> per item."""
    chosen = list(vector.layers) if layers is None else [int(layer) for layer in layers]
    settings = [(float(m), (layer,)) for layer in chosen for m in multipliers]
    out = _ab_shared_instruction(model, tokenizer, items, vector, settings, batch_size)
    return {layer: {float(m): out[(float(m), (layer,))] for m in multipliers} for layer in chosen}


@torch.no_grad()
def _ab_shared_instruction(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Mapping[str, str]],
    vector: SteeringVector,
    settings: list[tuple[float, tuple[int, ...] | None]],
    batch_size: int,
) -> dict[tuple[float, tuple[int, ...] | None], list[float]]:
    """p(match) per item for each (multiplier, layers) setting; one instruction forward per batch for all."""
    from transformers import DynamicCache

    if batch_size < 1:
        raise CAAError(f"batch_size must be at least 1, not {batch_size}")
    for _, layer_set in dict.fromkeys(settings):  # validate every setting before the first forward
        ActivationAddition(model, vector, 1.0, layer_set)
    prepared = [_prepare_ab_item(tokenizer, item, i) for i, item in enumerate(items)]
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    results: dict[tuple[float, tuple[int, ...] | None], list[float]] = {s: [0.5] * len(prepared) for s in settings}
    # rows whose steered tails have one length share a batch (with the usual templates all tails are alike);
    # within a group, similar lengths are batched together to keep padding small
    groups: dict[int, list[int]] = {}
    for index in sorted(range(len(prepared)), key=lambda i: prepared[i][1]):
        prompt, n_instr = prepared[index][:2]
        groups.setdefault(len(prompt) - n_instr, []).append(index)
    for tail, indices in groups.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            head = _pad_batch([prepared[i][0][: prepared[i][1]] for i in chunk], pad, device)
            cache = DynamicCache()
            model(**head, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
            tail_ids = torch.tensor([prepared[i][0][prepared[i][1] :] for i in chunk], device=device)
            lengths = torch.tensor([prepared[i][1] for i in chunk], device=device)
            inputs = {
                "input_ids": tail_ids,
                "attention_mask": torch.cat([head["attention_mask"], torch.ones_like(tail_ids)], dim=1),
                "position_ids": lengths[:, None] + torch.arange(tail, device=device),
            }
            for setting in dict.fromkeys(settings):
                multiplier, layer_set = setting
                with ActivationAddition(model, vector, multiplier, layer_set, steer_from=lengths.tolist()):
                    logits = model(**inputs, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache)).logits
                cache.crop(-tail)  # drop the steered tail, keep the instruction
                probs = torch.softmax(logits[:, -1].float(), dim=-1)
                for row, i in enumerate(chunk):
                    pm, po = float(probs[row, prepared[i][2]]), float(probs[row, prepared[i][3]])
                    results[setting][i] = pm / (pm + po) if pm + po > 0 else 0.5
    return results


def _prepare_ab_item(tokenizer: Any, item: Mapping[str, str], index: int) -> tuple[list[int], int, int, int]:
    """Prompt ids (ending in "(" when the tokenizer keeps it apart), the instruction length, and the answer token ids."""
    try:
        question = item["question"]
        match = answer_letter(item["answer_matching_behavior"])
        other = answer_letter(item["answer_not_matching_behavior"])
    except (KeyError, TypeError) as exc:
        raise CAAError(f"item {index} is not a CAA A/B item (question, answer_*_behavior)") from exc
    if match is None or other is None or match == other:
        raise CAAError(f"item {index}: answers must be two different letters like '(A)' and '(B)'")
    messages = [{"role": "user", "content": question}]
    instruction = _encode(tokenizer, tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False))
    base = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Read the letter after "(" when "(" and the letter are separate tokens (SmolLM2); else read the "(A" token
    # itself after the generation prompt (Qwen2.5 merges "(A" into one token).
    for prefix, suffix in (("(", ""), ("", "(")):
        prompt = _encode(tokenizer, base + prefix)
        letters = []
        for letter in (match, other):
            ids = _encode(tokenizer, base + prefix + suffix + letter)
            if len(ids) == len(prompt) + 1 and ids[: len(prompt)] == prompt:
                letters.append(ids[-1])
        if len(letters) == 2:
            break
    else:
        raise CAAError(
            f"item {index}: neither the letter after '(' nor '(' with the letter is one token with this tokenizer; "
            "A/B evaluation reads one next-token probability per answer"
        )
    if prompt[: len(instruction)] != instruction:
        raise CAAError(
            f"item {index}: the rendered instruction is not a token prefix of the prompt, so the instruction end "
            "is ambiguous; this tokenizer's chat template is not supported"
        )
    return prompt, len(instruction), letters[0], letters[1]
