"""`mi eval` / `mi report`: the evaluation suite and its Markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from memory_inception.cli.common import DeviceMapOpt, DeviceOpt, DtypeOpt, ModelOpt, console, fail, parse_device_map
from memory_inception.errors import MemoryInceptionError


def eval_(
    task: Annotated[Optional[str], typer.Argument(help="Task: bigfive, bigfive-generation, dialogue, persistence, capability, storage, hardmath, physics (or from --config).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Task config (.toml/.yaml): model, methods, personas, strengths, sites, seeds, task options (the \\[options.TASK] tables).")] = None,
    model: ModelOpt = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated: plain,prompting,caa,mi.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Cap each task's data (items, statements, prompts, problems) for a quick run.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results directory (TASK.jsonl is appended to, and resumed).")] = Path("runs/eval"),
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (1 is often fastest on small machines).")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """Run an evaluation task with every method; each finished unit is appended to OUT/TASK.jsonl (rerun resumes).

    --dtype is part of the run's identity (a rerun in another dtype is refused); --device and --device-map are not.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from memory_inception.evaluation import get_task
    from memory_inception.evaluation.config import load_config
    from memory_inception.evaluation.runner import records_path, run_task

    try:
        cfg = load_config(
            config, task=task, model=model, limit=limit, threads=threads, device=device, dtype=dtype,
            device_map=parse_device_map(device_map),
            methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
        )
        chosen = get_task(cfg.task)
    except MemoryInceptionError as exc:
        fail(exc)
    path = records_path(out, cfg.task)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[unit]}"), console=console) as bar:
        handle = bar.add_task(cfg.task, total=None, unit="loading...")

        def progress(done: int, total: int, unit: str) -> None:
            bar.update(handle, completed=done, total=total, unit=unit)

        try:
            records = run_task(chosen, cfg, out, progress=progress)
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"[yellow]interrupted[/yellow]: finished units are kept in {path}; rerun the same command to resume")
            raise typer.Exit(130) from None
        except MemoryInceptionError as exc:
            bar.stop()
            fail(exc)
    console.print(f"{len(records)} records in {path}; `mi report {out}` writes the report")


def report(
    directory: Annotated[Path, typer.Argument(help="A results directory written by `mi eval`.")],
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated tasks to include (default: every task in DIR).")] = None,
) -> None:
    """Write DIR/report.md with tables and PNG plots from every task's results in DIR."""
    from memory_inception.evaluation import write_report

    try:
        console.print(f"wrote {write_report(directory, tasks=tasks.split(',') if tasks else None)}")
    except MemoryInceptionError as exc:
        fail(exc)
