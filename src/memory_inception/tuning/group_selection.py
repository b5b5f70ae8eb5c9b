"""KV-group site selection from several contrast pairs at once, by measured effect.

The unit is a KV group of one layer: every query head that reads one KV head (on a GQA model the heads of a
group share the bank's keys and values, so a group costs as much storage as one of its heads). Each unit is
scored by what it does: the bank of each pair's target is read at that unit alone, and the reply contrast of
the target text against the pair's reference text (`tuning.objective`) is measured. A pair's scores are
standardized over the units (so a pair with large effects does not outvote the others); a unit's score is
the mean over pairs. The selection keeps the best `num_groups` units with a positive score.

`compare_sites` is the generalization check: on pairs the selection did not use, the contrast of the selected
sites beside other site sets (the default band, random groups of the same count).

Compared with the attention-statistics selector (`tuning.selection`, one head per KV group scored by the
share-weighted margin, which lost to the all-heads default band), this one measures the effect it selects for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memory_inception.core.architecture import ModelGeometry, geometry
from memory_inception.core.banks import Bank
from memory_inception.core.defaults import groups_to_heads
from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering
from memory_inception.errors import SiteError
from memory_inception.methods.interface import Messages
from memory_inception.tuning.objective import ReplyContrast
from memory_inception.tuning.selection import CALIBRATION_PROMPTS

logger = logging.getLogger(__name__)

PROBE_RHO = 0.0  # a unit alone reads the bank at its natural weight
PROBE_TOKENS = 24


@dataclass(frozen=True)
class Pair:
    """A target bank (holding the candidate layers) and the text its replies are contrasted against."""

    target: Bank
    reference_text: str
    name: str = ""


@dataclass(frozen=True)
class GroupScore:
    """One (layer, KV group) unit: its mean standardized score and its raw contrast per pair."""

    layer: int
    kv_group: int
    score: float
    contrasts: tuple[float, ...]


def group_sites(geo: ModelGeometry, groups: Sequence[tuple[int, int]]) -> Sites:
    """Sites reading the given (layer, KV group) units: every query head of each group."""
    for _, g in groups:
        if not 0 <= g < geo.num_kv_heads:
            raise SiteError(f"KV group {g} is out of range: this model has KV groups 0..{geo.num_kv_heads - 1}")
    return Sites(groups_to_heads(geo, list(groups)))


@dataclass(frozen=True)
class GroupSelection:
    """The chosen sites, every unit's scores, the pairs used, and (once run) the generalization check."""

    sites: Sites
    groups: tuple[GroupScore, ...]
    config: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] | None = None

    def ranking(self) -> list[tuple[int, int]]:
        """Units from best to worst."""
        return [(g.layer, g.kv_group) for g in sorted(self.groups, key=lambda g: (-g.score, g.layer, g.kv_group))]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {
            "sites": {str(k): list(v) if v is not None else None for k, v in self.sites.heads.items()},
            "config": self.config,
            "groups": [asdict(g) for g in self.groups],
            "check": self.check,
        }
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GroupSelection:
        data = json.loads(Path(path).read_text())
        groups = tuple(GroupScore(g["layer"], g["kv_group"], g["score"], tuple(g["contrasts"])) for g in data["groups"])
        return cls(Sites.load(path), groups, data.get("config", {}), data.get("check"))


def _contrasts(
    model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], prompts: Sequence[str | Messages], max_new_tokens: int
) -> list[ReplyContrast]:
    if not pairs:
        raise SiteError("group selection needs at least one pair (target bank, reference text)")
    return [ReplyContrast(model, tokenizer, p.target.text or "", p.reference_text, prompts,
                          max_new_tokens=max_new_tokens) for p in pairs]


def score_groups(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    prompts: Sequence[str | Messages] = CALIBRATION_PROMPTS[:4],
    *,
    layers: Sequence[int] | None = None,
    rho: float = PROBE_RHO,
    max_new_tokens: int = PROBE_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> list[GroupScore]:
    """Every (layer, KV group) unit of `layers` (default: every layer) scored on every pair (module docstring)."""
    geo = geometry(model)
    layers = list(range(geo.num_layers)) if layers is None else sorted(set(layers))
    contrasts = _contrasts(model, tokenizer, pairs, prompts, max_new_tokens)
    units = [(layer, g) for layer in layers for g in range(geo.num_kv_heads)]
    raw = np.zeros((len(units), len(pairs)))
    with torch.no_grad():
        for u, unit in enumerate(units):
            sites = group_sites(geo, [unit])
            for j, (pair, contrast) in enumerate(zip(pairs, contrasts)):
                raw[u, j] = contrast(Steering(target=pair.target, sites=sites, rho=rho))
            if progress is not None:
                progress(u + 1, len(units))
    spread = raw.std(0, keepdims=True)
    z = (raw - raw.mean(0, keepdims=True)) / np.where(spread > 0, spread, 1.0)
    return [GroupScore(layer, g, float(z[u].mean()), tuple(float(x) for x in raw[u]))
            for u, (layer, g) in enumerate(units)]


def choose_groups(geo: ModelGeometry, scores: Sequence[GroupScore], num_groups: int) -> Sites:
    """The best `num_groups` units with a positive score, as sites."""
    if num_groups < 1:
        raise SiteError("num_groups must be at least 1")
    ranked = sorted(scores, key=lambda g: (-g.score, g.layer, g.kv_group))
    kept = [(g.layer, g.kv_group) for g in ranked if g.score > 0][:num_groups]
    if not kept:
        raise SiteError("no KV group raised the contrast on these pairs; try other pairs or more prompts")
    return group_sites(geo, kept)


def select_kv_groups(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    prompts: Sequence[str | Messages] = CALIBRATION_PROMPTS[:4],
    *,
    num_groups: int = 6,
    layers: Sequence[int] | None = None,
    rho: float = PROBE_RHO,
    max_new_tokens: int = PROBE_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> GroupSelection:
    """Score every unit on every pair and keep the best `num_groups` (module docstring)."""
    scores = score_groups(model, tokenizer, pairs, prompts, layers=layers, rho=rho, max_new_tokens=max_new_tokens,
                          progress=progress)
    sites = choose_groups(geometry(model), scores, num_groups)
    config = {
        "pairs": [p.name or p.target.name for p in pairs], "prompts": len(prompts), "num_groups": num_groups,
        "rho": rho, "max_new_tokens": max_new_tokens, "fingerprint": pairs[0].target.fingerprint,
    }
    return GroupSelection(sites, tuple(scores), config)


def compare_sites(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    candidates: dict[str, Sites],
    prompts: Sequence[str | Messages] = CALIBRATION_PROMPTS,
    *,
    rho: float = 0.0,
    max_new_tokens: int = 32,
) -> dict[str, list[float]]:
    """The reply contrast of each candidate site set on each pair (the generalization check on unused pairs)."""
    contrasts = _contrasts(model, tokenizer, pairs, prompts, max_new_tokens)
    return {
        label: [c(Steering(target=p.target, sites=sites, rho=rho)) for p, c in zip(pairs, contrasts)]
        for label, sites in candidates.items()
    }


def random_groups(geo: ModelGeometry, count: int, generator: torch.Generator, layers: Sequence[int] | None = None) -> Sites:
    """`count` (layer, KV group) units drawn at random (the control a selection must beat)."""
    pool = [(layer, g) for layer in (range(geo.num_layers) if layers is None else layers) for g in range(geo.num_kv_heads)]
    if count > len(pool):
        raise SiteError(f"{count} groups asked, only {len(pool)} units")
    picks = torch.randperm(len(pool), generator=generator)[:count].tolist()
    return group_sites(geo, [pool[i] for i in picks])
