"""Automatic site selection (spec section 8): calibrate on a few prompts, score (layer, head) units, keep the best.

With a target and a reference bank attached at every candidate layer, each steered row records per head the
alignment margin `a = max b_target - max b_reference`, the target bank's mixture weight and the prompt's.
A unit's score favours heads whose queries prefer the target over the reference, weighted by how much they
read the target bank against the prompt. Then at most one head per KV group, the top k heads per layer and
the top m layers by the sum of their kept heads' scores.

The score is `mean(a) * w_target / (w_target + w_prompt)` (means over rows). Of four scores tried on SmolLM2
(extraversion and agreeableness, calibration statements; experiments/select_vs_random.py reports the held-out
check), `mean(a) + mean(log w_target - log w_prompt)` picked early diffuse heads that read the bank a lot but
steer nothing and lost to random sites; the share-weighted margin beat every random draw on both traits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memory_inception.core.architecture import ModelGeometry, geometry
from memory_inception.core.banks import Bank
from memory_inception.core.plan import LayerPlan
from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering
from memory_inception.errors import SiteError
from memory_inception.hf.inject import inject
from memory_inception.methods.interface import Messages, Plain
from memory_inception.methods.runners import generate

# Neutral calibration prompts: everyday questions that leave room for a persona or a style to show.
# The strength both banks carry while heads are scored (spread middle-heavy over every candidate layer).
SCORING_RHO = 3.0

CALIBRATION_PROMPTS = (
    "What do you usually do on a Sunday?",
    "How would you describe a good day?",
    "Tell me about your favorite food.",
    "What do you think about working in a team?",
    "How do you spend an evening at home?",
    "What would you say to a stranger at a bus stop?",
    "What is the best way to learn a new skill?",
    "Describe your ideal holiday.",
)


@dataclass(frozen=True)
class UnitScore:
    """Calibration statistics of one (layer, query head) unit, averaged over the steered rows."""

    layer: int
    head: int
    kv_group: int
    margin: float  # mean of max b_target - max b_reference (logit units)
    target_weight: float  # mean mixture weight of the target bank's slots
    prompt_weight: float  # mean mixture weight of the prompt's keys
    log_ratio: float  # mean of log w_target - log w_prompt (for inspection)
    score: float  # margin * target_weight / (target_weight + prompt_weight)
    rows: int


@dataclass(frozen=True)
class Selection:
    """The chosen sites with every candidate's scores, saved as one JSON artifact that `Sites.load` reads."""

    sites: Sites
    units: tuple[UnitScore, ...]
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {
            "sites": {str(k): list(v) if v is not None else None for k, v in self.sites.heads.items()},
            "layer_scores": {str(k): v for k, v in (self.sites.layer_scores or {}).items()},
            "config": self.config,
            "units": [asdict(u) for u in self.units],
        }
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        sites = Sites.load(path)
        data = json.loads(Path(path).read_text())
        units = tuple(UnitScore(**u) for u in data.get("units", []))
        return cls(sites, units, data.get("config", {}))


def choose_sites(
    units: Sequence[UnitScore], heads_per_layer: int | None = None, num_layers: int | None = 6
) -> Sites:
    """The selection rules: best head per KV group, top `heads_per_layer` per layer, top `num_layers` layers.

    `None` keeps every KV group's best head / every layer. Layer scores (sum of kept heads) order the layers
    for the `rank_linear` schedule.
    """
    if heads_per_layer is not None and heads_per_layer < 1:
        raise SiteError("heads_per_layer must be at least 1 (or None for one head per KV group)")
    if num_layers is not None and num_layers < 1:
        raise SiteError("num_layers must be at least 1 (or None for every candidate layer)")
    if not units:
        raise SiteError("no scored units to choose from; run select_sites on at least one prompt")
    best: dict[tuple[int, int], UnitScore] = {}
    for u in units:
        key = (u.layer, u.kv_group)
        if key not in best or (u.score, -u.head) > (best[key].score, -best[key].head):
            best[key] = u
    per_layer: dict[int, list[UnitScore]] = {}
    for u in best.values():
        per_layer.setdefault(u.layer, []).append(u)
    kept: dict[int, list[UnitScore]] = {}
    for layer, us in per_layer.items():
        us.sort(key=lambda u: (-u.score, u.head))
        kept[layer] = us[:heads_per_layer] if heads_per_layer is not None else us
    layer_scores = {layer: sum(u.score for u in us) for layer, us in kept.items()}
    order = sorted(layer_scores, key=lambda layer: (-layer_scores[layer], layer))
    chosen = order[:num_layers] if num_layers is not None else order
    return Sites(
        {layer: [u.head for u in kept[layer]] for layer in sorted(chosen)},
        layer_scores={layer: layer_scores[layer] for layer in sorted(chosen)},
    )


class _Recorder:
    """Accumulates per-head sums of the calibration statistics from the operator's trace callback."""

    def __init__(self, geo: ModelGeometry, target_slots: int, reference_slots: int) -> None:
        self.geo = geo
        self.mt, self.mr = target_slots, reference_slots
        self.sums: dict[int, torch.Tensor] = {}  # layer -> [H, 5]: margin, w_t, w_p, log ratio, rows

    def __call__(self, plan: LayerPlan, b: torch.Tensor, slot_weights: torch.Tensor, prompt_weight: torch.Tensor) -> None:
        batch, hx, rr, m = b.shape
        if plan.all_heads and plan.group_size > 1:  # unfold grouped rows: folded index = head_in_group * R + r
            g = plan.group_size
            b = b.reshape(batch, hx * g, rr // g, m)
            slot_weights = slot_weights.reshape(batch, hx * g, rr // g, m)
            prompt_weight = prompt_weight.reshape(batch, hx * g, rr // g)
            heads = torch.arange(hx * g, device=b.device)
        else:
            heads = plan.heads
        b, slot_weights, w_p = b.float(), slot_weights.float(), prompt_weight.float()
        margin = b[..., : self.mt].amax(-1) - b[..., self.mt : self.mt + self.mr].amax(-1)
        w_t = slot_weights[..., : self.mt].sum(-1)
        ratio = torch.log(w_t.clamp_min(1e-30)) - torch.log(w_p.clamp_min(1e-30))
        stats = torch.stack([margin, w_t, w_p, ratio, torch.ones_like(margin)], -1).sum((0, 2))  # [Hs, 5]
        acc = self.sums.setdefault(plan.layer, torch.zeros(self.geo.num_heads, 5, dtype=torch.float64))
        acc.index_add_(0, heads.cpu(), stats.cpu().double())

    def units(self) -> list[UnitScore]:
        out = []
        for layer, acc in sorted(self.sums.items()):
            for head in range(self.geo.num_heads):
                margin, w_t, w_p, ratio, rows = acc[head].tolist()
                if rows == 0:
                    continue
                out.append(
                    UnitScore(
                        layer=layer,
                        head=head,
                        kv_group=head // self.geo.group_size,
                        margin=margin / rows,
                        target_weight=w_t / rows,
                        prompt_weight=w_p / rows,
                        log_ratio=ratio / rows,
                        score=(margin / rows) * w_t / max(w_t + w_p, 1e-30),
                        rows=int(rows),
                    )
                )
        return out


def score_units(
    model: nn.Module,
    tokenizer: Any,
    target: Bank,
    reference: Bank,
    prompts: Sequence[str | Messages] = CALIBRATION_PROMPTS,
    *,
    layers: Sequence[int] | None = None,
    rho: float = SCORING_RHO,
    max_new_tokens: int = 16,
    batch_size: int = 8,
) -> list[UnitScore]:
    """Calibration statistics of every head of the candidate layers (default: every layer both banks hold).

    Both banks are attached at every candidate head (gated mixture, `rho` spread middle-heavy); each prompt is
    answered greedily for `max_new_tokens` tokens and every steered row (last prompt token, each generated
    token) is recorded.
    """
    geo = geometry(model)
    if not prompts:
        raise SiteError("select_sites needs at least one calibration prompt")
    candidates = sorted(set(target.layers) & set(reference.layers)) if layers is None else sorted(set(layers))
    missing = [layer for layer in candidates if layer not in target.layers or layer not in reference.layers]
    if missing:
        raise SiteError(f"the target and reference banks have no slots at candidate layers {missing}")
    if not candidates:
        raise SiteError("no candidate layers: the banks share no layer")
    steering = Steering(target=target, reference=reference, sites=Sites({layer: None for layer in candidates}), rho=rho)
    recorder = _Recorder(geo, target.num_slots, reference.num_slots)
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    with torch.no_grad(), inject(model, steering) as injection:
        for plan in injection.plans.values():
            plan.trace = recorder
        generate(model, tokenizer, Plain(), conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return recorder.units()


def select_sites(
    model: nn.Module,
    tokenizer: Any,
    target: Bank,
    reference: Bank,
    prompts: Sequence[str | Messages] = CALIBRATION_PROMPTS,
    *,
    layers: Sequence[int] | None = None,
    heads_per_layer: int | None = None,
    num_layers: int | None = 6,
    rho: float = SCORING_RHO,
    max_new_tokens: int = 16,
) -> Selection:
    """Score every candidate head on the calibration prompts and keep the best (see the module docstring)."""
    units = score_units(
        model, tokenizer, target, reference, prompts, layers=layers, rho=rho, max_new_tokens=max_new_tokens
    )
    sites = choose_sites(units, heads_per_layer=heads_per_layer, num_layers=num_layers)
    config = {
        "target": target.name,
        "reference": reference.name,
        "prompts": len(prompts),
        "candidate_layers": sorted({u.layer for u in units}),
        "heads_per_layer": heads_per_layer,
        "num_layers": num_layers,
        "rho": rho,
        "max_new_tokens": max_new_tokens,
        "fingerprint": target.fingerprint,
    }
    return Selection(sites, tuple(units), config)


def random_sites(geo: ModelGeometry, like: Sites, generator: torch.Generator, layers: Sequence[int] | None = None) -> Sites:
    """Random sites with the same number of layers and heads per layer as `like` (one head per KV group).

    Used as the control that selected sites must beat.
    """
    pool = list(layers) if layers is not None else list(range(geo.num_layers))
    resolved = like.resolve(geo)
    if len(resolved) > len(pool):
        raise SiteError("more site layers than candidate layers")
    picks = torch.randperm(len(pool), generator=generator)[: len(resolved)].tolist()
    chosen = sorted(pool[i] for i in picks)
    counts = [len(h) for _, h in sorted(resolved.items())]
    heads: dict[int, list[int]] = {}
    for layer, count in zip(chosen, counts):
        groups = torch.randperm(geo.num_kv_heads, generator=generator)[: min(count, geo.num_kv_heads)].tolist()
        heads[layer] = sorted(g * geo.group_size + int(torch.randint(geo.group_size, (1,), generator=generator)) for g in groups)
    return Sites(heads)

