"""Grade the stored replies of `mi eval hardmath|physics` runs again with the current grader, in place.

Grading is offline and deterministic, so a grader fix needs no new generations:
    python experiments/regrade_reasoning.py reports/eval/smollm2 [--tasks hardmath,physics]
Rewrites each cell row's extracted/correct/score/detail/status/stated/step_timeouts and the cell's correct and
graded counts (atomically), and prints every row whose verdict or status changed. ``--timeout`` is the limit per
grading call (default 120 s, not the grader's 20 s: a regrade waits on no generation, and a loaded shared machine
should not turn a verdict into a timeout). Do not run it on a directory a live `mi eval` is appending to.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from memory_inception.evaluation import get_task
from memory_inception.evaluation.runner import read_records, records_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tasks", default="hardmath,physics")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per grading call")
    args = ap.parse_args()
    for task in args.tasks.split(","):
        path = records_path(args.out, task)
        if not path.is_file():
            continue
        records = read_records(path)
        changed = get_task(task).regrade(records, timeout=args.timeout)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, path)
        print(f"{path}: {len(changed)} verdict(s) or status(es) changed")
        for line in changed:
            print("  " + line)


if __name__ == "__main__":
    main()
