"""Dialogue shift: the guidance changes mid-conversation (persona A, then persona B).

MI swaps banks and CAA swaps vectors without touching the transcript; prompting must either rewrite its system
message (the whole transcript is then prefilled again) or append a new visible instruction (the transcript keeps
both). Reported: alignment to B after the shift, leakage of A, and transcript, recompute and cache growth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory_inception.core.storage import prompt_kv_bytes
from memory_inception.datasets.prompts import open_ended_prompts
from memory_inception.errors import EvaluationError
from memory_inception.evaluation.analysis import (
    fmt,
    fmt_interval,
    lines,
    nanmean,
    paired_margin_shift,
    statement_margin_of,
    table,
)
from memory_inception.evaluation.base import Context, Task, Unit, rounded, split_note, statement_logprobs
from memory_inception.evaluation.config import EvalConfig, parse_persona
from memory_inception.methods.interface import Method, Plain
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import generate, render
from memory_inception.tuning.statistics import paired_difference


def variants(methods: list[str]) -> list[str]:
    """The runnable variants: prompting splits into rewriting its system message and appending a new one."""
    out = []
    for m in methods:
        out += ["prompting-rewrite", "prompting-append"] if m == "prompting" else [m]
    return out


def parse_pair(pair: str) -> tuple[str, str]:
    a, sep, b = pair.partition(">")
    if not sep:
        raise EvaluationError(f"dialogue pair {pair!r}: write 'PERSONA_A>PERSONA_B', e.g. 'extraversion:high>agreeableness:low'")
    parse_persona(a)
    parse_persona(b)
    return a, b


def phase(values: list[list[float]], turns_before: int, after: bool) -> list[float]:
    """Per-reply values (conversation x turn) of the turns after the shift, or before it, flattened in order."""
    return [v for row in values for v in (row[turns_before:] if after else row[:turns_before])]


def aligned(p_high: float, pole: str) -> float:
    """Judge probability of the given pole."""
    return p_high if pole == "high" else 1.0 - p_high


@dataclass
class DialogueOptions:
    pairs: list[str] = field(default_factory=lambda: ["extraversion:high>agreeableness:low", "agreeableness:low>extraversion:high"])
    conversations: int = 2
    turns_before: int = 2
    turns_after: int = 2
    statements: int = 6  # persona statements per side, scored after the last turn
    source: str = "mt_bench"


class DialogueShift(Task, name="dialogue", options=DialogueOptions):
    """Guidance changes mid-conversation: alignment to the new persona, leakage of the old, transcript and cache
    growth."""

    def units(self, ctx: Context) -> Iterable[Unit]:
        opts = self.options(ctx.cfg)
        for pair in opts.pairs:
            parse_pair(pair)
            for variant in variants(ctx.cfg.methods):
                yield Unit(f"{pair}|{variant}", {"pair": pair, "method": variant})

    def _method(self, ctx: Context, variant: str, persona: str) -> Method:
        if variant == "prompting-rewrite":
            return ctx.method("prompting", persona)
        if variant == "prompting-append":
            return Plain()  # the instructions are part of the visible messages
        return ctx.method(variant, persona)

    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        opts = self.options(ctx.cfg)
        a, b = parse_pair(unit.fields["pair"])
        variant = unit.fields["method"]
        tok = ctx.tokenizer
        turns = opts.turns_before + opts.turns_after
        n = min(opts.conversations, ctx.cfg.limit) if ctx.cfg.limit else opts.conversations
        prompts = open_ended_prompts(source=opts.source, categories=None, limit=n * turns)
        if len(prompts) < n * turns:
            raise EvaluationError(f"only {len(prompts)} {opts.source} prompts for {n} conversations of {turns} turns")
        guidance = {p: Prompting.from_bank(ctx.bank(p)).guidance for p in (a, b)}
        visible: list[list[dict[str, str]]] = [[] for _ in range(n)]
        if variant == "prompting-append":
            visible = [[{"role": "system", "content": guidance[a]}] for _ in range(n)]
        replies: list[list[str]] = [[] for _ in range(n)]
        recompute = 0
        for t in range(turns):
            phase = a if t < opts.turns_before else b
            method = self._method(ctx, variant, phase)
            if t == opts.turns_before:
                if variant == "prompting-rewrite":  # a new system message invalidates the whole cached transcript
                    recompute = sum(len(render(tok, method, conv + [{"role": "user", "content": "x"}])[0]) for conv in visible) // n
                if variant == "prompting-append":
                    for conv in visible:
                        conv.append({"role": "system", "content": guidance[b]})
            for c in range(n):
                visible[c].append({"role": "user", "content": prompts[c * turns + t]})
            ctx.seed(t)
            out = generate(ctx.model, tok, method, visible, max_new_tokens=ctx.cfg.max_new_tokens, batch_size=ctx.cfg.batch_size)
            for c, reply in enumerate(out):
                visible[c].append({"role": "assistant", "content": reply})
                replies[c].append(reply)
        (ta, pa), (tb, pb) = parse_persona(a), parse_persona(b)
        judge_a = [ctx.judge(ta).score(r) for r in replies]
        judge_b = [ctx.judge(tb).score(r) for r in replies]
        final = self._method(ctx, variant, b)
        margins, logprobs = {}, {}
        for label, (trait, pole) in (("b", (tb, pb)), ("a", (ta, pa))):
            sign = 1.0 if pole == "high" else -1.0
            entries = [statement_logprobs(ctx, final, trait, opts.statements, history=conv) for conv in visible]
            margins[label] = nanmean([sign * statement_margin_of(e) for e in entries])
            # per statement, the mean over conversations (the margin above is linear in these)
            logprobs[label] = {"offset": entries[0]["offset"], "conversations": len(entries),
                               **{side: [nanmean(col) for col in zip(*(e[side] for e in entries))]
                                  for side in ("matching", "nonmatching")}}
        tokens = [len(render(tok, final, conv + [{"role": "user", "content": "x"}])[0]) for conv in visible]
        plain_tokens = [len(render(tok, Plain(), [m for m in conv if m["role"] != "system"] + [{"role": "user", "content": "x"}])[0]) for conv in visible]
        transcript = round(nanmean(tokens))
        cost = ctx.cost(final)
        stored = cost["stored_bytes"]  # the live bank or vector; the other is swapped out
        return {
            "replies": replies,
            "align_a": [[aligned(p, pa) for p in row] for row in judge_a],
            "align_b": [[aligned(p, pb) for p in row] for row in judge_b],
            "margin_b": margins["b"],
            "margin_a": margins["a"],
            "logprobs_b": rounded(logprobs["b"]),
            "logprobs_a": rounded(logprobs["a"]),
            "transcript_tokens": transcript,
            "guidance_tokens": transcript - round(nanmean(plain_tokens)),
            "recompute_tokens": recompute,
            "cache_bytes": prompt_kv_bytes(ctx.model, transcript),
            "stored_bytes": stored,
            "turns_before": opts.turns_before,
        }

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        parts = [f"## Dialogue shift ({cfg.model})", "",
                 "Persona A guides the first turns, persona B the rest. Alignment: the trait judge's probability of "
                 "the persona's pole on the replies; changes are against the plain model on the same conversations. "
                 "Margins: statement margin toward each persona's pole after the last turn (transcript + a final "
                 "question), against plain. Tokens: the final transcript; 'guidance' = tokens the method added to it; "
                 "'recomputed' = tokens prefilled again at the shift because the cached prefix changed. Intervals: "
                 "alignment over the replies (conversation x turn, paired with plain's reply to the same prompt), "
                 "margins over the statements (paired with plain); 95% percentile bootstrap, 2000 resamples. With "
                 "few replies the alignment intervals are wide: a change whose interval covers 0 is not a shift.", ""]
        pairs = sorted({r["pair"] for r in records}, key=lambda p: [r["pair"] for r in records].index(p))
        for pair in pairs:
            rs = {r["method"]: r for r in records if r["pair"] == pair}
            plain = rs.get("plain")
            body = []
            per_turn: dict[str, tuple[list[int], list[float]]] = {}
            sign = {side: 1.0 if parse_persona(p)[1] == "high" else -1.0 for side, p in zip("ab", parse_pair(pair))}
            for method, r in rs.items():
                k = r["turns_before"]
                if method == "plain" or plain is None:
                    cells = ["" if plain else "n/a"] * 5
                else:
                    cells = [fmt_interval(paired_difference(phase(r[key], k, after), phase(plain[key], k, after)))
                             for key, after in (("align_a", False), ("align_b", True), ("align_a", True))]
                    cells += [fmt_interval(paired_margin_shift(plain[f"logprobs_{side}"], r[f"logprobs_{side}"], sign[side]))
                              if f"logprobs_{side}" in r and f"logprobs_{side}" in plain else
                              fmt(r[f"margin_{side}"] - plain[f"margin_{side}"], signed=True) + " (no interval)"
                              for side in ("b", "a")]
                body.append([method, *cells, r["transcript_tokens"], r["guidance_tokens"],
                             r["recompute_tokens"], f"{r['cache_bytes']:,}", f"{r['stored_bytes']:,}"])
                turns = len(r["align_b"][0])
                ys = [nanmean([row[t] for row in r["align_b"]]) - (nanmean([row[t] for row in plain["align_b"]]) if plain else 0.0)
                      for t in range(turns)]
                per_turn[method] = (list(range(1, turns + 1)), ys)
            first = next(iter(rs.values()))
            parts += [f"### {pair.replace('>', ' → ')}", "",
                      split_note(len(first.get("logprobs_b", {}).get("matching", [])) or self.options(cfg).statements,
                                 first.get("logprobs_b", {}).get("offset")), "",
                      table(["method", "A before shift", "B after shift", "A leaking after shift", "margin B", "margin A",
                             "transcript tokens", "guidance tokens", "recomputed at shift", "transcript KV bytes", "stored bytes"], body), ""]
            name = "dialogue_" + pair.replace(":", "-").replace(">", "_to_") + ".png"
            png = lines(per_turn, out / name, f"alignment to B per turn ({pair.replace('>', ' → ')})", "turn (shift after turn "
                        f"{next(iter(rs.values()))['turns_before']})", "judge P(B's pole) − plain")
            parts += [f"![alignment per turn]({png.name})", ""]
        return "\n".join(parts)
