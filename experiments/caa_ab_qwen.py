"""CAA A/B curves on Qwen2.5-Coder-0.5B-Instruct: does the paper's monotonic shape appear on a larger model?

128 generate-split pairs per behaviour, residual placement, vectors at layers 8/11/14 (of 24), mean p(match)
over the 50 A/B test items per multiplier. Prints one line per (behaviour, layer); reports/caa_ab_qwen.md
records a run.

    python experiments/caa_ab_qwen.py
"""

from __future__ import annotations

import time

import torch

import memory_inception as mi
from memory_inception.datasets.caa_ab import load_ab_items
from memory_inception.methods.caa.ab_eval import ab_match_curve
from memory_inception.methods.caa.pairs import ab_pairs

MULTIPLIERS = [-2.0, -1.0, 0.0, 1.0, 2.0]
LAYERS = (8, 11, 14)


def main() -> None:
    torch.set_num_threads(2)
    model, tok = mi.load_model("qwen2.5-coder-0.5b-instruct")
    for behavior in ("corrigible-neutral-HHH", "coordinate-other-ais"):
        started = time.time()
        vector = mi.build_steering_vector(model, tok, ab_pairs(behavior, limit=128), layers=list(LAYERS))
        items = load_ab_items(behavior)
        for layer in LAYERS:
            curve = ab_match_curve(model, tok, items, vector, MULTIPLIERS, layers=[layer])
            means = {m: round(sum(v) / len(v), 3) for m, v in curve.items()}
            print(behavior, layer, means, f"{time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
