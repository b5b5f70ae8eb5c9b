"""Sites (spec section 2): which (layer, query head) pairs read the banks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from memory_inception.core.architecture import (
    ModelGeometry,
    geometry,
    model_fingerprint,
)
from memory_inception.core.defaults import model_defaults
from memory_inception.errors import SiteError


def parse_layers(spec: str | Sequence[int] | None) -> list[int] | None:
    """'21-26' -> [21..26]; '3,5,7' -> [3, 5, 7]; a list of ints as it is; None -> None."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return [int(layer) for layer in spec]
    out: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                if not 0 <= lo <= hi:
                    raise ValueError
                out += range(lo, hi + 1)
            elif part:
                out.append(int(part))
    except ValueError:
        raise SiteError(f"cannot read layers {spec!r}; write e.g. '21-26', '3,5,7' or a list [21, 22]") from None
    if not out:
        raise SiteError("layers is empty; omit it for the default layers")
    return out


@dataclass(frozen=True)
class Sites:
    """Per layer, the query heads that read the banks (`None` = every head of that layer).

    `layer_scores` (optional, from a selection artifact) orders layers for the `rank_linear` schedule.
    """

    heads: Mapping[int, Sequence[int] | None]
    layer_scores: Mapping[int, float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        clean: dict[int, tuple[int, ...] | None] = {}
        for layer, hs in dict(self.heads).items():
            if not isinstance(layer, int) or isinstance(layer, bool):
                try:
                    layer = int(layer)
                except (TypeError, ValueError):
                    raise SiteError(f"site layer {layer!r} is not an integer") from None
            if hs is None:
                clean[layer] = None
                continue
            heads = tuple(sorted({int(h) for h in hs}))
            if heads:
                clean[layer] = heads
        object.__setattr__(self, "heads", dict(sorted(clean.items())))

    # ---- constructors -------------------------------------------------------------------------------
    @classmethod
    def all(cls, model: nn.Module, layers: Iterable[int] | None = None) -> Sites:
        """Every head of every layer (or of the given layers)."""
        n = geometry(model).num_layers
        return cls({layer: None for layer in (range(n) if layers is None else layers)})

    @classmethod
    def default(cls, model: nn.Module | ModelGeometry, fingerprint: str | None = None) -> Sites:
        """The model's default sites (`core.defaults`): its measured layers and KV groups, else the rule's band, every
        head."""
        if isinstance(model, ModelGeometry):
            geo = model
        else:
            geo, fingerprint = geometry(model), fingerprint or model_fingerprint(model)
        return cls(model_defaults(geo, fingerprint=fingerprint).site_heads(geo))

    @classmethod
    def from_kv_groups(cls, model: nn.Module, groups: Mapping[int, Sequence[int] | None]) -> Sites:
        """Select every query head that reads each given KV head (KV group)."""
        geo = geometry(model)
        heads: dict[int, list[int] | None] = {}
        for layer, gs in groups.items():
            if gs is None:
                heads[int(layer)] = None
                continue
            bad = [g for g in gs if not 0 <= int(g) < geo.num_kv_heads]
            if bad:
                raise SiteError(
                    f"KV groups {bad} at layer {layer} are out of range: this model has KV groups "
                    f"0..{geo.num_kv_heads - 1}"
                )
            heads[int(layer)] = [h for g in gs for h in range(int(g) * geo.group_size, (int(g) + 1) * geo.group_size)]
        return cls(heads)

    @classmethod
    def load(cls, path: str | Path) -> Sites:
        """Read a sites JSON file: `{"sites": {layer: [heads] or null}, "layer_scores": {layer: score}}`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            raw = data["sites"]
        except FileNotFoundError:
            raise SiteError(f"no sites file at {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SiteError(f"{path} is not a sites file (expected JSON with a 'sites' object): {exc}") from None
        scores = data.get("layer_scores")
        return cls(
            {int(k): v for k, v in raw.items()},
            layer_scores={int(k): float(v) for k, v in scores.items()} if scores else None,
        )

    def save(self, path: str | Path) -> Path:
        """Write the sites as JSON (the format `Sites.load` reads)."""
        path = Path(path)
        payload: dict = {"sites": {str(k): (list(v) if v is not None else None) for k, v in self.heads.items()}}
        if self.layer_scores:
            payload["layer_scores"] = {str(k): v for k, v in self.layer_scores.items()}
        path.write_text(json.dumps(payload, indent=2))
        return path

    # ---- queries ------------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.heads)

    def __bool__(self) -> bool:
        return bool(self.heads)

    def resolve(self, geo: ModelGeometry) -> dict[int, tuple[int, ...]]:
        """Explicit, validated query heads per layer."""
        out: dict[int, tuple[int, ...]] = {}
        for layer, hs in self.heads.items():
            if not 0 <= layer < geo.num_layers:
                raise SiteError(f"site layer {layer} is out of range: this model has layers 0..{geo.num_layers - 1}")
            if hs is None:
                out[layer] = tuple(range(geo.num_heads))
                continue
            bad = [h for h in hs if not 0 <= h < geo.num_heads]
            if bad:
                raise SiteError(
                    f"heads {bad} at layer {layer} are out of range: this model has query heads 0..{geo.num_heads - 1}"
                )
            out[layer] = tuple(hs)
        return out

    def layer_ranks(self) -> dict[int, int]:
        """Rank of each layer by its selection score (0 = best); needs `layer_scores`."""
        if not self.layer_scores:
            raise SiteError(
                "schedule 'rank_linear' needs layer scores from a selection artifact (Sites.load of a "
                "`mi select` output); use another schedule with hand-picked sites"
            )
        missing = [layer for layer in self.layers if layer not in self.layer_scores]
        if missing:
            raise SiteError(f"layer_scores has no score for site layers {missing}")
        order = sorted(self.layers, key=lambda layer: -self.layer_scores[layer])
        return {layer: rank for rank, layer in enumerate(order)}
