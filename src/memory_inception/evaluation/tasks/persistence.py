"""Long-context persistence: does the guidance still hold after a long neutral history?

The history is the plain model's own replies to open-ended prompts, cut at whole turns to each length. Prompting
puts its guidance before the history (where it was given); MI and CAA carry it outside the transcript.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memory_inception.datasets.prompts import open_ended_prompts
from memory_inception.evaluation.analysis import fmt, fmt_interval, lines, nanmean, statement_margin_of, table
from memory_inception.evaluation.base import Context, Task, Unit, rounded, split_note, statement_logprobs
from memory_inception.evaluation.config import EvalConfig, parse_persona
from memory_inception.evaluation.runner import read_records, records_path
from memory_inception.methods.interface import Plain
from memory_inception.methods.runners import ASK, generate, render
from memory_inception.tuning.statistics import Interval, bootstrap

PROBE = "Describe how you like to spend a free evening."


@dataclass
class PersistenceOptions:
    personas: list[str] = field(default_factory=lambda: ["extraversion:high", "agreeableness:low"])
    lengths: list[int] = field(default_factory=lambda: [0, 512, 1024, 2048])  # history tokens (whole turns, at most)
    statements: int = 10  # persona statements per side after the history
    history_turns: int = 24
    history_reply_tokens: int = 128
    probe: bool = True  # also generate one reply to PROBE after the history and judge it


def history_messages(turns: list[list[str]]) -> list[dict[str, str]]:
    out = []
    for user, reply in turns:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return out


def cut(tokenizer: Any, turns: list[list[str]], length: int) -> tuple[list[dict[str, str]], int]:
    """The longest prefix of whole turns whose rendering adds at most `length` tokens; and that token count."""
    ask = [{"role": "user", "content": ASK}]
    base = len(render(tokenizer, Plain(), ask)[0])
    best: tuple[list[dict[str, str]], int] = ([], 0)
    for k in range(1, len(turns) + 1):
        msgs = history_messages(turns[:k])
        n = len(render(tokenizer, Plain(), msgs + ask)[0]) - base
        if n > length:
            break
        best = (msgs, n)
    return best


def margin_control(rs: list[dict[str, Any]], plain: dict[tuple[str, int], dict[str, Any]], length: int) -> Interval:
    """Mean over personas of the statement margin toward the pole minus plain's at the same history, with its
    paired bootstrap interval over the statements (each persona's own, resampled on their own)."""
    if not all("logprobs" in r and "logprobs" in plain[(r["persona"], length)] for r in rs):
        value = nanmean([r["margin"] - plain[(r["persona"], length)]["margin"] for r in rs])
        return Interval(value, math.nan, math.nan)  # records without per-statement values: no interval
    groups, signs = [], []
    for r in rs:
        base = plain[(r["persona"], length)]["logprobs"]
        signs.append(1.0 if parse_persona(r["persona"])[1] == "high" else -1.0)
        groups += [np.stack([np.asarray(base[side], float), np.asarray(r["logprobs"][side], float)], 1)
                   for side in ("matching", "nonmatching")]

    def stat(*g: np.ndarray) -> float:
        return float(np.mean([s * ((g[2 * i][:, 1] - g[2 * i][:, 0]).mean() - (g[2 * i + 1][:, 1] - g[2 * i + 1][:, 0]).mean())
                              for i, s in enumerate(signs)]))

    return bootstrap(stat, *groups)


class Persistence(Task, name="persistence", options=PersistenceOptions):
    """Guidance after a long neutral history (>= 2k tokens): persistence curve per method."""

    def units(self, ctx: Context) -> Iterable[Unit]:
        opts = self.options(ctx.cfg)
        yield Unit("history", {"kind": "history"})
        personas = opts.personas[: ctx.cfg.limit] if ctx.cfg.limit else opts.personas
        for persona in personas:
            parse_persona(persona)
            for length in opts.lengths:
                for method in ctx.cfg.methods:
                    yield Unit(f"{persona}|{method}|{length}",
                               {"kind": "point", "persona": persona, "method": method, "length": length})

    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        opts = self.options(ctx.cfg)
        if unit.fields["kind"] == "history":
            prompts = open_ended_prompts(source="vicuna", categories=None, limit=opts.history_turns)
            ctx.seed()
            replies = generate(ctx.model, ctx.tokenizer, Plain(), [[{"role": "user", "content": p}] for p in prompts],
                               max_new_tokens=opts.history_reply_tokens, batch_size=ctx.cfg.batch_size)
            return {"turns": [[p, r] for p, r in zip(prompts, replies)]}
        history = next(r for r in read_records(records_path(ctx.out, self.name)) if r["unit"] == "history")
        f = unit.fields
        trait, pole = parse_persona(f["persona"])
        method = ctx.method(f["method"], f["persona"])
        msgs, tokens = cut(ctx.tokenizer, history["turns"], f["length"])
        entry = statement_logprobs(ctx, method, trait, opts.statements, history=msgs)
        sign = 1.0 if pole == "high" else -1.0
        result: dict[str, Any] = {
            "history_tokens": tokens,
            "margin": sign * statement_margin_of(entry),  # toward the pole
            "logprobs": rounded(entry),
        }
        if opts.probe:
            ctx.seed()
            [reply] = generate(ctx.model, ctx.tokenizer, method, [msgs + [{"role": "user", "content": PROBE}]],
                               max_new_tokens=ctx.cfg.max_new_tokens)
            p = ctx.judge(trait).score([reply])[0]
            result |= {"reply": reply, "judge_pole": p if pole == "high" else 1.0 - p}
        return result

    def unchanged_by(self, record: dict[str, Any], changed: tuple[str, ...]) -> bool:
        """The history (the plain model's replies) reads no persona statements, lengths or personas: a new split,
        other lengths, personas or statement count leave it as it is. A point depends on its own length only, so
        other lengths alone leave it too (the report reads the configured lengths)."""
        if record.get("kind") == "point":
            return set(changed) == {"options.lengths"}
        kept = {"statement_split", "options.lengths", "options.statements", "options.personas"}
        return set(changed) <= kept and record.get("kind") == "history"

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        configured = set(self.options(cfg).lengths)
        points = [r for r in records if r.get("kind") == "point" and r["length"] in configured]
        plain = {(r["persona"], r["length"]): r for r in points if r["method"] == "plain"}
        methods = [m for m in cfg.methods if m != "plain"]
        lengths = sorted({r["length"] for r in points})
        parts = [f"## Long-context persistence ({cfg.model})", "",
                 "A neutral history (the plain model's own replies to Vicuna-bench prompts) of up to N tokens, then the "
                 "persona statements scored as the reply to a question about itself. Control: statement margin toward "
                 "the persona's pole minus plain's at the same history; judge: the trait judge's probability of the "
                 "pole on one generated reply to a probe question, minus plain's.", ""]
        series: dict[str, tuple[list[float], list[float]]] = {}
        body = []
        for method in methods:
            xs, ys = [], []
            for length in lengths:
                rs = [r for r in points if r["method"] == method and r["length"] == length and (r["persona"], length) in plain]
                if not rs:
                    continue
                control = margin_control(rs, plain, length)
                judged = nanmean([r.get("judge_pole", float("nan")) - plain[(r["persona"], length)].get("judge_pole", float("nan")) for r in rs])
                tokens = nanmean([r["history_tokens"] for r in rs])
                xs.append(tokens)
                ys.append(control)
                body.append([method, length, round(tokens), fmt_interval(control), fmt(judged, signed=True), len(rs)])
                ys[-1] = control.estimate
            series[method] = (xs, ys)
        first = points[0] if points else {}
        parts += [split_note(len(first.get("logprobs", {}).get("matching", [])) or self.options(cfg).statements,
                             first.get("logprobs", {}).get("offset")), "",
                  table(["method", "history budget", "history tokens (actual)", "margin control [95% CI]",
                         "judge control (one reply)", "personas"], body), "",
                  "Margin control intervals: 95% percentile bootstrap over the statements of each persona (2000 "
                  "resamples), paired with plain at the same history; the judge control rests on one reply per "
                  "persona and has none.", ""]
        if series:
            png = lines(series, out / "persistence.png", f"persistence of the guidance, {cfg.model}",
                        "history tokens before the question", "statement margin toward the pole − plain")
            parts += [f"![persistence]({png.name})", ""]
        return "\n".join(parts)
