"""Capability check: GSM8K and MMLU accuracy under each method's steering, against plain."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory_inception.errors import EvaluationError
from memory_inception.evaluation.analysis import bars, fmt, fmt_interval, nanmean, table
from memory_inception.evaluation.base import Context, Task, Unit
from memory_inception.evaluation.config import EvalConfig, parse_persona
from memory_inception.tuning.statistics import Interval, paired_difference

CHUNK = 10  # problems per resumable unit


@dataclass
class CapabilityOptions:
    personas: list[str] = field(default_factory=lambda: ["extraversion:high"])
    gsm8k: int = 20
    mmlu: int = 60
    gsm8k_max_new_tokens: int = 256
    mmlu_shots: int = 0


def accuracy_change(steered: dict[Any, float], plain: dict[Any, float]) -> Interval:
    """Accuracy under steering minus plain's on the questions both answered ({question id: 1.0 correct / 0.0}),
    with its paired bootstrap interval over the questions."""
    ids = [i for i in plain if i in steered]
    if not ids:
        raise EvaluationError("no question was answered both plain and steered; rerun the capability task")
    return paired_difference([steered[i] for i in ids], [plain[i] for i in ids])


class Capability(Task, name="capability", options=CapabilityOptions):
    """GSM8K and MMLU subsets under each method's steering: accuracy change against plain."""

    def units(self, ctx: Context) -> Iterable[Unit]:
        opts = self.options(ctx.cfg)
        sizes = {"gsm8k": opts.gsm8k, "mmlu": opts.mmlu}
        conds = [("none", "plain")] + [(p, m) for p in opts.personas for m in ctx.cfg.methods if m != "plain"]
        for persona, _ in conds:
            if persona != "none":
                parse_persona(persona)
        for bench, size in sizes.items():
            size = min(size, ctx.cfg.limit) if ctx.cfg.limit else size
            for persona, method in conds:
                for start in range(0, size, CHUNK):
                    yield Unit(f"{bench}|{persona}|{method}|{start}",
                               {"bench": bench, "persona": persona, "method": method, "start": start,
                                "stop": min(size, start + CHUNK)})

    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        import memory_inception.evaluation.gsm8k_mmlu as cap

        opts = self.options(ctx.cfg)
        f = unit.fields
        method = ctx.method(f["method"], None if f["persona"] == "none" else f["persona"])
        if f["bench"] == "gsm8k":
            problems = cap.load_gsm8k(limit=f["stop"] - f["start"], offset=f["start"])
            ctx.seed()
            rows = cap.gsm8k_eval(ctx.model, ctx.tokenizer, method, problems,
                                  max_new_tokens=opts.gsm8k_max_new_tokens, batch_size=ctx.cfg.batch_size)
        else:
            size = min(opts.mmlu, ctx.cfg.limit) if ctx.cfg.limit else opts.mmlu
            questions = cap.load_mmlu(limit=size)[f["start"] : f["stop"]]
            rows = cap.mmlu_eval(ctx.model, ctx.tokenizer, method, questions, shots=opts.mmlu_shots,
                                 batch_size=ctx.cfg.batch_size)
        return {"rows": rows, "correct": sum(bool(r["correct"]) for r in rows), "n": len(rows)}

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        parts = [f"## Capability under steering ({cfg.model})", "",
                 "GSM8K: greedy step-by-step answer, final number compared numerically. MMLU: zero-shot, the answer "
                 "letter with the highest next-token probability. Steered rows use each persona's guidance.", ""]
        acc: dict[tuple[str, str, str], list[int]] = {}
        mass: dict[tuple[str, str, str], list[float]] = {}
        correct_by: dict[tuple[str, str, str], dict[Any, float]] = {}
        for r in records:
            key = (r["bench"], r["persona"], r["method"])
            c = acc.setdefault(key, [0, 0])
            c[0] += r["correct"]
            c[1] += r["n"]
            mass.setdefault(key, []).extend(row.get("option_mass", float("nan")) for row in r["rows"])
            correct_by.setdefault(key, {}).update({row["id"]: float(bool(row["correct"])) for row in r["rows"]})
        body, groups = [], {}
        for (bench, persona, method), (correct, n) in sorted(acc.items()):
            plain = acc.get((bench, "none", "plain"))
            a = correct / n if n else float("nan")
            change = ""
            if method != "plain" and plain and plain[1]:
                change = fmt_interval(accuracy_change(correct_by[(bench, persona, method)], correct_by[(bench, "none", "plain")]))
            body.append([bench, persona, method, f"{correct}/{n}", fmt(a), change,
                         fmt(nanmean(mass[(bench, persona, method)]), 2) if bench == "mmlu" else ""])
            groups.setdefault(bench, {})[method] = a
        parts += [table(["benchmark", "persona", "method", "correct", "accuracy", "change vs plain [95% CI]", "letter mass"], body), "",
                  "Change vs plain: accuracy difference on the questions both answered, with a paired 95% percentile "
                  "bootstrap interval over questions (2000 resamples); an interval covering 0 is no measured change.", ""]
        if groups:
            png = bars(groups, out / "capability.png", f"accuracy under steering, {cfg.model}", "accuracy")
            parts += [f"![capability]({png.name})", ""]
        return "\n".join(parts)
