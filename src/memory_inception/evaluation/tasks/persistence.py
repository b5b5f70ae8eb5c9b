"""Long-context persistence: does the guidance still hold after a long neutral history?

The history is the plain model's own replies to open-ended prompts, cut at whole turns to each length. Prompting
puts its guidance before the history (where it was given); MI and CAA carry it outside the transcript.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory_inception.datasets.prompts import open_ended_prompts
from memory_inception.evaluation.analysis import fmt, lines, nanmean, table
from memory_inception.evaluation.base import Context, Task, Unit, eval_statements
from memory_inception.evaluation.config import EvalConfig, parse_persona
from memory_inception.evaluation.runner import read_records, records_path
from memory_inception.methods.interface import Plain
from memory_inception.methods.runners import ASK, generate, render, score_shared

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


class Persistence(Task):
    name = "persistence"
    summary = "Guidance after a long neutral history (>= 2k tokens): persistence curve per method"
    Options = PersistenceOptions

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
        yes, no = eval_statements(trait, opts.statements)
        lps = score_shared(ctx.model, ctx.tokenizer, method, msgs + [{"role": "user", "content": ASK}], yes + no,
                           batch_size=2 * ctx.cfg.batch_size)
        means = [float(lp.mean()) for lp in lps]
        sign = 1.0 if pole == "high" else -1.0
        result: dict[str, Any] = {
            "history_tokens": tokens,
            "margin": sign * (sum(means[: len(yes)]) / len(yes) - sum(means[len(yes):]) / len(no)),
        }
        if opts.probe:
            ctx.seed()
            [reply] = generate(ctx.model, ctx.tokenizer, method, [msgs + [{"role": "user", "content": PROBE}]],
                               max_new_tokens=ctx.cfg.max_new_tokens)
            p = ctx.judge(trait).score([reply])[0]
            result |= {"reply": reply, "judge_pole": p if pole == "high" else 1.0 - p}
        return result

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        points = [r for r in records if r.get("kind") == "point"]
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
                control = nanmean([r["margin"] - plain[(r["persona"], length)]["margin"] for r in rs])
                judged = nanmean([r.get("judge_pole", float("nan")) - plain[(r["persona"], length)].get("judge_pole", float("nan")) for r in rs])
                tokens = nanmean([r["history_tokens"] for r in rs])
                xs.append(tokens)
                ys.append(control)
                body.append([method, length, round(tokens), fmt(control, signed=True), fmt(judged, signed=True), len(rs)])
            series[method] = (xs, ys)
        parts += [table(["method", "history budget", "history tokens (actual)", "margin control", "judge control", "personas"], body), ""]
        if series:
            png = lines(series, out / "persistence.png", f"persistence of the guidance, {cfg.model}",
                        "history tokens before the question", "statement margin toward the pole − plain")
            parts += [f"![persistence]({png.name})", ""]
        return "\n".join(parts)
