"""Big Five tasks: self-report (IPIP-NEO-120 Likert and persona-statement margins) and open-ended generation.

For every persona (trait and pole) and method, control is the target trait's change from plain toward the pole
and drift the mean absolute change of the other four traits. Poles are reported separately: a method that moves
both poles the same way is not steering the trait.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memory_inception.datasets.prompts import open_ended_prompts
from memory_inception.datasets.traits import TRAITS
from memory_inception.errors import EvaluationError
from memory_inception.evaluation.analysis import (
    MOVED_RULE,
    ItemScores,
    above_zero,
    bars,
    below_zero,
    fmt,
    fmt_interval,
    nanmean,
    scatter_control_drift,
    statement_margin_of,
    table,
)
from memory_inception.evaluation.base import Context, Task, Unit, rounded, split_note, statement_logprobs
from memory_inception.evaluation.config import EvalConfig, parse_persona
from memory_inception.evaluation.metrics import perplexity, relevance
from memory_inception.methods.runners import generate
from memory_inception.tuning.fluency import (
    compression_ratio,
    distinct_n,
    repeated_ngram_rate,
)


def conditions(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(persona, method) pairs to run: the plain model once, then every steering method per persona."""
    out = [("none", "plain")]
    out += [(p, m) for p in cfg.personas for m in cfg.methods if m != "plain"]
    return out


def _by_condition(records: list[dict[str, Any]], measure: str) -> dict[tuple[str, str], dict[str, float]]:
    """{(persona, method): {trait: value}} for one measure."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for r in records:
        if r.get("measure") == measure:
            out.setdefault((r["persona"], r["method"]), {})[r["trait"]] = r["value"]
    return out


def _conditions(by: dict[tuple[str, str], Any], traits: list[str]) -> dict[tuple[str, str], int]:
    """Columns: plain first, then every condition that has all of plain's traits (a partial run leaves some out)."""
    conds = [("none", "plain")] + [c for c in by if c != ("none", "plain") and all(t in by[c] for t in traits)]
    return {c: i for i, c in enumerate(conds)}


def statement_scores(records: list[dict[str, Any]]) -> ItemScores | None:
    """Per-statement log-probs of every condition (`measure = "statements"`), or None when plain is missing or a
    record predates per-statement values (`logprobs`)."""
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in records:
        if r.get("measure") == "statements":
            by.setdefault((r["persona"], r["method"]), {})[r["trait"]] = r.get("logprobs")
    traits = [t for t in TRAITS if t in by.get(("none", "plain"), {})]
    if not traits:
        return None
    columns = _conditions(by, traits)
    entries = [by[c][t] for c in columns for t in traits]
    if any(e is None for e in entries) or len({(len(e["matching"]), len(e["nonmatching"]), e["offset"]) for e in entries}) > 1:
        return None
    scores = ItemScores(columns)
    for t in traits:
        scores.parts[t] = []
        for side, weight in (("matching", 1.0), ("nonmatching", -1.0)):
            scores.parts[t].append((len(scores.groups), weight, 0))
            scores.groups.append(np.array([by[c][t][side] for c in columns], dtype=float).T)
    return scores


def likert_scores(records: list[dict[str, Any]]) -> ItemScores | None:
    """Per-item keyed Likert scores of every condition, items paired by id; None when plain is missing."""
    by: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for r in records:
        if r.get("measure") == "likert":
            by.setdefault((r["persona"], r["method"]), {})[r["trait"]] = {i: e for i, e, _ in r["items"]}
    plain = by.get(("none", "plain"), {})
    traits = [t for t in TRAITS if t in plain]
    if not traits:
        return None
    columns = _conditions(by, traits)
    scores = ItemScores(columns)
    for t in traits:
        ids = sorted(plain[t])
        if any(sorted(by[c][t]) != ids for c in columns):
            raise EvaluationError(f"Likert records of {t} score different items under different conditions; "
                                  "rerun them with one likert_per_trait")
        scores.parts[t] = [(len(scores.groups), 1.0, 0)]
        scores.groups.append(np.array([[by[c][t][i] for c in columns] for i in ids], dtype=float))
    return scores


def judge_scores(records: list[dict[str, Any]]) -> ItemScores | None:
    """Per-prompt judge P(high) of every trait and condition (one group: the prompts, judged on every trait);
    None when plain is missing or a record predates `judge_items`."""
    by = {(r["persona"], r["method"]): r.get("judge_items") for r in records if r.get("kind") == "replies"}
    plain = by.get(("none", "plain"))
    if not plain or any(v is None for v in by.values()):
        return None
    traits = [t for t in TRAITS if t in plain]
    columns = _conditions(by, traits)
    scores = ItemScores(columns)
    width = len(columns)
    if len({len(by[c][t]) for t in traits for c in columns}) > 1:
        raise EvaluationError("generation records judge different numbers of prompts; rerun them with one `prompts`")
    scores.groups.append(np.array([by[c][t] for t in traits for c in columns], dtype=float).T)  # prompts x (trait, cond)
    scores.parts = {t: [(0, 1.0, i * width)] for i, t in enumerate(traits)}
    return scores


def control_rows(scores: ItemScores) -> list[dict[str, Any]]:
    """Per steered condition: control toward the pole and drift against plain, each with its paired interval."""
    rows = []
    for persona, method in scores.columns:
        if method == "plain":
            continue
        trait, pole = parse_persona(persona)
        if trait not in scores.parts:
            continue
        control = scores.interval(lambda m, p=persona, k=method: scores.control(m, p, k), [trait])
        others = scores.others(persona)
        drift = scores.interval(lambda m, p=persona, k=method: scores.drift(m, p, k), others) if others else None
        rows.append({"persona": persona, "trait": trait, "pole": pole, "method": method, "control": control,
                     "drift": drift, "change": control.estimate * (1.0 if pole == "high" else -1.0)})
    return rows


def summary_rows(rows: list[dict[str, Any]], scores: ItemScores) -> list[list[str]]:
    """Per method: mean control and mean drift over personas (intervals over all items), poles moved toward / away
    from the pole (the control's interval above / below 0), traits whose high pole is above the low one (interval
    of the difference above 0), and traits with both poles moved toward their pole."""
    present = {r["method"] for r in rows}
    order = [m for m in ("prompting", "caa", "mi") if m in present] + sorted(present - {"prompting", "caa", "mi"})
    return [_method_summary([r for r in rows if r["method"] == method], scores, method) for method in order]


def _method_summary(mine: list[dict[str, Any]], scores: ItemScores, method: str) -> list[str]:
    traits = list(scores.parts)
    personas = [r["persona"] for r in mine]
    mean_control = scores.interval(lambda m: float(np.mean([scores.control(m, p, method) for p in personas])), traits)
    mean_drift = (scores.interval(lambda m: nanmean([scores.drift(m, p, method) for p in personas]), traits)
                  if len(traits) > 1 else None)
    by = {(r["trait"], r["pole"]): r for r in mine}
    both = [t for t in traits if (t, "high") in by and (t, "low") in by]

    def apart(trait: str) -> bool:  # high-pole change minus low-pole change, its interval above 0
        return above_zero(scores.interval(lambda m: scores.change(m, trait, (f"{trait}:high", method))
                                          - scores.change(m, trait, (f"{trait}:low", method)), [trait]))

    moved_both = sum(above_zero(by[(t, "high")]["control"]) and above_zero(by[(t, "low")]["control"]) for t in both)
    return [method, fmt_interval(mean_control), fmt_interval(mean_drift),
            f"{sum(above_zero(r['control']) for r in mine)}/{len(mine)}",
            f"{sum(below_zero(r['control']) for r in mine)}/{len(mine)}",
            f"{sum(apart(t) for t in both)}/{len(both)}", f"{moved_both}/{len(both)}"]


def _persona_table(rows: list[dict[str, Any]], personas: list[str], methods: list[str]) -> str:
    lookup = {(r["persona"], r["method"]): r for r in rows}
    body = []
    for persona in personas:
        cells = []
        for method in methods:
            r = lookup.get((persona, method))
            cells.append(f"{fmt_interval(r['control'])} / {fmt_interval(r['drift'])}" if r else "n/a")
        body.append([persona, *cells])
    return table(["persona", *[f"{m}: control / drift [95% CI]" for m in methods]], body)


def _points(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    """(method, persona, control, drift) point estimates for the scatter plot."""
    return [(r["method"], r["persona"], r["control"].estimate, r["drift"].estimate if r["drift"] else math.nan)
            for r in rows]


SUMMARY_HEADER = ["method", "mean control [95% CI]", "mean drift [95% CI]", "poles moved toward the pole (CI > 0)",
                  "poles moved away (CI < 0)", "traits: high above low (CI > 0)", "traits: both poles moved (CIs > 0)"]


# ---- self-report --------------------------------------------------------------------------------------
@dataclass
class SelfReportOptions:
    likert_per_trait: int = 24  # IPIP-NEO-120 items per trait (24 = the whole inventory)
    statements: int = 15  # persona statements per side per trait for the margin


class BigFiveSelfReport(Task, name="bigfive", options=SelfReportOptions):
    """Big Five self-report: IPIP-NEO-120 Likert (A-E) and persona-statement margins, per trait and pole."""

    def units(self, ctx: Context) -> Iterable[Unit]:
        for persona, method in conditions(ctx.cfg):
            for measure in ("likert", "statements"):
                for trait in TRAITS:
                    yield Unit(f"{persona}|{method}|{measure}|{trait}",
                               {"persona": persona, "method": method, "measure": measure, "trait": trait})

    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        from memory_inception.evaluation.inventory import item_scores, load_inventory

        opts = self.options(ctx.cfg)
        f = unit.fields
        method = ctx.method(f["method"], None if f["persona"] == "none" else f["persona"])
        limit = ctx.cfg.limit
        if f["measure"] == "likert":
            n = min(opts.likert_per_trait, limit) if limit else opts.likert_per_trait
            items = [i for i in load_inventory(limit_per_trait=n) if i.trait == f["trait"]]
            scores = item_scores(ctx.model, ctx.tokenizer, method, items, batch_size=ctx.cfg.batch_size)
            return {
                "value": statistics.mean(s.expected for s in scores),
                "argmax_value": statistics.mean(s.argmax_score for s in scores),
                "option_mass": statistics.mean(s.option_mass for s in scores),
                "items": [[s.id, round(s.expected, 4), round(s.option_mass, 4)] for s in scores],
            }
        n = min(opts.statements, limit) if limit else opts.statements
        entry = statement_logprobs(ctx, method, f["trait"], n)
        return {"value": statement_margin_of(entry), "statements": len(entry["matching"]) + len(entry["nonmatching"]),
                "logprobs": rounded(entry)}

    def unchanged_by(self, record: dict[str, Any], changed: tuple[str, ...]) -> bool:
        """Likert units read no persona statements: a new statement split leaves them as they are."""
        return set(changed) <= {"statement_split"} and record.get("measure") == "likert"

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        methods = [m for m in cfg.methods if m != "plain"]
        parts = [f"## Big Five self-report ({cfg.model})", ""]
        plain_l = _by_condition(records, "likert").get(("none", "plain"), {})
        plain_s = _by_condition(records, "statements").get(("none", "plain"), {})
        masses = {r["trait"]: r["option_mass"] for r in records if r.get("measure") == "likert" and r["method"] == "plain"}
        parts += [
            "Plain model profile: Likert score (1-5, keyed, expectation under the letter probabilities), the "
            "probability mass the model puts on the five letters, and the statement margin (mean per-token "
            "log-probability of trait-matching minus non-matching persona statements as its own reply).", "",
            table(["trait", "Likert", "letter mass", "statement margin"],
                  [[t, fmt(plain_l.get(t, math.nan), 2), fmt(masses.get(t, math.nan), 2), fmt(plain_s.get(t, math.nan), 3, True)]
                   for t in TRAITS]), "",
        ]
        panels = {}
        for measure, label in (("likert", "Likert score (1-5)"), ("statements", "statement margin (nats/token)")):
            if not _by_condition(records, measure):
                continue
            scores = likert_scores(records) if measure == "likert" else statement_scores(records)
            parts += [f"### {label}", ""]
            if measure == "statements":
                first = next(r for r in records if r.get("measure") == "statements")
                parts += [split_note(first["statements"] // 2, (first.get("logprobs") or {}).get("offset")), ""]
            if scores is None:
                parts += ["No intervals: these records predate per-item values (or plain is missing); they are left "
                          "out. Rerun the task to score them.", ""]
                continue
            rows = control_rows(scores)
            if not rows:
                continue
            panels[label] = _points(rows)
            parts += [table(SUMMARY_HEADER, summary_rows(rows, scores)), "",
                      _persona_table(rows, cfg.personas, methods), ""]
            groups: dict[str, dict[str, float]] = {}
            for r in rows:
                groups.setdefault(r["persona"], {})[r["method"]] = r["change"]
            png = bars(groups, out / f"bigfive_{measure}_poles.png",
                       f"{label}: change of the target trait from plain, per pole", "change from plain")
            parts += [f"![{measure} per pole]({png.name})", ""]
        if panels:
            png = scatter_control_drift(panels, out / "bigfive_control_drift.png", f"Big Five self-report, {cfg.model}")
            parts += [f"![control vs drift]({png.name})", ""]
        parts.append(
            "Control: change of the target trait from plain, signed so that toward the pole is positive; drift: mean "
            "absolute change of the other four traits (never below 0, so its interval says how large, not whether; the "
            "bootstrap of an absolute value is biased upward, so that interval can lie above the point estimate). "
            + MOVED_RULE
        )
        return "\n".join(parts)


# ---- generation ---------------------------------------------------------------------------------------
@dataclass
class GenerationOptions:
    prompts: int = 8  # open-ended prompts per condition
    source: str = "vicuna"  # "vicuna" or "mt_bench" first turns (AlpacaEval is CC BY-NC, not shipped)


class BigFiveGeneration(Task, name="bigfive-generation", options=GenerationOptions):
    """Big Five in open-ended replies: offline trait judges on every trait, fluency, relevance."""

    def units(self, ctx: Context) -> Iterable[Unit]:
        yield Unit("judges", {"kind": "judges"})
        for persona, method in conditions(ctx.cfg):
            yield Unit(f"{persona}|{method}", {"kind": "replies", "persona": persona, "method": method})

    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        opts = self.options(ctx.cfg)
        if unit.fields["kind"] == "judges":
            return {"accuracy": {t: ctx.judge(t).accuracy for t in TRAITS}}
        f = unit.fields
        persona = None if f["persona"] == "none" else f["persona"]
        method = ctx.method(f["method"], persona)
        n = min(opts.prompts, ctx.cfg.limit) if ctx.cfg.limit else opts.prompts
        prompts = open_ended_prompts(source=opts.source, limit=n)
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        ctx.seed()
        replies = generate(ctx.model, ctx.tokenizer, method, conversations,
                           max_new_tokens=ctx.cfg.max_new_tokens, batch_size=ctx.cfg.batch_size)
        judged = {t: ctx.judge(t).score(replies) for t in TRAITS}
        ppl = perplexity(ctx.model, ctx.tokenizer, conversations, replies, batch_size=ctx.cfg.batch_size)
        return {
            "judge_high": {t: nanmean(v) for t, v in judged.items()},
            "judge_items": rounded(judged),  # per prompt, in prompt order
            "repetition": nanmean([repeated_ngram_rate(r, 3) for r in replies]),
            "distinct2": nanmean([distinct_n(r, 2) for r in replies]),
            "compression": nanmean([compression_ratio(r) for r in replies]),
            "perplexity": statistics.median([p for p in ppl if math.isfinite(p)] or [math.nan]),
            "relevance": nanmean(relevance(ctx.encoder, prompts, replies)),
            "cost": ctx.cost(method),
            "prompts": prompts,
            "replies": replies,
        }

    @staticmethod
    def add_judge_items(records: list[dict[str, Any]], judges: dict[str, Any]) -> int:
        """Give records made before `judge_items` was stored their per-prompt judge probabilities, by judging the
        stored replies again with `judges` ({trait: TraitJudge}); returns how many records changed.

        The judges are deterministic, so the new values must average to the stored `judge_high`; a record where
        they do not (another judge) is refused rather than mixed.
        """
        changed = 0
        for r in records:
            if r.get("kind") != "replies" or "judge_items" in r:
                continue
            items = {t: judges[t].score(r["replies"]) for t in r["judge_high"]}
            for t, values in items.items():
                if abs(nanmean(values) - r["judge_high"][t]) > 1e-6:  # float noise of the encoder, not another judge
                    raise EvaluationError(
                        f"{r['unit']}: judging the stored replies again gives {t} {nanmean(values):.6f}, the record "
                        f"says {r['judge_high'][t]:.6f}; these are not the judges it was made with"
                    )
            r["judge_items"] = rounded(items)
            changed += 1
        return changed

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        methods = [m for m in cfg.methods if m != "plain"]
        scores = judge_scores(records)
        acc = next((r["accuracy"] for r in records if r.get("kind") == "judges"), {})
        parts = [f"## Big Five in generation ({cfg.model})", "",
                 "Trait judges (MiniLM embedding + logistic regression on persona statements), held-out accuracy: "
                 + ", ".join(f"{t} {a:.2f}" for t, a in acc.items()) + ". Values are the judge's probability of the "
                 "trait's high pole, averaged over replies; intervals resample the prompts (the same prompts under "
                 "every condition, so paired). " + MOVED_RULE, ""]
        if scores is None:
            parts += ["No intervals: these records predate per-prompt judge values (`judge_items`); control and "
                      "drift are left out.", ""]
        elif rows := control_rows(scores):
            parts += [table(SUMMARY_HEADER, summary_rows(rows, scores)), "", _persona_table(rows, cfg.personas, methods), ""]
            png = scatter_control_drift({"trait judge P(high)": _points(rows)},
                                        out / "generation_control_drift.png", f"Big Five in generation, {cfg.model}")
            parts += [f"![control vs drift]({png.name})", ""]
        flu: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            if r.get("kind") == "replies":
                flu.setdefault(r["method"], []).append(r)
        body = []
        for method, rs in flu.items():
            body.append([method, len(rs), fmt(nanmean([r["repetition"] for r in rs])), fmt(nanmean([r["distinct2"] for r in rs]), 2),
                         fmt(nanmean([r["compression"] for r in rs]), 2), fmt(nanmean([r["perplexity"] for r in rs]), 2),
                         fmt(nanmean([r["relevance"] for r in rs]), 2)])
        parts += ["Fluency and relevance, mean over personas (repeated 3-grams and compression: lower is better; "
                  "perplexity of the reply under the plain model; relevance: cosine of prompt and reply embeddings):", "",
                  table(["method", "conditions", "repeated 3-grams", "distinct-2", "compression", "perplexity", "relevance"], body), ""]
        sample = next((r for r in records if r.get("kind") == "replies" and r["method"] == "mi"), None)
        if sample:
            plain = next((r for r in records if r.get("kind") == "replies" and r["method"] == "plain"), None)
            parts += [f"Sample, first prompt: {sample['prompts'][0]!r}", ""]
            if plain:
                parts.append(f"- plain: {plain['replies'][0][:220]!r}")
            for r in records:
                if r.get("kind") == "replies" and r["persona"] == sample["persona"] and r["method"] != "plain":
                    parts.append(f"- {r['method']} ({r['persona']}): {r['replies'][0][:220]!r}")
            parts.append("")
        return "\n".join(parts)
