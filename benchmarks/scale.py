#!/usr/bin/env python
"""MI at paper-sized layer shapes: plain, MI and visible prompting side by side, prefill and decode.

Random-weight models with the per-layer shapes of Llama-3.1-8B and Qwen3-30B-A3B (`shapes.py`), fewer layers
so they fit this machine, the default sites' share of layers kept. Per cell (shape, dtype, context, batch):
- prefill: one forward of `[batch, context]` (MI steers the last prompt row, the default; prompting carries a
  300-token guidance in front of every row);
- decode: `--decode-tokens` steps after a cache of `context` tokens (prompting's cache also holds the guidance).
Every configuration is warmed up, rounds are interleaved, ratios are medians of per-round ratios [min-max], and
the peak memory of one run of each configuration is recorded. End to end = prefill + decode where both ran.
Writes reports/scale.{md,json}.

    python benchmarks/scale.py                       # the grid that fits this 2-core machine (see --help)
    python benchmarks/scale.py --shapes llama8b --dtypes bfloat16 --contexts 1024 --batches 1 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from transformers import DynamicCache

import memory_inception as mi
from memory_inception.core.architecture import cache_kwargs, geometry
from pairing import PeakMemory, environment, fmt, interleaved, paired
from shapes import FULL_LAYERS, VOCAB, build, guidance_bank, site_layers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def prompt_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def prefill_cell(model, bank, guidance: list[int], batch: int, context: int, rounds: int) -> dict:
    ids = prompt_ids(batch, context, 2)
    visible = torch.cat([torch.tensor([guidance]).expand(batch, -1), ids], dim=1)
    steering = mi.Steering(target=bank, sites=mi.Sites({layer: None for layer in bank.layers}), rho=3.0)

    def run(x: torch.Tensor, st: mi.Steering | None):
        def go() -> None:
            with torch.inference_mode(), mi.inject(model, st):
                model(x, use_cache=False, logits_to_keep=1)
        return go

    configs = {"plain": run(ids, None), "mi": run(ids, steering), "prompting": run(visible, None)}
    return measure(configs, rounds, model)


def decode_cell(model, bank, guidance: list[int], batch: int, context: int, steps: int, rounds: int) -> dict:
    ids = prompt_ids(1, context, 2)
    steering = mi.Steering(target=bank, sites=mi.Sites({layer: None for layer in bank.layers}), rho=3.0)
    tokens = prompt_ids(batch, steps, 3)
    caches = {}
    with torch.inference_mode():
        for name, x, st in (("plain", ids, None), ("mi", ids, steering),
                            ("prompting", torch.cat([torch.tensor([guidance]), ids], dim=1), None)):
            cache = DynamicCache()
            with mi.inject(model, st):
                model(x, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
            cache.batch_repeat_interleave(batch)
            caches[name] = cache

    def run(name: str, st: mi.Steering | None):
        def go() -> None:
            cache = caches[name]
            length = cache.get_seq_length()
            with torch.inference_mode(), mi.inject(model, st):
                for t in range(steps):
                    model(tokens[:, t : t + 1], use_cache=True, **cache_kwargs(model, cache))
            cache.crop(length - cache.get_seq_length())  # drop the decoded tokens
        return go

    configs = {"plain": run("plain", None), "mi": run("mi", steering), "prompting": run("prompting", None)}
    out = measure(configs, rounds, model)
    out["cache_tokens"] = {name: c.get_seq_length() for name, c in caches.items()}
    for name in configs:
        out[name]["tok_s"] = batch * steps / statistics.median(out[name]["times_s"])
    return out


def measure(configs: dict, rounds: int, model) -> dict:
    device = next(model.parameters()).device
    peaks = {}
    for name, fn in configs.items():
        with PeakMemory(device) as peak:
            fn()
        peaks[name] = peak.peak
    times = interleaved(configs, rounds)
    out = {name: {"times_s": times[name], "median_s": statistics.median(times[name]), "peak_bytes": peaks[name]}
           for name in configs}
    out["ratios"] = {"mi/plain": paired(times["mi"], times["plain"]),
                     "mi/prompting": paired(times["mi"], times["prompting"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama8b,qwen3_30b_a3b")
    ap.add_argument("--layers", default="llama8b=5,qwen3_30b_a3b=6", help="layers per shape (shape=N,...)")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prefill-batches", default="1", help="batches whose prefill is timed (default 1: CPU time)")
    ap.add_argument("--prefill-contexts", default="1024,4096")
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--guidance", type=int, default=300, help="guidance tokens (prompting) = bank slots (MI)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="reports/scale")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layers = {k: int(v) for k, v in (item.split("=") for item in args.layers.split(","))}
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    cells = []
    for shape in split(args.shapes):
        for dtype_name in split(args.dtypes):
            model = build(shape, layers[shape], DTYPES[dtype_name], args.device)
            sites = site_layers(shape, layers[shape])
            bank, guidance = guidance_bank(model, sites, args.guidance)
            geo = geometry(model)
            for context in map(int, split(args.contexts)):
                for batch in map(int, split(args.batches)):
                    cell = {"shape": shape, "dtype": dtype_name, "context": context, "batch": batch,
                            "layers": layers[shape], "sites": list(sites), "heads": [geo.num_heads, geo.num_kv_heads]}
                    if batch in map(int, split(args.prefill_batches)) and context in map(int, split(args.prefill_contexts)):
                        cell["prefill"] = prefill_cell(model, bank, guidance, batch, context, args.rounds)
                    cell["decode"] = decode_cell(model, bank, guidance, batch, context, args.decode_tokens, args.rounds)
                    if "prefill" in cell:
                        e2e = {n: [p + d for p, d in zip(cell["prefill"][n]["times_s"], cell["decode"][n]["times_s"])]
                               for n in ("plain", "mi", "prompting")}
                        cell["e2e"] = {"mi/plain": paired(e2e["mi"], e2e["plain"]),
                                       "mi/prompting": paired(e2e["mi"], e2e["prompting"])}
                    cells.append(cell)
                    print(summary_row(cell), flush=True)
            del model
    env = environment(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "args": vars(args), "cells": cells}, indent=1))
    out.with_suffix(".md").write_text(report(cells, args, env))
    print(f"wrote {out}.md and {out}.json")


def summary_row(cell: dict) -> str:
    d = cell["decode"]
    parts = [f"{cell['shape']} {cell['dtype']} ctx {cell['context']} batch {cell['batch']}:",
             f"decode tok/s plain {d['plain']['tok_s']:.2f} MI {d['mi']['tok_s']:.2f} prompting {d['prompting']['tok_s']:.2f}",
             f"MI/plain time {fmt(d['ratios']['mi/plain'])}"]
    if "prefill" in cell:
        parts.append(f"prefill MI/plain {fmt(cell['prefill']['ratios']['mi/plain'])}")
        parts.append(f"e2e MI/prompting {fmt(cell['e2e']['mi/prompting'])}")
    return " | ".join(parts)


def report(cells: list[dict], args, env: dict) -> str:
    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    lines = [
        "# MI at paper-sized layer shapes",
        "",
        f"Random-weight models with the per-layer shapes of Llama-3.1-8B (hidden 4096, 32 query / 8 KV heads, head_dim "
        f"128, MLP 14336; {FULL_LAYERS['llama8b']} layers in the real model) and Qwen3-30B-A3B (32 / 4 heads, head_dim "
        f"128, QK-norm, 128 experts of 768, top-8; {FULL_LAYERS['qwen3_30b_a3b']} layers), shortened to {args.layers} "
        "layers; the sites keep the default share (the rule's six layers of the full model, every head). "
        f"MI bank = prompting guidance = {args.guidance} tokens. CPU, {args.threads} threads, commit {env['commit']}, "
        f"torch {env['torch']}, load average at the end {env['load_avg'][0]:.1f} on {env['cpu_count']} CPUs. Every "
        f"configuration warmed up, {args.rounds} interleaved rounds; ratios are medians of per-round ratios [min-max] "
        "of wall time (decode: MI/plain time < 1.053 is tok/s >= 0.95); peak = process RSS high-water over the start "
        "of the run. Made by `benchmarks/scale.py`.",
        "",
        "| shape | dtype | context | batch | site layers | decode tok/s plain / MI / prompting | decode MI/plain time | "
        "prefill s plain / MI / prompting | prefill MI/plain | e2e MI/prompting | peak MiB decode plain / MI / prompting |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        d = c["decode"]
        p = c.get("prefill")
        lines.append(
            f"| {c['shape']} | {c['dtype']} | {c['context']} | {c['batch']} | {len(c['sites'])} of {c['layers']} | "
            f"{d['plain']['tok_s']:.2f} / {d['mi']['tok_s']:.2f} / {d['prompting']['tok_s']:.2f} | "
            f"{fmt(d['ratios']['mi/plain'])} | "
            + (f"{p['plain']['median_s']:.2f} / {p['mi']['median_s']:.2f} / {p['prompting']['median_s']:.2f} | "
               f"{fmt(p['ratios']['mi/plain'])} | {fmt(c['e2e']['mi/prompting'])} | " if p else "- | - | - | ")
            + f"{mib(d['plain']['peak_bytes'])} / {mib(d['mi']['peak_bytes'])} / {mib(d['prompting']['peak_bytes'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
