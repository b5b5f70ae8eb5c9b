"""Do automatically selected sites steer better than the same number of random sites?

For each model and trait: select sites toward the high pole (target = high-pole bank, reference = low-pole bank)
and toward the low pole (banks swapped), with `mi.select_sites` on the built-in neutral calibration prompts.
Then steer with the target bank alone at those sites and measure the statement-likelihood margin shift against
the plain model (persona statements, scored as the model's reply with generation semantics). The directional
control is `shift(high) - shift(low)`: movement toward the target pole and away from the opposite one. Random
sites have the same number of layers and of heads per layer (one per KV group), several draws.

    python experiments/select_vs_random.py --models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import memory_inception as mi
from memory_inception.core.architecture import geometry
from memory_inception.datasets.traits import DESCRIPTORS, statements
from memory_inception.methods.interface import Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.runners import statement_margin
from memory_inception.tuning.selection import random_sites


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--traits", default="extraversion,agreeableness")
    ap.add_argument("--n", type=int, default=30, help="statements per side")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--rhos", default="3,8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="reports/select_vs_random")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rhos = [float(r) for r in args.rhos.split(",")]
    results = []
    started = time.time()
    for name in args.models.split(","):
        model, tok = mi.load_model(name)
        geo = geometry(model)
        for trait in args.traits.split(","):
            poles = DESCRIPTORS[trait]
            yes, no = statements(trait, args.n)
            base = statement_margin(model, tok, Plain(), yes, no)
            banks = {"high": mi.build_bank(model, tok, poles.high), "low": mi.build_bank(model, tok, poles.low)}
            t0 = time.time()
            selected = {
                "high": mi.select_sites(model, tok, banks["high"], banks["low"]).sites,
                "low": mi.select_sites(model, tok, banks["low"], banks["high"]).sites,
            }
            select_s = time.time() - t0

            def shifts(sites_by_pole, rho):
                out = {}
                for pole in ("high", "low"):
                    method = MI(mi.Steering(target=banks[pole], sites=sites_by_pole[pole], rho=rho))
                    out[pole] = statement_margin(model, tok, method, yes, no) - base
                return out

            gen = torch.Generator().manual_seed(0)
            draws = [
                {pole: random_sites(geo, selected[pole], gen) for pole in ("high", "low")} for _ in range(args.draws)
            ]
            default = {pole: mi.Sites.default(model) for pole in ("high", "low")}
            for rho in rhos:
                row = {
                    "model": name,
                    "trait": trait,
                    "rho": rho,
                    "plain_margin": base,
                    "selected_sites": {p: {str(k): list(v) for k, v in s.heads.items()} for p, s in selected.items()},
                    "select_seconds": select_s,
                    "selected": shifts(selected, rho),
                    "random": [shifts(d, rho) for d in draws],
                    "default_band_all_heads": shifts(default, rho),
                }
                row["selected_control"] = row["selected"]["high"] - row["selected"]["low"]
                row["random_controls"] = [r["high"] - r["low"] for r in row["random"]]
                row["default_control"] = row["default_band_all_heads"]["high"] - row["default_band_all_heads"]["low"]
                results.append(row)
                print(
                    f"{name} {trait} rho {rho:g}: selected {row['selected_control']:+.3f} "
                    f"({row['selected']['high']:+.3f}/{row['selected']['low']:+.3f}); random "
                    f"{statistics.mean(row['random_controls']):+.3f} (max {max(row['random_controls']):+.3f}); "
                    f"default band {row['default_control']:+.3f}",
                    flush=True,
                )
    elapsed = time.time() - started
    with open(args.out + ".json", "w") as f:
        json.dump({"threads": args.threads, "seconds": elapsed, "n": args.n, "results": results}, f, indent=2)
    lines = [
        "# Selected sites vs random sites (directional control)",
        "",
        f"Statement-likelihood margin shift vs the plain model, {args.n} matching + {args.n} non-matching Anthropic "
        "persona statements per trait, scored as the model's reply to \"Tell me something about yourself\" with "
        "generation semantics. Steering: the pole's bank as the only (target) bank, schedule middle_heavy, prefill "
        "last. Sites: `mi.select_sites` (8 neutral calibration prompts, 16 greedy tokens each, every layer a "
        "candidate, one head per KV group, top 6 layers) toward each pole; random = same number of layers and "
        f"heads per layer, one head per KV group, {args.draws} draws. Directional control = shift(high) - "
        "shift(low); larger is better. For reference, the default band (all heads of 6 layers from 70% depth).",
        "",
        "| model | trait | rho | selected: control (high / low) | random: mean control (min .. max) | "
        "selected beats random draws | default band, all heads |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rc = r["random_controls"]
        beats = sum(r["selected_control"] > c for c in rc)
        lines.append(
            f"| {r['model']} | {r['trait']} | {r['rho']:g} | {r['selected_control']:+.3f} "
            f"({r['selected']['high']:+.3f} / {r['selected']['low']:+.3f}) | {statistics.mean(rc):+.3f} "
            f"({min(rc):+.3f} .. {max(rc):+.3f}) | {beats}/{len(rc)} | {r['default_control']:+.3f} "
            f"({r['default_band_all_heads']['high']:+.3f} / {r['default_band_all_heads']['low']:+.3f}) |"
        )
    lines += ["", "Selected sites:", ""]
    seen = set()
    for r in results:
        key = (r["model"], r["trait"])
        if key in seen:
            continue
        seen.add(key)
        for pole, sites in r["selected_sites"].items():
            desc = ", ".join(f"{layer}:{heads}" for layer, heads in sites.items())
            lines.append(f"- {r['model']} {r['trait']} toward {pole}: {desc} (selection {r['select_seconds']:.0f} s for both poles)")
    lines += ["", f"Run time {elapsed:.0f} s on {args.threads} thread(s), fp32 CPU."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
