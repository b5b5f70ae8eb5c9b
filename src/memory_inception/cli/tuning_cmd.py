"""`mi select` (sites, spec section 8) and `mi calibrate` (strength under a fluency bound)."""

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
    RhoOpt,
    bank_from,
    console,
    fail,
    load,
    parse_layers,
    prompt_lines,
    sites_from,
)
from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering
from memory_inception.errors import MemoryInceptionError


def select(
    target: Annotated[str, typer.Option("--target", "-t", help="Target bank: a bank file or guidance text.")],
    reference: Annotated[str, typer.Option("--reference", "-r", help="Reference bank (the opposite pole): file or text.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Sites JSON to write (read by --sites and mi.Sites.load).")],
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
    layers: Annotated[Optional[str], typer.Option("--layers", help="Candidate layers (default: every layer).")] = None,
    heads_per_layer: Annotated[Optional[int], typer.Option(help="Top k heads per layer (default: one per KV group).")] = None,
    num_layers: Annotated[int, typer.Option(help="Top m layers to keep.")] = 6,
    prompts: Annotated[Optional[str], typer.Option(help="@file with one calibration prompt per line (default: 8 built-in neutral prompts).")] = None,
    rho: RhoOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens recorded per calibration prompt.")] = 16,
) -> None:
    """Choose sites automatically (spec section 8): score every candidate head, keep the best; save a JSON artifact."""
    from memory_inception.tuning.selection import CALIBRATION_PROMPTS, select_sites

    try:
        m, tok = load(model, device, dtype, device_map)
        candidates = parse_layers(layers)
        every = Sites.all(m, candidates)  # candidate heads: every head of the candidate layers
        t, r = bank_from(m, tok, target, every), bank_from(m, tok, reference, every)
        with console.status("scoring heads on the calibration prompts..."):
            selection = select_sites(
                m, tok, t, r, prompt_lines(prompts) or CALIBRATION_PROMPTS, layers=candidates,
                heads_per_layer=heads_per_layer, num_layers=num_layers, rho=rho, max_new_tokens=max_new_tokens,
            )
        path = selection.save(output)
    except MemoryInceptionError as exc:
        fail(exc)
    table = Table(title=f"selected sites (of {len(selection.units)} scored heads)")
    for col in ("layer", "heads", "layer score", "margin", "w target", "w prompt"):
        table.add_column(col)
    units = {(u.layer, u.head): u for u in selection.units}
    for layer, heads in selection.sites.heads.items():
        chosen = [units[(layer, h)] for h in heads]
        table.add_row(
            str(layer), ",".join(map(str, heads)), f"{selection.sites.layer_scores[layer]:+.3f}",
            " ".join(f"{u.margin:+.2f}" for u in chosen), " ".join(f"{u.target_weight:.3f}" for u in chosen),
            " ".join(f"{u.prompt_weight:.3f}" for u in chosen),
        )
    console.print(table)
    console.print(f"wrote {path} (use it with --sites, or mi.Sites.load)")


def calibrate(
    bank: Annotated[str, typer.Option("--bank", "-b", help="Target bank: a bank file or guidance text.")],
    trait: Annotated[Optional[str], typer.Option(help="Control: a Big Five trait's persona statements (built in).")] = None,
    pole: Annotated[str, typer.Option(help="high | low: which pole of --trait the bank should move toward.")] = "high",
    statements: Annotated[Optional[Path], typer.Option(help="Control: an Anthropic-persona .jsonl (statement, answer_matching_behavior).")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Reference bank (steer away from it): file or text.")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
    layers: LayersOpt = None,
    sites: Annotated[Optional[Path], typer.Option(help="Sites JSON (e.g. from `mi select`).")] = None,
    rhos: Annotated[str, typer.Option(help="Strengths to try, comma-separated (negative rho weakens the bank).")] = "-48,-36,-24,-16,-8,0,4",
    tolerance: Annotated[float, typer.Option(help="Allowed rise of the repeated-trigram rate over the plain model.")] = 0.10,
    prompts: Annotated[Optional[str], typer.Option(help="@file with one calibration prompt per line (default: built-in).")] = None,
    n: Annotated[int, typer.Option(help="Statements per side for the control.")] = 30,
    max_new_tokens: Annotated[int, typer.Option(help="Reply length for the fluency measure.")] = 48,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the curve as JSON.")] = None,
) -> None:
    """Find the strength (rho) with the best control whose replies stay as fluent as the plain model's."""
    import json

    from memory_inception.datasets.traits import statements as trait_statements
    from memory_inception.tuning.calibration import calibrate_mi, statement_control
    from memory_inception.tuning.selection import CALIBRATION_PROMPTS

    if (trait is None) == (statements is None):
        raise typer.BadParameter("give exactly one control: --trait NAME (with --pole) or --statements FILE.jsonl")
    if pole not in ("high", "low"):
        raise typer.BadParameter(f"--pole must be high or low, not {pole!r}")
    try:
        grid = [float(x) for x in rhos.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--rhos must be numbers separated by commas, got {rhos!r}") from None
    try:
        m, tok = load(model, device, dtype, device_map)
        if trait is not None:
            yes, no = trait_statements(trait, n)
        else:
            if not statements.is_file():
                raise typer.BadParameter(f"no statements file {statements}")
            rows = [json.loads(line) for line in statements.read_text().splitlines() if line.strip()]
            yes = [r["statement"] for r in rows if r["answer_matching_behavior"].strip() == "Yes"][:n]
            no = [r["statement"] for r in rows if r["answer_matching_behavior"].strip() == "No"][:n]
        chosen = sites_from(m, parse_layers(layers), sites)
        steering = Steering(
            target=bank_from(m, tok, bank, chosen), reference=bank_from(m, tok, reference, chosen) if reference else None,
            sites=chosen,
        )
        control = statement_control(m, tok, yes, no, pole=1 if pole == "high" else -1)
        table = Table(title="calibration curve (control: statement-likelihood margin shift toward the pole)")
        for col in ("rho", "control", "repeated 3-grams", "distinct-2", "compression", "fluent", "first reply"):
            table.add_column(col, overflow="fold")
        with console.status("sweeping strengths (real greedy replies)..."):
            result = calibrate_mi(
                m, tok, steering, control, strengths=grid, prompts=prompt_lines(prompts) or CALIBRATION_PROMPTS,
                tolerance=tolerance, max_new_tokens=max_new_tokens,
            )
    except MemoryInceptionError as exc:
        fail(exc)
    except KeyError as exc:
        fail(MemoryInceptionError(f"the statements file lacks the field {exc}; it needs statement and answer_matching_behavior"))
    for p in result.points:
        table.add_row(
            f"{p.strength:g}", f"{p.control:+.3f}", f"{p.repetition:.3f}", f"{p.distinct2:.2f}", f"{p.compression:.2f}",
            "yes" if p.feasible else "no", p.sample[:60],
        )
    console.print(table)
    console.print(f"plain model: repeated 3-grams {result.plain_repetition:.3f}; bound {result.bound:.3f}")
    if result.best is None:
        console.print("[yellow]no strength kept the replies fluent; try smaller rhos or a larger --tolerance[/yellow]")
    else:
        console.print(f"[bold]best rho: {result.best:g}[/bold]")
    if output is not None:
        console.print(f"wrote {result.save(output)}")


def tune(
    bank: Annotated[str, typer.Argument(help="The bank to tune: a bank file or guidance text (@file reads a file).")],
    reference: Annotated[Optional[str], typer.Option("--reference", "-r", help="Reference bank (file or text); default: a neutral text of the same length.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the tuned bank (.safetensors): it stores the chosen sites and strength.")] = None,
    record: Annotated[Optional[Path], typer.Option("--record", help="Write what was tried as JSON.")] = None,
    budget: Annotated[float, typer.Option("--budget", help="Time budget in seconds.")] = 120.0,
    prompts: Annotated[Optional[str], typer.Option(help="@file with one neutral prompt per line (default: 8 built-in).")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """Choose sites and strength for one bank from its text alone (mi.tune), and show what was tried."""
    from memory_inception.tuning.tune import Tuning
    from memory_inception.tuning.tune import tune as tune_bank

    try:
        m, tok = load(model, device, dtype, device_map)
        every = Sites.all(m)
        target = bank_from(m, tok, bank, every)
        ref = bank_from(m, tok, reference, every) if reference else None
        with console.status(f"tuning (budget {budget:g} s)..."):
            steering = tune_bank(m, tok, target, reference=ref, prompts=prompt_lines(prompts), time_budget_s=budget)
        result = Tuning.of(steering)
        console.print(str(result), markup=False)
        if output is not None:
            console.print(f"wrote {steering.target.save(output)} (mi.Steering(target=bank) uses the tuned settings)")
        if record is not None:
            console.print(f"wrote {result.save(record)}")
    except MemoryInceptionError as exc:
        fail(exc)
