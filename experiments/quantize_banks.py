"""Quantized banks against the fp32 bank on the default model: logit error, steering effect, replies, bytes.

For persona banks (concat and mean pooling) stored fp32, int8 and int4 (key scales per slot, or per channel):
- logit error: next-token logits at the last prompt token of neutral questions, steered by the quantized bank
  against steered by the fp32 bank: max |difference|, as a share of the steering effect (fp32 steered minus plain,
  max |difference|), and KL(fp32 steered || quantized steered) in nats;
- steering effect: the persona statement-likelihood margin toward the pole, minus plain's (as choose_defaults.py);
- replies: greedy replies to neutral questions, tokens equal to the fp32 bank's reply before the first difference;
- bytes: `Bank.nbytes` (quantized values plus float16 scales) and the content-matched storage ratio, prompting's
  KV bytes for the same text (`Prompting.cost`, i.e. `core.storage.kv_bytes`) over the bank's, for all ten
  persona descriptors.

    python experiments/quantize_banks.py --out reports/quantized_banks.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

import memory_inception as mi
from memory_inception.datasets.traits import DESCRIPTORS, TRAITS, statements
from memory_inception.hf.text import render_chat
from memory_inception.methods.interface import Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import generate, statement_margin

SPECS = ("fp32", "int8", "int8-channel", "int4", "int4-channel")
PERSONAS = (("extraversion", "high"), ("agreeableness", "low"))
NEUTRAL = ["What do you usually do on a Sunday?", "How would you describe a good day?",
           "What is your favorite food?", "Tell me about your last trip.", "How do you handle a busy week?",
           "What makes a good friend?", "What do you think about rainy days?", "How do you start your mornings?"]


def stored(bank: mi.Bank, spec: str) -> mi.Bank:
    return bank if spec == "fp32" else bank.quantize(spec)


def last_logits(model, tok, steering) -> torch.Tensor:
    rows = [render_chat(tok, [{"role": "user", "content": q}]) for q in NEUTRAL]
    out = []
    with torch.no_grad(), mi.inject(model, steering):
        for ids in rows:  # one row at a time: no padding question
            out.append(model(torch.tensor([ids])).logits[0, -1].float())
    return torch.stack(out)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/quantized_banks.md")
    ap.add_argument("--render", action="store_true", help="only rewrite the Markdown from the JSON next to --out")
    ap.add_argument("--statements", type=int, default=15, help="persona statements per side")
    ap.add_argument("--reply-tokens", type=int, default=32)
    ap.add_argument("--replies", type=int, default=3, help="neutral questions answered by greedy generation")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        out.write_text(render(json.loads(out.with_suffix(".json").read_text()), args) + "\n")
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tok = mi.load_model(device="cpu")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()

    # ---- storage: every persona descriptor, both poolings --------------------------------------------------
    storage: dict[str, dict[str, list[float]]] = {}
    example: dict[str, dict[str, int]] = {}
    for pooling in ("concat", "mean"):
        for trait in TRAITS:
            for pole in ("high", "low"):
                text = getattr(DESCRIPTORS[trait], pole)
                bank = mi.build_bank(model, tok, text, pooling=pooling)
                prompt_bytes = Prompting.from_bank(bank).cost(model, tok).cache_bytes
                for spec in SPECS:
                    b = stored(bank, spec)
                    storage.setdefault(pooling, {}).setdefault(spec, []).append(prompt_bytes / b.nbytes)
                    if (trait, pole) == PERSONAS[0]:
                        example.setdefault(pooling, {"prompt": prompt_bytes, "slots": bank.num_slots})[spec] = b.nbytes

    # ---- effect and error: two personas, both poolings ---------------------------------------------------------
    plain_logits = last_logits(model, tok, None)
    rows = []
    replies_text: dict[str, str] = {}
    plain_replies = generate(model, tok, Plain(), [[{"role": "user", "content": q}] for q in NEUTRAL[: args.replies]],
                             max_new_tokens=args.reply_tokens)
    for trait, pole in PERSONAS:
        yes, no = statements(trait, args.statements)
        sign = 1.0 if pole == "high" else -1.0
        plain_margin = sign * statement_margin(model, tok, Plain(), yes, no)
        text = getattr(DESCRIPTORS[trait], pole)
        for pooling in ("concat", "mean"):
            bank = mi.build_bank(model, tok, text, pooling=pooling)
            ref_logits = None
            ref_replies: list[list[int]] = []
            for spec in SPECS:
                b = stored(bank, spec)
                steering = mi.Steering(target=b)  # the default sites and rho (core.defaults)
                logits = last_logits(model, tok, steering)
                margin = sign * statement_margin(model, tok, MI(steering), yes, no) - plain_margin
                convs = [[{"role": "user", "content": q}] for q in NEUTRAL[: args.replies]]
                replies = generate(model, tok, MI(steering), convs, max_new_tokens=args.reply_tokens)
                ids = [tok(r, add_special_tokens=False)["input_ids"] for r in replies]
                if spec == "fp32":
                    ref_logits, ref_replies = logits, ids
                effect = float((ref_logits - plain_logits).abs().amax(-1).mean())
                diff = (logits - ref_logits).abs().amax(-1)  # per question
                kl = torch.nn.functional.kl_div(logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True,
                                                reduction="none").sum(-1)
                same = [common_prefix(a, r) / max(1, len(r)) for a, r in zip(ids, ref_replies)]
                rows.append({
                    "persona": f"{trait}:{pole}", "pooling": pooling, "spec": spec, "slots": bank.num_slots,
                    "bytes": b.nbytes, "max_logit_diff": float(diff.mean()), "effect": effect,
                    "kl": float(kl.mean()), "margin_shift": margin, "reply_agreement": statistics.mean(same),
                })
                if pooling == "concat" and trait == PERSONAS[0][0]:
                    replies_text[spec] = replies[0]
    seconds = time.perf_counter() - started
    data = {"commit": commit, "threads": args.threads, "seconds": round(seconds, 1), "rows": rows,
            "storage": storage, "example": example, "replies": replies_text, "plain_reply": plain_replies[0],
            "question": NEUTRAL[0]}
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.write_text(render(data, args) + "\n")
    print(out.read_text())


def render(data: dict, args) -> str:
    lines = [
        "# Quantized banks (SmolLM2-135M-Instruct, default sites 21-26, rho 3)",
        "",
        (f"Made by `python experiments/quantize_banks.py` at commit {data['commit']} (with the quantization code of "
        f"the next commits in the working tree), {data['threads']} thread(s), "
        f"{data['seconds']:.0f} s of CPU wall time. Banks of the persona descriptors at the default sites (6 layers x 3 "
        "KV heads x 64), stored fp32 or quantized: `int8` / `int4` scale keys and values per slot and KV head, "
        "`-channel` scales keys per KV head and channel (values per slot); scales are float16. Every quantized bank "
        "steers exactly as its dequantized copy (tests/test_quantize.py)."),
        "",
        "## Error and steering effect against the fp32 bank",
        "",
        (f"Logit error: next-token logits at the last prompt token of {len(NEUTRAL)} neutral questions, steered by the "
        "quantized bank against the fp32 bank (mean over questions of the max |difference|), beside the steering "
        "effect itself (fp32 steered minus plain, same measure); KL(fp32 || quantized) of those next-token "
        f"distributions. Margin shift: persona statement margin toward the pole minus plain's ({args.statements} "
        f"statements per side). Replies: greedy replies ({args.reply_tokens} tokens) to {args.replies} neutral "
        "questions, the share of the fp32 bank's reply reproduced before the first different token."),
        "",
        ("| persona | pooling | storage | slots | bytes | max logit error | steering effect | error / effect | KL (nats) "
        "| margin shift | reply agreement |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['persona']} | {r['pooling']} | {r['spec']} | {r['slots']} | {r['bytes']:,} | "
            f"{r['max_logit_diff']:.4f} | {r['effect']:.3f} | {r['max_logit_diff'] / r['effect']:.1%} | "
            f"{r['kl']:.2e} | {r['margin_shift']:+.4f} | {r['reply_agreement']:.0%} |")
    lines += ["", f"Replies to \"{data['question']}\" (extraversion:high, concat):", "",
              f"- plain: {data['plain_reply']!r}"]
    lines += [f"- {spec}: {text!r}" for spec, text in data["replies"].items()]
    lines += ["", ("Reading: int8 keeps the steering (logit error 1-3% of the effect with per-slot key scales, 0.4-0.6% "
              "with per-channel key scales; margin shifts within 0.02 of fp32). int4 with per-slot key scales loses "
              "30-42% of the effect at the next token and half the greedy reply agreement, though the margin shift "
              "mostly survives; per-channel key scales (KIVI's layout: keys have outlier channels) cut int4's error "
              "to 8-16% and keep 91-100% of the replies, for 4-5% more bytes with concat pooling. With mean pooling "
              "(one slot per pass) a per-channel scale is one scale per value, so it costs more than it saves: there "
              "per-slot scales are the storage choice. Recommended: `int8-channel` / `int4-channel` for concat banks, "
              "`int8` / `int4` for mean-pooled ones.")]
    lines += ["", "## Storage: content-matched prompting / MI ratio", "",
              ("Prompting's KV bytes for the descriptor as a visible text (every layer and KV head, fp32, "
              "`core.storage.kv_bytes` through `Prompting.cost`) over the bank's stored bytes (`Bank.nbytes`), for "
              "all ten persona descriptors (median, min - max):"), "",
              "| pooling | " + " | ".join(SPECS) + " |", "|---|" + "---|" * len(SPECS)]
    for pooling, by_spec in data["storage"].items():
        cells = [f"{statistics.median(v):.0f}x ({min(v):.0f} - {max(v):.0f})" for v in by_spec.values()]
        lines.append(f"| {pooling} | " + " | ".join(cells) + " |")
    lines += ["", "Bytes of one example (extraversion:high):", "",
              "| pooling | slots | prompting KV bytes | " + " | ".join(SPECS) + " |",
              "|---|---|---|" + "---|" * len(SPECS)]
    for pooling, ex in data["example"].items():
        lines.append(f"| {pooling} | {ex['slots']} | {ex['prompt']:,} | " + " | ".join(f"{ex[s]:,}" for s in SPECS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
