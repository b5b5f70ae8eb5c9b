"""`mi bank quantize` / `mi memory build`: store a bank quantized; make a memory bank from long documents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from memory_inception.cli import common
from memory_inception.core.banks import Bank
from memory_inception.core.memory import build_memory
from memory_inception.errors import MemoryInceptionError

QuantizeOpt = Annotated[
    Optional[str],
    typer.Option("--quantize", help="Store the slots quantized: int8 | int4 | int8-channel | int4-channel."),
]


def bank_quantize(
    path: Annotated[Path, typer.Argument(help="A bank file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Quantized bank file to write (.safetensors).")],
    bits: Annotated[
        str, typer.Option("--bits", help="int8 | int4 (scales per slot and KV head) | int8-channel | int4-channel "
                                         "(key scales per channel).")
    ] = "int8",
) -> None:
    """Store a bank quantized (int8 or int4 values with float16 scales)."""
    try:
        bank = Bank.load(path)
        quantized = bank.quantize(bits)
        written = quantized.save(output)
    except MemoryInceptionError as exc:
        common.fail(exc)
    common.console.print(f"wrote {written}: bank {bank.name!r} as {quantized.quantization.name}, {bank.nbytes:,} -> "
                  f"{quantized.nbytes:,} bytes ({bank.nbytes / quantized.nbytes:.1f}x smaller)")


def memory_build(
    documents: Annotated[list[str], typer.Argument(help="Documents: texts, or @file to read one from a file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Memory bank file to write (.safetensors).")],
    model: common.ModelOpt = None,
    device: common.DeviceOpt = None,
    dtype: common.DtypeOpt = None,
    device_map: common.DeviceMapOpt = None,
    layers: common.LayersOpt = None,
    name: Annotated[str, typer.Option(help="Memory name.")] = "memory",
    top_k: Annotated[int, typer.Option("--top-k", help="Slots each query row reads.")] = 32,
    chunk_tokens: Annotated[int, typer.Option("--chunk-tokens", help="New tokens per forward.")] = 512,
    overlap: Annotated[int, typer.Option("--overlap", help="Tokens of preceding text each chunk sees.")] = 64,
    index: Annotated[str, typer.Option("--index", help="auto | exact | hnsw (auto: HNSW from 16384 slots).")] = "auto",
    normalize: Annotated[str, typer.Option("--normalize", help="retrieved (-log k) | slots (-log M).")] = "retrieved",
    quantize: QuantizeOpt = None,
) -> None:
    """Build a memory bank (one slot per token, read top-k per query) from long documents and save it."""
    try:
        texts = [common.read_text(d) for d in documents]
        m, tok = common.load(model, device, dtype, device_map)
        with common.console.status(f"running {len(texts)} document(s) through the model in chunks of {chunk_tokens}..."):
            memory = build_memory(
                m, tok, texts, layers=common.parse_layers(layers), name=name, chunk_tokens=chunk_tokens, overlap=overlap,
                top_k=top_k, index=index, normalize=normalize, quantize=quantize,  # type: ignore[arg-type]
            )
        path = memory.save(output)
    except MemoryInceptionError as exc:
        common.fail(exc)
    common.console.print(f"wrote {path}: memory {memory.name!r}, {memory.num_slots:,} slots x {len(memory.layers)} layers, "
                  f"read top {top_k}, {memory.nbytes:,} bytes")
