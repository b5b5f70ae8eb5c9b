"""The pieces every task shares: units of work, the task interface, and the run context (model, banks, methods)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from memory_inception.core.architecture import geometry, model_fingerprint
from memory_inception.core.banks import Bank, build_bank
from memory_inception.core.defaults import model_defaults
from memory_inception.core.sites import Sites, parse_layers
from memory_inception.core.steering import Steering
from memory_inception.datasets.traits import DESCRIPTORS, statements
from memory_inception.errors import EvaluationError
from memory_inception.evaluation.config import (
    CAA_STATEMENT_OFFSET,
    EVAL_STATEMENTS,
    STATEMENT_USES,
    EvalConfig,
    parse_persona,
)
from memory_inception.methods.caa.method import CAA
from memory_inception.methods.caa.pairs import STATEMENT_PROMPT, ContrastPair
from memory_inception.methods.caa.vectors import SteeringVector, build_steering_vector
from memory_inception.methods.interface import Messages, Method, Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import ASK, score_shared

ITEM_DIGITS = 6  # per-item values in records are rounded to this many decimals


@dataclass(frozen=True)
class Unit:
    """One resumable piece of work; `fields` are copied into its record."""

    key: str
    fields: dict[str, Any] = field(default_factory=dict)


class Task:
    """A task lists its units, runs one at a time into a JSON record, and reports on all records."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = type(None)
    needs_model: ClassVar[bool] = True

    def __init_subclass__(cls, *, name: str | None = None, options: type | None = None, **kwargs: Any) -> None:
        """`class T(Task, name="t", options=TOptions)`; the summary is the docstring's first paragraph."""
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
        if options is not None:
            cls.Options = options
        if "summary" not in cls.__dict__ and cls.__dict__.get("__doc__"):
            cls.summary = " ".join(cls.__doc__.strip().split("\n\n")[0].split()).rstrip(".")

    def options(self, cfg: EvalConfig) -> Any:
        """The task's own settings from `cfg.options`, unknown keys named."""
        allowed = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(cfg.options) - allowed)
        if unknown:
            raise EvaluationError(
                f"unknown option(s) {', '.join(unknown)} for task {self.name}; allowed: {', '.join(sorted(allowed))}"
            )
        return self.Options(**cfg.options)

    def units(self, ctx: Context) -> Iterable[Unit]:
        raise NotImplementedError

    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        raise NotImplementedError

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        """Markdown for this task's section; may write PNG plots into `out`."""
        raise NotImplementedError

    def unchanged_by(self, record: dict[str, Any], changed: tuple[str, ...]) -> bool:
        """Whether `record` would come out the same under a configuration that differs only in the identity keys
        `changed` (`runner.carry_over` keeps such records). By default only when nothing changed."""
        return not changed


class Context:
    """The model and everything built from it once per run: banks, steering vectors, judges (cached on disk)."""

    def __init__(self, cfg: EvalConfig, out: Path, model: Any = None, tokenizer: Any = None) -> None:
        self.cfg, self.out = cfg, out
        self._model, self._tokenizer = model, tokenizer
        self._banks: dict[str, Bank] = {}
        self._vectors: dict[str, SteeringVector] = {}
        self._judges: dict[str, Any] = {}
        self._encoder: Any = None

    # ---- model -------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._model is None:
            from transformers.utils import logging as hf_logging

            from memory_inception.hf.models import load_model

            hf_logging.disable_progress_bar()
            cfg = self.cfg
            self._model, self._tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, device_map=cfg.device_map)

    @property
    def model(self) -> Any:
        self._load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        self._load()
        return self._tokenizer

    # ---- guidance ----------------------------------------------------------------------------------
    @staticmethod
    def persona_text(persona: str) -> str:
        trait, pole = parse_persona(persona)
        return getattr(DESCRIPTORS[trait], pole)

    def bank(self, persona: str) -> Bank:
        """The persona's bank, built once and kept in `out/banks/` (reloaded with a fingerprint check)."""
        return self.text_bank(persona.replace(":", "-"), self.persona_text(persona))

    def artifact_name(self, name: str) -> str:
        """The file stem of a bank or vector built by this run: `name`, with the dtype appended when it is not
        float32 (`NAME-bfloat16`), so runs in different dtypes sharing a directory never read each other's files
        (the model fingerprint, which loading checks, does not depend on the dtype)."""
        dtype = str(self.cfg.torch_dtype).removeprefix("torch.")
        return name if dtype == "float32" else f"{name}-{dtype}"

    def text_bank(self, name: str, text: str, pooling: str = "concat") -> Bank:
        """A bank of `text` under `name`, built once per run directory (`out/banks/NAME[-mean][-DTYPE].safetensors`)."""
        key = name if pooling == "concat" else f"{name}-{pooling}"
        if key not in self._banks:
            path = self.out / "banks" / f"{self.artifact_name(key)}.safetensors"
            if path.is_file():
                bank = Bank.load(path, self.model)
                if bank.text != text:
                    raise EvaluationError(f"{path} holds a bank of different text; delete it to rebuild")
            else:
                bank = build_bank(self.model, self.tokenizer, text, sites=self.sites(), name=name, pooling=pooling)  # type: ignore[arg-type]
                _atomic(path, bank.save)
            self._banks[key] = bank
        return self._banks[key]

    def vector(self, trait: str) -> SteeringVector:
        """CAA steering vector for `trait` (high minus low), from persona statements disjoint from scoring
        (`out/vectors/TRAIT[-DTYPE].safetensors`)."""
        if trait not in self._vectors:
            path = self.out / "vectors" / f"{self.artifact_name(trait)}.safetensors"
            if path.is_file():
                self._vectors[trait] = SteeringVector.load(path, self.model)
            else:
                yes, no = statements(trait, self.cfg.caa.pairs, offset=CAA_STATEMENT_OFFSET)
                pairs = [
                    ContrastPair([{"role": "user", "content": STATEMENT_PROMPT.format(statement=s)}], a, b)
                    for group, (a, b) in ((yes, ("Yes", "No")), (no, ("No", "Yes")))
                    for s in group
                ]
                vector = build_steering_vector(self.model, self.tokenizer, pairs, layers=[self.caa_layer()])
                _atomic(path, vector.save)
                self._vectors[trait] = vector
        return self._vectors[trait]

    def caa_layer(self) -> int:
        layer = self.cfg.caa.layer if self.cfg.caa.layer is not None else self.cfg.default("caa.layer")
        if layer is None:  # a model without a measured entry: the defaults rule for the loaded model
            layer = model_defaults(geometry(self.model), fingerprint=model_fingerprint(self.model)).caa_layer
        return int(layer)

    def sites(self) -> Sites:
        """MI's sites in this run: `[mi] sites`, else every head of the table's layers for the model (where the
        eval's calibrated rho was measured; `core.defaults.ModelDefaults.eval_rho`), not the library's KV-group default."""
        spec = self.cfg.mi.sites
        if spec is None:
            layers = model_defaults(geometry(self.model), fingerprint=model_fingerprint(self.model)).layers
            return Sites({layer: None for layer in layers})
        if Path(spec).suffix == ".json":
            if not Path(spec).is_file():
                raise EvaluationError(f"[mi] sites: no file {spec} (give a selection JSON from `mi select`, or layers like '21-26')")
            return Sites.load(spec)
        return Sites({layer: None for layer in parse_layers(spec) or []})

    def method(self, name: str, persona: str | None) -> Method:
        """`name` (plain/prompting/caa/mi) steering toward `persona` ('trait:pole'); plain ignores the persona."""
        if name == "plain" or persona is None:
            return Plain()
        trait, pole = parse_persona(persona)
        if name == "prompting":
            return Prompting.from_bank(self.bank(persona))
        if name == "caa":
            sign = 1.0 if pole == "high" else -1.0
            return CAA(self.vector(trait), sign * self.cfg.multiplier, layers=[self.caa_layer()])
        if name == "mi":
            reference = None
            if self.cfg.mi.reference:
                reference = self.bank(f"{trait}:{'low' if pole == 'high' else 'high'}")
            steering = Steering(
                target=self.bank(persona),
                reference=reference,
                sites=self.sites(),
                rho=self.cfg.rho,
                schedule=self.cfg.mi.schedule,  # type: ignore[arg-type]
                prefill=self.cfg.mi.prefill,  # type: ignore[arg-type]
            )
            return MI(steering)
        raise EvaluationError(f"unknown method {name!r}")

    def cost(self, method: Method) -> dict[str, int]:
        return dataclasses.asdict(method.cost(self.model, self.tokenizer))

    # ---- judges ------------------------------------------------------------------------------------
    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from memory_inception.evaluation.judges import load_encoder

            self._encoder = load_encoder()
        return self._encoder

    def judge(self, trait: str) -> Any:
        """The offline trait judge (MiniLM + logistic regression on persona statements; deterministic)."""
        if trait not in self._judges:
            from memory_inception.evaluation.judges import TraitJudge

            self._judges[trait] = TraitJudge.fit(trait, self.encoder)
        return self._judges[trait]

    def seed(self, offset: int = 0) -> None:
        torch.manual_seed(self.cfg.seed + offset)


def _atomic(path: Path, save: Any) -> None:
    """Write through a temporary file and rename, so a parallel run never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
    save(tmp)
    os.replace(tmp, path)


def eval_statements(trait: str, limit: int | None) -> tuple[list[str], list[str]]:
    """Held-out persona statements for scoring: the first `limit` of EVAL_STATEMENTS per side (config.py says which
    ranges everything else reads; none overlaps)."""
    offset, count = EVAL_STATEMENTS
    return statements(trait, min(count, limit) if limit else count, offset=offset)


def split_note(count: int, offset: int | None = EVAL_STATEMENTS[0]) -> str:
    """One sentence for a report: which persona statements were scored, and whether anything else read them.

    `offset` None: records made before the offset was stored, which scored the first statements (0-29), the very
    ones that chose the default sites and rho.
    """
    if offset is None:
        return (f"Persona statements scored: indices 0-{count - 1} of each side per trait (the split used before "
                "2026-12-03). These are the statements that chose the default sites and rho "
                "(experiments/choose_defaults.py): not held out.")
    uses = "; ".join(f"{lo}-{hi - 1}: {who}" for who, (lo, hi) in STATEMENT_USES.items())
    clash = [who for who, (lo, hi) in STATEMENT_USES.items() if lo < offset + count and offset < hi]
    held = (f"held out from everything that chose a default or built a vector ({uses})" if not clash
            else f"NOT held out: {', '.join(clash)} read them too")
    return (f"Persona statements scored: indices {offset}-{offset + count - 1} of each side (matching / not matching "
            f"the high pole) per trait, {held}.")


def statement_logprobs(
    ctx: Context, method: Method, trait: str, limit: int | None, history: Messages = ()
) -> dict[str, Any]:
    """Score the held-out statements of `trait` as the reply to ASK after `history`, under `method`.

    Returns the record entry the report's intervals need: `offset` (the first statement's index per side), and
    per statement its mean per-token log-probability, `matching` (the high pole) and `nonmatching`. The margin
    (`analysis.statement_margin_of`) is what `methods.runners.statement_margin` returns for the same statements
    (the same scoring call).
    """
    yes, no = eval_statements(trait, limit)
    conversation = [*history, {"role": "user", "content": ASK}]
    lps = score_shared(ctx.model, ctx.tokenizer, method, conversation, yes + no, batch_size=2 * ctx.cfg.batch_size)
    means = [float(lp.mean()) for lp in lps]
    return {"offset": EVAL_STATEMENTS[0], "matching": means[: len(yes)], "nonmatching": means[len(yes):]}


def rounded(values: Any) -> Any:
    """Per-item values as stored in records: floats rounded to ITEM_DIGITS, lists and dicts recursively."""
    if isinstance(values, dict):
        return {k: rounded(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [rounded(v) for v in values]
    if isinstance(values, float):
        return round(values, ITEM_DIGITS)
    return values
