"""Evaluation suite: the paper's task families on local models, every method, offline judges, Markdown reports.

    cfg = load_config(task="bigfive", model="smollm2-135m-instruct", limit=4)
    run_task(TASKS["bigfive"], cfg, "runs/smollm2")
    write_report("runs/smollm2")
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from memory_inception.errors import EvaluationError
from memory_inception.extras import require_extra

require_extra("eval", "the evaluation suite (mi eval, mi report, the graders)")
from memory_inception.evaluation.base import Context, Task, Unit
from memory_inception.evaluation.config import (
    ALL_PERSONAS,
    METHODS,
    TASK_NAMES,
    CAAConfig,
    EvalConfig,
    MIConfig,
    from_dict,
    load_config,
)
from memory_inception.evaluation.runner import (
    config_path,
    read_records,
    records_path,
    run_task,
)
from memory_inception.evaluation.tasks.capability import Capability
from memory_inception.evaluation.tasks.dialogue import DialogueShift
from memory_inception.evaluation.tasks.kv_storage import KVDims, Storage, published_dims
from memory_inception.evaluation.tasks.long_memory import LongMemory
from memory_inception.evaluation.tasks.persistence import Persistence
from memory_inception.evaluation.tasks.personality import (
    BigFiveGeneration,
    BigFiveSelfReport,
)
from memory_inception.evaluation.tasks.reasoning import HardMath, Physics

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        BigFiveSelfReport(), BigFiveGeneration(), DialogueShift(), Persistence(), Capability(), Storage(), HardMath(), Physics(),
        LongMemory(),
    )
}

assert tuple(TASKS) == TASK_NAMES


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise EvaluationError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def write_report(directory: str | Path, tasks: list[str] | None = None) -> Path:
    """`DIR/report.md` (and PNG plots) from every task's records in `DIR`, or only from `tasks`."""
    out = Path(directory)
    configs = sorted(out.glob("*.config.json"))
    if not configs:
        raise EvaluationError(f"no results in {out}: run `mi eval TASK --out {out}` first")
    if tasks is not None:
        for name in tasks:
            get_task(name)
        found = {p.name[: -len(".config.json")] for p in configs}
        missing = [t for t in tasks if t not in found]
        if missing:
            raise EvaluationError(f"no results for {', '.join(missing)} in {out}; it has {', '.join(sorted(found))}")
        configs = [p for p in configs if p.name[: -len(".config.json")] in tasks]
    order = list(TASKS)
    sections, index = [], []
    for path in sorted(configs, key=lambda p: order.index(p.name[: -len(".config.json")]) if p.name[: -len(".config.json")] in order else 99):
        cfg = from_dict(json.loads(path.read_text())["config"])
        task = get_task(cfg.task)
        records = read_records(records_path(out, cfg.task))
        seconds = sum(r.get("seconds", 0.0) for r in records)
        index.append(f"| {cfg.task} | {task.summary} | {len(records)} | {seconds:.0f} |")
        sections.append(task.report(records, cfg, out))
    head = [
        f"# Evaluation report: {out}",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `mi report`. Methods: plain (no guidance), prompting (the "
        "guidance as a visible system message), caa (activation addition of a persona steering vector), mi (the "
        "guidance as a bank at the sites). Compute times are the sum over units (CPU).",
        "",
        "| task | what | records | seconds |",
        "|---|---|---|---|",
        *index,
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(head + sections) + "\n")
    return report


__all__ = [
    "ALL_PERSONAS", "METHODS", "TASKS", "CAAConfig", "Context", "EvalConfig", "KVDims", "MIConfig", "Task", "Unit",
    "config_path", "from_dict", "get_task", "load_config", "published_dims", "read_records", "records_path",
    "run_task", "write_report",
]
