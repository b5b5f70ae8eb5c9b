"""CAA on SmolLM2-135M-Instruct: does p(matching A/B answer) move monotonically with the multiplier?

For each behaviour: residual-stream vectors at every layer from the first `--pairs` generate-split pairs,
a layer sweep (`caa.ab_layer_sweep`: multipliers -1 / +1 on the first `--sweep-items` test items at every
`--layer-step`-th layer)
that picks the layer with the largest mean p(+1) - p(-1), then the full curve on all 50 test items.

    .venv/bin/python experiments/caa_ab_sweep.py                    # writes reports/caa_ab.{json,md,png}

The curve uses `caa.ab_match_curve` (one unsteered forward of each instruction shared by all multipliers);
the script checks it against the plain `caa.ab_match_probability` on a few items and records the gap.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

import memory_inception as mi
from memory_inception.methods import caa

MULTIPLIERS = [-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
DEFAULT_BEHAVIORS = ["corrigible-neutral-HHH", "survival-instinct", "coordinate-other-ais", "myopic-reward"]
ROOT = Path(__file__).resolve().parents[1]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def sem(xs: list[float]) -> float:
    m = mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5


def run_behavior(model, tok, behavior: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    pairs = caa.ab_pairs(behavior, "generate", limit=args.pairs)
    vector = caa.build_steering_vector(model, tok, pairs, placement="residual", batch_size=8, name=behavior)
    built = time.perf_counter()
    print(f"[{behavior}] vectors from {len(pairs)} pairs in {built - started:.0f}s", flush=True)

    items = caa.load_ab_items(behavior, "test")
    n_layers = len(vector.layers)
    sweep_layers = list(range(args.layer_step // 2, n_layers, args.layer_step))
    sweep = {}
    by_layer = caa.ab_layer_sweep(model, tok, items[: args.sweep_items], vector, sweep_layers, (-1.0, 1.0))
    for layer, curve in by_layer.items():
        minus, plus = mean(curve[-1.0]), mean(curve[1.0])
        sweep[layer] = {"minus1": minus, "plus1": plus, "effect": plus - minus}
        print(f"[{behavior}] layer {layer:2d}: p(-1)={minus:.3f} p(+1)={plus:.3f}", flush=True)
    layer = max(sweep, key=lambda l: sweep[l]["effect"])
    swept = time.perf_counter()

    curve = caa.ab_match_curve(model, tok, items, vector, MULTIPLIERS, layers=[layer])
    check_items = items[: args.check_items]
    direct = caa.ab_match_probability(model, tok, check_items, vector, 1.0, layers=[layer])
    gap = max(abs(a - b) for a, b in zip(direct, curve[1.0][: len(check_items)]))
    means = [mean(curve[m]) for m in MULTIPLIERS]
    monotonic = all(b >= a for a, b in zip(means, means[1:]))
    strictly = all(b > a for a, b in zip(means, means[1:]))
    inner = [m for m in MULTIPLIERS if -2.0 <= m <= 2.0]
    inner_means = [mean(curve[m]) for m in inner]
    monotonic_inner = all(b >= a for a, b in zip(inner_means, inner_means[1:]))
    done = time.perf_counter()
    print(f"[{behavior}] layer {layer}: " + " ".join(f"{m:+.1f}:{p:.3f}" for m, p in zip(MULTIPLIERS, means)), flush=True)
    return {
        "behavior": behavior,
        "pairs": len(pairs),
        "test_items": len(items),
        "layer": layer,
        "vector_norm": float(vector.vectors[layer].norm()),
        "layer_sweep": {str(l): v for l, v in sweep.items()},
        "layer_sweep_items": args.sweep_items,
        "multipliers": MULTIPLIERS,
        "mean_p_match": means,
        "sem_p_match": [sem(curve[m]) for m in MULTIPLIERS],
        "per_item": {str(m): curve[m] for m in MULTIPLIERS},
        "monotonic_all": monotonic,
        "strictly_increasing_all": strictly,
        "monotonic_minus2_to_2": monotonic_inner,
        "curve_vs_direct_max_abs_gap": gap,
        "seconds": {"vectors": built - started, "layer_sweep": swept - built, "curve": done - swept},
    }


@torch.no_grad()
def statement_match(model, tok, pairs, vector, multiplier: float, layer: int) -> list[float]:
    """Per held-out statement, p(matching answer) / (p(Yes) + p(No)) for the assistant's first token."""
    out = []
    for pair in pairs:
        instruction = tok.apply_chat_template(pair.messages, tokenize=False)
        prompt = tok.apply_chat_template(pair.messages, add_generation_prompt=True, tokenize=False)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        n_instr = len(tok(instruction, add_special_tokens=False)["input_ids"])
        token = {a: tok(prompt + a, add_special_tokens=False)["input_ids"][-1] for a in ("Yes", "No")}
        with caa.ActivationAddition(model, vector, multiplier, [layer], steer_from=n_instr):
            probs = torch.softmax(model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float(), -1)
        pm, po = float(probs[token[pair.positive]]), float(probs[token[pair.negative]])
        out.append(pm / (pm + po))
    return out


def run_statements(model, tok, trait: str, args: argparse.Namespace) -> dict:
    """The same protocol on Anthropic persona statements (answers Yes / No), held-out statements for the curve."""
    started = time.perf_counter()
    pairs = caa.statement_pairs(trait)
    # the persona files list all " Yes"-matching rows first: interleave them so that both the vector and the
    # test set are balanced (otherwise the vector is just "Yes minus No" and p(match) just p(Yes))
    yes = [p for p in pairs if p.positive == "Yes"]
    no = [p for p in pairs if p.positive == "No"]
    balanced = [p for two in zip(yes, no) for p in two]
    train, test = balanced[: args.pairs], balanced[-50:]
    vector = caa.build_steering_vector(model, tok, train, placement="residual", batch_size=8, name=trait)
    built = time.perf_counter()
    sweep = {}
    for layer in range(args.layer_step // 2, len(vector.layers), args.layer_step):
        minus = mean(statement_match(model, tok, test[: args.sweep_items], vector, -1.0, layer))
        plus = mean(statement_match(model, tok, test[: args.sweep_items], vector, 1.0, layer))
        sweep[layer] = {"minus1": minus, "plus1": plus, "effect": plus - minus}
        print(f"[{trait}] layer {layer:2d}: p(-1)={minus:.3f} p(+1)={plus:.3f}", flush=True)
    layer = max(sweep, key=lambda l: sweep[l]["effect"])
    swept = time.perf_counter()
    curve = {m: statement_match(model, tok, test, vector, m, layer) for m in MULTIPLIERS}
    means = [mean(curve[m]) for m in MULTIPLIERS]
    inner = [mean(curve[m]) for m in MULTIPLIERS if -2.0 <= m <= 2.0]
    print(f"[{trait}] layer {layer}: " + " ".join(f"{m:+.1f}:{p:.3f}" for m, p in zip(MULTIPLIERS, means)), flush=True)
    return {
        "behavior": f"persona:{trait}",
        "pairs": len(train),
        "test_items": len(test),
        "layer": layer,
        "vector_norm": float(vector.vectors[layer].norm()),
        "layer_sweep": {str(l): v for l, v in sweep.items()},
        "layer_sweep_items": args.sweep_items,
        "multipliers": MULTIPLIERS,
        "mean_p_match": means,
        "sem_p_match": [sem(curve[m]) for m in MULTIPLIERS],
        "per_item": {str(m): curve[m] for m in MULTIPLIERS},
        "monotonic_all": all(b >= a for a, b in zip(means, means[1:])),
        "strictly_increasing_all": all(b > a for a, b in zip(means, means[1:])),
        "monotonic_minus2_to_2": all(b >= a for a, b in zip(inner, inner[1:])),
        "curve_vs_direct_max_abs_gap": None,
        "seconds": {"vectors": built - started, "layer_sweep": swept - built, "curve": time.perf_counter() - swept},
    }


def write_reports(results: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "caa_ab.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        lo = [m - s for m, s in zip(r["mean_p_match"], r["sem_p_match"])]
        hi = [m + s for m, s in zip(r["mean_p_match"], r["sem_p_match"])]
        line = ax.plot(r["multipliers"], r["mean_p_match"], marker="o", label=f"{r['behavior']} (layer {r['layer']})")
        ax.fill_between(r["multipliers"], lo, hi, color=line[0].get_color(), alpha=0.15)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("multiplier")
    ax.set_ylabel("p(answer matching behaviour)")
    ax.set_title("CAA on SmolLM2-135M-Instruct (residual stream, 50 held-out items, mean ± sem)", fontsize=10)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "caa_ab.png", dpi=120)

    mults = results[0]["multipliers"] if results else MULTIPLIERS
    lines = [
        "# CAA A/B steering on SmolLM2-135M-Instruct",
        "",
        "Contrastive Activation Addition (Rimsky et al., 2024) with `memory_inception.caa`, reproduced on the",
        "default model. Produced by `experiments/caa_ab_sweep.py`; raw numbers in `caa_ab.json`, plot `caa_ab.png`.",
        "",
        "## Method",
        "",
        f"- Model: {meta['model']} (float32, CPU, `torch.set_num_threads({meta['threads']})`, on a shared 2-core machine).",
        f"- Vectors: residual stream at the input of each decoder layer, mean activation at the answer letter of",
        f"  `chat(question) + \"(A\"` minus `\"(B\"` (matching minus non-matching), from the first {meta['pairs']} pairs of",
        "  each behaviour's CAA generate split.",
        f"- Layer choice: multipliers -1 and +1 on the first {meta['sweep_items']} test items at layers "
        f"{meta['sweep_layers']}; the layer with the largest mean p(+1) - p(-1) is used.",
        "- Curve: all 50 A/B test items. Prompt = chat template (user = question, generation prompt) + \"(\";",
        "  p(match) = p(matching letter) / (p(matching) + p(non-matching)) of the next token. The vector is added",
        "  at every position after the instruction (assistant header and \"(\"), as in CAA; multiplier 0 = no steering.",
        "- Survival-instinct keeps its 4 multiple-choice test items ((C)/(E) vs (A)); p(match) uses those two letters.",
        "- Rows `persona:<trait>` (if present) use the same protocol on Anthropic persona statements: user =",
        "  'Is the following statement something you would say?\\n\"...\"', answers Yes / No read at the assistant's",
        "  first token; vectors from the first statements of a Yes/No-interleaved list, layer sweep and curve on its",
        "  last 50 (held out; 25 matching Yes, 25 matching No).",
        "",
        "## Results: mean p(match) per multiplier",
        "",
        "| behaviour | layer | " + " | ".join(f"{m:+g}" for m in mults) + " | monotonic -3..3 | monotonic -2..2 |",
        "|---|---|" + "---|" * len(mults) + "---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['behavior']} | {r['layer']} | " + " | ".join(f"{p:.3f}" for p in r["mean_p_match"])
            + f" | {'yes' if r['monotonic_all'] else 'no'} | {'yes' if r['monotonic_minus2_to_2'] else 'no'} |"
        )
    lines += ["", "## Layer sweep (mean p(match) at multiplier -1 / +1)", ""]
    for r in results:
        cells = ", ".join(
            f"{l}: {v['minus1']:.2f}/{v['plus1']:.2f}" for l, v in r["layer_sweep"].items()
        )
        lines.append(f"- {r['behavior']} (vector norm at layer {r['layer']}: {r['vector_norm']:.2f}): {cells}")
    lines += ["", "## Notes", ""]
    for r in results:
        gap = r["curve_vs_direct_max_abs_gap"]
        gap_text = "n/a (direct loop)" if gap is None else f"{gap:.1e} on {meta['check_items']} items"
        lines.append(
            f"- {r['behavior']}: vectors {r['seconds']['vectors']:.0f}s, layer sweep {r['seconds']['layer_sweep']:.0f}s, "
            f"curve {r['seconds']['curve']:.0f}s; shared-prefix curve vs direct `ab_match_probability` max gap "
            f"{gap_text}."
        )
    lines.append(f"- Total runtime {meta['seconds']:.0f}s with {meta['threads']} thread(s).")
    lines += ["", meta.get("discussion", "")]
    (out / "caa_ab.md").write_text("\n".join(lines).rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--behaviors", nargs="*", default=DEFAULT_BEHAVIORS)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--sweep-items", type=int, default=20)
    parser.add_argument("--layer-step", type=int, default=3)
    parser.add_argument("--check-items", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--statements", nargs="*", default=[], help="persona traits (Yes/No statements)")
    parser.add_argument("--append", action="store_true", help="add to the results already in OUT/caa_ab.json")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tok = mi.load_model()
    results, previous_seconds = [], 0.0
    if args.append and (args.out / "caa_ab.json").is_file():
        previous = json.loads((args.out / "caa_ab.json").read_text())
        results, previous_seconds = previous["results"], previous["meta"]["seconds"]
    jobs = [(run_behavior, b) for b in args.behaviors] + [(run_statements, t) for t in args.statements]
    for run, name in jobs:
        results.append(run(model, tok, name, args))
        meta = {
            "model": "SmolLM2-135M-Instruct (smollm2-135m-instruct, Q4_1 GGUF dequantized to float32)",
            "threads": args.threads,
            "pairs": args.pairs,
            "sweep_items": args.sweep_items,
            "sweep_layers": list(range(args.layer_step // 2, model.config.num_hidden_layers, args.layer_step)),
            "check_items": args.check_items,
            "placement": "residual",
            "seconds": previous_seconds + time.perf_counter() - started,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        write_reports(results, meta, args.out)  # after every behaviour, so a partial run leaves its numbers
    print(f"done in {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
