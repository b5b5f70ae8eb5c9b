"""Per-model defaults from `mi.tune` on development traits only (`datasets.personas.DEVELOPMENT`).

Runs `mi.tune` on each pole of the given development traits (its own neutral prompts and fluency bound, budget
in this process's CPU seconds at one thread) and tallies what it chose. The default a new user gets
(`core/defaults.py`) is the site set and strength chosen most often (ties: the weaker strength).

    python experiments/tune_defaults.py --model smollm2-135m-instruct --out reports/tune_defaults_smollm2
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import time
from pathlib import Path

import torch

import memory_inception as mi
from memory_inception.datasets.personas import DEVELOPMENT, SPLIT_DECIDED, poles


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--traits", default=",".join(DEVELOPMENT))
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started, cpu_started = time.time(), time.process_time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    model, tok = mi.load_model(args.model)
    runs = []
    for trait in args.traits.split(","):
        if trait not in DEVELOPMENT:
            raise SystemExit(f"{trait} is not a development trait ({', '.join(DEVELOPMENT)}); never tune on held-out ones")
        for pole in ("high", "low"):
            record = mi.Tuning.of(mi.tune(model, tok, getattr(poles(trait), pole), time_budget_s=args.budget,
                                          clock=time.process_time))
            print(f"{trait}:{pole}\n{record}", flush=True)
            runs.append({"trait": trait, "pole": pole, "record": record.to_dict()})
    tally = collections.Counter((r["record"]["trials"][r["record"]["chosen"]]["label"],
                                 r["record"]["trials"][r["record"]["chosen"]]["rho"]) for r in runs)
    (label, rho), count = max(tally.items(), key=lambda kv: (kv[1], -kv[0][1]))
    payload = {"model": args.model or "smollm2-135m-instruct", "threads": args.threads, "commit": commit,
               "split": SPLIT_DECIDED, "seconds": time.time() - started, "cpu_seconds": time.process_time() - cpu_started,
               "tally": [[k[0], k[1], v] for k, v in tally.items()], "default": {"label": label, "rho": rho},
               "runs": runs}
    Path(args.out + ".json").write_text(json.dumps(payload, indent=1))
    lines = [f"# mi.tune on development traits ({payload['model']}): the per-model defaults", "",
             f"Development traits only (split {SPLIT_DECIDED}). Budget {args.budget:g} CPU-s per pole, "
             f"{args.threads} thread, commit {commit}; run {payload['seconds'] / 60:.1f} min wall, "
             f"{payload['cpu_seconds'] / 60:.1f} CPU-min.", "",
             "| trait:pole | chosen | rho | contrast | repeated 3-grams (plain) | seconds | CPU s | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rec = r["record"]
        best = rec["trials"][rec["chosen"]]
        rep = f"{best['repetition']:.3f}" if best["repetition"] is not None else "-"
        lines.append(f"| {r['trait']}:{r['pole']} | {best['label']} | {best['rho']:g} | {best['contrast']:+.3f} | "
                     f"{rep} ({rec['plain_repetition']:.3f}) | {rec['seconds']:.0f} | {rec['cpu_seconds']:.0f} | "
                     f"{rec['reason']} |")
    lines += ["", f"Chosen most often: {label}, rho {rho:g} ({count} of {len(runs)} poles)."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
