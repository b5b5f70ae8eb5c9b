"""`mi bank build` / `mi bank info`: make a bank file from text, show a bank file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from memory_inception.cli.common import (
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    LayersOpt,
    ModelOpt,
    console,
    fail,
    load,
    parse_layers,
    read_text,
)
from memory_inception.core.banks import Bank, build_bank
from memory_inception.errors import MemoryInceptionError


def bank_build(
    text: Annotated[str, typer.Argument(help="Guidance text, or @file to read it from a file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bank file to write (.safetensors).")],
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
    layers: LayersOpt = None,
    name: Annotated[Optional[str], typer.Option(help="Bank name (default: from the text).")] = None,
    template: Annotated[Optional[list[str]], typer.Option(help="Template(s) with {descriptor}; repeatable.")] = None,
    variants: Annotated[str, typer.Option(help="full | lines")] = "full",
    keep: Annotated[str, typer.Option(help="descriptor | all")] = "descriptor",
    pooling: Annotated[str, typer.Option(help="concat | mean")] = "concat",
    chat_template: Annotated[bool, typer.Option(help="Render as a system message with the chat template.")] = True,
    tune: Annotated[bool, typer.Option("--tune", help="Choose sites and strength for this bank (mi.tune) and store them in the file.")] = False,
    budget: Annotated[float, typer.Option("--budget", help="Time budget of --tune in seconds.")] = 120.0,
) -> None:
    """Build a bank from TEXT and save it."""
    if tune and layers is not None:
        raise typer.BadParameter("--tune chooses the sites itself; drop --layers (or drop --tune)")
    try:
        m, tok = load(model, device, dtype, device_map)
        bank = build_bank(
            m, tok, read_text(text), layers="all" if tune else parse_layers(layers), name=name,
            templates=tuple(template) if template else ("{descriptor}",), variants=variants, keep=keep,
            pooling=pooling, chat_template=chat_template,
        )
        if tune:
            from memory_inception.tuning.tune import Tuning
            from memory_inception.tuning.tune import tune as tune_bank

            with console.status(f"tuning (budget {budget:g} s)..."):
                bank = tune_bank(m, tok, bank, time_budget_s=budget).target
            chosen = Tuning.of(bank)
            console.print(f"tuned: {chosen.best.label}, rho {chosen.rho:g} ({chosen.reason}; {chosen.seconds:.0f} s)")
        path = bank.save(output)
    except MemoryInceptionError as exc:
        fail(exc)
    console.print(f"wrote {path}: bank {bank.name!r}, {bank.num_slots} slots x {len(bank.layers)} layers, {bank.nbytes:,} bytes")


def bank_info(path: Annotated[Path, typer.Argument(help="A bank file.")]) -> None:
    """Show a bank file's metadata."""
    try:
        bank = Bank.load(path)
    except MemoryInceptionError as exc:
        fail(exc)
    table = Table(show_header=False)
    for key, value in (
        ("name", bank.name), ("slots", bank.num_slots), ("layers", ",".join(map(str, bank.layers))),
        ("kv heads x head dim", f"{bank.num_kv_heads} x {bank.head_dim}"), ("dtype", str(bank.dtype)),
        ("bytes", f"{bank.nbytes:,}"), ("model fingerprint", bank.fingerprint), ("options", str(bank.options)),
        ("text", bank.text or "(token ids)"),
    ):
        table.add_row(key, str(value))
    console.print(table)
