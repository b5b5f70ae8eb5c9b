"""Measure what the defaults for `sites=None` and `rho` should be, on the default model.

Measurement: the persona statement-likelihood margin. For a trait (Anthropic persona statements), the mean
per-token log-probability the model gives trait-matching statements as its own reply, minus that of
non-matching statements, scored with generation semantics (`mi.continuation_logprobs`). A bank describing the
high pole should raise the margin relative to the plain model and a bank describing the low pole should lower
it. Fluency: the distinct-bigram ratio of greedy replies to neutral prompts (1.0 = no repeated bigram).

    python experiments/choose_defaults.py --out reports/defaults.md
"""

from __future__ import annotations

import argparse
import time

import torch

import memory_inception as mi
from memory_inception.datasets.traits import DESCRIPTORS, statements
from memory_inception.methods.interface import Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import statement_margin

TRAITS = ("extraversion", "agreeableness")
FLUENCY_BAND = "21-26"  # greedy generations cost most: fluency is measured on the default band only
NEUTRAL = ["What do you usually do on a Sunday?", "How would you describe a good day?", "What is your favorite food?"]


def chat_ids(tok, user: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def margin(model, tok, yes, no, steering=None, system=None) -> float:
    """The library's statement margin: plain, MI with `steering`, or prompting with `system`."""
    method = MI(steering) if steering is not None else Prompting(system) if system else Plain()
    return statement_margin(model, tok, method, yes, no)


def distinct2(model, tok, steering=None, system=None, new_tokens=48) -> float:
    ratios = []
    for q in NEUTRAL:
        ids = torch.tensor([chat_ids(tok, q, system)])
        with torch.no_grad(), mi.inject(model, steering):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
        toks = out[0, ids.shape[1] :].tolist()
        bigrams = list(zip(toks, toks[1:]))
        ratios.append(len(set(bigrams)) / max(1, len(bigrams)))
    return sum(ratios) / len(ratios)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30, help="statements per side")
    ap.add_argument("--out", default="reports/defaults.md")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rhos", default="0,1,3,6", help="comma-separated total strengths")
    ap.add_argument("--bands", default="9-14,15-20,21-26", help="comma-separated layer bands")
    ap.add_argument("--traits", default=",".join(TRAITS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = mi.load_model()
    n_layers = mi.architecture.geometry(model).num_layers
    bands = {b: range(int(b.split("-")[0]), int(b.split("-")[1]) + 1) for b in args.bands.split(",")}
    rhos = [float(r) for r in args.rhos.split(",")]
    lines = [
        "# Choosing the defaults for `sites=None` and `rho` (SmolLM2-135M-Instruct, fp32)",
        "",
        f"Statement-likelihood margin shift vs the plain model ({args.n} matching + {args.n} non-matching persona "
        "statements per trait, scored as the model's reply with generation semantics); high pole should be > 0, "
        "low pole < 0. `d2` = distinct-bigram ratio of 48-token greedy replies to 3 neutral prompts (plain model: "
        "see the plain row; measured on layers 21-26 only). All heads of the band, schedule middle_heavy, prefill last.",
        "",
        "| trait | config | high shift | low shift | both right | d2 high | d2 low |",
        "|---|---|---|---|---|---|---|",
    ]
    started = time.time()
    for trait in args.traits.split(","):
        high, low = DESCRIPTORS[trait].high, DESCRIPTORS[trait].low
        yes, no = statements(trait, args.n)
        base = margin(model, tok, yes, no)
        d2_plain = distinct2(model, tok)
        lines.append(f"| {trait} | plain (margin {base:+.3f}) | 0 | 0 | | {d2_plain:.2f} | {d2_plain:.2f} |")
        sh, sl = margin(model, tok, yes, no, system=high) - base, margin(model, tok, yes, no, system=low) - base
        dh, dl = distinct2(model, tok, system=high), distinct2(model, tok, system=low)
        lines.append(f"| {trait} | visible system prompt | {sh:+.3f} | {sl:+.3f} | {'yes' if sh > 0 > sl else 'no'} | {dh:.2f} | {dl:.2f} |")
        banks = {pole: mi.build_bank(model, tok, text) for pole, text in (("high", high), ("low", low))}
        for band, layers in bands.items():
            for rho in rhos:
                sites = mi.Sites({l: None for l in layers if l < n_layers})
                st = {p: mi.Steering(target=b, sites=sites, rho=rho) for p, b in banks.items()}
                sh = margin(model, tok, yes, no, st["high"]) - base
                sl = margin(model, tok, yes, no, st["low"]) - base
                fluency = "| - | - |"
                if band == FLUENCY_BAND:
                    fluency = f"| {distinct2(model, tok, st['high']):.2f} | {distinct2(model, tok, st['low']):.2f} |"
                lines.append(
                    f"| {trait} | MI layers {band}, rho {rho:g} | {sh:+.3f} | {sl:+.3f} | "
                    f"{'yes' if sh > 0 > sl else 'no'} {fluency}"
                )
                print(lines[-1], flush=True)
    lines += ["", f"Run time: {time.time() - started:.0f} s, {args.threads} thread(s)."]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
