#!/usr/bin/env python
"""Decode speed against memory size: plain decoding vs a memory bank read top-k (exact, HNSW) vs the full mixture.

On the default model (SmolLM2-135M-Instruct, fp32, CPU), one memory is built from a passkey document (the
long-memory task's filler and facts) of the largest size; the smaller memories are its first M slots (what
`build_memory` makes of the document's first M tokens: chunks start at token 0). At the default sites (layers
21-26, every head), for each size M:
- `exact`: top-k by every slot's score (cost linear in M);
- `hnsw`: top-k from an HNSW index per layer and KV head (faiss; built before timing, its build time reported);
- `full`: the same slots as an ordinary bank, every slot in the mixture (the paper's operator).
Every configuration is warmed up once; then each round runs every configuration once (order rotated per round),
and the decode tokens/s of each is divided by plain's of the same round. Printed: the median of the per-round
ratios with their min - max, the median tokens/s, threads, commit.

    python benchmarks/memory_decode.py                     # sizes 1e3, 1e4, 1e5, 5 rounds
    python benchmarks/memory_decode.py --sizes 1000,10000 --rounds 3
    python benchmarks/memory_decode.py --memory reports/eval/smollm2-memory/banks/memory-100000-...safetensors

`--memory FILE` reads a memory built elsewhere (the long-memory eval keeps its memories in its run directory's
`banks/`) instead of building one (roughly 3-4 ms of one CPU thread per token here: about 6 minutes for 10^5).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

import memory_inception as mi
from memory_inception.core.memory import MemoryRead, build_memory
from memory_inception.evaluation.tasks.long_memory import make_document
from memory_inception.hf.text import render_chat

QUESTION = "What is the pass key of the red fox? Answer with the number only."
CACHE = Path(".cache")


class Stamps(LogitsProcessor):
    """A timestamp each time generate asks for the next token (once per forward)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def decode_tps(model, ids: torch.Tensor, steering: mi.Steering | None, tokens: int) -> float:
    stamps = Stamps()
    with torch.inference_mode(), mi.inject(model, steering):
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                       do_sample=False, logits_processor=LogitsProcessorList([stamps]), pad_token_id=0)
    return (len(stamps.times) - 1) / (stamps.times[-1] - stamps.times[0])


def first_slots(bank: mi.Bank, m: int) -> mi.Bank:
    """The memory of the document's first m tokens: the bank's first m slots."""
    return mi.Bank(f"{bank.name}-{m}", None, bank.token_ids[:m], bank.fingerprint, bank.num_kv_heads, bank.head_dim,
                   {k: v for k, v in bank.options.items() if k != "memory"}, dict(bank.kv_heads),
                   {l: bank.keys(l)[:, :m].contiguous() for l in bank.layers},
                   {l: bank.values(l)[:, :m].contiguous() for l in bank.layers})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32, help="decoded tokens per run")
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--hnsw-links", type=int, default=MemoryRead.hnsw_links, help="HNSW graph neighbours per key")
    ap.add_argument("--memory", help="a memory bank file to read (default: build one, cached in .cache/)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-full", action="store_true", help="skip the full-mixture configurations")
    ap.add_argument("--out", default="reports/memory_banks.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    model, tok = mi.load_model(device="cpu")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()

    largest = max(sizes)
    path = Path(args.memory) if args.memory else CACHE / f"memory_decode_{largest}.safetensors"
    started = time.perf_counter()
    if path.is_file() or args.memory:
        memory = mi.Bank.load(path, model=model)
    else:
        document, _ = make_document(tok, largest, 16, seed=0)
        memory = build_memory(model, tok, document)
        memory.save(path)
    build_s = time.perf_counter() - started
    print(f"memory: {memory.num_slots:,} slots at layers {list(memory.layers)}, {build_s:.0f} s to build or load")

    ids = torch.tensor([render_chat(tok, [{"role": "user", "content": QUESTION}])])
    configs: dict[str, mi.Steering | None] = {"plain": None}
    index_s: dict[int, float] = {}
    for m in sorted({min(m, memory.num_slots) for m in sizes}):  # named by the slots each really has
        bank = first_slots(memory, m)
        configs[f"exact {m}"] = mi.Steering(target=mi.as_memory(bank, top_k=args.top_k, index="exact"))
        hnsw = mi.as_memory(bank, top_k=args.top_k, index="hnsw", hnsw_links=args.hnsw_links)
        t0 = time.perf_counter()
        mi.inject(model, mi.Steering(target=hnsw))  # planning builds the indexes, kept with the bank
        index_s[m] = time.perf_counter() - t0
        configs[f"hnsw {m}"] = mi.Steering(target=hnsw)
        if not args.no_full:
            configs[f"full {m}"] = mi.Steering(target=bank)
        print(f"size {m:,}: HNSW indexes built in {index_s[m]:.1f} s")

    for steering in configs.values():  # warm-up
        decode_tps(model, ids, steering, 4)
    names = list(configs)
    runs: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        tps = {n: decode_tps(model, ids, configs[n], args.tokens) for n in order}
        for n in names:
            runs[n].append(tps[n])
            ratios[n].append(tps[n] / tps["plain"])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {tps[n]:.1f}" for n in names))

    print(f"\ndecode tok/s, {args.tokens} tokens, batch 1, top-{args.top_k}, HNSW links {args.hnsw_links}, "
          f"{args.threads} thread(s), commit {commit}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("| configuration | memory slots | tok/s (median) | ratio to plain (median of rounds) | min - max |")
    print("|---|---|---|---|---|")
    rows = []
    for n in names:
        kind, _, m = n.partition(" ")
        med = statistics.median(ratios[n])
        row = {"config": n, "kind": kind, "slots": int(m) if m else 0, "tps": statistics.median(runs[n]),
               "ratio": med, "ratio_min": min(ratios[n]), "ratio_max": max(ratios[n]), "runs": runs[n]}
        rows.append(row)
        print(f"| {kind} | {m or '-'} | {row['tps']:.1f} | {med:.3f} | {row['ratio_min']:.3f} - {row['ratio_max']:.3f} |")
    data = {"commit": commit, "threads": args.threads, "tokens": args.tokens, "top_k": args.top_k,
            "hnsw_links": args.hnsw_links, "memory": str(path),
            "rounds": args.rounds, "index_seconds": index_s, "memory_seconds": round(build_s, 1), "rows": rows,
            "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
