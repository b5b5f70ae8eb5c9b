#!/usr/bin/env python
"""The GPU check, sized for about 5 minutes on one GPU: exactness on the device, then paper-sized speed.

1. The operator against the independent reference (`tests/reference.py`) on the device, on the five tiny
   architectures (tests/conftest.py): fp32 within 1e-4, bf16 within BF16_TOLERANCE of the largest logit.
2. The shapes of `shapes.py` at full layer count in bf16 (Llama-3.1-8B-shaped: 32 layers; Qwen3-30B-A3B-shaped:
   48 layers), at 4k and 32k tokens, batch 1 and 16: one prefill and a few decode steps, plain and MI, paired
   ratios and the peak memory of each.
Writes reports/gpu_check.{md,json}. `--tiny` runs the same code on small shapes (the test suite does, on the CPU,
so the script cannot rot); its numbers are not a measurement.

    python benchmarks/gpu_check.py              # on a machine with a GPU
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import DynamicCache

import memory_inception as mi
from memory_inception.core.architecture import cache_kwargs, geometry
from pairing import ROOT, PeakMemory, environment, fmt, interleaved, paired
from shapes import FULL_LAYERS, VOCAB, build, guidance_bank, site_layers

sys.path.insert(0, str(ROOT / "tests"))
from conftest import ARCHS, make_tiny  # noqa: E402
from reference import reference_steering  # noqa: E402

FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 0.02  # of the largest |logit|: bf16 rounding of two different orders of the same sums


def exactness(device: str) -> list[dict]:
    """MI against the reference on each tiny architecture, fp32 and bf16, prefill logits."""
    rows = []
    prompt = torch.tensor([[20, 21, 22, 23, 24, 25, 26], [30, 31, 32, 33, 34, 35, 36]], device=device)
    for arch in ARCHS:
        for dtype in (torch.float32, torch.bfloat16):
            model = make_tiny(arch).to(device=device, dtype=dtype)
            target = mi.Bank.from_token_ids(model, [3, 4, 5, 6, 7], name="target")
            reference = mi.Bank.from_token_ids(model, [8, 9, 10], name="reference")
            aux = mi.Bank.from_token_ids(model, [11, 12, 13, 14], name="aux")
            sites = mi.Sites({1: [0, 3], 2: None, 3: [1]})
            steering = mi.Steering(target=target, reference=reference, auxiliary=[(aux, 0.7)], sites=sites, rho=2.5,
                                   prefill="all")
            ref_banks = [("target", target, 1.0), ("reference", reference, 1.0), ("auxiliary", aux, 0.7)]
            with torch.no_grad():
                with mi.inject(model, steering):
                    got = model(prompt).logits.float()
                with reference_steering(model, banks=ref_banks, heads=sites.resolve(geometry(model)), rho=2.5,
                                        prefill="all"):
                    want = model(prompt).logits.float()
            err = (got - want).abs().max().item()
            bound = FP32_TOLERANCE if dtype == torch.float32 else BF16_TOLERANCE * want.abs().max().item()
            rows.append({"arch": arch, "dtype": str(dtype).removeprefix("torch."), "max_abs_error": err,
                         "bound": bound, "ok": err < bound})
    return rows


def speed(shape: str, layers: int, context: int, batch: int, device: str, dtype: torch.dtype, steps: int,
          rounds: int, tiny: bool) -> dict:
    """Prefill (MI steers the last row) and decode, plain and MI, on a random model of `shape`."""
    model = build(shape, layers, dtype, device, tiny=tiny)
    sites = site_layers(shape, layers)
    bank, _ = guidance_bank(model, sites, 300 if not tiny else 16)
    steering = mi.Steering(target=bank, sites=mi.Sites({layer: None for layer in sites}), rho=3.0)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (batch, context), generator=gen).to(device)
    tokens = torch.randint(3, VOCAB, (batch, steps), generator=gen).to(device)
    caches = {}

    def prefill(st):
        def go() -> None:
            cache = DynamicCache()
            with torch.inference_mode(), mi.inject(model, st):
                model(ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
            caches[st is not None] = cache
            sync(device)
        return go

    def decode(st):
        def go() -> None:
            cache = caches[st is not None]
            length = cache.get_seq_length()
            with torch.inference_mode(), mi.inject(model, st):
                for t in range(steps):
                    model(tokens[:, t : t + 1], use_cache=True, **cache_kwargs(model, cache))
            sync(device)
            cache.crop(length - cache.get_seq_length())
        return go

    out: dict = {"shape": shape, "layers": layers, "sites": list(sites), "context": context, "batch": batch}
    for phase, make in (("prefill", prefill), ("decode", decode)):
        configs = {"plain": make(None), "mi": make(steering)}
        if phase == "decode":
            for fn in (prefill(None), prefill(steering)):
                fn()
        peaks = {}
        for name, fn in configs.items():
            with PeakMemory(device) as peak:
                fn()
            peaks[name] = peak.peak
        times = interleaved(configs, rounds)
        out[phase] = {"times_s": times, "peak_bytes": peaks, "mi/plain": paired(times["mi"], times["plain"])}
        if phase == "decode":
            out[phase]["tok_s"] = {n: batch * steps / statistics.median(t) for n, t in times.items()}
    configs = caches = model = None  # free the model before the next cell
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small shapes and contexts (a CPU smoke run)")
    ap.add_argument("--contexts", default=None, help="default 4096,32768 (tiny: 64)")
    ap.add_argument("--batches", default=None, help="default 1,16 (tiny: 1,2)")
    ap.add_argument("--shapes", default="llama8b,qwen3_30b_a3b")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="reports/gpu_check")
    args = ap.parse_args(argv)
    contexts = [int(x) for x in (args.contexts or ("64" if args.tiny else "4096,32768")).split(",")]
    batches = [int(x) for x in (args.batches or ("1,2" if args.tiny else "1,16")).split(",")]
    rows = exactness(args.device)
    cells = []
    for shape in args.shapes.split(","):
        layers = 2 if args.tiny else FULL_LAYERS[shape]
        for context in contexts:
            for batch in batches:
                cell = speed(shape, layers, context, batch, args.device, torch.bfloat16, 2 if args.tiny else args.steps,
                             1 if args.tiny else args.rounds, args.tiny)
                cells.append(cell)
                print(f"{shape} ctx {context} batch {batch}: prefill MI/plain {fmt(cell['prefill']['mi/plain'])}, "
                      f"decode MI/plain time {fmt(cell['decode']['mi/plain'])}", flush=True)
    env = environment()
    result = {"env": env, "args": vars(args), "exactness": rows, "speed": cells,
              "ok": all(r["ok"] for r in rows)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# GPU check ({env['cuda'] or args.device}{', tiny shapes: a smoke run, not a measurement' if args.tiny else ''})",
             "", f"commit {env['commit']}, torch {env['torch']}. Made by `benchmarks/gpu_check.py`.", "",
             "## Exactness: MI against the reference (prefill logits, target + reference + auxiliary, head sites)", "",
             "| architecture | dtype | max abs error | bound | ok |", "|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['dtype']} | {r['max_abs_error']:.2e} | {r['bound']:.2e} | {'yes' if r['ok'] else 'NO'} |"
              for r in rows]
    lines += ["", f"fp32 bound {FP32_TOLERANCE}; bf16 bound {BF16_TOLERANCE} of the largest |logit|.", "",
              "## Speed: bf16, full layer count, default site share, prefill (MI steers the last row) and decode", "",
              "| shape | context | batch | prefill MI/plain | decode tok/s plain / MI | decode MI/plain time | "
              "peak MiB prefill plain / MI |", "|---|---|---|---|---|---|---|"]
    for c in cells:
        p, d = c["prefill"], c["decode"]
        lines.append(f"| {c['shape']} ({c['layers']} layers) | {c['context']} | {c['batch']} | {fmt(p['mi/plain'])} | "
                     f"{d['tok_s']['plain']:.1f} / {d['tok_s']['mi']:.1f} | {fmt(d['mi/plain'])} | "
                     f"{p['peak_bytes']['plain'] / 2**20:.0f} / {p['peak_bytes']['mi'] / 2**20:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
