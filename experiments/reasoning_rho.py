"""Pick MI's rho for the reasoning banks: the strongest strength whose replies stay as fluent as plain's.

For a few HARDMath and PHYSICS problems (step-by-step mode, short budget), MI with the type's checklist and the
auxiliary banks is run over a grid of rho; the repeated-trigram rate of greedy replies is compared with the
plain model's on the same problems (the calibration rule of memory_inception.calibration: at most +0.10).

    python experiments/reasoning_rho.py --model smollm2-135m-instruct --out reports/reasoning_rho_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import memory_inception as mi
from memory_inception.core.steering import Steering
from memory_inception.datasets.reasoning_problems import hardmath_kinds, load_hardmath, load_physics, physics_subjects
from memory_inception.evaluation.grading import grade
from memory_inception.evaluation.heuristics import DEFAULT_AUX_GAINS, guidance, mode_messages
from memory_inception.evaluation.tasks.reasoning import sample
from memory_inception.methods.interface import Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import generate
from memory_inception.tuning.calibration import DEFAULT_TOLERANCE as BOUND
from memory_inception.tuning.fluency import repeated_ngram_rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rhos", default="-20,-12,-6,-3,0,3,6")
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = mi.load_model(args.model)
    # Problems disjoint from the evaluation's seed-0 sample: seed 1, one per type.
    hm = sample(load_hardmath(), hardmath_kinds(), 1, seed=1)
    ph = sample(load_physics(), physics_subjects(), 1, seed=1)
    problems = [p for group in (hm, ph) for ps in group.values() for p in ps]
    bank_cache: dict[str, mi.Bank] = {}

    def bank(text: str) -> mi.Bank:
        if text not in bank_cache:
            bank_cache[text] = mi.build_bank(model, tok, text)
        return bank_cache[text]

    def run(method_of) -> dict:
        t0 = time.perf_counter()
        replies = []
        for p in problems:  # one problem at a time: each has its own guidance
            replies += generate(model, tok, method_of(p), [mode_messages(p, "steps")], max_new_tokens=args.tokens)
        reps = [repeated_ngram_rate(r) for r in replies]
        return {"repeated_3grams": sum(reps) / len(reps), "boxed": sum("\\boxed" in r for r in replies) / len(replies),
                "correct": sum(grade(p, r).correct for p, r in zip(problems, replies)),
                "seconds": round(time.perf_counter() - t0, 1), "first_reply": replies[0][:300]}

    def mi_method(rho: float):
        def make(p):
            g = guidance(p)
            aux = tuple((bank(text), DEFAULT_AUX_GAINS[name]) for name, text, _ in g.auxiliary)
            return MI(Steering(target=bank(g.heuristic), auxiliary=aux, rho=rho))
        return make

    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else {}  # resume: rows already measured are kept

    def save() -> None:
        limit = rows["plain"]["repeated_3grams"] + BOUND
        fluent = [float(k.split()[-1]) for k, v in rows.items() if k.startswith("mi") and v["repeated_3grams"] <= limit]
        mis = {k: v for k, v in rows.items() if k.startswith("mi")}
        result = {"model": args.model, "problems": [p.id for p in problems], "tokens": args.tokens, "bound": BOUND,
                  "rows": rows, "threads": 1, "fluent_rhos": sorted(fluent),
                  "chosen_rho": max(fluent) if fluent else None,
                  "least_repetitive_rho": float(min(mis, key=lambda k: mis[k]["repeated_3grams"]).split()[-1]) if mis else None}
        out.write_text(json.dumps(result, indent=2) + "\n")

    for name, make in (("plain", lambda p: Plain()), ("prompting", lambda p: Prompting(guidance(p).prompt_text()))):
        if name not in rows:
            rows[name] = run(make)
            save()
    print("plain", rows["plain"]["repeated_3grams"], "prompting", rows["prompting"]["repeated_3grams"], flush=True)
    for rho in [float(x) for x in args.rhos.split(",")]:
        if f"mi rho {rho:g}" in rows:
            continue
        rows[f"mi rho {rho:g}"] = run(mi_method(rho))
        save()
        print(rho, {k: v for k, v in rows[f"mi rho {rho:g}"].items() if k != "first_reply"}, flush=True)
    print("fluent", json.loads(out.read_text())["fluent_rhos"])


if __name__ == "__main__":
    main()
