"""`mi generate`, `mi chat`, `mi demo`, `mi models`: steered replies in the terminal."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from memory_inception.cli import common
from memory_inception.core.banks import build_bank
from memory_inception.core.defaults import model_defaults
from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering
from memory_inception.errors import MemoryInceptionError


def models() -> None:
    """List the model names `--model` accepts (besides local directories and .gguf paths)."""
    from memory_inception.hf.models import available_models

    for name in available_models():
        common.console.print(name)


def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    bank: Annotated[Optional[str], typer.Option("--bank", "-b", help="Target bank: a bank file or guidance text.")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Reference bank (steer away from it): file or text.")] = None,
    aux: Annotated[Optional[list[str]], typer.Option(help="Auxiliary bank FILE_OR_TEXT=GAIN; repeatable.")] = None,
    model: common.ModelOpt = None,
    device: common.DeviceOpt = None,
    dtype: common.DtypeOpt = None,
    device_map: common.DeviceMapOpt = None,
    layers: common.LayersOpt = None,
    sites: Annotated[Optional[Path], typer.Option(help="Sites JSON (e.g. from `mi select`).")] = None,
    rho: common.RhoOpt = None,
    prefill: Annotated[str, typer.Option(help="last | all | none")] = "last",
    system: Annotated[Optional[str], typer.Option(help="A visible system message.")] = None,
    max_new_tokens: common.TokensOpt = 96,
) -> None:
    """Generate a common.reply to PROMPT, steered by banks (greedy)."""
    try:
        m, tok = common.load(model, device, dtype, device_map)
        chosen = common.sites_from(m, common.parse_layers(layers), sites)
        auxiliary = []
        for item in aux or []:
            spec, _, gain = item.rpartition("=")
            if not spec:
                raise typer.BadParameter(f"--aux takes FILE_OR_TEXT=GAIN, got {item!r}")
            auxiliary.append((common.bank_from(m, tok, spec, chosen), float(gain)))
        steering = Steering(
            target=common.bank_from(m, tok, bank, chosen) if bank else None,
            reference=common.bank_from(m, tok, reference, chosen) if reference else None,
            auxiliary=auxiliary, sites=chosen, rho=rho, prefill=prefill,
        )
        common.console.print(common.reply(m, tok, prompt, steering, max_new_tokens, system), markup=False)
    except MemoryInceptionError as exc:
        common.fail(exc)


def chat(
    bank: Annotated[Optional[str], typer.Option("--bank", "-b", help="Initial target bank: file or text.")] = None,
    model: common.ModelOpt = None,
    device: common.DeviceOpt = None,
    dtype: common.DtypeOpt = None,
    device_map: common.DeviceMapOpt = None,
    layers: common.LayersOpt = None,
    rho: common.RhoOpt = None,
    max_new_tokens: common.TokensOpt = 128,
) -> None:
    """Chat in the terminal. Commands: /bank FILE_OR_TEXT, /bank off, /rho X, /reset, /quit."""
    from memory_inception.hf.session import Session

    m, tok = common.load(model, device, dtype, device_map)
    layer_list = common.parse_layers(layers)
    sites = common.sites_from(m, layer_list, None)
    try:
        target = common.bank_from(m, tok, bank, sites) if bank else None
    except MemoryInceptionError as exc:
        common.fail(exc)
    session = Session(m, tok, Steering(target=target, sites=sites, rho=rho))
    common.console.print("[dim]/bank FILE_OR_TEXT, /bank off, /rho X, /reset, /quit[/dim]")
    while True:
        try:
            line = common.console.input("[bold]you>[/bold] ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        try:
            if line.startswith("/bank"):
                arg = line[len("/bank") :].strip()
                target = None if arg in ("", "off") else common.bank_from(m, tok, arg, sites)
                session.steering = Steering(target=target, sites=sites, rho=session.steering.rho)
                common.console.print(f"[dim]guidance: {target.name if target else 'none'} (transcript unchanged)[/dim]")
            elif line.startswith("/rho"):
                value = float(line.split()[1])
                st = session.steering
                session.steering = Steering(target=st.target, sites=st.sites, rho=value)
                common.console.print(f"[dim]rho = {value:g}[/dim]")
            elif line == "/reset":
                session.reset()
                common.console.print("[dim]conversation cleared[/dim]")
            elif line.startswith("/"):
                common.console.print("[dim]unknown command; /bank, /rho, /reset, /quit[/dim]")
            else:
                common.console.print(f"[bold]mi>[/bold] {session.send(line, max_new_tokens=max_new_tokens)}", markup=False)
        except (MemoryInceptionError, ValueError, IndexError) as exc:
            common.console.print(f"[red]error:[/red] {exc}")


DEMO_GUIDANCE = (
    "You are a pirate captain. You always talk like a pirate, say 'Arr!' and 'matey', and bring every answer "
    "back to your ship, the sea and buried treasure."
)


DEMO_PROMPTS = ("What is your favorite food?", "How do I make a cup of tea?", "Give me one tip for a job interview.")


def demo(
    model: common.ModelOpt = None,
    device: common.DeviceOpt = None,
    dtype: common.DtypeOpt = None,
    device_map: common.DeviceMapOpt = None,
    guidance: Annotated[str, typer.Option(help="The guidance text (or @file).")] = DEMO_GUIDANCE,
    layers: common.LayersOpt = None,
    rho: common.RhoOpt = None,
    max_new_tokens: common.TokensOpt = 48,
) -> None:
    """The same prompts plain, with the guidance as a visible system prompt, and as an MI bank; plus KV bytes."""
    from memory_inception.core.architecture import geometry, model_fingerprint
    from memory_inception.core.storage import prompt_kv_bytes

    logging.getLogger("transformers").setLevel(logging.ERROR)
    m, tok = common.load(model, device, dtype, device_map)
    text = common.read_text(guidance)
    geo = geometry(m)
    defaults = model_defaults(geo, fingerprint=model_fingerprint(m))
    # what a new user gets: the table's sites (KV groups included) and strength, unless --layers / --rho say otherwise
    sites = common.sites_from(m, common.parse_layers(layers), None) or Sites(defaults.site_heads(geo))
    bank = build_bank(m, tok, text, sites=sites, name="guidance")  # stores only the KV groups the sites read
    steering = Steering(target=bank, sites=sites, rho=rho if rho is not None else defaults.rho)
    heads = sorted({h for hs in sites.heads.values() for h in (hs if hs is not None else range(geo.num_heads))})
    which = "all heads" if len(heads) == geo.num_heads else f"heads {','.join(map(str, heads))}"
    common.console.print(f"[bold]guidance:[/bold] {text}")
    common.console.print(
        f"[dim]model: {geo.model_type}, {geo.num_layers} layers, {geo.num_heads} heads ({geo.num_kv_heads} KV); "
        f"MI sites: {which} of layers {sites.layers[0]}-{sites.layers[-1]}, rho {steering.rho:g}, greedy[/dim]"
    )
    table = Table(show_lines=True)
    table.add_column("prompt", style="bold", max_width=18)
    for col in ("plain", "visible system prompt", "MI bank (hidden)"):
        table.add_column(col, ratio=1)
    for prompt in DEMO_PROMPTS:
        with common.console.status(f"generating: {prompt}"):
            row = [
                common.reply(m, tok, prompt, None, max_new_tokens),
                common.reply(m, tok, prompt, None, max_new_tokens, system=text),
                common.reply(m, tok, prompt, steering, max_new_tokens),
            ]
        table.add_row(prompt, *row)
    common.console.print(table)
    system_turn = tok.apply_chat_template([{"role": "system", "content": text}], tokenize=False)
    visible_tokens = len(tok(system_turn, add_special_tokens=False)["input_ids"])
    prompt_bytes = prompt_kv_bytes(m, visible_tokens)
    mi_bytes = bank.nbytes  # built at the site layers only: what it stores
    common.console.print(
        f"KV bytes for the guidance: visible prompt {prompt_bytes:,} ({visible_tokens} tokens x {geo.num_layers} layers); "
        f"MI bank {mi_bytes:,} ({bank.num_slots} slots x {len(bank.layers)} layers); "
        f"ratio {prompt_bytes / mi_bytes:.1f}x. The MI transcript holds none of the guidance."
    )
