"""`mi`: build banks, generate and chat with steering, and the side-by-side demo. Thin: parse, call, format."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from memory_inception.core.banks import Bank, build_bank
from memory_inception.core.sites import Sites
from memory_inception.core.sites import parse_layers as _parse_layers
from memory_inception.core.defaults import model_defaults
from memory_inception.core.steering import Steering
from memory_inception.errors import MemoryInceptionError, SiteError

app = typer.Typer(help="Memory Inception: steer language models with text banks.", no_args_is_help=True)
bank_app = typer.Typer(help="Build and inspect banks.", no_args_is_help=True)
app.add_typer(bank_app, name="bank")
console = Console()

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name, local directory or .gguf path (default: smollm2-135m-instruct).")]
LayersOpt = Annotated[Optional[str], typer.Option("--layers", help="Layers, e.g. '21-26' or '3,5,7' (default: the sites default, 6 layers from 70% depth).")]
RhoOpt = Annotated[Optional[float], typer.Option("--rho", help="Total steering strength (default: the model's, see core.defaults).")]
TokensOpt = Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")]


def parse_layers(spec: str | None) -> list[int] | None:
    """'21-26' -> [21..26]; '3,5,7' -> [3, 5, 7]; None -> None (a clear CLI error otherwise)."""
    try:
        return _parse_layers(spec)
    except SiteError as exc:
        raise typer.BadParameter(str(exc)) from None


def _read_text(text: str) -> str:
    """TEXT, or the contents of the file when TEXT is '@path'."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise typer.BadParameter(f"no file {path} (TEXT starting with '@' names a file)")
        return path.read_text()
    return text


def _load(model_name: str | None):
    from transformers.utils import logging as hf_logging

    from memory_inception.hf.models import load_model

    hf_logging.disable_progress_bar()

    with console.status(f"loading {model_name or 'the default model'}..."):
        return load_model(model_name)


def _bank(model, tok, spec: str, layers: list[int] | None) -> Bank:
    """A bank from a file path, or built on the fly from text."""
    if Path(spec).suffix == ".safetensors" or Path(spec).is_file():
        return Bank.load(spec, model=model)
    return build_bank(model, tok, _read_text(spec), layers=layers)


def _sites(model, layers: list[int] | None, sites_file: Path | None) -> Sites | None:
    if sites_file is not None:
        return Sites.load(sites_file)
    return Sites({layer: None for layer in layers}) if layers else None


def _chat_ids(tok, prompt: str, system: str | None = None):
    import torch

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def _generate(model, tok, prompt: str, steering: Steering | None, max_new_tokens: int, system: str | None = None) -> str:
    import torch

    from memory_inception.hf.inject import inject

    ids = _chat_ids(tok, prompt, system)
    with torch.no_grad(), inject(model, steering):
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


@bank_app.command("build")
def bank_build(
    text: Annotated[str, typer.Argument(help="Guidance text, or @file to read it from a file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bank file to write (.safetensors).")],
    model: ModelOpt = None,
    layers: LayersOpt = None,
    name: Annotated[Optional[str], typer.Option(help="Bank name (default: from the text).")] = None,
    template: Annotated[Optional[list[str]], typer.Option(help="Template(s) with {descriptor}; repeatable.")] = None,
    variants: Annotated[str, typer.Option(help="full | lines")] = "full",
    keep: Annotated[str, typer.Option(help="descriptor | all")] = "descriptor",
    pooling: Annotated[str, typer.Option(help="concat | mean")] = "concat",
    chat_template: Annotated[bool, typer.Option(help="Render as a system message with the chat template.")] = True,
) -> None:
    """Build a bank from TEXT and save it."""
    try:
        m, tok = _load(model)
        bank = build_bank(
            m, tok, _read_text(text), layers=parse_layers(layers), name=name,
            templates=tuple(template) if template else ("{descriptor}",), variants=variants, keep=keep,
            pooling=pooling, chat_template=chat_template,
        )
        path = bank.save(output)
    except MemoryInceptionError as exc:
        _fail(exc)
    console.print(f"wrote {path}: bank {bank.name!r}, {bank.num_slots} slots x {len(bank.layers)} layers, {bank.nbytes:,} bytes")


@bank_app.command("info")
def bank_info(path: Annotated[Path, typer.Argument(help="A bank file.")]) -> None:
    """Show a bank file's metadata."""
    try:
        bank = Bank.load(path)
    except MemoryInceptionError as exc:
        _fail(exc)
    table = Table(show_header=False)
    for key, value in (
        ("name", bank.name), ("slots", bank.num_slots), ("layers", ",".join(map(str, bank.layers))),
        ("kv heads x head dim", f"{bank.num_kv_heads} x {bank.head_dim}"), ("dtype", str(bank.dtype)),
        ("bytes", f"{bank.nbytes:,}"), ("model fingerprint", bank.fingerprint), ("options", str(bank.options)),
        ("text", bank.text or "(token ids)"),
    ):
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def models() -> None:
    """List the model names `--model` accepts (besides local directories and .gguf paths)."""
    from memory_inception.hf.models import available_models

    for name in available_models():
        console.print(name)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    bank: Annotated[Optional[str], typer.Option("--bank", "-b", help="Target bank: a bank file or guidance text.")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Reference bank (steer away from it): file or text.")] = None,
    aux: Annotated[Optional[list[str]], typer.Option(help="Auxiliary bank FILE_OR_TEXT=GAIN; repeatable.")] = None,
    model: ModelOpt = None,
    layers: LayersOpt = None,
    sites: Annotated[Optional[Path], typer.Option(help="Sites JSON (e.g. from `mi select`).")] = None,
    rho: RhoOpt = None,
    prefill: Annotated[str, typer.Option(help="last | all | none")] = "last",
    system: Annotated[Optional[str], typer.Option(help="A visible system message.")] = None,
    max_new_tokens: TokensOpt = 96,
) -> None:
    """Generate a reply to PROMPT, steered by banks (greedy)."""
    try:
        m, tok = _load(model)
        layer_list = parse_layers(layers)
        auxiliary = []
        for item in aux or []:
            spec, _, gain = item.rpartition("=")
            if not spec:
                raise typer.BadParameter(f"--aux takes FILE_OR_TEXT=GAIN, got {item!r}")
            auxiliary.append((_bank(m, tok, spec, None), float(gain)))
        steering = Steering(
            target=_bank(m, tok, bank, None) if bank else None,
            reference=_bank(m, tok, reference, None) if reference else None,
            auxiliary=auxiliary, sites=_sites(m, layer_list, sites), rho=rho, prefill=prefill,
        )
        console.print(_generate(m, tok, prompt, steering, max_new_tokens, system), markup=False)
    except MemoryInceptionError as exc:
        _fail(exc)


@app.command()
def chat(
    bank: Annotated[Optional[str], typer.Option("--bank", "-b", help="Initial target bank: file or text.")] = None,
    model: ModelOpt = None,
    layers: LayersOpt = None,
    rho: RhoOpt = None,
    max_new_tokens: TokensOpt = 128,
) -> None:
    """Chat in the terminal. Commands: /bank FILE_OR_TEXT, /bank off, /rho X, /reset, /quit."""
    from memory_inception.hf.session import Session

    m, tok = _load(model)
    layer_list = parse_layers(layers)
    sites = _sites(m, layer_list, None)
    try:
        target = _bank(m, tok, bank, None) if bank else None
    except MemoryInceptionError as exc:
        _fail(exc)
    session = Session(m, tok, Steering(target=target, sites=sites, rho=rho))
    console.print("[dim]/bank FILE_OR_TEXT, /bank off, /rho X, /reset, /quit[/dim]")
    while True:
        try:
            line = console.input("[bold]you>[/bold] ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        try:
            if line.startswith("/bank"):
                arg = line[len("/bank") :].strip()
                target = None if arg in ("", "off") else _bank(m, tok, arg, None)
                session.steering = Steering(target=target, sites=sites, rho=session.steering.rho)
                console.print(f"[dim]guidance: {target.name if target else 'none'} (transcript unchanged)[/dim]")
            elif line.startswith("/rho"):
                value = float(line.split()[1])
                st = session.steering
                session.steering = Steering(target=st.target, sites=st.sites, rho=value)
                console.print(f"[dim]rho = {value:g}[/dim]")
            elif line == "/reset":
                session.reset()
                console.print("[dim]conversation cleared[/dim]")
            elif line.startswith("/"):
                console.print("[dim]unknown command; /bank, /rho, /reset, /quit[/dim]")
            else:
                console.print(f"[bold]mi>[/bold] {session.send(line, max_new_tokens=max_new_tokens)}", markup=False)
        except (MemoryInceptionError, ValueError, IndexError) as exc:
            console.print(f"[red]error:[/red] {exc}")


DEMO_GUIDANCE = (
    "You are a pirate captain. You always talk like a pirate, say 'Arr!' and 'matey', and bring every answer "
    "back to your ship, the sea and buried treasure."
)
DEMO_PROMPTS = ("What is your favorite food?", "How do I make a cup of tea?", "Give me one tip for a job interview.")


@app.command()
def demo(
    model: ModelOpt = None,
    guidance: Annotated[str, typer.Option(help="The guidance text (or @file).")] = DEMO_GUIDANCE,
    layers: LayersOpt = None,
    rho: RhoOpt = None,
    max_new_tokens: TokensOpt = 48,
) -> None:
    """The same prompts plain, with the guidance as a visible system prompt, and as an MI bank; plus KV bytes."""
    from memory_inception.core.architecture import geometry
    from memory_inception.core.storage import bank_kv_bytes, prompt_kv_bytes

    logging.getLogger("transformers").setLevel(logging.ERROR)
    m, tok = _load(model)
    text = _read_text(guidance)
    sites = _sites(m, parse_layers(layers), None) or Sites.default(m)
    bank = build_bank(m, tok, text, layers=list(sites.layers), name="guidance")
    steering = Steering(target=bank, sites=sites, rho=rho)
    geo = geometry(m)
    console.print(f"[bold]guidance:[/bold] {text}")
    console.print(
        f"[dim]model: {geo.model_type}, {geo.num_layers} layers, {geo.num_heads} heads ({geo.num_kv_heads} KV); "
        f"MI sites: all heads of layers {sites.layers[0]}-{sites.layers[-1]}, rho {steering.rho if steering.rho is not None else model_defaults(geo, fingerprint=bank.fingerprint).rho:g}, greedy[/dim]"
    )
    table = Table(show_lines=True)
    table.add_column("prompt", style="bold", max_width=18)
    for col in ("plain", "visible system prompt", "MI bank (hidden)"):
        table.add_column(col, ratio=1)
    for prompt in DEMO_PROMPTS:
        with console.status(f"generating: {prompt}"):
            row = [
                _generate(m, tok, prompt, None, max_new_tokens),
                _generate(m, tok, prompt, None, max_new_tokens, system=text),
                _generate(m, tok, prompt, steering, max_new_tokens),
            ]
        table.add_row(prompt, *row)
    console.print(table)
    system_turn = tok.apply_chat_template([{"role": "system", "content": text}], tokenize=False)
    visible_tokens = len(tok(system_turn, add_special_tokens=False)["input_ids"])
    prompt_bytes = prompt_kv_bytes(m, visible_tokens)
    mi_bytes = bank_kv_bytes(bank)
    console.print(
        f"KV bytes for the guidance: visible prompt {prompt_bytes:,} ({visible_tokens} tokens x {geo.num_layers} layers); "
        f"MI bank {mi_bytes:,} ({bank.num_slots} slots x {len(bank.layers)} layers); "
        f"ratio {prompt_bytes / mi_bytes:.1f}x. The MI transcript holds none of the guidance."
    )


def _prompts(spec: str | None) -> list[str] | None:
    """Calibration prompts from @file (one per line) or None for the built-in neutral prompts."""
    if spec is None:
        return None
    lines = [line.strip() for line in _read_text(spec).splitlines() if line.strip()]
    if not lines:
        raise typer.BadParameter("the prompts file has no non-empty line")
    return lines


@app.command()
def select(
    target: Annotated[str, typer.Option("--target", "-t", help="Target bank: a bank file or guidance text.")],
    reference: Annotated[str, typer.Option("--reference", "-r", help="Reference bank (the opposite pole): file or text.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Sites JSON to write (read by --sites and mi.Sites.load).")],
    model: ModelOpt = None,
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
        m, tok = _load(model)
        candidates = parse_layers(layers)
        t, r = _bank(m, tok, target, None), _bank(m, tok, reference, None)
        with console.status("scoring heads on the calibration prompts..."):
            selection = select_sites(
                m, tok, t, r, _prompts(prompts) or CALIBRATION_PROMPTS, layers=candidates,
                heads_per_layer=heads_per_layer, num_layers=num_layers, rho=rho, max_new_tokens=max_new_tokens,
            )
        path = selection.save(output)
    except MemoryInceptionError as exc:
        _fail(exc)
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


@app.command()
def calibrate(
    bank: Annotated[str, typer.Option("--bank", "-b", help="Target bank: a bank file or guidance text.")],
    trait: Annotated[Optional[str], typer.Option(help="Control: a Big Five trait's persona statements (built in).")] = None,
    pole: Annotated[str, typer.Option(help="high | low: which pole of --trait the bank should move toward.")] = "high",
    statements: Annotated[Optional[Path], typer.Option(help="Control: an Anthropic-persona .jsonl (statement, answer_matching_behavior).")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Reference bank (steer away from it): file or text.")] = None,
    model: ModelOpt = None,
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
        m, tok = _load(model)
        if trait is not None:
            yes, no = trait_statements(trait, n)
        else:
            if not statements.is_file():
                raise typer.BadParameter(f"no statements file {statements}")
            rows = [json.loads(line) for line in statements.read_text().splitlines() if line.strip()]
            yes = [r["statement"] for r in rows if r["answer_matching_behavior"].strip() == "Yes"][:n]
            no = [r["statement"] for r in rows if r["answer_matching_behavior"].strip() == "No"][:n]
        steering = Steering(
            target=_bank(m, tok, bank, None), reference=_bank(m, tok, reference, None) if reference else None,
            sites=_sites(m, parse_layers(layers), sites),
        )
        control = statement_control(m, tok, yes, no, pole=1 if pole == "high" else -1)
        table = Table(title="calibration curve (control: statement-likelihood margin shift toward the pole)")
        for col in ("rho", "control", "repeated 3-grams", "distinct-2", "compression", "fluent", "first reply"):
            table.add_column(col, overflow="fold")
        with console.status("sweeping strengths (real greedy replies)..."):
            result = calibrate_mi(
                m, tok, steering, control, strengths=grid, prompts=_prompts(prompts) or CALIBRATION_PROMPTS,
                tolerance=tolerance, max_new_tokens=max_new_tokens,
            )
    except MemoryInceptionError as exc:
        _fail(exc)
    except KeyError as exc:
        _fail(MemoryInceptionError(f"the statements file lacks the field {exc}; it needs statement and answer_matching_behavior"))
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


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    bank_dir: Annotated[Path, typer.Option(help="Directory holding the banks (<name>.safetensors).")] = Path("banks"),
    api_key: Annotated[Optional[str], typer.Option(envvar="MI_API_KEY", help="Require 'Authorization: Bearer KEY'.")] = None,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    session_cache_bytes: Annotated[int, typer.Option(help="Budget for the sessions' KV caches, in bytes.")] = 512 << 20,
    engine: Annotated[str, typer.Option(help="Generation engine: transformers, or vllm (continuous batching; the [vllm] extra, docs/vllm.md).")] = "transformers",
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API with banks and sessions."""
    from memory_inception.serving.app import run_server

    if engine not in ("transformers", "vllm"):
        _fail(MemoryInceptionError(f"--engine must be 'transformers' or 'vllm', not {engine!r}"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_server(model, host=host, port=port, bank_dir=bank_dir, api_key=api_key, engine=engine,
                   max_tokens_limit=max_tokens_limit, session_cache_bytes=session_cache_bytes)
    except MemoryInceptionError as exc:
        _fail(exc)


@app.command("eval")
def eval_(
    task: Annotated[Optional[str], typer.Argument(help="Task: bigfive, bigfive-generation, dialogue, persistence, capability, storage, hardmath, physics (or from --config).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Task config (.toml/.yaml): model, methods, personas, strengths, sites, seeds, task options (the \\[options.TASK] tables).")] = None,
    model: ModelOpt = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated: plain,prompting,caa,mi.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Cap each task's data (items, statements, prompts, problems) for a quick run.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results directory (TASK.jsonl is appended to, and resumed).")] = Path("runs/eval"),
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (1 is often fastest on small machines).")] = None,
) -> None:
    """Run an evaluation task with every method; each finished unit is appended to OUT/TASK.jsonl (rerun resumes)."""
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
            config, task=task, model=model, limit=limit, threads=threads,
            methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
        )
        chosen = get_task(cfg.task)
    except MemoryInceptionError as exc:
        _fail(exc)
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
            _fail(exc)
    console.print(f"{len(records)} records in {path}; `mi report {out}` writes the report")


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A results directory written by `mi eval`.")],
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated tasks to include (default: every task in DIR).")] = None,
) -> None:
    """Write DIR/report.md with tables and PNG plots from every task's results in DIR."""
    from memory_inception.evaluation import write_report

    try:
        console.print(f"wrote {write_report(directory, tasks=tasks.split(',') if tasks else None)}")
    except MemoryInceptionError as exc:
        _fail(exc)


def main() -> None:  # pragma: no cover - console entry point is `app`
    app()
