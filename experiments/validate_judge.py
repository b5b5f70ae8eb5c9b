"""Validate the offline trait judges: held-out accuracy on persona statements, and sanity on hand-written replies.

For each Big Five trait: train `TraitJudge` (80/20 stratified split, seed 0) and report held-out accuracy,
training size and encode time, plus 5-fold cross-validated accuracy on the same embeddings. Then score
hand-written first-person replies for each pole, in both granularities (per-sentence mean and whole text),
and neutral on-topic replies that express no trait, to see where "no signal" lands.

    python experiments/validate_judge.py --out reports/judge_validation.md
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from memory_inception.datasets.traits import TRAITS
from memory_inception.evaluation.judges import TraitJudge, embed, load_encoder, persona_statements

# (high pole, low pole): first-person conversational replies, some with assistant-style filler sentences
REPLIES: dict[str, tuple[list[str], list[str]]] = {
    "extraversion": (
        [
            "I love going to parties and meeting new people!",
            "Oh, a Sunday for me means brunch with a big group of friends and then whatever adventure comes up. "
            "I can't sit still at home!",
            "Honestly, I'm happiest when I'm in a crowd, chatting with everyone and making new friends.",
            "Great question! I'd organise a huge get-together and make sure I talk to every single guest.",
        ],
        [
            "I'd rather stay home alone with a book.",
            "A good Sunday for me is quiet: I stay in, read, and avoid seeing anyone.",
            "Honestly, big groups wear me out. I prefer my own company and keep conversations short.",
            "Good question. I'd skip the party and spend the evening by myself.",
        ],
    ),
    "agreeableness": (
        [
            "I'm always happy to help, and I try to see the best in everyone.",
            "Of course! I'd be glad to lend a hand. People deserve kindness and patience.",
            "I try hard to avoid conflict and to make sure everyone feels heard and respected.",
            "Sure. If a friend is struggling, I drop everything to support them.",
        ],
        [
            "Frankly, other people's problems are not my concern.",
            "I don't trust people, and I have no patience for their whining.",
            "If someone gets in my way, I'll push them aside. I look out for myself first.",
            "Sure, I'll tell you: most people are idiots and I enjoy putting them in their place.",
        ],
    ),
    "conscientiousness": (
        [
            "I plan my week every Sunday and always finish my tasks ahead of deadlines.",
            "Sure! I keep a detailed to-do list and double-check my work before handing it in.",
            "I'm very organised: everything has its place and I never miss an appointment.",
            "I take my responsibilities seriously and follow through on every commitment.",
        ],
        [
            "Deadlines? I usually forget them and figure things out at the last minute.",
            "Honestly, my desk is a mess and I rarely plan anything ahead.",
            "I tend to leave tasks half-finished and don't bother checking for mistakes.",
            "Sure, I'll get to it eventually. I often skip chores and show up late.",
        ],
    ),
    "neuroticism": (
        [
            "I worry about everything, and little things can ruin my whole day.",
            "Honestly, I'm anxious most of the time. I keep thinking something will go wrong.",
            "My mood swings a lot and I get stressed and upset very easily.",
            "Sure, I can answer. Criticism makes me panic and I can't stop overthinking it for days.",
        ],
        [
            "I stay calm under pressure and rarely feel stressed.",
            "Honestly, not much bothers me. I'm relaxed and emotionally steady.",
            "When things go wrong I keep my cool and move on without worrying.",
            "Sure! I'm a pretty even-tempered person and I handle setbacks easily.",
        ],
    ),
    "openness": (
        [
            "I love exploring new ideas, strange art and unfamiliar cultures.",
            "Ooh, I'd try the weirdest dish on the menu. I'm always curious about new experiences!",
            "I enjoy abstract philosophy and imagining how the world could be different.",
            "Sure! I spend my weekends at experimental theatre and reading about unusual theories.",
        ],
        [
            "I prefer sticking to what I know; new ideas make me uncomfortable.",
            "Honestly, art and philosophy bore me. I like routine and familiar things.",
            "I order the same meal every time and don't see the point in trying something new.",
            "Sure. I think traditional ways are best and I avoid unconventional ideas.",
        ],
    ),
}
NEUTRAL = [
    "The capital of France is Paris.",
    "Sure! To boil an egg, put it in boiling water for about nine minutes, then cool it in cold water.",
    "Water is made of two hydrogen atoms and one oxygen atom.",
    "Here is a summary: the meeting moved to Tuesday at 3 pm in room 204.",
]


FINDINGS = [
    "## Findings",
    "",
    "- Held-out accuracy on the statements is 0.92-0.98 (5-fold CV 0.95-0.99): the statements are easy to",
    "  separate; conscientiousness and neuroticism are the hardest.",
    "- On the hand-written replies both granularities rank the poles almost perfectly (pairwise 0.94-1.00; each",
    "  misorders one pair on one or two traits), but embedding the whole reply gives a larger gap between the",
    "  high and low means for every trait (0.47-0.62 against 0.37-0.52), likely because filler sentences",
    "  (\"Sure!\", \"Good question.\") get arbitrary per-sentence probabilities that dilute the mean.",
    "  So `TraitJudge` embeds the whole reply by default (`granularity=\"text\"`).",
    "- Probabilities are not calibrated for text that expresses no trait: neutral factual replies land between",
    "  about 0.34 and 0.64 depending on the trait (neuroticism and conscientiousness lean high). Compare a",
    "  steered model's scores with the plain model's on the same prompts rather than reading 0.5 as neutral.",
    "- Replies are scored on their wording: a low-pole reply that names high-pole topics (\"big groups wear me",
    "  out\", \"art and philosophy bore me\") scores 0.50-0.59, and \"I'm very organised: ... I never miss an",
    "  appointment\" scores only 0.27 for conscientiousness. Single replies are noisy; use means over many",
    "  replies. The judge is a wording-sensitive embedding classifier, not a reader of intent.",
]

def pairwise(high: list[float], low: list[float]) -> float:
    """Fraction of (high, low) pairs ranked correctly."""
    return float(np.mean([h > l for h in high for l in low]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="reports/judge_validation.md")
    args = parser.parse_args()

    threads = torch.get_num_threads()
    start = time.perf_counter()
    encoder = load_encoder()
    load_seconds = time.perf_counter() - start
    rows, sanity, worst = [], [], []
    for trait in TRAITS:
        judge = TraitJudge.fit(trait, encoder, holdout=0.2, seed=0)
        matching, non_matching = persona_statements(trait)
        x = embed(encoder, matching + non_matching)
        y = np.array([1] * len(matching) + [0] * len(non_matching))
        cv = cross_val_score(
            LogisticRegression(max_iter=1000), x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)
        )
        rows.append((trait, judge.n_train, judge.n_holdout, judge.accuracy, cv.mean(), cv.std(), judge.encode_seconds))
        high, low = REPLIES[trait]
        for mode in ("sentence", "text"):
            j = replace(judge, granularity=mode)
            h, lo, n = j.score(high), j.score(low), j.score(NEUTRAL)
            sanity.append((trait, mode, np.mean(h), min(h), np.mean(lo), max(lo), np.mean(n), pairwise(h, lo)))
            if mode == judge.granularity:
                worst.append((trait, high[int(np.argmin(h))], min(h), low[int(np.argmax(lo))], max(lo)))
        print(f"{trait}: holdout {judge.accuracy:.3f}, cv {cv.mean():.3f}, encode {judge.encode_seconds:.1f}s")

    lines = [
        "# Trait judge validation",
        "",
        "`TraitJudge` (src/memory_inception/judges.py): logistic regression (C=1) on unit-norm all-MiniLM-L6-v2",
        "embeddings of the Anthropic persona statements (500 matching = high pole, 500 non-matching = low pole",
        "per trait). Produced by `python experiments/validate_judge.py`.",
        "",
        f"Machine: {platform.machine()}, torch CPU threads = {threads}, encoder load {load_seconds:.1f}s.",
        "Encode time is for all 1000 statements of a trait (CPU, batch 64). The machine was shared with other jobs",
        "when this ran; on an idle machine the same encode took 2.4-3.6 s per trait (2 threads).",
        "",
        "## Held-out accuracy on persona statements",
        "",
        "| trait | train | held out | held-out accuracy (seed 0) | 5-fold CV accuracy | encode 1000 (s) |",
        "|---|---|---|---|---|---|",
    ]
    for trait, ntr, nho, acc, cvm, cvs, enc in rows:
        lines.append(f"| {trait} | {ntr} | {nho} | {acc:.3f} | {cvm:.3f} ± {cvs:.3f} | {enc:.1f} |")
    lines += [
        "",
        "## Hand-written first-person replies (4 per pole per trait) and 4 neutral replies",
        "",
        "Mean judged probability of the high pole. `sentence` = mean of per-sentence probabilities,",
        "`text` = whole reply embedded at once (the default).",
        "Pairwise = fraction of (high, low) reply pairs ranked correctly.",
        "",
        "| trait | mode | high mean | high min | low mean | low max | neutral mean | pairwise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for trait, mode, hm, hmin, lm, lmax, nm, pw in sanity:
        lines.append(f"| {trait} | {mode} | {hm:.3f} | {hmin:.3f} | {lm:.3f} | {lmax:.3f} | {nm:.3f} | {pw:.2f} |")
    lines += [
        "",
        f"Hardest replies under the default granularity ({TraitJudge.granularity}):",
        "",
        "| trait | lowest-scored high reply | p | highest-scored low reply | p |",
        "|---|---|---|---|---|",
    ]
    for trait, hi_text, hi_p, lo_text, lo_p in worst:
        lines.append(f"| {trait} | {hi_text} | {hi_p:.3f} | {lo_text} | {lo_p:.3f} |")
    lines += ["", *FINDINGS, "", "## Replies used", ""]
    for trait, (high, low) in REPLIES.items():
        lines.append(f"- **{trait}** high: " + " / ".join(f"\"{r}\"" for r in high))
        lines.append(f"- **{trait}** low: " + " / ".join(f"\"{r}\"" for r in low))
    lines.append("- **neutral**: " + " / ".join(f"\"{r}\"" for r in NEUTRAL))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
