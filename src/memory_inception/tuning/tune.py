"""`mi.tune`: sites and strength for one bank on one model, from the bank's text alone, within a time budget.

The objective is the reply contrast (`tuning.objective`): how much a steering makes the model answer neutral
prompts as it does when the bank's text is its visible system prompt, against a reference text (the user's
reference bank, else a neutral text of the same length). The bound is fluency: the repeated-trigram rate of
the steered model's own greedy replies may exceed the plain model's on the same prompts by at most `tolerance`.

The search, cheapest evidence first:
1. every candidate (sites x rho) is scored by the contrast: one teacher-forced forward each, over the
   prompts' cached plain prefix;
2. candidates are checked for fluency in order of falling contrast, by generating replies. Repetition grows
   with rho at fixed sites, so a candidate is skipped when the same sites already failed at a rho no larger;
   the first candidate that passes is the best fluent one and the search stops.
When the budget runs out first, the best fluent candidate seen is kept, else the most fluent one checked, else
the weakest rho of the first candidate sites (and the record says so). Every trial is kept in a `Tuning`
record (prints as a table, saves as JSON), stored with the tuned bank: `Tuning.of(steering)`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from memory_inception.core.architecture import ModelGeometry, geometry, model_fingerprint
from memory_inception.core.banks import Bank, build_bank
from memory_inception.core.defaults import groups_to_heads, model_defaults
from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering
from memory_inception.errors import SteeringError
from memory_inception.methods.interface import Messages, Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.runners import generate
from memory_inception.tuning.fluency import distinct_n, repeated_ngram_rate
from memory_inception.tuning.objective import ReplyContrast, neutral_text
from memory_inception.tuning.selection import CALIBRATION_PROMPTS

logger = logging.getLogger(__name__)

# The fluency bound: the steered replies' repeated-trigram rate may exceed the plain model's by this much (tighter
# than the +0.05 the held-out report allows, because the tuning prompts are few and the replies short).
TOLERANCE = 0.03
CONTRAST_PROMPTS = 4  # the contrast is scored on the first prompts (one forward per candidate) ...
CONTRAST_TOKENS = 24  # ... over visibly prompted replies of this length
FLUENCY_TOKENS = 40  # length of the steered replies the fluency bound checks (on every prompt)
TIME_BUDGET_S = 120.0
RANKING_CUTS = (3, 6, 12)  # candidate site sets: the best k units of the model's measured ranking


def candidate_sites(geo: ModelGeometry, fingerprint: str | None = None) -> tuple[list[tuple[str, Sites]], tuple[float, ...]]:
    """The site sets and strengths `tune` tries on a model, default sites first.

    The model's default sites (`core.defaults`); the best k units of its measured KV-group ranking, where the
    table has one; its default band with every head, and the band restricted to each one KV group (on an
    unmeasured model the groups of a band differ most: on SmolLM2 one group of layers 21-26 steered and stayed
    fluent where another looped, reports/tune_develop.md).
    """
    d = model_defaults(geo, fingerprint=fingerprint)
    out: list[tuple[str, Sites]] = []

    def add(label: str, sites: Sites) -> None:
        if sites.heads and all(s != sites for _, s in out):
            out.append((label, sites))

    add("default sites", Sites(d.site_heads(geo)))
    for k in RANKING_CUTS:
        if len(d.ranking) >= k:
            add(f"best {k} groups", Sites(groups_to_heads(geo, list(d.ranking[:k]))))
    band = f"{d.layers[0]}-{d.layers[-1]}" if len(d.layers) > 1 else str(d.layers[0])
    add(f"layers {band}", Sites({layer: None for layer in d.layers}))
    for g in range(geo.num_kv_heads):
        add(f"layers {band} group {g}", Sites(groups_to_heads(geo, [(layer, g) for layer in d.layers])))
    return out, tuple(d.tune_rhos)


@dataclass(frozen=True)
class Trial:
    """One candidate: its sites, strength, contrast, and (once checked) the fluency of its replies."""

    label: str
    sites: dict[str, list[int] | None]
    rho: float
    contrast: float
    repetition: float | None = None
    distinct2: float | None = None
    feasible: bool | None = None  # None: not checked (pruned, or the budget ran out)
    sample: str = ""

    @property
    def steering_sites(self) -> Sites:
        return Sites({int(k): v for k, v in self.sites.items()})


@dataclass(frozen=True)
class Tuning:
    """What `tune` tried and what it chose (`chosen` indexes `trials`; `reason` says why it was chosen)."""

    target: str
    reference: str
    chosen: int
    reason: str
    trials: tuple[Trial, ...]
    plain_repetition: float
    bound: float
    seconds: float
    cpu_seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Trial:
        return self.trials[self.chosen]

    @property
    def sites(self) -> Sites:
        return self.best.steering_sites

    @property
    def rho(self) -> float:
        return self.best.rho

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trials"] = [asdict(t) for t in self.trials]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tuning:
        trials = tuple(Trial(**t) for t in data["trials"])
        return cls(**{**data, "trials": trials})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Tuning:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def of(cls, steering_or_bank: Steering | Bank) -> Tuning:
        """The record `tune` stored with a tuned bank (the target of the steering it returned)."""
        bank = steering_or_bank.target if isinstance(steering_or_bank, Steering) else steering_or_bank
        record = ((bank.options.get("tuned") or {}).get("record")) if bank is not None else None
        if record is None:
            raise SteeringError("this bank carries no tuning record; tune it with mi.tune(model, tokenizer, bank)")
        return cls.from_dict(record)

    def __str__(self) -> str:
        lines = [
            (f"tuning of {self.target!r} against {self.reference!r}: {self.seconds:.0f} s "
             f"({self.cpu_seconds:.0f} s CPU), fluency bound {self.bound:.3f} (plain {self.plain_repetition:.3f})"),
            f"chosen: {self.best.label} rho {self.best.rho:g} ({self.reason})",
            f"{'sites':<22} {'rho':>6} {'contrast':>9} {'rep3':>6} {'dist2':>6}  fluent",
        ]
        for i, t in enumerate(self.trials):
            rep = f"{t.repetition:.3f}" if t.repetition is not None else "-"
            d2 = f"{t.distinct2:.2f}" if t.distinct2 is not None else "-"
            ok = {True: "yes", False: "no", None: "-"}[t.feasible]
            mark = " <- chosen" if i == self.chosen else ""
            lines.append(f"{t.label:<22} {t.rho:>6g} {t.contrast:>+9.3f} {rep:>6} {d2:>6}  {ok}{mark}")
        return "\n".join(lines)


def _sites_dict(sites: Sites) -> dict[str, list[int] | None]:
    return {str(k): list(v) if v is not None else None for k, v in sites.heads.items()}


def _full_bank(model: nn.Module, tokenizer: Any, bank: Bank, layers: Sequence[int]) -> Bank:
    """`bank` holding every KV head of `layers` (rebuilt from its text with its own build options if needed)."""
    geo = geometry(model)
    if all(layer in bank.layers and len(bank.stored_kv_heads(layer)) == geo.num_kv_heads for layer in layers):
        return bank
    if not bank.text or bank.options.get("source") != "text":
        raise SteeringError(
            f"bank {bank.name!r} lacks layers the search needs and has no text to rebuild from; build it with "
            "layers='all' (mi.build_bank(model, tok, text, layers='all'))"
        )
    opts = bank.options
    return build_bank(
        model, tokenizer, bank.text, layers=sorted(set(layers)), name=bank.name,
        templates=tuple(opts.get("templates") or ("{descriptor}",)), variants=opts.get("variants", "full"),
        keep=opts.get("keep", "descriptor"), pooling=opts.get("pooling", "concat"),
        chat_template=bool(opts.get("chat_template", True)),
    )


def choose_fluent(
    trials: Sequence[Trial],
    check: Callable[[Trial], Trial],
    out_of_time: Callable[[], bool],
    ran_out: bool = False,
) -> tuple[list[Trial], int, str]:
    """Stage 2 of the search: check trials for fluency in order of falling contrast until one passes.

    `check(trial)` returns the trial with its fluency filled in. A trial is skipped when a trial with the same
    label (the same sites) already failed at a rho no larger. Returns the trials (checked ones updated), the
    index of the chosen one and why it was chosen (see the module docstring for the fallbacks).
    """
    trials = list(trials)
    if not trials:
        raise SteeringError("no trials to choose from")
    order = sorted(range(len(trials)), key=lambda i: (-trials[i].contrast, trials[i].rho))
    failed_at: dict[str, float] = {}  # label -> smallest rho found not fluent
    for i in order:
        t = trials[i]
        if t.label in failed_at and t.rho >= failed_at[t.label]:
            continue
        if out_of_time():
            ran_out = True
            break
        trials[i] = check(t)
        if trials[i].feasible:
            return trials, i, "the largest contrast within the fluency bound"
        failed_at[t.label] = min(failed_at.get(t.label, float("inf")), t.rho)
    checked = [i for i, t in enumerate(trials) if t.repetition is not None]
    if checked:
        chosen = min(checked, key=lambda i: (trials[i].repetition, -trials[i].contrast))
        why = "budget ran out before a fluent candidate" if ran_out else "no candidate within the fluency bound"
        return trials, chosen, f"{why}: the most fluent one checked"
    first = [i for i, t in enumerate(trials) if t.label == trials[0].label]
    return trials, min(first, key=lambda i: trials[i].rho), (
        "budget ran out before any fluency check: the weakest strength of the first candidate sites")


def tune(
    model: nn.Module,
    tokenizer: Any,
    target: Bank | str,
    *,
    reference: Bank | str | None = None,
    prompts: Sequence[str | Messages] | None = None,
    time_budget_s: float = TIME_BUDGET_S,
    tolerance: float = TOLERANCE,
    candidates: Sequence[tuple[str, Sites]] | None = None,
    rhos: Sequence[float] | None = None,
    progress: Callable[[Trial], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Steering:
    """Sites and strength for `target` on this model, from its text alone (see the module docstring).

    `target` (and `reference`) is a bank built from text, or the text. Returns the `Steering` to pass to
    `mi.inject`: its target is the bank restricted to the chosen sites, carrying them in `options["tuned"]`
    (so a saved bank steers with them: `mi.Steering(target=bank)`), with the full record (`Tuning.of`). With a
    reference, the steering holds it too (gated against the target). `candidates` are `(label, Sites)` to try
    (default: `candidate_sites`) and `rhos` the strengths (default: the model's, `core.defaults`). `clock` measures
    the budget (wall time; `time.process_time` counts this process's CPU time, for runs on a shared machine).
    """
    started, cpu_started, begun = time.monotonic(), time.process_time(), clock()
    deadline = begun + float(time_budget_s)
    geo, fingerprint = geometry(model), model_fingerprint(model)
    defaults = model_defaults(geo, fingerprint=fingerprint)
    if candidates is None or rhos is None:
        default_candidates, default_rhos = candidate_sites(geo, fingerprint)
        candidates = default_candidates if candidates is None else candidates
        rhos = default_rhos if rhos is None else rhos
    candidates = [(label, s) for label, s in candidates]
    if not candidates or not rhos:
        raise SteeringError("tune needs at least one candidate site set and one strength")
    layers = sorted({layer for _, s in candidates for layer in s.heads})
    target_bank = _full_bank(model, tokenizer, build_bank(model, tokenizer, target, layers=layers)
                             if isinstance(target, str) else target, layers)
    if not target_bank.text:
        raise SteeringError(f"bank {target_bank.name!r} has no text; tune reads the bank's text (build it from text)")
    reference_bank = None
    if reference is not None:
        reference_bank = _full_bank(model, tokenizer, build_bank(model, tokenizer, reference, layers=layers)
                                    if isinstance(reference, str) else reference, layers)
        if not reference_bank.text:
            raise SteeringError(f"reference bank {reference_bank.name!r} has no text; build it from text")
        reference_text = reference_bank.text
    else:
        reference_text = neutral_text(tokenizer, target_bank.text)
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p)
                     for p in (prompts if prompts is not None else CALIBRATION_PROMPTS)]
    if not conversations:
        raise SteeringError("tune needs at least one prompt")

    contrast = ReplyContrast(model, tokenizer, target_bank.text, reference_text, conversations[:CONTRAST_PROMPTS],
                             max_new_tokens=CONTRAST_TOKENS)
    plain = generate(model, tokenizer, Plain(), conversations, max_new_tokens=FLUENCY_TOKENS)
    plain_rep = float(np.mean([repeated_ngram_rate(r, 3) for r in plain]))
    bound = plain_rep + tolerance

    def steering_for(sites: Sites, rho: float) -> Steering:
        return Steering(target=target_bank, reference=reference_bank, sites=sites, rho=float(rho))

    # 1. contrast of every candidate (cheap: one forward each)
    trials: list[Trial] = []
    ran_out = False
    for label, sites in candidates:
        for rho in rhos:
            if clock() > deadline and trials:
                ran_out = True
                break
            trial = Trial(label, _sites_dict(sites), float(rho), contrast(steering_for(sites, rho)))
            trials.append(trial)
            if progress is not None:
                progress(trial)
        if ran_out:
            break

    # 2. fluency, in order of falling contrast, pruned by monotonicity in rho
    def check(t: Trial) -> Trial:
        replies = generate(model, tokenizer, MI(steering_for(t.steering_sites, t.rho)), conversations,
                           max_new_tokens=FLUENCY_TOKENS)
        rep = float(np.mean([repeated_ngram_rate(r, 3) for r in replies]))
        checked = replace(t, repetition=rep, distinct2=float(np.mean([distinct_n(r, 2) for r in replies])),
                          feasible=rep <= bound, sample=replies[0][:200])
        if progress is not None:
            progress(checked)
        return checked

    trials, chosen, reason = choose_fluent(trials, check, lambda: clock() > deadline, ran_out)
    if not reason.startswith("the largest"):
        logger.warning("tune(%s): %s", target_bank.name, reason)
    record = Tuning(
        target=target_bank.text, reference=reference_text, chosen=chosen, reason=reason, trials=tuple(trials),
        plain_repetition=plain_rep, bound=bound, seconds=time.monotonic() - started,
        cpu_seconds=time.process_time() - cpu_started,
        config={
            "prompts": len(conversations), "contrast_prompts": len(contrast.conversations), "tolerance": tolerance, "time_budget_s": time_budget_s,
            "contrast_tokens": CONTRAST_TOKENS, "fluency_tokens": FLUENCY_TOKENS, "rhos": [float(r) for r in rhos],
            "fingerprint": fingerprint, "defaults_source": defaults.source,
            "target_replies": contrast.target_replies, "reference_replies": contrast.reference_replies,
        },
    )
    best = record.best
    logger.info("tune(%s): %s rho %g, contrast %+.3f (%s)", target_bank.name, best.label, best.rho, best.contrast, reason)
    sites = best.steering_sites
    tuned = {"sites": best.sites, "rho": best.rho, "record": record.to_dict()}
    bank = target_bank.for_sites(sites, geo)
    bank.options = {**bank.options, "tuned": tuned}
    ref = reference_bank.for_sites(sites, geo) if reference_bank is not None else None
    return Steering(target=bank, reference=ref, sites=sites, rho=best.rho)
