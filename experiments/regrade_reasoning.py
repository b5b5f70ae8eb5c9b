"""Grade the stored replies of `mi eval hardmath|physics` runs again with the current grader, in place.

Grading is offline and deterministic, so a grader fix needs no new generations:
    python experiments/regrade_reasoning.py reports/eval/smollm2 [--tasks hardmath,physics]
Rewrites each cell row's extracted/correct/score/detail and the cell's correct count (atomically), and prints
every row whose verdict changed. Do not run it on a directory a live `mi eval` is appending to.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from memory_inception.grading import grade
from memory_inception.reasoning import load_hardmath, load_physics


def regrade(path: Path, problems: dict) -> list[str]:
    changed, lines = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "cell":
            for row in record["rows"]:
                g = grade(problems[row["id"]], row["reply"])
                if g.correct != row["correct"]:
                    changed.append(f"{record['unit']} {row['id']}: {row['correct']} -> {g.correct} ({g.detail[:120]})")
                row.update(extracted=g.extracted, correct=g.correct, score=g.score, detail=g.detail[:300])
            record["correct"] = sum(r["correct"] for r in record["rows"])
        lines.append(json.dumps(record))
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tasks", default="hardmath,physics")
    args = ap.parse_args()
    for task in args.tasks.split(","):
        path = args.out / f"{task}.jsonl"
        if not path.is_file():
            continue
        problems = {p.id: p for p in (load_hardmath() if task == "hardmath" else load_physics())}
        changed = regrade(path, problems)
        print(f"{path}: {len(changed)} verdict(s) changed")
        for c in changed:
            print("  " + c)


if __name__ == "__main__":
    main()
