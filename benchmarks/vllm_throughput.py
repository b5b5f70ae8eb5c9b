"""Throughput of vLLM with the Memory Inception plugin, with and without banks, against the transformers path.

Tokens per second (generated tokens / wall time) at batch 1, 16 and 64, tensor parallelism 1 and 2, with and
without a bank, greedy, every request generating exactly --tokens tokens (EOS ignored). One vLLM engine per
tensor-parallel size, its CPU workers bound to named cores (VLLM_CPU_OMP_THREADS_BIND: TP 1 on one core, TP 2 on
one core per rank), usage telemetry off; transformers (`methods.generate`, left-padded batches) with as many torch
threads as the vLLM engine it is compared with has cores. Every configuration is warmed up (a short generation of
its own batch and steering), then each round runs every configuration back to back; a ratio is the median of the
per-round ratios with their min and max (benchmarks/pairing.py), a throughput the median of the rounds.
Run with .venv-vllm:

    make bench-vllm        # writes reports/vllm_throughput.md and .json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # vLLM's usage telemetry off (also set by `make bench-vllm`)
os.environ.setdefault("DO_NOT_TRACK", "1")

from pairing import environment, fmt, paired

QUESTIONS = [
    "How do I make tea?", "What is rain?", "Name three colours.", "Why is the sky blue?",
    "What should I cook tonight?", "Tell me about cats.", "How do ships float?", "What is a good book?",
    "Describe the moon.", "How do I learn to swim?", "What is music?", "Give me a tip for sleeping well.",
    "What is a volcano?", "How far is the sun?", "Why do leaves fall?", "What makes people happy?",
]
STYLES = ["", "Briefly: ", "For a child: ", "In your own words: "]  # 16 x 4 = 64 distinct prompts
BANK_TEXT = "You are a pirate captain who talks about the sea, ships and treasure."
REPORTS = Path(__file__).resolve().parent.parent / "reports"
CORES_ENV = "VLLM_CPU_OMP_THREADS_BIND"
WARM_TOKENS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct",
                        help="a model whose query and KV heads divide by every --tp (SmolLM2-135M's 9 / 3 do not)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--tp", default="1,2")
    parser.add_argument("--no-transformers", action="store_true", help="vLLM only")
    parser.add_argument("--rho", type=float, default=3.0, help="the bank's strength (sites: every head of the "
                        "model's default layers, set explicitly so a change of core/defaults.py does not change the "
                        "measured work)")
    parser.add_argument("--cores-per-rank", type=int, default=1)
    parser.add_argument("--profile-only", action="store_true",
                        help="only time the plugin's own work per decode step (no engine): StepPlan.build and "
                             "steer_layer at every site layer, for each batch size")
    parser.add_argument("--out", type=Path, default=REPORTS / "vllm_throughput")
    args = parser.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    sizes = [int(x) for x in args.tp.split(",")]
    cores = sorted(os.sched_getaffinity(0))

    import torch

    import memory_inception as mi
    from memory_inception.methods.interface import Plain
    from memory_inception.methods.mi import MI
    from memory_inception.methods.runners import generate
    from memory_inception.vllm import BankUse, MIEngine, RequestSteering
    from memory_inception.vllm.engine import checkpoint_dir

    path = checkpoint_dir(args.model)
    model, tokenizer = mi.load_model(str(path))
    bank_dir = Path(tempfile.mkdtemp(prefix="mi-bench-banks-"))
    from memory_inception.core.architecture import geometry, model_fingerprint
    from memory_inception.core.defaults import model_defaults

    layers = tuple(model_defaults(geometry(model), fingerprint=model_fingerprint(model)).layers)
    bank = mi.build_bank(model, tokenizer, BANK_TEXT, layers=list(layers), name="pirate")
    bank.save(bank_dir / "pirate.safetensors")
    core_steering = mi.Steering(target=bank, sites=mi.Sites({layer: None for layer in layers}), rho=args.rho)
    described = f"all heads of layers {layers[0]}-{layers[-1]} (the model's default layers), rho {args.rho:g}"
    if args.profile_only:
        torch.set_num_threads(1)
        print(profile_plugin(core_steering, path, batches))
        return
    steerings = {"plain": (Plain(), None),
                 "bank": (MI(core_steering), RequestSteering(banks=(BankUse("pirate"),), layers=layers, rho=args.rho))}
    convs = [[{"role": "user", "content": style + q}] for style in STYLES for q in QUESTIONS]

    engines, bindings = {}, {}
    per = args.cores_per_rank
    for tp in sizes:  # rank r on the last cores first, so TP 1 leaves core 0 to this process
        if tp * per > len(cores):
            raise SystemExit(f"TP {tp} x {per} cores per rank needs {tp * per} cores; this process may use {len(cores)}")
        bindings[tp] = "|".join(",".join(map(str, cores[len(cores) - (tp - r) * per :][:per])) for r in range(tp))
        os.environ[CORES_ENV] = bindings[tp]
        engines[tp] = MIEngine(args.model, bank_dir=bank_dir, tensor_parallel_size=tp)
    os.environ.pop(CORES_ENV, None)

    def vllm_run(tp: int, batch: int, steering, tokens: int) -> int:
        engine = engines[tp]
        if batch == 1:
            for conv in convs[:2]:
                engine.chat([conv], steering, max_tokens=tokens, ignore_eos=True)
            return 2 * tokens
        out = engine.chat(convs[:batch], steering, max_tokens=tokens, ignore_eos=True)
        return sum(len(o.token_ids) for o in out)

    def transformers_run(threads: int, batch: int, method, tokens: int) -> int:
        torch.set_num_threads(threads)
        runs = [convs[:1], convs[1:2]] if batch == 1 else [convs[:batch]]
        for part in runs:
            generate(model, tokenizer, method, part, max_new_tokens=tokens, min_new_tokens=tokens, batch_size=batch)
        return sum(len(p) for p in runs) * tokens

    configs = {}
    for tp in sizes:
        for batch in batches:
            for kind, (method, steering) in steerings.items():
                configs[f"vllm/tp{tp}/{batch}/{kind}"] = (lambda n, tp=tp, b=batch, s=steering: vllm_run(tp, b, s, n))
                if not args.no_transformers:
                    configs[f"transformers/threads{tp}/{batch}/{kind}"] = (
                        lambda n, t=tp, b=batch, m=method: transformers_run(t, b, m, n))
    for run in configs.values():  # warm-up: every configuration, its own batch and steering
        run(WARM_TOKENS)
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    speed: dict[str, list[float]] = {name: [] for name in configs}
    loads = []
    print(f"warmed up {len(configs)} configurations", flush=True)
    for i in range(args.rounds):
        loads.append(round(os.getloadavg()[0], 2))
        order = list(configs.items())
        for name, run in order if i % 2 == 0 else order[::-1]:  # every other round reversed: drift hits both sides
            start = time.perf_counter()
            tokens = run(args.tokens)
            seconds[name].append(time.perf_counter() - start)
            speed[name].append(tokens / seconds[name][-1])
            print(f"round {i + 1}: {name} {speed[name][-1]:.2f} tok/s", flush=True)
    for engine in engines.values():
        engine.close()

    rows = []
    for tp in sizes:
        for batch in batches:
            row = {"tp": tp, "batch": batch, "worker_cores": bindings[tp]}
            for kind in steerings:
                v = f"vllm/tp{tp}/{batch}/{kind}"
                row[f"vllm_{kind}_tok_s"] = round(statistics.median(speed[v]), 2)
                if not args.no_transformers:
                    t = f"transformers/threads{tp}/{batch}/{kind}"
                    row[f"transformers_{kind}_tok_s"] = round(statistics.median(speed[t]), 2)
                    row[f"vllm_over_transformers_{kind}"] = paired(seconds[t], seconds[v])
            row["bank_over_plain_vllm"] = paired(seconds[f"vllm/tp{tp}/{batch}/plain"], seconds[f"vllm/tp{tp}/{batch}/bank"])
            if not args.no_transformers:
                row["bank_over_plain_transformers"] = paired(seconds[f"transformers/threads{tp}/{batch}/plain"],
                                                             seconds[f"transformers/threads{tp}/{batch}/bank"])
            rows.append(row)
    geo = engines[sizes[0]].checkpoint.geometry
    result = {
        "model": f"{args.model} (fp32; {geo.num_heads} query / {geo.num_kv_heads} KV heads)",
        "tokens_per_request": args.tokens, "rounds": args.rounds,
        "vllm": "vllm-cpu 0.32.0, eager, the memory-inception plugin loaded, usage telemetry off",
        "transformers": "methods.generate (left-padded batches, KV cache), torch threads = the vLLM engine's cores",
        "bank": f"one target bank, {bank.num_slots} slots, {described}",
        "load_per_round": loads, "environment": environment(threads=None),
        "rows": rows, "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    env = result["environment"]
    lines = [
        "# vLLM plugin vs transformers: throughput", "",
        (f"Made by `benchmarks/vllm_throughput.py` (`make bench-vllm`) at commit {env['commit']}: {result['model']}, "
        f"{args.tokens} generated tokens per request (EOS ignored), greedy; {args.rounds} rounds after a warm-up of "
        "every configuration (each round in the reverse order of the one before); ratios are the median of the "
        "per-round ratios [min-max], throughputs the median of the rounds."), "",
        f"- vLLM: {result['vllm']}; worker cores (VLLM_CPU_OMP_THREADS_BIND): "
        + ", ".join(f"TP {tp} `{bindings[tp]}`" for tp in sizes) + ".",
        f"- transformers: {result['transformers']}.", f"- bank: {result['bank']}.",
        "- batch 1: two requests one after the other; batch 16 / 64: that many requests in one call.",
        (f"- machine: {env['cpu_count']} cores, {env['machine']}, torch {env['torch']}; 1-minute load average at "
        f"the start of each round: {', '.join(map(str, loads))}."),
        "", ("| TP | batch | vLLM tok/s (no bank / bank) | bank / no bank, vLLM | transformers tok/s (no bank / bank) "
        "| bank / no bank, transformers | vLLM / transformers (no bank / bank) |"),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        t_speed = t_cost = t_ratio = "-"
        if not args.no_transformers:
            t_speed = f"{r['transformers_plain_tok_s']} / {r['transformers_bank_tok_s']}"
            t_cost = fmt(r["bank_over_plain_transformers"])
            t_ratio = f"{fmt(r['vllm_over_transformers_plain'])} / {fmt(r['vllm_over_transformers_bank'])}"
        lines.append(f"| {r['tp']} | {r['batch']} | {r['vllm_plain_tok_s']} / {r['vllm_bank_tok_s']} | "
                     f"{fmt(r['bank_over_plain_vllm'])} | {t_speed} | {t_cost} | {t_ratio} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def profile_plugin(steering, path: Path, batches: list[int], repeats: int = 30) -> str:
    """Milliseconds of the plugin's own work in one decode step with every row steered, outside vLLM: the
    per-forward preparation (`StepPlan.build`) and `steer_layer` at each site layer (60 positions of keys per
    request), one thread, the median of `repeats` after 5 warm-up steps, in CPU time of this thread (wall time on a shared
    machine counts the other jobs)."""
    import torch

    from memory_inception.core.plan import plan_layers
    from memory_inception.vllm.batching import Stacked, StepPlan, steer_layer
    from memory_inception.vllm.checkpoint import Checkpoint
    from memory_inception.vllm.keypool import KeyPool
    from memory_inception.vllm.shard import Shard, local_banks, stack_banks
    from memory_inception.vllm.spec import BankUse, RequestSteering
    from memory_inception.vllm.state import RequestState

    checkpoint = Checkpoint(path)
    geo = checkpoint.geometry
    plans = plan_layers(steering, geo, fingerprint=checkpoint.fingerprint)
    local = {layer: local_banks(plan, Shard(geo)) for layer, plan in plans.items()}
    heads, kv, dim = geo.num_heads, geo.num_kv_heads, geo.head_dim
    lines = [(f"plugin work per decode step ({len(plans)} site layers, {geo.num_heads} query / {kv} KV heads, "
              f"one thread, CPU ms, median of {repeats}):")]
    for n in batches:
        pool = KeyPool()
        rows = [RequestState(RequestSteering(banks=(BankUse("pirate"),)), "last", 40, plans, [], local)
                for _ in range(n)]
        for state in rows:
            state.slot = pool.acquire()
        q, k, out = torch.randn(n, heads, dim), torch.randn(n, kv, dim), torch.randn(n, heads, dim)
        stacks: dict = {}

        def stacked(r, g, layer, stacks=stacks):  # as WorkerRegistry.stacked: built once per layer and mix
            key = (layer, r.identity)
            if key not in stacks:
                stacks[key] = Stacked(*stack_banks([x[layer] for x in r.locals], layer, g))
            return stacks[key]

        prep, steer = [], []
        for i in range(5 + repeats):
            for state in rows:
                state.length = 60
            t0 = time.thread_time()
            step = StepPlan.build(rows, list(range(n + 1)), [61] * n, checkpoint, torch.float32)
            works = {layer: step.layer(layer) for layer in plans}  # the rows, RoPE tables, masks (shared)
            t1 = time.thread_time()
            for layer, work in works.items():
                steer_layer(work, lambda r, g, layer=layer: stacked(r, g, layer), pool, layer, q, k, out, dim**-0.5)
            t2 = time.thread_time()
            if i >= 5:
                prep.append(t1 - t0)
                steer.append(t2 - t1)
        lines.append(f"- batch {n}: preparation {statistics.median(prep) * 1e3:.2f} ms, steer_layer at all site "
                     f"layers {statistics.median(steer) * 1e3:.2f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
