"""Per-model defaults: the sites, strength and CAA layer a user gets without choosing them.

One table of measured settings for the two local models (matched by the model fingerprint, or by registry
name where no model is loaded, as in eval configs), and a documented rule for every other model. The library
(`Steering(rho=None, sites=None)`), the CLI, the server and `mi eval` all read their defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from memory_inception.core.architecture import ModelGeometry

# The rule for models without a measured entry.
BAND_START = 0.7  # the site band starts at 70% of the depth ...
BAND_WIDTH = 6  # ... and spans six consecutive layers, every head
RULE_RHO = 3.0
RULE_CAA_MULTIPLIER = 2.0
# The strengths `mi.tune` tries when the table has none for the model.
RULE_TUNE_RHOS = (-8.0, -4.0, 0.0, 3.0, 6.0)


@dataclass(frozen=True)
class ModelDefaults:
    """Default site layers (every head), strengths, CAA layer and multiplier, and where they come from.

    `rho` is what `Steering(rho=None)` uses: the strength that moved the measured behaviour most. `calibrated_rho`,
    where measured, is the strongest that kept greedy replies fluent (calibration's bound); `mi eval` compares
    methods at it. None: `rho`.
    """

    layers: tuple[int, ...]
    rho: float
    caa_layer: int
    caa_multiplier: float
    source: str
    calibrated_rho: float | None = None
    name: str | None = None
    fingerprint: str | None = None
    # Measured site units (layer, KV group): every query head of each group. None: every head of `layers`.
    kv_groups: tuple[tuple[int, int], ...] | None = None
    # Units best first, from the multi-pair KV-group selection; `mi.tune` cuts candidate site sets from it.
    ranking: tuple[tuple[int, int], ...] = ()
    tune_rhos: tuple[float, ...] = RULE_TUNE_RHOS

    @property
    def eval_rho(self) -> float:
        """The strength `mi eval` runs MI at by default."""
        return self.calibrated_rho if self.calibrated_rho is not None else self.rho

    def site_heads(self, geo: ModelGeometry) -> dict[int, tuple[int, ...] | None]:
        """The default sites as `{layer: query heads}` (None: every head), for `Sites(...)`."""
        if self.kv_groups is None:
            return {layer: None for layer in self.layers}
        return groups_to_heads(geo, self.kv_groups)


def groups_to_heads(geo: ModelGeometry, units: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> dict[int, tuple[int, ...]]:
    """`{layer: query heads}` reading the given (layer, KV group) units."""
    heads: dict[int, list[int]] = {}
    for layer, g in units:
        heads.setdefault(int(layer), []).extend(range(int(g) * geo.group_size, (int(g) + 1) * geo.group_size))
    return {layer: tuple(sorted(hs)) for layer, hs in sorted(heads.items())}


def rule_layers(num_layers: int) -> tuple[int, ...]:
    """BAND_WIDTH consecutive layers from BAND_START of the depth (clipped to the model)."""
    width = min(BAND_WIDTH, num_layers)
    start = min(int(round(BAND_START * num_layers)), num_layers - width)
    return tuple(range(start, start + width))


# Measured entries. SmolLM2-135M: of the bands 9-14, 15-20 and 21-26 only 21-26 moved both poles of extraversion
# and agreeableness the right way (reports/defaults.md); but every head of 21-26 loops (repeated 3-grams 0.11-0.28
# against plain 0.02 on the tuning prompts at rho -4, 0 and 3), while KV group 2 of the same layers (query heads
# 6-8) carried most of the reply contrast and stayed fluent: mi.tune chose it on both development poles it ran
# on, at rho 0 and 3 (reports/tune_defaults_smollm2.md; the weaker one is shipped). rho -20 is the strongest that
# kept every head of 21-26 within +0.10 repeated trigrams (reports/compare_methods.md, what `mi eval` compares at),
# CAA layer 15 x6 the calibrated CAA. Qwen2.5-Coder-0.5B: the CAA A/B curve rises at layer 14
# (reports/caa_ab_qwen.md); its sites and rho follow the rule (reports/eval/qwen2.5; not tuned: CPU budget).
TABLE: tuple[ModelDefaults, ...] = (
    ModelDefaults(
        layers=tuple(range(21, 27)), rho=0.0, calibrated_rho=-20.0, caa_layer=15, caa_multiplier=6.0,
        source="reports/tune_defaults_smollm2.md (sites, rho), reports/defaults.md, reports/compare_methods.md",
        name="smollm2-135m-instruct", fingerprint="6b0adf3dd8cf35da",
        kv_groups=tuple((layer, 2) for layer in range(21, 27)),
    ),
    ModelDefaults(
        layers=rule_layers(24), rho=3.0, caa_layer=14, caa_multiplier=2.0,
        source="reports/caa_ab_qwen.md (CAA); sites and rho by the rule",
        name="qwen2.5-coder-0.5b-instruct", fingerprint="378c874cd7aa99d1",
    ),
)


def model_defaults(geo: ModelGeometry, *, fingerprint: str | None = None, name: str | None = None) -> ModelDefaults:
    """The table's entry for this model (by fingerprint, else by registry name), else the rule's settings."""
    for entry in TABLE:
        if (fingerprint is not None and entry.fingerprint == fingerprint) or (
            name is not None and entry.name == name.lower()
        ):
            return entry
    return ModelDefaults(
        layers=rule_layers(geo.num_layers), rho=RULE_RHO, caa_layer=geo.num_layers // 2,
        caa_multiplier=RULE_CAA_MULTIPLIER, source="rule: 6 layers from 70% depth, rho 3, CAA at the middle layer",
    )


def defaults_by_name(name: str) -> ModelDefaults | None:
    """The table's entry for a registry name (None if the name has no measured entry)."""
    return next((entry for entry in TABLE if entry.name == name.lower()), None)
