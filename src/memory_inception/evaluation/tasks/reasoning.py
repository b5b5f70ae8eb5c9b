"""Structured reasoning: HARDMath and PHYSICS with heuristic guidance, by problem type and answer mode.

Each problem is routed to its type's process checklist (the oracle type, or keywords), plus auxiliary texts
(planner, algebra hygiene, final-answer checker). Prompting shows them as one system message; MI reads the
type's bank as the target and the auxiliary banks with their gains. Cells are type x mode (direct answer, or
step-by-step with a larger budget); the table gives accuracy per method and MI minus prompting per cell.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from memory_inception.core.architecture import geometry
from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering
from memory_inception.errors import EvaluationError
from memory_inception.evaluation.analysis import fmt, nanmean, table
from memory_inception.evaluation.base import Context, Task, Unit
from memory_inception.evaluation.config import EvalConfig
from memory_inception.methods.interface import Method, Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import generate

REASONING_METHODS = ("plain", "prompting", "mi")
POOLING_TEXT = {"concat": "'mi' with one slot per token (concat pooling)", "mean": "'mi-mean' with one slot per bank (mean pooling)"}
CHUNK = 4


def method_labels(methods: list[str], poolings: list[str]) -> list[str]:
    """Cell methods: plain and prompting as named, MI once per pooling ("mi" = concat, "mi-mean")."""
    out = []
    for m in methods:
        if m == "mi":
            out += ["mi" if p == "concat" else f"mi-{p}" for p in poolings]
        elif m in REASONING_METHODS:
            out.append(m)
    return out


@dataclass
class ReasoningOptions:
    per_cell: int = 4  # problems per type (the same problems in every mode and method)
    modes: list[str] = field(default_factory=lambda: ["direct", "steps"])
    routing: str = "oracle"  # "oracle" (the known type) or "keywords"
    auxiliary: list[str] = field(default_factory=lambda: ["planner", "algebra", "checker"])
    aux_gains: dict[str, float] = field(default_factory=dict)  # overrides heuristics.DEFAULT_AUX_GAINS
    poolings: list[str] = field(default_factory=lambda: ["concat", "mean"])  # MI banks: a slot per token, or one per bank
    direct_tokens: int | None = None  # None: heuristics.MODE_TOKENS
    steps_tokens: int | None = None
    likelihood_per_type: int = 8  # problems per type whose reference solution is scored (0: none)
    solution_tokens: int = 384  # the reference solution's first tokens scored as the step-by-step reply


def _grade_fields(problem: Any, reply: str, timeout: float | None = None) -> dict[str, Any]:
    """One reply's grade as a cell row stores it (``status``: ok / show-that / timeout / error).

    ``timeout``: seconds for the whole grading call (None: the grader's default).
    """
    from memory_inception.evaluation.grading import grade

    g = grade(problem, reply) if timeout is None else grade(problem, reply, timeout=timeout)
    return {"extracted": g.extracted, "correct": g.correct, "score": g.score, "detail": g.detail[:300],
            "status": g.status, "stated": g.stated, "step_timeouts": g.step_timeouts}


def status_of(row: dict[str, Any]) -> str:
    """A stored row's grading status; rows graded before statuses existed are "ok"."""
    return row.get("status", "ok")


def graded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with a verdict (status "ok"): show-that problems, timeouts and errors are counted apart."""
    return [r for r in rows if status_of(r) == "ok"]


def sample(problems: list[Any], kinds: list[str], per_cell: int, seed: int) -> dict[str, list[Any]]:
    """`per_cell` problems of each type, drawn with `seed`, kept in dataset order."""
    out = {}
    for kind in kinds:
        pool = [p for p in problems if p.kind == kind]
        rng = random.Random(f"{seed}-{kind}")
        picked = sorted(rng.sample(range(len(pool)), min(per_cell, len(pool))))
        out[kind] = [pool[i] for i in picked]
    return out


class ReasoningTask(Task):
    benchmark: ClassVar[str]
    Options = ReasoningOptions

    def _problems(self) -> tuple[list[Any], list[str]]:
        from memory_inception.datasets.reasoning_problems import (
            hardmath_kinds,
            load_hardmath,
            load_physics,
            physics_subjects,
        )

        if self.benchmark == "hardmath":
            return load_hardmath(), hardmath_kinds()
        return load_physics(), physics_subjects()

    def _chosen(self, ids: list[str]) -> list[Any]:
        by_id = {p.id: p for p in self._problems()[0]}
        return [by_id[i] for i in ids]

    def regrade(self, records: list[dict[str, Any]], timeout: float | None = None) -> list[str]:
        """Grade the cells' stored replies again with the current grader, in place; one line per changed verdict
        or status (``timeout``: seconds per grading call, None for the grader's default)."""
        changed = []
        for record in records:
            if record.get("kind") != "cell":
                continue
            for row, problem in zip(record["rows"], self._chosen([r["id"] for r in record["rows"]])):
                fields = _grade_fields(problem, row["reply"], timeout)
                if fields["correct"] != row["correct"] or fields["status"] != status_of(row):
                    status = "" if fields["status"] == status_of(row) else f" [{status_of(row)} -> {fields['status']}]"
                    changed.append(f"{record['unit']} {row['id']}: {row['correct']} -> {fields['correct']}{status} "
                                   f"({fields['detail'][:120]})")
                row.update(fields)
            record["correct"] = sum(r["correct"] for r in record["rows"])
            record["graded"] = len(graded(record["rows"]))
        return changed

    def _check(self, opts: ReasoningOptions) -> None:
        from memory_inception.evaluation.heuristics import AUXILIARY, MODES

        bad = [m for m in opts.modes if m not in MODES]
        if bad or not opts.modes:
            raise EvaluationError(f"unknown mode(s) {bad or '(none)'}; choose from {', '.join(MODES)}")
        if opts.routing not in ("oracle", "keywords"):
            raise EvaluationError(f"routing must be 'oracle' or 'keywords', not {opts.routing!r}")
        bad = [p for p in opts.poolings if p not in ("concat", "mean")]
        if bad or not opts.poolings:
            raise EvaluationError(f"poolings must list 'concat' and/or 'mean', got {opts.poolings!r}")
        unknown = [a for a in list(opts.auxiliary) + list(opts.aux_gains) if a not in AUXILIARY]
        if unknown:
            raise EvaluationError(f"unknown auxiliary bank(s) {unknown}; choose from {', '.join(AUXILIARY)}")

    def units(self, ctx: Context) -> Iterable[Unit]:
        opts = self.options(ctx.cfg)
        self._check(opts)
        problems, kinds = self._problems()
        per_cell = min(opts.per_cell, ctx.cfg.limit) if ctx.cfg.limit else opts.per_cell
        cells = sample(problems, kinds, per_cell, ctx.cfg.seed)
        methods = method_labels(ctx.cfg.methods, opts.poolings)
        yield Unit("storage", {"kind": "storage"})
        for kind in kinds:
            ids = [p.id for p in cells[kind]]
            for mode in opts.modes:
                for method in methods:
                    for start in range(0, len(ids), CHUNK):
                        yield Unit(f"{kind}|{mode}|{method}|{start}",
                                   {"kind": "cell", "type": kind, "mode": mode, "method": method,
                                    "ids": ids[start : start + CHUNK]})
        if opts.likelihood_per_type:
            count = min(opts.likelihood_per_type, ctx.cfg.limit) if ctx.cfg.limit else opts.likelihood_per_type
            scored = sample(problems, kinds, count, ctx.cfg.seed)
            for kind in kinds:
                for method in methods:
                    yield Unit(f"{kind}|likelihood|{method}",
                               {"kind": "likelihood", "type": kind, "method": method, "ids": [p.id for p in scored[kind]]})

    # ---- methods --------------------------------------------------------------------------------------
    def _gains(self, opts: ReasoningOptions) -> dict[str, float]:
        from memory_inception.evaluation.heuristics import DEFAULT_AUX_GAINS

        return {**DEFAULT_AUX_GAINS, **opts.aux_gains}

    def _mi(self, ctx: Context, guide: Any, opts: ReasoningOptions, pooling: str) -> MI:
        gains = self._gains(opts)
        target = ctx.text_bank(f"{self.benchmark}-{guide.key}", guide.heuristic, pooling)
        aux = tuple((ctx.text_bank(f"aux-{name}", text, pooling), gains[name]) for name, text, _ in guide.auxiliary)
        return MI(Steering(target=target, auxiliary=aux, sites=ctx.sites(), rho=ctx.cfg.rho,
                           schedule=ctx.cfg.mi.schedule, prefill=ctx.cfg.mi.prefill))  # type: ignore[arg-type]

    def _method(self, ctx: Context, name: str, guide: Any, opts: ReasoningOptions) -> Method:
        if name == "plain":
            return Plain()
        if name == "prompting":
            return Prompting(guide.prompt_text())
        return self._mi(ctx, guide, opts, "concat" if name == "mi" else name.removeprefix("mi-"))

    def _guide(self, problem: Any, opts: ReasoningOptions) -> Any:
        from memory_inception.evaluation.heuristics import guidance

        return guidance(problem, how=opts.routing, auxiliary=tuple(opts.auxiliary))

    # ---- running ----------------------------------------------------------------------------------------
    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        from memory_inception.evaluation.heuristics import MODE_TOKENS, mode_messages

        opts = self.options(ctx.cfg)
        if unit.fields["kind"] == "storage":
            return self._storage(ctx, opts)
        if unit.fields["kind"] == "likelihood":
            return self._likelihood(ctx, unit.fields, opts)
        f = unit.fields
        chosen = self._chosen(f["ids"])
        budget = {"direct": opts.direct_tokens, "steps": opts.steps_tokens}.get(f["mode"]) or MODE_TOKENS[f["mode"]]
        rows: list[dict[str, Any]] = []
        groups: dict[str, list[Any]] = {}
        guides = {p.id: self._guide(p, opts) for p in chosen}
        for p in chosen:  # problems routed to the same heuristic share a method (and a batch)
            groups.setdefault(guides[p.id].key, []).append(p)
        for key, group in groups.items():
            method = self._method(ctx, f["method"], guides[group[0].id], opts)
            ctx.seed()
            replies = generate(ctx.model, ctx.tokenizer, method, [mode_messages(p, f["mode"]) for p in group],
                               max_new_tokens=budget, batch_size=ctx.cfg.batch_size)
            for p, reply in zip(group, replies):
                rows.append({"id": p.id, "routed": key, "reply": reply, **_grade_fields(p, reply)})
        return {"rows": rows, "correct": sum(r["correct"] for r in rows), "n": len(rows), "graded": len(graded(rows)),
                "budget": budget}

    def _likelihood(self, ctx: Context, f: dict[str, Any], opts: ReasoningOptions) -> dict[str, Any]:
        """Mean per-token log-probability of each reference solution (its first tokens) as the step-by-step reply.

        Judge-free and continuous: it shows whether the guidance makes the worked solution more likely even where
        a small model answers nothing right. Scored with generation semantics (`methods.score`).
        """
        from memory_inception.evaluation.heuristics import mode_messages
        from memory_inception.methods.runners import score

        chosen = self._chosen(f["ids"])
        guides = {p.id: self._guide(p, opts) for p in chosen}
        rows = []
        for p in chosen:
            ids = ctx.tokenizer(p.solution.strip(), add_special_tokens=False)["input_ids"][: opts.solution_tokens]
            method = self._method(ctx, f["method"], guides[p.id], opts)
            lp = score(ctx.model, ctx.tokenizer, method, [mode_messages(p, "steps")], [ids])[0]
            rows.append({"id": p.id, "routed": guides[p.id].key, "tokens": len(ids), "mean_logprob": float(lp.mean())})
        return {"rows": rows, "mean_logprob": nanmean([r["mean_logprob"] for r in rows])}

    def _storage(self, ctx: Context, opts: ReasoningOptions) -> dict[str, Any]:
        """Per type: the prompting guidance's KV bytes and the MI banks' bytes with concat and mean pooling."""
        from memory_inception.evaluation.heuristics import (
            AUXILIARY,
            HEURISTICS,
            Guidance,
        )

        gains = self._gains(opts)
        out = {}
        aux = tuple((name, AUXILIARY[name], gains[name]) for name in opts.auxiliary)
        for key, text in HEURISTICS[self.benchmark].items():
            guide = Guidance(key=key, heuristic=text, auxiliary=aux)
            prompting = ctx.cost(Prompting(guide.prompt_text()))
            entry = {"prompt_tokens": prompting["visible_tokens"], "prompting_bytes": prompting["cache_bytes"]}
            for pooling in ("concat", "mean"):
                mi = self._mi(ctx, guide, opts, pooling)
                entry[f"mi_{pooling}_bytes"] = ctx.cost(mi)["stored_bytes"]
                entry[f"mi_{pooling}_slots"] = sum(b.num_slots for _, b in mi.steering.banks)
            out[key] = entry
        sites = ctx.sites() or Sites.default(ctx.model)
        return {"storage": out, "site_layers": len(sites.resolve(geometry(ctx.model)))}

    # ---- report -----------------------------------------------------------------------------------------
    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        from memory_inception.tuning.fluency import repeated_ngram_rate

        title = "HARDMath mini" if self.benchmark == "hardmath" else "PHYSICS (text-only validation)"
        cells = [r for r in records if r.get("kind") == "cell"]
        opts = self.Options(**cfg.options)
        modes = [m for m in opts.modes if any(r["mode"] == m for r in cells)]
        present = {r["method"] for r in cells}
        methods = [m for m in method_labels(list(cfg.methods), opts.poolings) if m in present]
        mis = [m for m in methods if m.startswith("mi")] if "prompting" in methods else []
        rows_of: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in cells:
            rows_of.setdefault((r["type"], r["mode"], r["method"]), []).extend(r["rows"])
        types = list(dict.fromkeys(r["type"] for r in cells))

        def acc(rows: list[dict[str, Any]]) -> float:
            rows = graded(rows)
            return sum(x["correct"] for x in rows) / len(rows) if rows else float("nan")

        header = ["type"]
        for mode in modes:
            header += [f"{mode}: {m}" for m in methods] + [f"{mode}: {m} − prompting" for m in mis]
        body, wins = [], {m: [0, 0, 0, 0] for m in mis}  # MI better, tie, prompting better; ties at zero correct
        for kind in types + ["all"]:
            row = [kind if kind != "all" else "**all**"]
            for mode in modes:
                pick = {m: [x for t in (types if kind == "all" else [kind]) for x in rows_of.get((t, mode, m), [])] for m in methods}
                row += [f"{sum(x['correct'] for x in pick[m])}/{len(graded(pick[m]))}" for m in methods]
                for m in mis:
                    d = acc(pick[m]) - acc(pick["prompting"])
                    row.append(fmt(d, 2, signed=True))
                    if kind != "all" and not math.isnan(d):  # a cell without results counts for neither side
                        wins[m][0 if d > 0 else 1 if d == 0 else 2] += 1
                        wins[m][3] += d == 0 and acc(pick["prompting"]) == 0
            body.append(row)
        n_cells = {m: sum(wins[m][:3]) for m in mis}
        parts = [
            f"## {title} ({cfg.model})", "",
            f"{opts.per_cell} problems per type (a seeded sample, the same problems in every mode and method), "
            f"routing: {opts.routing}, auxiliary banks: {', '.join(opts.auxiliary) or 'none'} "
            f"(MI gains {', '.join(f'{k} {v:g}' for k, v in self._gains(opts).items() if k in opts.auxiliary)}), "
            f"MI rho {cfg.rho:g} at {cfg.mi.sites or 'the default sites'}. Modes: direct (final answer only, "
            f"{opts.direct_tokens or 64} new tokens) and steps (step by step, {opts.steps_tokens or 384} new tokens), greedy. "
            "Prompting shows the type's checklist and the auxiliary texts as one system message; MI reads the same texts "
            "as banks: " + ", ".join(POOLING_TEXT[x] for x in opts.poolings) + ". "
            "Graded offline (memory_inception.evaluation.grading). CAA is not run: a checklist has no contrast pairs.", "",
            "Correct answers per cell, over the replies with a verdict (status ok; show-that problems, grader "
            "timeouts and errors are counted apart below):", "",
            table(header, body), "",
        ]
        for m in mis:
            better, tie, worse, zero = wins[m]
            parts.append(f"- {m} against prompting over the {n_cells[m]} type x mode cells with a verdict: better in {better}, "
                         f"tied in {tie} ({zero} of them at zero correct on both sides), worse in {worse} (the paper reports "
                         "MI better in 10 of 12 cells on an 8B model).")
        parts += self._readings(cells, methods, modes)
        parts.append("")
        # diagnostics: partial credit, answer format, repetition
        diag = []
        for mode in modes:
            for m in methods:
                rows = [x for t in types for x in rows_of.get((t, mode, m), [])]
                if not rows:
                    continue
                status = [status_of(x) for x in rows]
                diag.append([mode, m, len(rows), status.count("show-that"), status.count("timeout"), status.count("error"),
                             sum(x.get("step_timeouts", 0) > 0 for x in rows),
                             fmt(nanmean([x["score"] for x in graded(rows)]), 3),
                             fmt(sum(x["extracted"] is not None for x in rows) / len(rows), 2),
                             fmt(sum("\\boxed" in x["reply"] for x in rows) / len(rows), 2),
                             fmt(nanmean([repeated_ngram_rate(x["reply"]) for x in rows]), 3),
                             fmt(nanmean([len(x["reply"]) for x in rows]), 0)])
        parts += ["Diagnostics per mode and method: replies; how many were not graded because the question prints every "
                  "listed answer (show-that), because grading timed out, or because the grader raised; how many graded "
                  "replies had a bounded step (one parse or check) time out; the mean partial score of the graded "
                  "replies (the fraction of listed answers matched); the share of replies with an extractable final "
                  "answer and with a \\boxed{} answer, repeated 3-grams, reply length.", "",
                  table(["mode", "method", "replies", "show-that", "timed out", "errors", "steps timed out", "partial score",
                         "answer found", "boxed", "repeated 3-grams", "chars"], diag), ""]
        parts += self._likelihood_table(records, methods, mis)
        parts += self._routing_table() + [""]
        png = self._plot(types, modes, methods, rows_of, out)
        if png:
            parts += [f"![accuracy per cell]({png.name})", ""]
        store = next((r for r in records if r.get("kind") == "storage"), None)
        if store:
            rows = []
            for key, e in store["storage"].items():
                rows.append([key, e["prompt_tokens"], f"{e['prompting_bytes']:,}", e["mi_concat_slots"], f"{e['mi_concat_bytes']:,}",
                             f"{e['prompting_bytes'] / e['mi_concat_bytes']:.1f}x", e["mi_mean_slots"], f"{e['mi_mean_bytes']:,}",
                             f"{e['prompting_bytes'] / e['mi_mean_bytes']:.0f}x"])
            parts += ["KV storage per type (checklist + auxiliary texts): prompting caches every guidance token at every layer; "
                      f"MI keeps the banks' slots at the {store['site_layers']} site layers, concatenated (one slot per "
                      "token) or mean-pooled (one slot per bank).", "",
                      table(["type", "prompt tokens", "prompting bytes", "MI slots (concat)", "MI bytes (concat)",
                             "ratio (concat)", "MI slots (mean)", "MI bytes (mean)", "ratio (mean)"], rows), ""]
        for m in mis[:1]:
            example = next((x for (t, mode, mm), xs in rows_of.items() if mm == m and mode == modes[-1] for x in xs), None)
            if example:
                parts += [f"Example ({m}, {modes[-1]}): {example['id']}, extracted {example['extracted']!r}, correct "
                          f"{example['correct']}; the reply starts {example['reply'][:240]!r}", ""]
        return "\n".join(parts)

    def _readings(self, cells: list[dict[str, Any]], methods: list[str], modes: list[str]) -> list[str]:
        """What the cell counts say, in words: the correct answers per method and what was left out."""
        rows = {m: [x for r in cells if r["method"] == m for x in r["rows"]] for m in methods}
        right = {m: sum(x["correct"] for x in graded(rows[m])) for m in methods}
        counts = ", ".join(f"{m} {right[m]}/{len(graded(rows[m]))}" for m in methods)
        over = f"over the {len(modes)} modes" if len(modes) > 1 else f"in {modes[0]} mode" if modes else ""
        lines = []
        if methods and not any(right.values()):
            lines.append(f"- No method answers any graded problem correctly ({counts} {over}), so every comparison "
                         "above is a tie at zero: these runs say nothing about MI against prompting on accuracy.")
        elif methods:
            lines.append(f"- Correct answers {over}: {counts}.")
        every = [x for m in methods for x in rows[m]]
        show = sorted({x["id"] for x in every if status_of(x) == "show-that"})
        if show:
            lines.append(f"- Left out: {sum(status_of(x) == 'show-that' for x in every)} replies to {len(show)} show-that "
                         f"problem(s) ({', '.join(show)}): the question prints every listed answer, so a match would "
                         "credit copying the question.")
        failed = {st: sum(status_of(x) == st for x in every) for st in ("timeout", "error")}
        lines.append(f"- Grading timed out on {failed['timeout']} and failed with an error on {failed['error']} of "
                     f"{len(every)} replies (counted apart, not as incorrect).")
        return lines

    def _likelihood_table(self, records: list[dict[str, Any]], methods: list[str], mis: list[str]) -> list[str]:
        """Reference-solution log-probability per type and method, as the change from plain."""
        found = {(r["type"], r["method"]): r for r in records if r.get("kind") == "likelihood"}
        if not found or not any(m == "plain" for _, m in found):
            return []
        types = list(dict.fromkeys(t for t, _ in found))
        steered = [m for m in methods if m != "plain"]
        body, wins = [], {m: [0, 0] for m in mis}
        for kind in types + ["all"]:
            pick = types if kind == "all" else [kind]

            def mean(method: str) -> float:
                return nanmean([x["mean_logprob"] for t in pick for x in found.get((t, method), {"rows": []})["rows"]])

            plain = mean("plain")
            n = sum(len(found.get((t, "plain"), {"rows": []})["rows"]) for t in pick)
            row = [kind if kind != "all" else "**all**", n, fmt(plain, 3)] + [fmt(mean(m) - plain, 3, signed=True) for m in steered]
            for m in mis:
                d = mean(m) - mean("prompting")
                row.append(fmt(d, 3, signed=True))
                if kind != "all" and not math.isnan(d):
                    wins[m][0 if d > 0 else 1] += 1
            body.append(row)
        lines = ["Reference-solution likelihood (judge-free; a small model can move it where it answers nothing right): "
                 "the mean per-token log-probability of each problem's worked solution (its first tokens) as the "
                 "step-by-step reply, scored with generation semantics; steered methods as the change from plain (nats/token).", "",
                 table(["type", "problems", "plain", *[f"{m} − plain" for m in steered], *[f"{m} − prompting" for m in mis]], body), ""]
        for m in mis:
            lines.append(f"- {m} makes the reference solutions more likely than prompting does in {wins[m][0]} of "
                         f"{sum(wins[m])} types.")
        return lines + [""]

    def _routing_table(self) -> list[str]:
        """Keyword routing against the known type, over the whole benchmark (no model needed)."""
        from memory_inception.evaluation.heuristics import GENERAL_KEY, route

        problems, kinds = self._problems()
        rows, hit, unmatched = [], 0, 0
        for kind in kinds:
            pool = [p for p in problems if p.kind == kind]
            keys = [route(p, "keywords") for p in pool]
            ok, none = sum(k == kind for k in keys), sum(k == GENERAL_KEY for k in keys)
            hit, unmatched = hit + ok, unmatched + none
            rows.append([kind, len(pool), f"{ok}/{len(pool)}", none])
        rows.append(["**all**", len(problems), f"{hit}/{len(problems)} = {hit / len(problems):.1%}", unmatched])
        return ["Keyword routing (the checklist chosen from the question text alone) agrees with the known type on the "
                "counts below; a question that no keyword rule matches gets the benchmark's general checklist (key "
                f"{GENERAL_KEY!r}, no type guessed) and counts as not routed to its type:", "",
                table(["type", "problems", "routed to its own type", "no keyword matched"], rows)]

    def _plot(self, types: list[str], modes: list[str], methods: list[str], rows_of: dict, out: Path) -> Path | None:
        from memory_inception.evaluation.analysis import bars

        if not types or not methods:
            return None
        groups = {}
        for mode in modes:
            for kind in types:
                groups[f"{kind[:14]} ({mode})"] = {
                    m: sum(x["correct"] for x in graded(rows_of[(kind, mode, m)])) / len(graded(rows_of[(kind, mode, m)]))
                    for m in methods if graded(rows_of.get((kind, mode, m), []))
                }
        return bars(groups, out / f"{self.name}_cells.png", f"{self.name}: accuracy per type x mode", "accuracy")


class HardMath(ReasoningTask):
    name = "hardmath"
    benchmark = "hardmath"
    summary = "HARDMath mini: heuristic banks vs the same heuristics in the prompt, type x answer-mode cells"


class Physics(ReasoningTask):
    name = "physics"
    benchmark = "physics"
    summary = "PHYSICS text-only: heuristic banks vs the same heuristics in the prompt, subject x answer-mode cells"
