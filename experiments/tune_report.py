"""Held-out persona traits: plain, prompting, CAA (calibrated), MI defaults and MI tuned (`mi.tune`).

The traits come from `datasets.personas.HELD_OUT` (decided before any tuning run; `SPLIT_DECIDED`): nothing here
was tuned on them. Per trait and pole, on one model:

- prompting: the pole's text as a visible system message (the text the bank holds);
- CAA: a steering vector from persona statements disjoint from the scored ones (statements 60-119 of each side,
  interleaved Yes/No pairs), at the table's calibrated layer and multiplier (`core.defaults`);
- MI defaults: the pole's bank at what a new user gets (`mi.Steering(target=bank)`: the table's sites and rho);
- MI defaults + neutral reference: the same with a neutral reference bank of the same length (gated), the
  common-mode control;
- MI tuned: `mi.tune(model, tok, text)` (its own neutral prompts and budget; no statements, no labels).

Statement margins: the mean per-token log-probability of trait-matching statements as the model's reply minus
the non-matching ones (statements 0..n-1 of each side). Per-pole shift = margin(method) - margin(plain), with a
paired bootstrap over statements (`tuning.statistics.bootstrap`); pole separation = margin(high) - margin(low),
the same statements scored under both poles; common mode = the mean of the two poles' shifts. Fluency: repeated
3-gram rate and distinct-2 of greedy replies to open-ended prompts (Vicuna, not the tuning prompts).

    python experiments/tune_report.py --model smollm2-135m-instruct --out reports/tune_smollm2
    python experiments/tune_report.py --model qwen2.5-coder-0.5b-instruct --traits risk-seeking --out reports/tune_qwen
    python experiments/tune_report.py --merge reports/tune_smollm2.json,reports/tune_qwen.json --out reports/tune
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import memory_inception as mi
from memory_inception.core.architecture import geometry, model_fingerprint
from memory_inception.core.defaults import model_defaults
from memory_inception.datasets.personas import HELD_OUT, SPLIT_DECIDED, poles
from memory_inception.datasets.prompts import open_ended_prompts
from memory_inception.datasets.traits import statements
from memory_inception.methods.caa.pairs import STATEMENT_PROMPT, ContrastPair
from memory_inception.methods.runners import ASK, score_shared
from memory_inception.tuning.fluency import distinct_n, repeated_ngram_rate
from memory_inception.tuning.objective import neutral_text
from memory_inception.tuning.statistics import bootstrap

PERSONA_HELD_OUT = tuple(t for t in HELD_OUT if "-" in t)  # the four non-Big-Five held-out traits
METHODS = ("prompting", "caa", "mi defaults", "mi defaults + neutral ref", "mi tuned")


def caa_pairs(trait: str, start: int = 60, count: int = 60) -> list[ContrastPair]:
    """Yes/No contrast pairs from persona statements disjoint from the scored ones, Yes and No interleaved."""
    yes, no = statements(trait, count, offset=start)
    pairs = []
    for y, n in zip(yes, no):
        for statement, answer in ((y, "Yes"), (n, "No")):
            messages = [{"role": "user", "content": STATEMENT_PROMPT.format(statement=statement)}]
            pairs.append(ContrastPair(messages, answer, "No" if answer == "Yes" else "Yes"))
    return pairs


def statement_lps(model, tok, method, yes, no) -> tuple[np.ndarray, np.ndarray]:
    lps = score_shared(model, tok, method, [{"role": "user", "content": ASK}], list(yes) + list(no))
    means = np.array([float(lp.mean()) for lp in lps])
    return means[: len(yes)], means[len(yes):]


def fluency(model, tok, method, conversations, tokens) -> dict:
    replies = mi.generate(model, tok, method, conversations, max_new_tokens=tokens)
    return {"repetition": float(np.mean([repeated_ngram_rate(r, 3) for r in replies])),
            "distinct2": float(np.mean([distinct_n(r, 2) for r in replies])), "replies": replies}


def margin(m: np.ndarray, n: np.ndarray) -> float:
    return float(m.mean() - n.mean())


def trait_stats(plain: tuple, high: tuple, low: tuple, seed: int = 0) -> dict:
    """Shifts, separation and common mode with paired bootstrap intervals (rows: statements; columns: plain,
    high, low)."""
    m = np.stack([plain[0], high[0], low[0]], 1)
    n = np.stack([plain[1], high[1], low[1]], 1)

    def shift(col):
        return lambda a, b: margin(a[:, col], b[:, col]) - margin(a[:, 0], b[:, 0])

    out = {
        "high_shift": bootstrap(shift(1), m, n, seed=seed).to_dict(),
        "low_shift": bootstrap(shift(2), m, n, seed=seed).to_dict(),
        "separation": bootstrap(lambda a, b: margin(a[:, 1], b[:, 1]) - margin(a[:, 2], b[:, 2]), m, n,
                                seed=seed).to_dict(),
        "common_mode": bootstrap(lambda a, b: (shift(1)(a, b) + shift(2)(a, b)) / 2, m, n, seed=seed).to_dict(),
    }
    out["poles_right"] = int(out["high_shift"]["point"] > 0) + int(out["low_shift"]["point"] < 0)
    return out


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    started, cpu_started = time.time(), time.process_time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    model, tok = mi.load_model(args.model)
    geo, fp = geometry(model), model_fingerprint(model)
    d = model_defaults(geo, fingerprint=fp)
    default_sites = mi.Sites(d.site_heads(geo))  # the table's sites (core.defaults), KV groups included
    conversations = [[{"role": "user", "content": p}] for p in open_ended_prompts(limit=args.prompts)]
    out_path = Path(args.out + ".json")
    payload = json.loads(out_path.read_text()) if args.resume and out_path.exists() else {"traits": {}}
    payload.update({
        "model": args.model or "smollm2-135m-instruct", "fingerprint": fp, "threads": args.threads, "commit": commit,
        "split": SPLIT_DECIDED, "statements": args.statements, "prompts": args.prompts, "tokens": args.tokens,
        "tune_budget_s": args.budget, "defaults": {"layers": list(d.layers), "rho": d.rho,
                                                   "kv_groups": [list(u) for u in d.kv_groups or ()],
                                                   "caa_layer": d.caa_layer,
                                                   "caa_multiplier": d.caa_multiplier, "source": d.source},
    })
    if "plain_fluency" not in payload:
        payload["plain_fluency"] = fluency(model, tok, mi.Plain(), conversations, args.tokens)
    traits = args.traits.split(",") if args.traits else list(PERSONA_HELD_OUT)
    for trait in traits:
        if trait not in HELD_OUT:
            raise SystemExit(f"{trait} is not a held-out trait ({', '.join(HELD_OUT)})")
        if trait in payload["traits"]:
            continue
        t0, c0 = time.time(), time.process_time()
        yes, no = statements(trait, args.statements)
        plain = statement_lps(model, tok, mi.Plain(), yes, no)
        vector = mi.build_steering_vector(model, tok, caa_pairs(trait), layers=[d.caa_layer])
        per_pole = {}
        for pole, sign in (("high", 1.0), ("low", -1.0)):
            text = getattr(poles(trait), pole)
            bank = mi.build_bank(model, tok, text)
            neutral = mi.build_bank(model, tok, neutral_text(tok, text))
            tuned = mi.tune(model, tok, text, time_budget_s=args.budget, clock=time.process_time)
            record = mi.Tuning.of(tuned)
            methods = {
                "prompting": mi.Prompting(text),
                "caa": mi.CAA(vector, sign * d.caa_multiplier, layers=[d.caa_layer]),
                "mi defaults": mi.MI(mi.Steering(target=bank, sites=default_sites, rho=d.rho)),
                "mi defaults + neutral ref": mi.MI(mi.Steering(target=bank, reference=neutral, sites=default_sites,
                                                               rho=d.rho)),
                "mi tuned": mi.MI(tuned),
            }
            per_pole[pole] = {"tuning": {"label": record.best.label, "sites": record.best.sites, "rho": record.rho,
                                         "reason": record.reason, "seconds": record.seconds,
                                         "cpu_seconds": record.cpu_seconds, "trials": len(record.trials),
                                         "checked": sum(t.repetition is not None for t in record.trials)},
                              "methods": {}}
            for name, method in methods.items():
                lps = statement_lps(model, tok, method, yes, no)
                flu = fluency(model, tok, method, conversations, args.tokens)
                per_pole[pole]["methods"][name] = {"lps": [lps[0].tolist(), lps[1].tolist()], **flu}
                print(f"{trait}:{pole} {name}: shift {margin(*lps) - margin(*plain):+.3f} "
                      f"rep {flu['repetition']:.3f}", flush=True)
            print(f"{trait}:{pole} tuned {record.best.label} rho {record.rho:g} ({record.seconds:.0f} s, "
                  f"{record.cpu_seconds:.0f} s CPU; {record.reason})", flush=True)
        stats = {}
        for name in METHODS:
            h = [np.array(x) for x in per_pole["high"]["methods"][name]["lps"]]
            lo = [np.array(x) for x in per_pole["low"]["methods"][name]["lps"]]
            stats[name] = trait_stats(plain, tuple(h), tuple(lo))
        payload["traits"][trait] = {"plain_lps": [plain[0].tolist(), plain[1].tolist()], "poles": per_pole,
                                    "stats": stats, "seconds": time.time() - t0,
                                    "cpu_seconds": time.process_time() - c0}
        payload["seconds"] = payload.get("seconds_before", 0.0) + time.time() - started
        payload["cpu_seconds"] = payload.get("cpu_before", 0.0) + time.process_time() - cpu_started
        out_path.write_text(json.dumps(payload, indent=1))
    payload["seconds_before"], payload["cpu_before"] = payload.get("seconds", 0.0), payload.get("cpu_seconds", 0.0)
    out_path.write_text(json.dumps(payload, indent=1))
    return payload


def summary(payload: dict) -> dict:
    """Per method: poles right, traits with both poles right, mean separation, fluency."""
    rows = {}
    traits = payload["traits"]
    for name in METHODS:
        st = [traits[t]["stats"][name] for t in traits]
        reps = [traits[t]["poles"][p]["methods"][name]["repetition"] for t in traits for p in ("high", "low")]
        d2 = [traits[t]["poles"][p]["methods"][name]["distinct2"] for t in traits for p in ("high", "low")]
        rows[name] = {
            "poles_right": sum(s["poles_right"] for s in st), "poles": 2 * len(st),
            "both_right": sum(s["poles_right"] == 2 for s in st),
            "separation": float(np.mean([s["separation"]["point"] for s in st])),
            "separated": sum(s["separation"]["low"] > 0 for s in st),
            "common_mode": float(np.mean([s["common_mode"]["point"] for s in st])),
            "repetition": float(np.mean(reps)), "distinct2": float(np.mean(d2)),
        }
    return rows


def heads_of(defaults: dict) -> str:
    groups = sorted({g for _, g in defaults["kv_groups"]})
    return f"KV group {','.join(map(str, groups))}" if groups else "every head"


def write_markdown(payloads: list[dict], out: str) -> None:
    lines = [
        "# mi.tune on held-out persona traits: plain, prompting, CAA, MI defaults, MI tuned",
        "",
        f"Held-out traits (`datasets.personas.HELD_OUT`, split decided {payloads[0]['split']}, before any tuning "
        "run): nothing reported here was tuned on them. Generated by `experiments/tune_report.py`.",
        "",
        "Statement margins: mean per-token log-probability of trait-matching persona statements as the model's "
        "reply minus non-matching ones. Shift = margin(method) - margin(plain); separation = margin(high pole) - "
        "margin(low pole); common mode = mean of the two shifts (what a method does to both poles alike). "
        "Intervals: paired bootstrap over statements, 95%, 2000 resamples, seed 0 (`tuning.statistics`). "
        "Fluency: repeated 3-gram rate and distinct-2 of greedy replies to open-ended prompts (Vicuna), averaged "
        "over both poles.",
        "",
    ]
    for p in payloads:
        s = summary(p)
        plain = p["plain_fluency"]
        lines += [
            f"## {p['model']} (fingerprint {p['fingerprint']})",
            "",
            f"{len(p['traits'])} traits ({', '.join(p['traits'])}), {p['statements']} statements per side, "
            f"{p['prompts']} prompts x {p['tokens']} tokens; defaults: layers {p['defaults']['layers'][0]}-"
            f"{p['defaults']['layers'][-1]} ({heads_of(p['defaults'])}), rho {p['defaults']['rho']:g}; CAA layer "
            f"{p['defaults']['caa_layer']} x{p['defaults']['caa_multiplier']:g}; mi.tune budget "
            f"{p['tune_budget_s']:g} s. {p['threads']} thread, commit {p['commit']}, fp32 CPU; run "
            f"{p['seconds'] / 60:.1f} min wall, {p['cpu_seconds'] / 60:.1f} CPU-min (shared machine).",
            "",
            "| method | poles right | traits both right | separation (mean) | traits separated (CI > 0) | "
            "common mode (mean) | repeated 3-grams | distinct-2 |",
            "|---|---|---|---|---|---|---|---|",
            f"| plain | - | - | 0 | - | 0 | {plain['repetition']:.3f} | {plain['distinct2']:.2f} |",
        ]
        for name, r in s.items():
            lines.append(f"| {name} | {r['poles_right']}/{r['poles']} | {r['both_right']}/{r['poles'] // 2} | "
                         f"{r['separation']:+.3f} | {r['separated']}/{r['poles'] // 2} | {r['common_mode']:+.3f} | "
                         f"{r['repetition']:.3f} | {r['distinct2']:.2f} |")
        tuned, prompting = s["mi tuned"], s["prompting"]
        cpu = [t["poles"][q]["tuning"]["cpu_seconds"] for t in p["traits"].values() for q in ("high", "low")]
        checks = [
            ("MI tuned moves at least as many poles the right way as prompting",
             f"{tuned['poles_right']} vs {prompting['poles_right']}", tuned["poles_right"] >= prompting["poles_right"]),
            ("MI tuned separates the poles at least 0.8x as far as prompting",
             f"{tuned['separation']:+.3f} vs 0.8 x {prompting['separation']:+.3f}",
             tuned["separation"] >= 0.8 * prompting["separation"]),
            ("MI tuned's repeated 3-gram rate within +0.05 of plain",
             f"{tuned['repetition']:.3f} vs {plain['repetition']:.3f} + 0.05",
             tuned["repetition"] <= plain["repetition"] + 0.05),
            ("mi.tune within 120 s (CPU seconds at 1 thread)",
             f"max {max(cpu):.0f} s, median {np.median(cpu):.0f} s", max(cpu) <= 120.5),
        ]
        lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {what} | {measured} | {'yes' if ok else '**no**'} |" for what, measured, ok in checks]
        lines += ["", "Per trait (shift of each pole, separation, common mode; 95% intervals):", "",
                  "| trait | method | high-pole shift | low-pole shift | separation | common mode |",
                  "|---|---|---|---|---|---|"]
        for trait, t in p["traits"].items():
            for name in METHODS:
                st = t["stats"][name]

                def iv(x):
                    return f"{x['point']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"

                lines.append(f"| {trait} | {name} | {iv(st['high_shift'])} | {iv(st['low_shift'])} | "
                             f"{iv(st['separation'])} | {iv(st['common_mode'])} |")
        lines += ["", "What mi.tune chose (wall and CPU seconds; trials scored / checked for fluency):", "",
                  "| trait:pole | chosen | rho | seconds | CPU s | trials | checked | reason |",
                  "|---|---|---|---|---|---|---|---|"]
        for trait, t in p["traits"].items():
            for pole in ("high", "low"):
                r = t["poles"][pole]["tuning"]
                lines.append(f"| {trait}:{pole} | {r['label']} | {r['rho']:g} | {r['seconds']:.0f} | "
                             f"{r['cpu_seconds']:.0f} | {r['trials']} | {r['checked']} | {r['reason']} |")
        first = next(iter(p["traits"].values()))["poles"]["high"]["methods"]
        lines += ["", f"First reply, {next(iter(p['traits']))}:high (prompt: {open_ended_prompts(limit=1)[0]!r}):", ""]
        lines.append(f"- plain: {plain['replies'][0][:220]!r}")
        for name in METHODS:
            lines.append(f"- {name}: {first[name]['replies'][0][:220]!r}")
        lines.append("")
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(payloads: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(payloads), figsize=(6 * len(payloads), 4), squeeze=False)
    for ax, p in zip(axes[0], payloads):
        s = summary(p)
        names = list(s)
        x = np.arange(len(names))
        ax.bar(x - 0.2, [s[n]["separation"] for n in names], 0.4, label="separation (mean)")
        ax.bar(x + 0.2, [s[n]["common_mode"] for n in names], 0.4, label="common mode (mean)")
        for i, n in enumerate(names):
            ax.annotate(f"rep {s[n]['repetition']:.2f}", (i, 0), textcoords="offset points", xytext=(0, -28),
                        ha="center", fontsize=7)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(x, names, rotation=20, fontsize=8)
        ax.set_title(f"{p['model']}: {len(p['traits'])} held-out traits (plain rep "
                     f"{p['plain_fluency']['repetition']:.2f})", fontsize=9)
        ax.set_ylabel("statement margin (nats/token)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--traits", default=None, help="comma-separated held-out traits (default: the four persona ones)")
    ap.add_argument("--statements", type=int, default=25, help="scored statements per side")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--budget", type=float, default=120.0, help="mi.tune's time budget per pole (s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="keep the traits already in OUT.json")
    ap.add_argument("--merge", default=None, help="comma-separated JSON files to report together (no runs)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    payloads = ([json.loads(Path(f).read_text()) for f in args.merge.split(",")] if args.merge else [run(args)])
    write_markdown(payloads, args.out)
    plot(payloads, args.out)
    if args.merge:
        Path(args.out + ".json").write_text(json.dumps({"runs": [{k: v for k, v in p.items() if k != "traits"} | {
            "summary": summary(p), "traits": {t: {"stats": x["stats"], "tuning": {q: x["poles"][q]["tuning"]
                                                                                  for q in ("high", "low")}}
                                               for t, x in p["traits"].items()}} for p in payloads]}, indent=1))


if __name__ == "__main__":
    main()
