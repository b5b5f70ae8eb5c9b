"""The steering configuration (spec sections 3-5) and the strength schedule across layers (section 4)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from memory_inception.core.architecture import ModelGeometry
from memory_inception.core.banks import Bank
from memory_inception.core.defaults import model_defaults
from memory_inception.core.sites import Sites
from memory_inception.errors import SteeringError

Schedule = Literal["flat", "middle_heavy", "late_heavy", "early_heavy", "rank_linear", "full_per_layer"]
Prefill = Literal["last", "all", "none"]
Positions = Literal["canonical", "prefix"]
Normalize = Literal["paper", "none"]

SCHEDULES = ("flat", "middle_heavy", "late_heavy", "early_heavy", "rank_linear", "full_per_layer")

PREFILLS = ("last", "all", "none")
NORMALIZE = ("paper", "none")
NUMBERS = ("rho", "positive_gain", "negative_gain", "gate_scale")  # rho may also be None (resolved later)


def check_settings(settings: object, choices: dict[str, Sequence[str]]) -> dict[str, float]:
    """Check the settings every steering shares (a `Steering`, a vLLM request's): each attribute named in `choices`
    holds one of its values, and `NUMBERS` are finite numbers (rho may be None). Returns those numbers as floats."""
    for name, allowed in choices.items():
        value = getattr(settings, name)
        if value not in allowed:
            raise SteeringError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    numbers = {}
    for name in NUMBERS:
        value = getattr(settings, name)
        if value is None and name == "rho":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SteeringError(f"{name}={value!r} is not a finite number")
        numbers[name] = float(value)
    return numbers


@dataclass(frozen=True)
class Steering:
    """What to inject: banks by role, where (sites), how strongly, and which positions.

    `auxiliary` is a sequence of `(bank, gain)`. `sites=None` and `rho=None` take the target bank's tuned settings
    when it has them, else the model's defaults (`core.defaults`), resolved when the steering is planned.
    """

    target: Bank | None = None
    reference: Bank | None = None
    auxiliary: Sequence[tuple[Bank, float]] = ()
    sites: Sites | None = None
    rho: float | None = None
    positive_gain: float = 1.0
    negative_gain: float = 1.0
    gate: bool = True
    gate_scale: float = 1.0
    schedule: Schedule = "middle_heavy"
    prefill: Prefill = "last"
    positions: Positions = "canonical"
    normalize: Normalize = "paper"

    def __post_init__(self) -> None:
        aux = tuple(self.auxiliary)
        for item in aux:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Bank)):
                raise SteeringError(f"auxiliary must be a sequence of (bank, gain) pairs, got {item!r}")
        object.__setattr__(self, "auxiliary", tuple((b, float(g)) for b, g in aux))
        check_settings(self, {"schedule": SCHEDULES, "prefill": PREFILLS, "positions": ("canonical", "prefix"),
                              "normalize": NORMALIZE})
        for name in ("target", "reference"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Bank):
                raise SteeringError(f"{name} must be a Bank (mi.build_bank or mi.Bank.load), got {type(value).__name__}")
        if self.sites is not None and not isinstance(self.sites, Sites):
            raise SteeringError(f"sites must be mi.Sites, got {type(self.sites).__name__}")

    @property
    def banks(self) -> list[tuple[str, Bank]]:
        """The banks in layout order (target, reference, auxiliary...) with their roles."""
        out: list[tuple[str, Bank]] = []
        if self.target is not None:
            out.append(("target", self.target))
        if self.reference is not None:
            out.append(("reference", self.reference))
        out += [("auxiliary", bank) for bank, _ in self.auxiliary]
        return out

    def resolved(self, geo: ModelGeometry, fingerprint: str | None = None) -> tuple[Sites, float]:
        """The sites and total strength this steering uses on a model: its own, else the target bank's tuned ones
        (`mi.tune`, stored in the bank file), else the model's defaults (`core.defaults`)."""
        tuned = (self.target.options.get("tuned") or {}) if self.target is not None else {}
        defaults = model_defaults(geo, fingerprint=fingerprint)
        if self.sites is not None:
            sites = self.sites
        elif tuned.get("sites") is not None:
            sites = Sites({int(k): v for k, v in tuned["sites"].items()})
        else:
            sites = Sites.default(geo, fingerprint)
        if self.rho is not None:
            rho = self.rho
        elif tuned.get("rho") is not None:
            rho = float(tuned["rho"])
        else:
            rho = defaults.rho
        return sites, rho

    @property
    def gated(self) -> bool:
        """The query gate applies only with both a target and a reference bank."""
        return self.gate and self.target is not None and self.reference is not None


ROLES = ("target", "reference", "auxiliary")


def steering_from_roles(banks: Sequence[tuple[str, Bank, float]], **settings: object) -> Steering:
    """The `Steering` for banks given as `(role, bank, gain)`: the one mapping every front end uses.

    A target's gain multiplies `positive_gain`, a reference's multiplies `negative_gain` (both 1 unless
    `settings` say otherwise), an auxiliary bank's gain is its own; at most one target and one reference.
    `settings` are the other `Steering` fields (sites, rho, schedule, ...).
    """
    positive = float(settings.pop("positive_gain", 1.0))  # type: ignore[arg-type]
    negative = float(settings.pop("negative_gain", 1.0))  # type: ignore[arg-type]
    target = reference = None
    auxiliary: list[tuple[Bank, float]] = []
    for role, bank, gain in banks:
        if role not in ROLES:
            raise SteeringError(f"bank {bank.name!r} has role {role!r}; use one of {', '.join(ROLES)}")
        if role in ("target", "reference") and (target if role == "target" else reference) is not None:
            raise SteeringError(f"more than one {role!r} bank; give the others role 'auxiliary'")
        if role == "target":
            target, positive = bank, positive * gain
        elif role == "reference":
            reference, negative = bank, negative * gain
        else:
            auxiliary.append((bank, gain))
    return Steering(target=target, reference=reference, auxiliary=auxiliary, positive_gain=positive,
                    negative_gain=negative, **settings)  # type: ignore[arg-type]


def layer_strengths(
    layers: Sequence[int], rho: float, schedule: str, ranks: dict[int, int] | None = None
) -> dict[int, float]:
    """`rho_l` for each selected layer (spec section 4)."""
    layers = sorted(layers)
    n = len(layers)
    if schedule == "full_per_layer":
        return {layer: float(rho) for layer in layers}
    if schedule == "flat":
        weights = [1.0] * n
    elif schedule == "middle_heavy":
        weights = [float(min(i + 1, n - i)) for i in range(n)]
    elif schedule == "late_heavy":
        weights = [float(i + 1) for i in range(n)]
    elif schedule == "early_heavy":
        weights = [float(n - i) for i in range(n)]
    elif schedule == "rank_linear":
        if ranks is None:
            raise SteeringError("schedule 'rank_linear' needs layer ranks from a selection artifact")
        weights = [float(n - ranks[layer]) for layer in layers]
    else:
        raise SteeringError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    total = sum(weights)
    return {layer: float(rho) * w / total for layer, w in zip(layers, weights)}
