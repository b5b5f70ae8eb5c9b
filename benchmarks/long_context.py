#!/usr/bin/env python
"""Long contexts on the default model: MI's prefill and teacher-forced scoring against the unsteered model.

One 4,096-token forward plain, with MI `prefill="last"` and with MI `prefill="all"`; scoring a 512-token
continuation after a 3.5k-token prompt unsteered and steered (generation semantics: every continuation token
steered). fp32, the thread count set and recorded, every configuration warmed up, rounds interleaved; ratios
are medians of per-round ratios with their spread. Writes reports/long_context.{md,json}.

    python benchmarks/long_context.py                 # ~15 min on one idle core
    python benchmarks/long_context.py --tokens 1024 --rounds 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import memory_inception as mi
from pairing import PeakMemory, environment, fmt, interleaved, paired

NEUTRAL = (
    "The regional library opened a new reading room on the second floor last spring. Its tables are made of pale "
    "oak, and the windows face a quiet courtyard with two maple trees. Visitors can borrow up to ten books at a time. "
)
PERSONA = "You are a cheerful ship captain who loves the sea and tells short stories about storms and distant ports."


def token_ids(tok, n: int) -> list[int]:
    ids: list[int] = []
    piece = tok(NEUTRAL, add_special_tokens=False)["input_ids"]
    while len(ids) < n:
        ids += piece
    return ids[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="forward length (default 4096)")
    ap.add_argument("--prompt", type=int, default=3584, help="scoring: prompt tokens (default 3584)")
    ap.add_argument("--continuation", type=int, default=512, help="scoring: continuation tokens (default 512)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="reports/long_context")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = mi.load_model(device="cpu")
    bank = mi.build_bank(model, tok, PERSONA)
    ids = torch.tensor([token_ids(tok, args.tokens)])
    prompt, cont = token_ids(tok, args.prompt), token_ids(tok, args.prompt + args.continuation)[args.prompt :]
    steer = {mode: mi.Steering(target=bank, prefill=mode) for mode in ("last", "all")}

    def forward(steering: mi.Steering | None):
        def run() -> None:
            with torch.inference_mode(), mi.inject(model, steering):
                model(ids, use_cache=False, logits_to_keep=1)
        return run

    def scoring(steering: mi.Steering | None):
        return lambda: mi.continuation_logprobs(model, None, [prompt], [cont], steering)

    configs = {
        "plain": forward(None), "mi_last": forward(steer["last"]), "mi_all": forward(steer["all"]),
        "score_plain": scoring(None), "score_mi": scoring(steer["last"]),
    }
    memory = {}
    for name, fn in configs.items():
        with PeakMemory() as peak:
            fn()
        memory[name] = peak.peak
    times = interleaved(configs, args.rounds)
    ratios = {
        "mi_last/plain": paired(times["mi_last"], times["plain"]),
        "mi_all/plain": paired(times["mi_all"], times["plain"]),
        "score_mi/score_plain": paired(times["score_mi"], times["score_plain"]),
    }
    env = environment(args.threads)
    result = {"env": env, "args": vars(args), "times_s": times, "peak_rss_bytes": memory, "ratios": ratios,
              "bank_slots": bank.num_slots, "sites": list(bank.layers)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Long contexts: MI prefill and scoring against the unsteered model",
        "",
        f"SmolLM2-135M-Instruct, fp32, CPU, {args.threads} thread(s), commit {env['commit']}, torch {env['torch']}, "
        f"load average at the end {env['load_avg'][0]:.1f} ({env['cpu_count']} CPUs). Bank: {bank.num_slots} slots at "
        f"layers {bank.layers[0]}-{bank.layers[-1]} (the default sites). Every configuration warmed up once, then "
        f"{args.rounds} interleaved rounds (every other one reversed); a ratio is the median of the per-round ratios [min-max]. Made by "
        "`benchmarks/long_context.py`.",
        "",
        "| configuration | median s | ratio to its unsteered twin | peak RSS over baseline |",
        "|---|---|---|---|",
        f"| plain forward, {args.tokens} tokens | {statistics.median(times['plain']):.2f} | - | "
        f"{memory['plain'] / 2**20:.0f} MiB |",
        f"| MI prefill=\"last\" | {statistics.median(times['mi_last']):.2f} | "
        f"{fmt(ratios['mi_last/plain'])} | {memory['mi_last'] / 2**20:.0f} MiB |",
        f"| MI prefill=\"all\" | {statistics.median(times['mi_all']):.2f} | "
        f"{fmt(ratios['mi_all/plain'])} | {memory['mi_all'] / 2**20:.0f} MiB |",
        f"| scoring {args.continuation} after {args.prompt}, unsteered | "
        f"{statistics.median(times['score_plain']):.2f} | - | "
        f"{memory['score_plain'] / 2**20:.0f} MiB |",
        f"| scoring, MI (every continuation token steered) | "
        f"{statistics.median(times['score_mi']):.2f} | {fmt(ratios['score_mi/score_plain'])} | "
        f"{memory['score_mi'] / 2**20:.0f} MiB |",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
