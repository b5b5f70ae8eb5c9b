#!/usr/bin/env python
"""Decoding-speed benchmark: plain decoding vs Memory Inception (MI) vs visible prompting.

Runs on the default model (SmolLM2-135M-Instruct, float32, CPU) and measures, in one run:

1. decode speed at batch 1 (tokens/s after the first token) of plain greedy decoding, MI decoding
   (all heads of layers 21-26, a ~60-slot bank from a ~60-token persona) and visible prompting (the
   same persona as the system message);
2. end to end on a ~2k-token user message (prefill included) for the same three configurations;
3. a guidance-length sweep (about 50 .. 800 tokens): MI decode vs prompting decode and end to end;

each with torch.set_num_threads(t) for every t in --threads. Every configuration is warmed up once,
then repeated --repeats times, configurations interleaved (plain, MI, prompting, plain, ...), and the
median is reported. Tables are printed with rich; the raw numbers go to --out as JSON.

    python benchmarks/decode.py            # full run, ~10 min on 2 idle cores
    python benchmarks/decode.py --quick    # ~1-2 min
    python benchmarks/decode.py --profile  # also: cProfile of a short MI decode (top MI costs)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import LogitsProcessor, LogitsProcessorList

import memory_inception as mi
from pairing import library_commit

SITE_LAYERS = tuple(range(21, 27))  # six consecutive layers, all heads (the library default on this model)
RHO = 3.0  # fixed, so runs on different library versions steer alike (timing does not depend on it)
USER_PROMPT = "Tell me about your day."
LONG_QUESTION = "\n\nIn two sentences, what is the text above about?"

PERSONA = (
    "You are Captain Mira Vale, a cheerful and talkative ship captain. You love the sea, tell short stories "
    "about storms and distant ports, use nautical words, laugh easily, and always end with a piece of "
    "friendly advice for the listener, spoken warmly like an old friend."
)

# Pool for guidance texts of any length (cycled, then cut at a token boundary).
PERSONA_POOL = [
    PERSONA,
    "Your ship is the Albatross, a three-masted schooner with patched sails and a crew of eleven.",
    "You grew up in a fishing village where the harbour bells rang every evening at dusk.",
    "You speak in short, lively sentences and often compare everyday things to life on deck.",
    "When someone is worried, you tell them that every storm blows itself out by morning.",
    "You keep a logbook of every port you have visited, from icy northern fjords to warm coral islands.",
    "Your favourite meal is fish stew with fresh bread, shared with the whole crew at the long table.",
    "You distrust maps drawn by people who have never sailed, and you say so with a grin.",
    "You call your listeners 'shipmate' and ask them about their own adventures.",
    "You never rush; you believe that a steady hand on the wheel beats a fast one.",
    "You whistle old sea shanties while you work and know the words to dozens of them.",
    "You once rescued a stranded whale calf and still talk about it with pride.",
    "You respect the ocean, and you remind everyone that the sea gives and the sea takes.",
    "You like to end conversations with a saying such as 'fair winds and following seas'.",
]

# Neutral text for the long prompt (cycled with section numbers, then cut at a token boundary).
NEUTRAL_POOL = [
    "The regional library opened a new reading room on the second floor last spring.",
    "Its tables are made of pale oak, and the windows face a quiet courtyard with two maple trees.",
    "Visitors can borrow up to ten books at a time for a period of three weeks.",
    "The catalogue lists works on history, geography, mathematics, cooking and gardening.",
    "A small exhibition near the entrance shows old maps of the river valley and its bridges.",
    "On weekday mornings the room is mostly used by students preparing for examinations.",
    "In the afternoon, retired residents come to read newspapers and magazines.",
    "The building is heated by a ground-source heat pump installed during the renovation.",
    "Bicycle racks were added along the east wall, next to a bus stop served by two routes.",
    "The staff organise a monthly talk on topics such as local birds, weather records and canals.",
    "Records show that the average visit lasts a little under two hours.",
    "Opening hours are nine to six from Monday to Friday and ten to four on Saturday.",
]


# ---- measurement helpers -------------------------------------------------------------------------------
class _Stamps(LogitsProcessor):
    """Records a timestamp each time generate asks for the next token (once per forward pass)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(time.perf_counter())
        return scores


def text_of_tokens(tokenizer: Any, pool: list[str], n_tokens: int, numbered: bool = False) -> str:
    """A text of about `n_tokens` tokens: the pool's sentences cycled, cut at a token boundary."""
    parts: list[str] = []
    i = 0
    while len(tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"]) < n_tokens + 8:
        sentence = pool[i % len(pool)]
        if numbered and i % len(pool) == 0:
            sentence = f"Section {i // len(pool) + 1}. {sentence}"
        parts.append(sentence)
        i += 1
    ids = tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids).strip()


def chat_inputs(tokenizer: Any, user: str, system: str | None = None) -> dict[str, torch.Tensor]:
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def generate_once(model: Any, inputs: dict, new_tokens: int, steering: mi.Steering | None) -> dict[str, Any]:
    """One greedy generate of exactly `new_tokens` tokens; wall-clock split into prefill and decode."""
    stamps = _Stamps()
    ctx = mi.inject(model, steering) if steering is not None else nullcontext()
    with torch.inference_mode(), ctx:
        t0 = time.perf_counter()
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([stamps]),
        )
        t1 = time.perf_counter()
    prompt_len = inputs["input_ids"].shape[1]
    produced = out.shape[1] - prompt_len
    if produced != new_tokens or len(stamps.times) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} new tokens, got {produced} ({len(stamps.times)} steps)")
    first = stamps.times[0]
    decode_s = stamps.times[-1] - first
    return {
        "total_s": t1 - t0,
        "prefill_s": first - t0,  # generate setup + the prompt's forward pass (first token)
        "decode_s": decode_s,  # forwards 2 .. N
        "decode_tps": (new_tokens - 1) / decode_s if decode_s > 0 else float("nan"),
        "e2e_tps": new_tokens / (t1 - t0),
        "tokens": out[0, prompt_len:].tolist(),
    }


def interleaved(configs: dict[str, tuple], repeats: int, new_tokens: int, model: Any) -> dict[str, dict]:
    """Warm each configuration up once, then `repeats` interleaved rounds; medians plus raw runs."""
    raw: dict[str, list[dict]] = {name: [] for name in configs}
    for round_ in range(repeats + 1):  # round 0 is the warm-up
        for name, (inputs, steering) in configs.items():
            run = generate_once(model, inputs, new_tokens, steering)
            run["load_avg_1m"] = os.getloadavg()[0]
            if round_ > 0:
                raw[name].append(run)
            else:
                raw[name + ".warmup"] = [run]
    out: dict[str, dict] = {}
    for name in configs:
        runs = raw[name]
        out[name] = {
            key: statistics.median(r[key] for r in runs)
            for key in ("total_s", "prefill_s", "decode_s", "decode_tps", "e2e_tps")
        }
        out[name]["best"] = {
            "total_s": min(r["total_s"] for r in runs),
            "decode_tps": max(r["decode_tps"] for r in runs),
        }
        out[name]["load_avg_1m"] = statistics.median(r["load_avg_1m"] for r in runs)
        out[name]["prompt_tokens"] = int(configs[name][0]["input_ids"].shape[1])
        out[name]["runs"] = [{k: v for k, v in r.items() if k != "tokens"} for r in runs]
        out[name]["warmup"] = {k: v for k, v in raw[name + ".warmup"][0].items() if k != "tokens"}
        out[name]["tokens"] = runs[-1]["tokens"]
    return out


def steering_for(bank: mi.Bank) -> mi.Steering:
    return mi.Steering(target=bank, sites=mi.Sites({layer: None for layer in SITE_LAYERS}), rho=RHO)


def paired(res: dict, a: str, b: str, key: str) -> dict[str, float]:
    """Median and spread (min, max) of the per-round ratios a/b of `key`: each round ran a and b back to back."""
    ratios = [ra[key] / rb[key] for ra, rb in zip(res[a]["runs"], res[b]["runs"])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": ratios}


def fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.3f} [{r['min']:.2f}-{r['max']:.2f}]"


def add_ratios(res: dict, pairs: list[tuple[str, str]]) -> dict:
    """Per-round paired ratios of decode tok/s and wall time for each (a, b) in `pairs`, stored in res["ratios"]."""
    res["ratios"] = {f"{a}/{b}": {key: paired(res, a, b, key) for key in ("decode_tps", "total_s")} for a, b in pairs}
    return res


# ---- the three sections -----------------------------------------------------------------------------------
def section_decode(model, tok, args, bank, threads: int) -> dict:
    configs = {
        "plain": (chat_inputs(tok, USER_PROMPT), None),
        "mi": (chat_inputs(tok, USER_PROMPT), steering_for(bank)),
        "prompting": (chat_inputs(tok, USER_PROMPT, system=PERSONA), None),
    }
    res = add_ratios(interleaved(configs, args.repeats, args.new_tokens, model), [("mi", "plain"), ("mi", "prompting")])
    res["mi_differs_from_plain"] = res["mi"]["tokens"] != res["plain"]["tokens"]
    return res


def section_long(model, tok, args, bank, long_text: str, threads: int) -> dict:
    user = long_text + LONG_QUESTION
    configs = {
        "plain": (chat_inputs(tok, user), None),
        "mi": (chat_inputs(tok, user), steering_for(bank)),  # default prefill="last"
        "prompting": (chat_inputs(tok, user, system=PERSONA), None),
    }
    return add_ratios(interleaved(configs, args.repeats, args.long_new_tokens, model), [("mi", "plain"), ("mi", "prompting")])


def section_sweep(model, tok, args, sweep_banks: dict[int, tuple[str, mi.Bank]], threads: int) -> dict:
    points = {}
    for n, (text, bank) in sweep_banks.items():
        configs = {
            "mi": (chat_inputs(tok, USER_PROMPT), steering_for(bank)),
            "prompting": (chat_inputs(tok, USER_PROMPT, system=text), None),
        }
        res = add_ratios(interleaved(configs, args.repeats, args.sweep_new_tokens, model), [("mi", "prompting")])
        res["slots"] = bank.num_slots
        res["guidance_tokens"] = len(tok(text, add_special_tokens=False)["input_ids"])
        points[n] = res
    return points


# ---- tables -------------------------------------------------------------------------------------------------
def header(args, meta: dict, what: str, new_tokens: int) -> str:
    return (
        f"{what} | model {meta['model']} | dtype {meta['dtype']} | threads {args.threads} | "
        f"{new_tokens} new tokens, greedy, batch 1 | {args.repeats} interleaved rounds after 1 warm-up of each; "
        "ratios: median of per-round ratios [min-max]"
    )


def load_of(*parts: dict) -> str:
    """Median 1-minute load average over the timed runs (2 CPUs: above ~threads means contention)."""
    return f"{statistics.median(p['load_avg_1m'] for p in parts):.1f}"


def table_decode(results: dict, args, meta: dict) -> Table:
    t = Table(title=header(args, meta, "1. Decode speed", args.new_tokens), title_justify="left")
    t.caption = (
        f"decode tok/s = (N-1) / time from 1st to last token (prefill excluded). MI: all heads of layers "
        f"{SITE_LAYERS[0]}-{SITE_LAYERS[-1]}, {meta['persona_slots']}-slot bank. Prompting: the same "
        f"{meta['persona_tokens']}-token persona as the system message. Ratios of tok/s (<1 = MI slower)."
    )
    for col in ("threads", "prompt tok\nplain/MI/prompt", "plain\ntok/s", "MI\ntok/s", "prompting\ntok/s",
                "MI/plain", "MI/prompting", "e2e tok/s\nplain/MI/prompt", "MI output\n≠ plain", "load\navg"):
        t.add_column(col, justify="right")
    for th, r in results.items():
        p, m, v = r["plain"], r["mi"], r["prompting"]
        t.add_row(
            str(th),
            f"{p['prompt_tokens']}/{m['prompt_tokens']}/{v['prompt_tokens']}",
            f"{p['decode_tps']:.1f}", f"{m['decode_tps']:.1f}", f"{v['decode_tps']:.1f}",
            fmt_ratio(r["ratios"]["mi/plain"]["decode_tps"]), fmt_ratio(r["ratios"]["mi/prompting"]["decode_tps"]),
            f"{p['e2e_tps']:.1f}/{m['e2e_tps']:.1f}/{v['e2e_tps']:.1f}",
            "yes" if r["mi_differs_from_plain"] else "NO",
            load_of(p, m, v),
        )
    return t


def table_long(results: dict, args, meta: dict) -> Table:
    t = Table(
        title=header(args, meta, f"2. End to end, ~{args.long_tokens}-token prompt", args.long_new_tokens),
        title_justify="left",
    )
    t.caption = (
        "seconds of model.generate, prefill included (MI prefill='last': the operator runs on the last prompt "
        "row only). Ratios of wall time (>1 = MI slower)."
    )
    for col in ("threads", "prompt tok\nplain/MI/prompt", "plain s", "MI s", "prompting s", "MI/plain",
                "MI/prompting", "prefill s\nplain/MI/prompt", "decode tok/s\nplain/MI/prompt", "load\navg"):
        t.add_column(col, justify="right")
    for th, r in results.items():
        p, m, v = r["plain"], r["mi"], r["prompting"]
        t.add_row(
            str(th),
            f"{p['prompt_tokens']}/{m['prompt_tokens']}/{v['prompt_tokens']}",
            f"{p['total_s']:.2f}", f"{m['total_s']:.2f}", f"{v['total_s']:.2f}",
            fmt_ratio(r["ratios"]["mi/plain"]["total_s"]), fmt_ratio(r["ratios"]["mi/prompting"]["total_s"]),
            f"{p['prefill_s']:.2f}/{m['prefill_s']:.2f}/{v['prefill_s']:.2f}",
            f"{p['decode_tps']:.1f}/{m['decode_tps']:.1f}/{v['decode_tps']:.1f}",
            load_of(p, m, v),
        )
    return t


def table_sweep(results: dict, args, meta: dict) -> Table:
    t = Table(title=header(args, meta, "3. Guidance-length sweep", args.sweep_new_tokens), title_justify="left")
    t.caption = (
        "same guidance text as an MI bank (slots, layers "
        f"{SITE_LAYERS[0]}-{SITE_LAYERS[-1]}) or as the system message. decode ratio: MI/prompting tok/s "
        "(>1 = MI faster); e2e ratio: MI/prompting wall time incl. prefill (<1 = MI faster)."
    )
    for col in ("threads", "guidance\ntokens", "MI\nslots", "prompt tok\nMI/prompt", "MI decode\ntok/s",
                "prompting\ndecode tok/s", "decode\nMI/prompt", "MI e2e s", "prompting\ne2e s", "e2e\nMI/prompt", "load\navg"):
        t.add_column(col, justify="right")
    for th, points in results.items():
        for n, r in points.items():
            m, v = r["mi"], r["prompting"]
            dec_r, e2e_r = r["ratios"]["mi/prompting"]["decode_tps"], r["ratios"]["mi/prompting"]["total_s"]
            dec, e2e = dec_r["median"], e2e_r["median"]
            t.add_row(
                str(th), str(r["guidance_tokens"]), str(r["slots"]),
                f"{m['prompt_tokens']}/{v['prompt_tokens']}",
                f"{m['decode_tps']:.1f}", f"{v['decode_tps']:.1f}",
                f"[green]{fmt_ratio(dec_r)}[/]" if dec >= 1 else fmt_ratio(dec_r),
                f"{m['total_s']:.2f}", f"{v['total_s']:.2f}",
                f"[green]{fmt_ratio(e2e_r)}[/]" if e2e <= 1 else fmt_ratio(e2e_r),
                load_of(m, v),
            )
        t.add_section()
    return t


def crossover(points: dict, key: str, mi_better) -> int | None:
    """Smallest guidance length from which MI stays better than prompting on `key`."""
    lengths = sorted(points)
    for i, n in enumerate(lengths):
        if all(mi_better(points[k]["mi"][key], points[k]["prompting"][key]) for k in lengths[i:]):
            return points[n]["guidance_tokens"]
    return None


# ---- profile ------------------------------------------------------------------------------------------------
def profile_mi(model, tok, bank, new_tokens: int, console: Console) -> dict:
    """cProfile of a short MI decode: cumulative time of the memory_inception functions and the top ops."""
    inputs = chat_inputs(tok, USER_PROMPT)
    generate_once(model, inputs, new_tokens, steering_for(bank))  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    generate_once(model, inputs, new_tokens, steering_for(bank))
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[3] for k, v in stats.stats.items() if k[2] == "generate_once") or stats.total_tt
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        if "memory_inception" in file or func.startswith("<built-in method torch") or func.startswith("<method"):
            rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc, "tottime_s": tt, "cumtime_s": ct})
    rows.sort(key=lambda r: -r["cumtime_s"])
    t = Table(title=f"cProfile of one MI generate ({new_tokens} new tokens, threads {torch.get_num_threads()}); "
              f"generate total {total:.3f} s", title_justify="left")
    for col in ("function", "calls", "tottime s", "cumtime s", "% of generate"):
        t.add_column(col, justify="right" if col != "function" else "left")
    for r in rows[:25]:
        t.add_row(r["function"], str(r["calls"]), f"{r['tottime_s']:.4f}", f"{r['cumtime_s']:.4f}",
                  f"{100 * r['cumtime_s'] / total:.1f}")
    console.print(t)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats("memory_inception", 15)
    return {"generate_total_s": total, "rows": rows[:60], "pstats_memory_inception": buf.getvalue()}


# ---- main ---------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repetitions per configuration (default 3; quick 1)")
    ap.add_argument("--new-tokens", type=int, default=None, help="section 1 new tokens (default 64; quick 16)")
    ap.add_argument("--long-tokens", type=int, default=None, help="section 2 prompt tokens (default 2000; quick 1000)")
    ap.add_argument("--long-new-tokens", type=int, default=None, help="section 2 new tokens (default 32; quick 8)")
    ap.add_argument("--sweep", default=None, help="guidance lengths in tokens (default 50,100,200,400,800; quick 50,400)")
    ap.add_argument("--sweep-new-tokens", type=int, default=None, help="section 3 new tokens (default 32; quick 12)")
    ap.add_argument("--sections", default="1,2,3", help="which sections to run (default 1,2,3)")
    ap.add_argument("--profile", action="store_true", help="also cProfile a short MI decode (1 thread)")
    ap.add_argument("--quick", action="store_true", help="~1-2 minutes: fewer tokens, 1 repeat, 2 sweep points, 1k-token long prompt")
    ap.add_argument("--model", default=None, help="model name or path for mi.load_model (default: the default model)")
    ap.add_argument("--out", default="reports/bench_decode.json", help="JSON of the raw numbers")
    args = ap.parse_args()
    quick = args.quick
    defaults = {
        "repeats": (3, 1), "new_tokens": (64, 16), "long_tokens": (2000, 1000), "long_new_tokens": (32, 8),
        "sweep": ("50,100,200,400,800", "50,400"), "sweep_new_tokens": (32, 12),
    }
    for key, (full, short) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, short if quick else full)
    args.thread_list = [int(x) for x in str(args.threads).split(",") if x.strip()]
    args.sweep_list = [int(x) for x in str(args.sweep).split(",") if x.strip()]
    args.section_list = {int(x) for x in str(args.sections).split(",") if x.strip()}
    return args


def main() -> None:
    args = parse_args()
    console = Console(width=200)
    started = time.perf_counter()
    model, tok = mi.load_model(args.model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    meta: dict[str, Any] = {
        "model": args.model or "SmolLM2-135M-Instruct",
        "dtype": dtype,
        "attn_implementation": model.config._attn_implementation,
        "torch": torch.__version__,
        "library_commit": library_commit(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_avg_at_start": os.getloadavg(),
        "site_layers": list(SITE_LAYERS),
        "args": {k: v for k, v in vars(args).items() if k not in ("section_list",)},
    }
    meta["args"]["section_list"] = sorted(args.section_list)

    # Banks are built once (outside the timings); bank building is not what this benchmark measures.
    t0 = time.perf_counter()
    persona_bank = mi.build_bank(model, tok, PERSONA, layers=SITE_LAYERS, name="persona")
    meta["persona_tokens"] = len(tok(PERSONA, add_special_tokens=False)["input_ids"])
    meta["persona_slots"] = persona_bank.num_slots
    sweep_banks = {}
    if 3 in args.section_list:
        for n in args.sweep_list:
            text = text_of_tokens(tok, PERSONA_POOL, n)
            sweep_banks[n] = (text, mi.build_bank(model, tok, text, layers=SITE_LAYERS, name=f"sweep-{n}"))
    long_text = text_of_tokens(tok, NEUTRAL_POOL, args.long_tokens, numbered=True)
    meta["bank_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(20):
        mi.inject(model, steering_for(persona_bank))  # planning cost (done once per `with mi.inject`)
    meta["inject_plan_ms"] = (time.perf_counter() - t0) / 20 * 1e3
    console.print(
        f"[bold]{meta['model']}[/] {dtype} {meta['attn_implementation']} | memory-inception {meta['library_commit']} | "
        f"torch {torch.__version__} | "
        f"{os.cpu_count()} CPUs | load avg {meta['load_avg_at_start'][0]:.2f} | persona {meta['persona_tokens']} "
        f"tokens -> {meta['persona_slots']} slots | banks built in {meta['bank_build_s']:.1f} s | "
        f"inject planning {meta['inject_plan_ms']:.2f} ms"
    )

    results: dict[str, Any] = {"decode": {}, "long": {}, "sweep": {}}
    meta["section_s"] = {}
    for th in args.thread_list:
        torch.set_num_threads(th)
        if 1 in args.section_list:
            t0 = time.perf_counter()
            results["decode"][th] = section_decode(model, tok, args, persona_bank, th)
            meta["section_s"][f"decode/{th}"] = time.perf_counter() - t0
            console.print(f"  section 1, {th} thread(s): {time.perf_counter() - t0:.1f} s")
        if 2 in args.section_list:
            t0 = time.perf_counter()
            results["long"][th] = section_long(model, tok, args, persona_bank, long_text, th)
            meta["section_s"][f"long/{th}"] = time.perf_counter() - t0
            console.print(f"  section 2, {th} thread(s): {time.perf_counter() - t0:.1f} s")
        if 3 in args.section_list:
            t0 = time.perf_counter()
            results["sweep"][th] = section_sweep(model, tok, args, sweep_banks, th)
            meta["section_s"][f"sweep/{th}"] = time.perf_counter() - t0
            console.print(f"  section 3, {th} thread(s): {time.perf_counter() - t0:.1f} s")

    console.print()
    if results["decode"]:
        console.print(table_decode(results["decode"], args, meta))
        console.print()
    if results["long"]:
        console.print(table_long(results["long"], args, meta))
        console.print()
    if results["sweep"]:
        console.print(table_sweep(results["sweep"], args, meta))
        for th, points in results["sweep"].items():
            dec = crossover(points, "decode_tps", lambda a, b: a >= b)
            e2e = crossover(points, "total_s", lambda a, b: a <= b)
            console.print(
                f"  threads {th}: MI decode at least as fast as prompting from "
                f"{f'~{dec} guidance tokens' if dec else 'no point of the sweep'}; "
                f"MI end to end ({args.sweep_new_tokens} tokens) faster from "
                f"{f'~{e2e} guidance tokens' if e2e else 'no point of the sweep'}"
            )
        console.print()

    profile = None
    if args.profile:
        torch.set_num_threads(1)
        profile = profile_mi(model, tok, persona_bank, 32, console)

    loads = [r["load_avg_1m"] for sec in (results["decode"], results["long"]) for res in sec.values()
             for r in res.values() if isinstance(r, dict) and "load_avg_1m" in r]
    loads += [r[k]["load_avg_1m"] for pts in results["sweep"].values() for r in pts.values() for k in ("mi", "prompting")]
    if loads and statistics.median(loads) > (os.cpu_count() or 1):
        console.print(
            f"[yellow]warning: median 1-min load average {statistics.median(loads):.1f} > {os.cpu_count()} CPUs: other "
            "processes competed for the CPU; absolute numbers (and 2-thread runs most) are pessimistic and noisy.[/]"
        )
    meta["elapsed_s"] = time.perf_counter() - started
    meta["load_avg_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": results, "profile": profile}
    out.write_text(json.dumps(payload, indent=1, default=str))
    console.print(f"wrote {out} | total {meta['elapsed_s']:.0f} s | load avg at end {meta['load_avg_at_end'][0]:.2f}")


if __name__ == "__main__":
    main()
