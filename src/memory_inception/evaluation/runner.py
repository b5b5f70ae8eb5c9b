"""Run a task unit by unit, appending each record to JSONL as it finishes: a crash or Ctrl-C loses nothing."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from memory_inception.errors import EvaluationError
from memory_inception.evaluation.base import Context, Task
from memory_inception.evaluation.config import EvalConfig

log = logging.getLogger(__name__)


def records_path(out: Path, task: str) -> Path:
    return Path(out) / f"{task}.jsonl"


def config_path(out: Path, task: str) -> Path:
    return Path(out) / f"{task}.config.json"


def read_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a JSONL file. A torn last line (a crash mid-write) is dropped, and removed when `repair`."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise EvaluationError(f"{path} line {number} is not JSON; fix or delete that line, then rerun") from None
            log.warning("dropping a torn last line in %s (an interrupted write)", path)
            if repair:
                path.write_text("".join(f"{json.dumps(r)}\n" for r in records))
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record and flush it to disk before the next unit starts."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_config(out: Path, cfg: EvalConfig) -> None:
    """Refuse to mix results of different configurations in one file; record the configuration otherwise."""
    path = config_path(out, cfg.task)
    identity = cfg.identity()
    if path.is_file():
        stored = json.loads(path.read_text())["config"]
        if stored != identity:
            diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
            raise EvaluationError(
                f"{records_path(out, cfg.task)} holds results of a different configuration (differs in: "
                f"{', '.join(diff)}); use another --out directory, or delete both files to start over"
            )
        return
    path.write_text(json.dumps({"config": identity, "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")


def identity_diff(stored: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """The keys in which two stored identities differ; a section (`options`, `mi`, `caa`) by its own keys, as
    `options.lengths`, so that a carry-over can name exactly which option changed."""
    diff = []
    for key in sorted(set(stored) | set(identity)):
        old, new = stored.get(key), identity.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            diff += [f"{key}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        else:
            diff.append(key)
    return diff


def carry_over(task: Task, cfg: EvalConfig, out: str | Path, *, differs_in: tuple[str, ...] = ("statement_split",)) -> int:
    """Start a rerun of `cfg` in `out` from the run already there, keeping the records that do not depend on what
    changed; returns how many were kept.

    The stored configuration may differ from `cfg` only in the keys `differs_in` (by default the held-out statement
    split; a key inside a section is named `section.key`, see `identity_diff`); records that `task.unchanged_by(record, differs_in)` accepts stay (marked `carried_from`: the old run's
    creation time), every other record is dropped, and the configuration is rewritten, so the next `run_task` redoes
    exactly the dropped units. The old files are replaced atomically.
    """
    out = Path(out)
    path, records_file = config_path(out, cfg.task), records_path(out, cfg.task)
    if not path.is_file():
        raise EvaluationError(f"no run of {cfg.task} in {out} to carry over; start it with `mi eval {cfg.task}`")
    stored = json.loads(path.read_text())
    identity = cfg.identity()
    diff = identity_diff(stored["config"], identity)
    if not diff:
        log.info("%s already matches this configuration: nothing to carry over", path)
        return len(read_records(records_file))
    extra = [k for k in diff if k not in differs_in]
    if extra:
        raise EvaluationError(
            f"{path} differs from this configuration in {', '.join(extra)}, not only in {', '.join(differs_in)}; "
            "records cannot be carried over: use another --out directory"
        )
    created = stored.get("created", "unknown")
    kept = [{**r, "carried_from": r.get("carried_from", created)}
            for r in read_records(records_file) if task.unchanged_by(r, tuple(diff))]
    tmp = records_file.with_name(f".{records_file.name}.{os.getpid()}")
    tmp.write_text("".join(f"{json.dumps(r)}\n" for r in kept))
    os.replace(tmp, records_file)
    path.write_text(json.dumps({"config": identity, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "carried_over": {"from": created, "records": len(kept), "changed": diff}}, indent=2) + "\n")
    log.info("%s: kept %d records of the run of %s (changed: %s)", records_file, len(kept), created, ", ".join(diff) or "nothing")
    return len(kept)


def run_task(
    task: Task,
    cfg: EvalConfig,
    out: str | Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every unit of `task` not yet in `out/TASK.jsonl`; returns all records (old and new)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task.options(cfg)  # validate before any work
    check_config(out, cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # the run's thread count, restored on the way out
    try:
        path = records_path(out, cfg.task)
        records = read_records(path, repair=True)
        done = {r["unit"] for r in records}
        ctx = Context(cfg, out, model, tokenizer)
        units = list(task.units(ctx))
        todo = [u for u in units if u.key not in done]
        for index, unit in enumerate(todo):
            if progress is not None:
                progress(index, len(todo), unit.key)
            started = time.perf_counter()
            result = task.run(ctx, unit)
            record = {"unit": unit.key, **unit.fields, **result, "seconds": round(time.perf_counter() - started, 3)}
            append_record(path, record)
            records.append(record)
        if progress is not None:
            progress(len(todo), len(todo), "")
    finally:
        torch.set_num_threads(threads)
    wanted = {u.key for u in units}
    return [r for r in records if r["unit"] in wanted]
