"""KV-group selection from several contrast pairs at once, checked on pairs it did not use (development traits only).

Pairs: each pole of each development trait (`datasets.personas.DEVELOPMENT`) as the target bank, contrasted
against a neutral text of the same length (what `mi.tune` contrasts against). Every (layer, KV group) unit is
probed once per pair (`tuning.group_selection.score_groups`). Generalization: leave one trait out, select on the
other traits' pairs, and on the left-out trait's two pairs compare the reply contrast of the selected groups
(top k) against the model's default band (every head) and random groups of the same count. The selection on
every pair is written for `core/defaults.py`.

    python experiments/tune_select.py --model smollm2-135m-instruct --out reports/tune_select_smollm2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np
import torch

import memory_inception as mi
from memory_inception.core.architecture import geometry, model_fingerprint
from memory_inception.core.defaults import model_defaults
from memory_inception.datasets.personas import DEVELOPMENT, SPLIT_DECIDED, poles
from memory_inception.tuning.group_selection import (
    GroupScore,
    GroupSelection,
    Pair,
    choose_groups,
    compare_sites,
    random_groups,
    score_groups,
)
from memory_inception.tuning.objective import neutral_text
from memory_inception.tuning.selection import CALIBRATION_PROMPTS


def restandardize(groups: list[GroupScore], keep: list[int]) -> list[GroupScore]:
    """Unit scores from the raw contrasts of the pairs in `keep` only."""
    raw = np.array([[g.contrasts[j] for j in keep] for g in groups])
    spread = raw.std(0, keepdims=True)
    z = (raw - raw.mean(0, keepdims=True)) / np.where(spread > 0, spread, 1.0)
    return [GroupScore(g.layer, g.kv_group, float(z[u].mean()), g.contrasts) for u, g in enumerate(groups)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ks", default="3,6,9,12,18")
    ap.add_argument("--random-draws", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started, cpu_started = time.time(), time.process_time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    model, tok = mi.load_model(args.model)
    geo, fp = geometry(model), model_fingerprint(model)
    defaults = model_defaults(geo, fingerprint=fp)
    band = mi.Sites({layer: None for layer in defaults.layers})
    pairs, trait_of = [], []
    for trait in DEVELOPMENT:
        for pole in ("high", "low"):
            text = getattr(poles(trait), pole)
            bank = mi.build_bank(model, tok, text, layers="all", name=f"{trait}:{pole}")
            pairs.append(Pair(bank, neutral_text(tok, text), f"{trait}:{pole}"))
            trait_of.append(trait)
    probe_prompts = CALIBRATION_PROMPTS[:4]
    groups = score_groups(model, tok, pairs, probe_prompts,
                          progress=lambda i, n: print(f"unit {i}/{n}", flush=True) if i % 10 == 0 else None)
    probe_seconds = time.time() - started
    ks = [int(k) for k in args.ks.split(",")]
    folds = []
    for held in DEVELOPMENT:
        used = [j for j, t in enumerate(trait_of) if t != held]
        unused = [j for j, t in enumerate(trait_of) if t == held]
        scores = restandardize(groups, used)
        candidates = {f"default band {defaults.layers[0]}-{defaults.layers[-1]}": band}
        for k in ks:
            candidates[f"selected top {k}"] = choose_groups(geo, scores, k)
        gen = torch.Generator().manual_seed(0)
        for d in range(args.random_draws):
            candidates[f"random {ks[1]} #{d}"] = random_groups(geo, ks[1], gen)
        result = compare_sites(model, tok, [pairs[j] for j in unused], candidates)
        folds.append({"held_out": held, "contrast": {k: float(np.mean(v)) for k, v in result.items()},
                      "per_pair": result})
        print(held, {k: round(float(np.mean(v)), 3) for k, v in result.items()}, flush=True)
    final = GroupSelection(choose_groups(geo, groups, max(ks)), tuple(groups), {
        "pairs": [p.name for p in pairs], "prompts": len(probe_prompts), "fingerprint": fp,
        "split": SPLIT_DECIDED, "commit": commit,
    }, {"folds": folds})
    final.save(args.out + ".selection.json")
    elapsed, cpu = time.time() - started, time.process_time() - cpu_started
    payload = {"model": args.model or "default", "fingerprint": fp, "threads": args.threads, "commit": commit,
               "seconds": elapsed, "cpu_seconds": cpu, "probe_seconds": probe_seconds, "folds": folds,
               "ranking": GroupSelection(final.sites, tuple(groups)).ranking()}
    with open(args.out + ".json", "w") as f:
        json.dump(payload, f, indent=2)
    write_markdown(args, payload, groups, ks)


def write_markdown(args, payload, groups, ks) -> None:
    labels = list(payload["folds"][0]["contrast"])
    lines = [
        f"# KV-group selection from several pairs, checked on unused pairs ({payload['model']})",
        "",
        "Development traits only (`datasets.personas.DEVELOPMENT`). Each pole's bank is a pair's target, contrasted "
        "against a neutral text of the same length; each (layer, KV group) unit is probed alone (rho 0) on 4 "
        "neutral prompts, 24-token visibly prompted replies. Leave one trait out: select on the other three "
        "traits' six pairs, score on the left-out trait's two pairs (reply contrast at rho 0, 8 prompts, 32 tokens).",
        "",
        "| held-out trait | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for f in payload["folds"]:
        lines.append(f"| {f['held_out']} | " + " | ".join(f"{f['contrast'][k]:+.3f}" for k in labels) + " |")
    means = {k: float(np.mean([f["contrast"][k] for f in payload["folds"]])) for k in labels}
    lines.append("| mean | " + " | ".join(f"{means[k]:+.3f}" for k in labels) + " |")
    top = sorted(groups, key=lambda g: -g.score)[:18]
    lines += ["", "Best units on all eight pairs (layer:group, standardized score):",
              ", ".join(f"{g.layer}:{g.kv_group} ({g.score:+.2f})" for g in top), "",
              f"Run time {payload['seconds']:.0f} s ({payload['cpu_seconds']:.0f} s CPU; probing "
              f"{payload['probe_seconds']:.0f} s) on {payload['threads']} thread(s), commit {payload['commit']}, fp32 CPU."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
