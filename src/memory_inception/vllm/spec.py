"""What a request asks for: its banks by name and role, and its steering settings (carried in `extra_args`).

A `RequestSteering` is plain data (JSON-safe), so it travels from the front end to the vLLM worker inside
`SamplingParams.extra_args[EXTRA_ARGS_KEY]`; `resolve` turns it into the core's `Steering` once the banks are
loaded from a bank directory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from memory_inception.core.sites import Sites, parse_layers
from memory_inception.core.steering import (
    NORMALIZE,
    PREFILLS,
    ROLES,
    SCHEDULES,
    Steering,
    check_settings,
    steering_from_roles,
)
from memory_inception.errors import SteeringError
from memory_inception.vllm.bankdir import BankDirectory

EXTRA_ARGS_KEY = "memory_inception"


@dataclass(frozen=True)
class BankUse:
    """One bank of a request: its `name` in the bank directory, its `role` and its `gain`."""

    name: str
    role: str = "target"
    gain: float = 1.0


@dataclass(frozen=True)
class RequestSteering:
    """A request's Memory Inception settings (the core `Steering`, with banks named instead of loaded).

    `layers` selects every head of those layers; `sites` (`{layer: [heads] or None}`) selects heads; with
    neither, the core default sites apply. Positions are canonical (the spec's default).
    """

    banks: tuple[BankUse, ...] = ()
    rho: float | None = None  # None: the model's default (core.defaults)
    layers: tuple[int, ...] | None = None
    sites: Mapping[int, tuple[int, ...] | None] | None = None
    schedule: str = "middle_heavy"
    prefill: str = "last"
    positive_gain: float = 1.0
    negative_gain: float = 1.0
    gate: bool = True
    gate_scale: float = 1.0
    normalize: str = "paper"

    def __post_init__(self) -> None:
        banks = tuple(b if isinstance(b, BankUse) else _bank_use(b) for b in self.banks)
        object.__setattr__(self, "banks", banks)
        for b in banks:
            if b.role not in ROLES:
                raise SteeringError(f"bank {b.name!r} has role {b.role!r}; use one of {', '.join(ROLES)}")
            if not isinstance(b.gain, (int, float)) or not math.isfinite(b.gain):
                raise SteeringError(f"bank {b.name!r} has gain {b.gain!r}; a gain is a finite number")
        for role in ("target", "reference"):
            if sum(b.role == role for b in banks) > 1:
                raise SteeringError(f"more than one {role!r} bank; give the others role 'auxiliary'")
        numbers = check_settings(self, {"schedule": SCHEDULES, "prefill": PREFILLS, "normalize": NORMALIZE})
        if self.schedule == "rank_linear":
            raise SteeringError("schedule 'rank_linear' needs a selection artifact's layer scores; pick another schedule")
        for name, value in numbers.items():
            object.__setattr__(self, name, value)
        if not isinstance(self.gate, bool):
            raise SteeringError(f"gate={self.gate!r} must be true or false")
        if self.layers is not None and self.sites is not None:
            raise SteeringError("give either 'layers' (every head of those layers) or 'sites' ({layer: heads}), not both")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(parse_layers(self.layers)))
        if self.sites is not None:
            try:
                clean = {int(k): (None if v is None else tuple(int(h) for h in v)) for k, v in dict(self.sites).items()}
            except (TypeError, ValueError):
                raise SteeringError(
                    f"sites={self.sites!r} is not a mapping of layer -> list of heads (or null for every head)"
                ) from None
            object.__setattr__(self, "sites", clean)

    # ---- wire format ---------------------------------------------------------------------------------
    def to_extra_args(self) -> dict[str, Any]:
        """The JSON-safe dict for `SamplingParams.extra_args[EXTRA_ARGS_KEY]` (`vllm_xargs` over HTTP)."""
        out = asdict(self)
        out["banks"] = [asdict(b) for b in self.banks]
        if self.sites is not None:
            out["sites"] = {str(k): (None if v is None else list(v)) for k, v in self.sites.items()}
        if self.layers is not None:
            out["layers"] = list(self.layers)
        return out

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None) -> RequestSteering | None:
        """The request's steering from `SamplingParams.extra_args` (None: a plain request)."""
        if not extra_args or EXTRA_ARGS_KEY not in extra_args:
            return None
        raw = extra_args[EXTRA_ARGS_KEY]
        if isinstance(raw, str):  # vllm_xargs values may arrive as JSON text
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SteeringError(f"extra_args[{EXTRA_ARGS_KEY!r}] is not valid JSON: {exc}") from None
        if not isinstance(raw, Mapping):
            raise SteeringError(f"extra_args[{EXTRA_ARGS_KEY!r}] must be an object, got {type(raw).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SteeringError(
                f"unknown memory_inception setting(s) {unknown}; known settings: {', '.join(sorted(known))}"
            )
        banks = raw.get("banks", ())
        if not isinstance(banks, Sequence) or isinstance(banks, (str, bytes)):
            raise SteeringError("'banks' must be a list of {name, role, gain} objects")
        return cls(**{**raw, "banks": tuple(_bank_use(b) for b in banks)})

    def cache_key(self) -> str:
        """A stable text key of these settings (equal settings share their loaded plans)."""
        return json.dumps(self.to_extra_args(), sort_keys=True)

    # ---- to the core ---------------------------------------------------------------------------------
    def resolve(self, bank_dir: BankDirectory, fingerprint: str) -> Steering:
        """The core `Steering`: banks loaded from `bank_dir` and checked against the model `fingerprint`."""
        banks = [(use.role, bank_dir.load(use.name, fingerprint), use.gain) for use in self.banks]
        if self.layers is not None:
            sites: Sites | None = Sites({layer: None for layer in self.layers})
        elif self.sites is not None:
            sites = Sites(dict(self.sites))
        else:
            sites = None
        return steering_from_roles(
            banks, sites=sites, rho=self.rho, positive_gain=self.positive_gain, negative_gain=self.negative_gain,
            gate=self.gate, gate_scale=self.gate_scale, schedule=self.schedule, prefill=self.prefill,
            positions="canonical", normalize=self.normalize,
        )


def _bank_use(raw: Any) -> BankUse:
    if isinstance(raw, BankUse):
        return raw
    if isinstance(raw, str):
        return BankUse(raw)
    if not isinstance(raw, Mapping) or "name" not in raw:
        raise SteeringError(f"a bank is {{'name': ..., 'role': ..., 'gain': ...}} or a name, got {raw!r}")
    unknown = sorted(set(raw) - {"name", "role", "gain"})
    if unknown:
        raise SteeringError(f"unknown bank field(s) {unknown}; a bank has name, role and gain")
    gain = raw.get("gain", 1.0)
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise SteeringError(f"bank {raw['name']!r} has gain {gain!r}; a gain is a number")
    return BankUse(name=str(raw["name"]), role=str(raw.get("role", "target")), gain=float(gain))
