"""KV storage accounting (spec section 7) for the guidance the tasks use, on local and published model sizes.

Prompting caches T guidance tokens at every layer and KV head; a bank keeps M slots at the site layers' KV groups.
The content-matched ratio is prompt bytes over bank bytes for the same text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from memory_inception.core.architecture import geometry
from memory_inception.core.sites import Sites
from memory_inception.core.storage import kv_bytes
from memory_inception.evaluation.analysis import nanmean, table
from memory_inception.evaluation.base import Context, Task, Unit
from memory_inception.evaluation.config import EvalConfig


@dataclass(frozen=True)
class KVDims:
    """What KV bytes depend on: layers, KV heads, head size, bytes per value."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    bytes_per_value: int

    def prompt_bytes(self, tokens: int) -> int:
        """What visible prompting caches: every layer and KV head (`core.storage.kv_bytes`)."""
        return kv_bytes(self.num_layers, self.num_kv_heads, tokens, self.head_dim, self.bytes_per_value)

    def bank_bytes(self, slots: int, layers: int, kv_groups_per_layer: int | None = None) -> int:
        """What a bank stores at `layers` site layers and `kv_groups_per_layer` KV groups (default every KV head)."""
        heads = self.num_kv_heads if kv_groups_per_layer is None else kv_groups_per_layer
        return kv_bytes(layers, heads, slots, self.head_dim, self.bytes_per_value)


def published_dims() -> dict[str, KVDims]:
    """Llama-3.1-8B and Qwen3-30B-A3B KV dimensions from their published configs (data/model_dims.json)."""
    raw = json.loads((files("memory_inception") / "data" / "model_dims.json").read_text())
    return {name: KVDims(v["num_layers"], v["num_kv_heads"], v["head_dim"], v["bytes_per_value"])
            for name, v in raw.items() if not name.startswith("_")}


# Which guidance each task carries (the personas of its default options).
TASK_GUIDANCE = {
    "bigfive": "one persona",
    "bigfive-generation": "one persona",
    "persistence": "one persona",
    "capability": "one persona",
    "dialogue": "persona A then persona B",
}


@dataclass
class StorageOptions:
    """No options: the personas and MI sites come from the run's config."""


class Storage(Task, name="storage", options=StorageOptions):
    """KV bytes each method adds per task, content-matched prompting/MI ratio, local and published model sizes."""

    def units(self, ctx: Context) -> Iterable[Unit]:
        personas = ctx.cfg.personas[: ctx.cfg.limit] if ctx.cfg.limit else ctx.cfg.personas
        for persona in personas:
            yield Unit(persona, {"persona": persona})

    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        persona = unit.fields["persona"]
        model = ctx.model
        geo = geometry(model)
        sites = ctx.sites() or Sites.default(model)
        resolved = sites.resolve(geo)
        groups = [len({h // geo.group_size for h in heads}) for heads in resolved.values()]
        bank = ctx.bank(persona)
        prompting = ctx.cost(ctx.method("prompting", persona))
        out = {
            "visible_tokens": prompting["visible_tokens"],
            "bank_slots": bank.num_slots,
            "site_layers": len(resolved),
            "kv_groups": sum(groups),
            "local": {
                "num_layers": geo.num_layers, "num_kv_heads": geo.num_kv_heads, "head_dim": geo.head_dim,
                "bytes_per_value": next(model.parameters()).element_size(),
            },
            "prompting_bytes": prompting["cache_bytes"],
            "mi_bytes": ctx.cost(ctx.method("mi", persona))["stored_bytes"],
        }
        if "caa" in ctx.cfg.methods:
            out["caa_bytes"] = ctx.cost(ctx.method("caa", persona))["stored_bytes"]
        return out

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        if not records:
            return ""
        body = []
        for r in records:
            ratio = r["prompting_bytes"] / r["mi_bytes"] if r["mi_bytes"] else float("nan")
            body.append([r["persona"], r["visible_tokens"], r["bank_slots"], f"{r['prompting_bytes']:,}", f"{r['mi_bytes']:,}",
                         f"{r.get('caa_bytes', 0):,}", f"{ratio:.1f}x"])
        local = records[0]["local"]
        share = records[0]["site_layers"] / local["num_layers"]
        group_share = records[0]["kv_groups"] / (records[0]["site_layers"] * local["num_kv_heads"])
        parts = [f"## KV storage ({cfg.model})", "",
                 f"Local model: {local['num_layers']} layers, {local['num_kv_heads']} KV heads of {local['head_dim']}, "
                 f"{local['bytes_per_value']} bytes per value; MI sites: {records[0]['site_layers']} layers, "
                 f"{records[0]['kv_groups']} KV groups stored. Prompting caches the guidance's tokens at every layer; MI "
                 "stores the bank's slots at the site KV groups; CAA stores one vector per steered layer.", "",
                 table(["guidance", "prompt tokens T", "bank slots M", "prompting KV bytes", "MI bank bytes", "CAA bytes",
                        "prompting / MI"], body), ""]
        tokens, slots = nanmean([r["visible_tokens"] for r in records]), nanmean([r["bank_slots"] for r in records])
        prompt_b = nanmean([r["prompting_bytes"] for r in records])
        mi_b = nanmean([r["mi_bytes"] for r in records])  # one live bank at a time
        caa_b = nanmean([r.get("caa_bytes", 0) for r in records])
        task_rows = []
        for task, carried in TASK_GUIDANCE.items():
            k = 2 if task == "dialogue" else 1  # appended prompting keeps both instructions visible
            task_rows.append([task, carried, round(k * tokens), f"{round(k * prompt_b):,}", f"{round(mi_b):,}",
                              f"{round(caa_b):,}", f"{k * prompt_b / mi_b:.1f}x"])
        parts += ["Per task (mean over the guidance texts above; in dialogue, appended prompting keeps both "
                  "instructions visible while MI and CAA keep only the live bank or vector):", "",
                  table(["task", "guidance", "prompt tokens", "prompting KV bytes", "MI bytes", "CAA bytes", "prompting / MI"], task_rows), ""]
        paper = []
        for name, dims in published_dims().items():
            layers = max(1, round(share * dims.num_layers))
            groups = max(1, round(group_share * dims.num_kv_heads))
            pb, mb = dims.prompt_bytes(round(tokens)), dims.bank_bytes(round(slots), layers, groups)
            paper.append([name, f"{dims.num_layers} x {dims.num_kv_heads} x {dims.head_dim}", layers, groups,
                          f"{pb:,}", f"{mb:,}", f"{pb / mb:.1f}x"])
        parts += ["Published model sizes (data/model_dims.json, bf16), with the same mean guidance length "
                  f"(T = {tokens:.0f} tokens, M = {slots:.0f} slots; the tokenizers differ, so this is approximate) and "
                  f"sites covering the same share of layers ({share:.0%}) and of KV groups ({group_share:.0%}) as here:", "",
                  table(["model", "layers x KV heads x head dim", "site layers", "KV groups per site layer", "prompting bytes",
                         "MI bytes", "prompting / MI"], paper), ""]
        return "\n".join(parts)

