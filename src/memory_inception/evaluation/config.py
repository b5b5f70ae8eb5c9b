"""What an evaluation run pins: model, methods, personas, strengths, sites, prompts and seeds (TOML or YAML)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from memory_inception.core.defaults import (
    RULE_CAA_MULTIPLIER,
    RULE_RHO,
    defaults_by_name,
)
from memory_inception.datasets.traits import TRAITS, check_trait
from memory_inception.errors import EvaluationError, ModelLoadError
from memory_inception.hf.models import DEFAULT_MODEL, resolve_device, resolve_dtype

METHODS = ("plain", "prompting", "caa", "mi")
TASK_NAMES = ("bigfive", "bigfive-generation", "dialogue", "persistence", "capability", "storage", "hardmath", "physics",
              "long-memory")
POLES = ("high", "low")
ALL_PERSONAS = tuple(f"{t}:{p}" for t in TRAITS for p in POLES)
STATEMENT_TASKS = ("bigfive", "dialogue", "persistence")  # the tasks that score persona statements

# Persona statements: 500 per side (matching / not matching the high pole) per trait, taken in file order by
# `datasets.traits.statements(trait, limit, offset)`. Which indices (per side, [start, stop)) each user reads:
STATEMENT_USES: dict[str, tuple[int, int]] = {
    # chose the default sites and rho (reports/defaults.md), checked selected vs random sites, and was the
    # "held-out" set of compare_methods; mi calibrate --trait and quantize_banks.py (first 15) read it too
    "experiments/choose_defaults.py, select_vs_random.py, compare_methods.py (evaluation), mi calibrate": (0, 30),
    "experiments/compare_methods.py calibration (chose rho -20 and CAA x6)": (30, 60),
    "experiments/compare_methods.py CAA vectors (chose CAA layer 15)": (60, 210),
    "mi eval CAA vectors (CAA_STATEMENT_OFFSET, [caa] pairs = 60)": (60, 120),
    "experiments/caa_ab_sweep.py persona vectors (128 interleaved pairs)": (0, 64),
    "experiments/caa_ab_sweep.py persona layer sweep and curve (last 50 interleaved)": (475, 500),
}
# The trait judges (evaluation.judges) train on a random 80% of all 1,000 statements, but they only ever score
# generated replies, never statements, and choose nothing. mi eval scores these, disjoint from every range above:
EVAL_STATEMENTS = (300, 30)  # offset, count per side
CAA_STATEMENT_OFFSET = 60  # mi eval's CAA contrast pairs start here ([caa] pairs per side)

@dataclass
class MIConfig:
    """Memory Inception settings; `rho=None` takes the model's measured default, `sites=None` the default sites."""

    rho: float | None = None
    sites: str | None = None  # a selection/sites JSON file, or layers such as "21-26"
    schedule: str = "middle_heavy"
    prefill: str = "last"
    reference: bool = False  # add the opposite pole's bank as the reference bank


@dataclass
class CAAConfig:
    """Activation addition settings; `None` takes the model's measured default."""

    layer: int | None = None
    multiplier: float | None = None
    pairs: int = 60  # persona statements per side for the steering vector (disjoint from evaluation ones)


@dataclass
class EvalConfig:
    """One task's run. `options` holds the task's own settings (see each task's `Options`).

    `device` / `device_map` say where the model runs and `dtype` its weights (`hf.models.load_model`; None:
    bfloat16 on CUDA, float32 elsewhere).
    """

    task: str
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str | None = None
    device_map: str | dict[str, Any] | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    personas: list[str] = field(default_factory=lambda: list(ALL_PERSONAS))
    limit: int | None = None
    seed: int = 0
    threads: int = 1
    batch_size: int = 8
    max_new_tokens: int = 64
    mi: MIConfig = field(default_factory=MIConfig)
    caa: CAAConfig = field(default_factory=CAAConfig)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise EvaluationError(f"unknown method(s) {bad or '(none)'}; choose from {', '.join(METHODS)}")
        for persona in self.personas:
            parse_persona(persona)
        if self.limit is not None and self.limit < 1:
            raise EvaluationError(f"limit must be at least 1, got {self.limit}")
        if self.threads < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise EvaluationError("threads, batch_size and max_new_tokens must be positive")
        _ = self.torch_dtype  # a device that is not there, or an unknown dtype, is refused before any work
        offset, count = EVAL_STATEMENTS
        if self.caa.pairs < 1 or CAA_STATEMENT_OFFSET + self.caa.pairs > offset:
            raise EvaluationError(
                f"[caa] pairs = {self.caa.pairs}: CAA vectors read statements {CAA_STATEMENT_OFFSET}-"
                f"{CAA_STATEMENT_OFFSET + self.caa.pairs - 1}, which must be positive in number and end before the "
                f"scored ones ({offset}-{offset + count - 1}); use at most {offset - CAA_STATEMENT_OFFSET} pairs"
            )

    @property
    def torch_dtype(self) -> Any:
        """The dtype the model is loaded in: `dtype`, else the default for the device it runs on."""
        try:
            return resolve_dtype(self.dtype, resolve_device(self.device, device_map=self.device_map))
        except ModelLoadError as exc:
            raise EvaluationError(f"{exc} (the device / dtype / device_map settings of the run)") from None

    def default(self, key: str) -> Any:
        """The model's default (`core.defaults`) for 'mi.rho', 'caa.layer' or 'caa.multiplier'; None for a model
        with no measured entry (the run then takes the rule's value from the loaded model)."""
        entry = defaults_by_name(self.model)
        if entry is None:
            return {"mi.rho": RULE_RHO, "caa.layer": None, "caa.multiplier": RULE_CAA_MULTIPLIER}[key]
        return {"mi.rho": entry.eval_rho, "caa.layer": entry.caa_layer, "caa.multiplier": entry.caa_multiplier}[key]

    @property
    def rho(self) -> float:
        return float(self.mi.rho if self.mi.rho is not None else self.default("mi.rho"))

    @property
    def multiplier(self) -> float:
        return float(self.caa.multiplier if self.caa.multiplier is not None else self.default("caa.multiplier"))

    def identity(self) -> dict[str, Any]:
        """What results depend on: everything except the limit (a rerun may extend it), the thread count and where
        the model runs (device, device_map).

        The dtype is the one the model is loaded in (so `dtype = None` on CUDA is "bfloat16"), recorded only when it
        is not float32: runs made before the key existed were float32 on the CPU, and their stored identities,
        which lack it, still match a float32 rerun. Tasks that score persona statements also record the held-out
        split (`statement_split`: offset and count per side, EVAL_STATEMENTS), so results scored on other
        statements are never resumed.
        """
        data = dataclasses.asdict(self)
        for key in ("limit", "threads", "device", "device_map", "dtype"):
            data.pop(key)
        dtype = str(self.torch_dtype).removeprefix("torch.")
        if dtype != "float32":
            data["dtype"] = dtype
        if self.task in STATEMENT_TASKS:
            data["statement_split"] = list(EVAL_STATEMENTS)
        return json.loads(json.dumps(data))


def parse_persona(persona: str) -> tuple[str, str]:
    """'extraversion:high' -> ('extraversion', 'high'), with a clear error otherwise."""
    trait, _, pole = persona.partition(":")
    try:
        check_trait(trait)
    except Exception:
        raise EvaluationError(f"persona {persona!r}: unknown trait; use TRAIT:POLE with TRAIT in {', '.join(TRAITS)}") from None
    if pole not in POLES:
        raise EvaluationError(f"persona {persona!r}: pole must be 'high' or 'low' (write e.g. 'extraversion:high')")
    return trait, pole


def load_config(path: str | Path | None = None, **overrides: Any) -> EvalConfig:
    """Read a TOML/YAML task config (or none) and apply CLI overrides (None values are ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read(Path(path))
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    if "task" not in data:
        raise EvaluationError("no task given: name it on the command line or as `task = ...` in the config file")
    options = data.get("options")
    if isinstance(options, dict) and options and set(options) <= set(TASK_NAMES):
        # one file for several tasks: [options.TASK] tables; take this task's
        data["options"] = dict(options.get(data["task"], {}))
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> EvalConfig:
    """Build a config, naming any unknown key and the allowed ones.

    A stored identity's `statement_split` is derived (`EvalConfig.identity` records the current one), so it is
    dropped here; a stored split that differs from the current one then shows as a difference on resume.
    """
    data = dict(data)
    data.pop("statement_split", None)
    sections = {"mi": MIConfig, "caa": CAAConfig}
    for name, cls in sections.items():
        if name in data:
            data[name] = cls(**_known(data[name], cls, f"[{name}]"))
    return EvalConfig(**_known(data, EvalConfig, "the config"))


def _known(data: Any, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise EvaluationError(f"{where} must be a table of settings, got {type(data).__name__}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise EvaluationError(f"unknown setting(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(allowed))}")
    return data


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EvaluationError(f"no config file {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise EvaluationError(f"{path}: the top level must be a mapping of settings")
            return data
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise EvaluationError(f"{path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith("yaml"):
            raise EvaluationError(f"{path} is not valid YAML: {exc}") from None
        raise
    raise EvaluationError(f"{path}: config files must end in .toml, .yaml or .yml")
