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

from memory_inception.datasets.prompts import open_ended_prompts
from memory_inception.datasets.traits import TRAITS
from memory_inception.evaluation.analysis import (
    bars,
    control_and_drift,
    fmt,
    nanmean,
    scatter_control_drift,
    table,
)
from memory_inception.evaluation.base import Context, Task, Unit, eval_statements
from memory_inception.evaluation.config import EvalConfig, parse_persona
from memory_inception.evaluation.metrics import perplexity, relevance
from memory_inception.methods.runners import generate, statement_margin
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


def control_rows(values: dict[tuple[str, str], dict[str, float]]) -> list[dict[str, Any]]:
    """Per steered condition: control toward the pole and drift, against the plain row."""
    plain = values.get(("none", "plain"))
    rows = []
    if plain is None:
        return rows
    for (persona, method), steered in values.items():
        if method == "plain":
            continue
        trait, pole = parse_persona(persona)
        if trait not in steered or trait not in plain:
            continue
        control, drift = control_and_drift(steered, plain, trait, pole)
        rows.append({"persona": persona, "trait": trait, "pole": pole, "method": method, "control": control,
                     "drift": drift, "change": steered[trait] - plain[trait]})
    return rows


def summary_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Per method: mean control, mean drift, personas moved toward the pole, traits whose poles separate."""
    out = []
    present = {r["method"] for r in rows}
    for method in [m for m in ("prompting", "caa", "mi") if m in present] + sorted(present - {"prompting", "caa", "mi"}):
        mine = [r for r in rows if r["method"] == method]
        toward = sum(r["control"] > 0 for r in mine)
        changes = {(r["trait"], r["pole"]): r["change"] for r in mine}
        traits = {r["trait"] for r in mine}
        both = [t for t in traits if (t, "high") in changes and (t, "low") in changes]
        separate = sum(changes[(t, "high")] > changes[(t, "low")] for t in both)
        opposite = sum(changes[(t, "high")] > 0 > changes[(t, "low")] for t in both)
        out.append([method, fmt(nanmean([r["control"] for r in mine]), signed=True),
                    fmt(nanmean([r["drift"] for r in mine])), f"{toward}/{len(mine)}",
                    f"{separate}/{len(both)}", f"{opposite}/{len(both)}"])
    return out


def _persona_table(rows: list[dict[str, Any]], personas: list[str], methods: list[str]) -> str:
    lookup = {(r["persona"], r["method"]): r for r in rows}
    body = []
    for persona in personas:
        cells = []
        for method in methods:
            r = lookup.get((persona, method))
            cells.append(f"{fmt(r['control'], signed=True)} / {fmt(r['drift'])}" if r else "n/a")
        body.append([persona, *cells])
    return table(["persona", *[f"{m}: control / drift" for m in methods]], body)


SUMMARY_HEADER = ["method", "mean control", "mean drift", "personas moved toward the pole",
                  "traits: high above low", "traits: poles moved opposite ways"]


# ---- self-report --------------------------------------------------------------------------------------
@dataclass
class SelfReportOptions:
    likert_per_trait: int = 24  # IPIP-NEO-120 items per trait (24 = the whole inventory)
    statements: int = 15  # persona statements per side per trait for the margin


class BigFiveSelfReport(Task):
    name = "bigfive"
    summary = "Big Five self-report: IPIP-NEO-120 Likert (A-E) and persona-statement margins, per trait and pole"
    Options = SelfReportOptions

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
        yes, no = eval_statements(f["trait"], n)
        margin = statement_margin(ctx.model, ctx.tokenizer, method, yes, no, batch_size=2 * ctx.cfg.batch_size)
        return {"value": margin, "statements": len(yes) + len(no)}

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
            rows = control_rows(_by_condition(records, measure))
            if not rows:
                continue
            panels[label] = [(r["method"], r["persona"], r["control"], r["drift"]) for r in rows]
            parts += [f"### {label}", "", table(SUMMARY_HEADER, summary_rows(rows)), "",
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
            "absolute change of the other four traits. 'High above low': the high-pole persona scores the trait "
            "above the low-pole persona; 'opposite ways': high went up and low went down from plain."
        )
        return "\n".join(parts)


# ---- generation ---------------------------------------------------------------------------------------
@dataclass
class GenerationOptions:
    prompts: int = 8  # open-ended prompts per condition
    source: str = "vicuna"  # "vicuna" or "mt_bench" first turns (AlpacaEval is CC BY-NC, not shipped)


class BigFiveGeneration(Task):
    name = "bigfive-generation"
    summary = "Big Five in open-ended replies: offline trait judges on every trait, fluency, relevance"
    Options = GenerationOptions

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
            "repetition": nanmean([repeated_ngram_rate(r, 3) for r in replies]),
            "distinct2": nanmean([distinct_n(r, 2) for r in replies]),
            "compression": nanmean([compression_ratio(r) for r in replies]),
            "perplexity": statistics.median([p for p in ppl if math.isfinite(p)] or [math.nan]),
            "relevance": nanmean(relevance(ctx.encoder, prompts, replies)),
            "cost": ctx.cost(method),
            "prompts": prompts,
            "replies": replies,
        }

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        methods = [m for m in cfg.methods if m != "plain"]
        values = {(r["persona"], r["method"]): r["judge_high"] for r in records if r.get("kind") == "replies"}
        rows = control_rows(values)
        acc = next((r["accuracy"] for r in records if r.get("kind") == "judges"), {})
        parts = [f"## Big Five in generation ({cfg.model})", "",
                 "Trait judges (MiniLM embedding + logistic regression on persona statements), held-out accuracy: "
                 + ", ".join(f"{t} {a:.2f}" for t, a in acc.items()) + ". Values are the judge's probability of the "
                 "trait's high pole, averaged over replies.", ""]
        if rows:
            parts += [table(SUMMARY_HEADER, summary_rows(rows)), "", _persona_table(rows, cfg.personas, methods), ""]
            png = scatter_control_drift({"trait judge P(high)": [(r["method"], r["persona"], r["control"], r["drift"]) for r in rows]},
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
