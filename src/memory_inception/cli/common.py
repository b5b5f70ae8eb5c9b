"""What every command shares: the common options, loading a model, banks and sites from arguments, replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from memory_inception.core.banks import Bank, build_bank
from memory_inception.core.sites import Sites
from memory_inception.core.sites import parse_layers as _parse_layers
from memory_inception.core.steering import Steering
from memory_inception.errors import ModelLoadError, SiteError

console = Console()


ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name, local directory or .gguf path (default: smollm2-135m-instruct).")]


DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto (CUDA, else MPS, else CPU; the default), cpu, cuda, cuda:N or mps.")]


DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="float32 | bfloat16 | float16 (default: bfloat16 on CUDA, float32 elsewhere).")]


DeviceMapOpt = Annotated[Optional[str], typer.Option("--device-map", help="Let accelerate place the model, e.g. over several GPUs: auto, balanced, balanced_low_0, sequential, or a JSON object of module to device. Not with --device.")]


LayersOpt = Annotated[Optional[str], typer.Option("--layers", help="Layers, e.g. '21-26' or '3,5,7' (default: the sites default, 6 layers from 70% depth).")]


RhoOpt = Annotated[Optional[float], typer.Option("--rho", help="Total steering strength (default: the model's, see core.defaults).")]


TokensOpt = Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")]


def parse_layers(spec: str | None) -> list[int] | None:
    """'21-26' -> [21..26]; '3,5,7' -> [3, 5, 7]; None -> None (a clear CLI error otherwise)."""
    try:
        return _parse_layers(spec)
    except SiteError as exc:
        raise typer.BadParameter(str(exc)) from None


def read_text(text: str) -> str:
    """TEXT, or the contents of the file when TEXT is '@path'."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise typer.BadParameter(f"no file {path} (TEXT starting with '@' names a file)")
        return path.read_text()
    return text


def parse_device_map(spec: str | None) -> str | dict[str, Any] | None:
    """--device-map: a strategy name as given, or a JSON object {"module": device, ...}."""
    if spec is None or not spec.strip().startswith("{"):
        return spec
    try:
        value = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--device-map {spec!r} is not a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"--device-map {spec!r}: give a strategy such as 'auto' or a JSON object")
    return value


def load(model_name: str | None, device: str | None = None, dtype: str | None = None, device_map: str | None = None):
    """The model and tokenizer (`hf.models.load_model`) on `device` in `dtype`; a bad choice exits with its message."""
    from transformers.utils import logging as hf_logging

    from memory_inception.hf.models import load_model

    hf_logging.disable_progress_bar()
    placement = parse_device_map(device_map)
    try:
        with console.status(f"loading {model_name or 'the default model'}..."):
            return load_model(model_name, device=device, dtype=dtype, device_map=placement)
    except ModelLoadError as exc:
        fail(exc)


def bank_from(model, tok, spec: str, sites: Sites | None) -> Bank:
    """A bank from a file path, or built on the fly from text for `sites` (None: the model's default sites)."""
    if Path(spec).suffix == ".safetensors" or Path(spec).is_file():
        return Bank.load(spec, model=model)
    return build_bank(model, tok, read_text(spec), sites=sites)


def sites_from(model, layers: list[int] | None, sites_file: Path | None) -> Sites | None:
    if sites_file is not None:
        return Sites.load(sites_file)
    return Sites({layer: None for layer in layers}) if layers else None


def reply(model, tok, prompt: str, steering: Steering | None, max_new_tokens: int, system: str | None = None) -> str:
    """The greedy reply to one user `prompt` (after an optional visible `system` message), steered by `steering`."""
    from memory_inception.methods.interface import Plain
    from memory_inception.methods.mi import MI
    from memory_inception.methods.runners import generate

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    method = MI(steering) if steering is not None else Plain()
    return generate(model, tok, method, [messages], max_new_tokens=max_new_tokens)[0]


def fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


def prompt_lines(spec: str | None) -> list[str] | None:
    """Calibration prompts from @file (one per line) or None for the built-in neutral prompts."""
    if spec is None:
        return None
    lines = [line.strip() for line in read_text(spec).splitlines() if line.strip()]
    if not lines:
        raise typer.BadParameter("the prompts file has no non-empty line")
    return lines
