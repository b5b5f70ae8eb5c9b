"""Long memory: facts spread through a document longer than the context window, questions afterwards.

A synthetic passkey document (the field's usual filler, "The grass is green. The sky is blue. ...", with
key-value facts "The pass key of the red fox is 4721." at random places) of N tokens; then one question per fact.
Conditions: `plain` (the question alone), `truncated` (the document's last `truncate_tokens` tokens as a visible
system message), `retriever` (the `passages` passages of `passage_tokens` tokens closest to the question under the
MiniLM encoder, as a visible system message: the field's usual baseline), and `memory` (the whole document as a
memory bank, one slot per token, read top-k by the site heads, `core.memory`). Two scores per question: the greedy
reply contains the number (exact match), and the number is the most likely of four candidates (the fact's and
three other facts' numbers) after "The pass key of the NAME is" (multiple choice, chance 25%).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memory_inception.core.banks import Bank
from memory_inception.core.memory import as_memory, build_memory
from memory_inception.core.steering import Steering
from memory_inception.errors import EvaluationError
from memory_inception.evaluation.analysis import fmt, nanmean, table
from memory_inception.evaluation.base import Context, Task, Unit
from memory_inception.evaluation.config import EvalConfig
from memory_inception.evaluation.judges import embed
from memory_inception.methods.interface import Method, Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import generate, score_shared

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "grey", "pink", "orange", "purple", "golden")
ANIMALS = ("fox", "owl", "bear", "wolf", "horse", "whale", "eagle", "tiger", "rabbit", "snake", "goat", "crow")
CONDITIONS = ("plain", "truncated", "retriever", "memory")


@dataclass
class LongMemoryOptions:
    sizes: list[int] = field(default_factory=lambda: [1000, 10000, 100000])  # document tokens = memory slots
    facts: int = 16  # facts per document, one question each
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    truncate_tokens: int = 2048  # the truncated baseline's prompt budget
    passage_tokens: int = 64
    passages: int = 3  # retrieved passages in the retriever's prompt
    top_k: int = 32  # memory slots each query row reads
    rho: float | None = None  # None: the run's [mi] rho
    normalize: str = "retrieved"  # the memory's -log k ("retrieved") or -log M ("slots")
    index: str = "auto"
    chunk_tokens: int = 512
    overlap: int = 64
    reply_tokens: int = 12


@dataclass(frozen=True)
class Fact:
    name: str
    number: str

    @property
    def sentence(self) -> str:
        return f"The pass key of the {self.name} is {self.number}. Remember it: {self.number} is the pass key of the {self.name}. "

    @property
    def question(self) -> str:
        return f"What is the pass key of the {self.name}? Answer with the number only."

    @property
    def answer_prefix(self) -> str:
        return f"The pass key of the {self.name} is"


def make_document(tokenizer: Any, tokens: int, facts: int, seed: int) -> tuple[str, list[Fact]]:
    """A filler document of about `tokens` tokens with `facts` facts at random filler boundaries (deterministic)."""
    rng = random.Random(seed * 1_000_003 + tokens)
    names = [f"{c} {a}" for c in COLORS for a in ANIMALS]
    chosen = [Fact(name, str(rng.randrange(1000, 10000))) for name in rng.sample(names, facts)]
    filler_len = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    fact_len = sum(len(tokenizer(f.sentence, add_special_tokens=False)["input_ids"]) for f in chosen)
    slots = max(facts, (tokens - fact_len) // filler_len)
    places = sorted(rng.sample(range(slots + 1), facts))
    pieces, at = [], 0
    for place, fact in zip(places, chosen):
        pieces += [FILLER] * (place - at) + [fact.sentence]
        at = place
    pieces += [FILLER] * (slots - at)
    return "".join(pieces), chosen


def memory_bank(ctx: Context, opts: LongMemoryOptions, size: int, document: str) -> tuple[Bank, bool]:
    """The document's memory (one slot per token at the run's sites), built once per run directory and kept in
    `out/banks/memory-SIZE-FACTSfacts-seedSEED-cCHUNK-oOVERLAP-DTYPE.safetensors` (gitignored; reloaded with a
    fingerprint and text check), so a resumed run and `benchmarks/memory_decode.py --memory FILE` reuse it. A run
    directory holds one configuration (`runner.check_config`), so the sites it was built for are the run's.
    Returns the memory and whether it was read from the file."""
    dtype = str(ctx.cfg.torch_dtype).removeprefix("torch.")
    name = f"memory-{size}-{opts.facts}facts-seed{ctx.cfg.seed}-c{opts.chunk_tokens}-o{opts.overlap}-{dtype}"
    path = ctx.out / "banks" / f"{name}.safetensors"
    if path.is_file():
        bank = Bank.load(path, ctx.model)
        if bank.text != document:
            raise EvaluationError(f"{path} holds a memory of a different document; delete it to rebuild")
        return bank, True
    bank = build_memory(ctx.model, ctx.tokenizer, document, sites=ctx.sites(), name=name,
                        chunk_tokens=opts.chunk_tokens, overlap=opts.overlap)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")  # a parallel run never reads half a file
    bank.save(tmp)
    os.replace(tmp, path)
    return bank, False


class LongMemory(Task, name="long-memory", options=LongMemoryOptions):
    """Facts in a document longer than the context: plain, truncated, retriever and memory bank, 10^3-10^5 slots."""

    def units(self, ctx: Context) -> Iterable[Unit]:
        opts = self.options(ctx.cfg)
        if opts.facts < 4:
            raise EvaluationError(f"facts must be at least 4 (multiple choice needs three other numbers), got {opts.facts}")
        bad = [c for c in opts.conditions if c not in CONDITIONS]
        if bad:
            raise EvaluationError(f"unknown condition {bad[0]!r}; choose from {', '.join(CONDITIONS)}")
        # condition by condition in the configured order (what is listed first finishes first), sizes ascending
        for condition in opts.conditions:
            for size in opts.sizes[: ctx.cfg.limit] if ctx.cfg.limit else opts.sizes:  # --limit: the first sizes
                yield Unit(f"{size}|{condition}", {"size": size, "condition": condition})

    def run(self, ctx: Context, unit: Unit) -> dict[str, Any]:
        opts = self.options(ctx.cfg)
        model, tok = ctx.model, ctx.tokenizer
        size, condition = unit.fields["size"], unit.fields["condition"]
        document, facts = make_document(tok, size, opts.facts, ctx.cfg.seed)
        doc_ids = list(tok(document, add_special_tokens=False)["input_ids"])
        started = time.perf_counter()
        extra: dict[str, Any] = {"document_tokens": len(doc_ids)}
        methods: list[Method]
        if condition == "plain":
            methods = [Plain()] * len(facts)
        elif condition == "truncated":
            kept = tok.decode(doc_ids[-opts.truncate_tokens :])
            methods = [Prompting(kept, name="truncated")] * len(facts)
            extra["facts_in_prompt"] = sum(f.number in kept for f in facts)
        elif condition == "retriever":
            passages = [tok.decode(doc_ids[i : i + opts.passage_tokens]) for i in range(0, len(doc_ids), opts.passage_tokens)]
            vectors = embed(ctx.encoder, passages)
            queries = embed(ctx.encoder, [f.question for f in facts])
            best = np.argsort(-(queries @ vectors.T), axis=1)[:, : opts.passages]
            methods = [Prompting("\n".join(passages[i] for i in sorted(row)), name="retriever") for row in best]
            extra["facts_in_prompt"] = sum(f.number in m.text for f, m in zip(facts, methods))  # type: ignore[attr-defined]
        else:
            bank, from_file = memory_bank(ctx, opts, size, document)
            memory = as_memory(bank, top_k=opts.top_k, index=opts.index, normalize=opts.normalize)  # type: ignore[arg-type]
            rho = opts.rho if opts.rho is not None else ctx.cfg.rho
            steering = Steering(target=memory, sites=ctx.sites(), rho=rho, schedule=ctx.cfg.mi.schedule,  # type: ignore[arg-type]
                                prefill=ctx.cfg.mi.prefill)  # type: ignore[arg-type]
            methods = [MI(steering)] * len(facts)
            extra |= {"memory_slots": memory.num_slots, "memory_bytes": memory.nbytes, "rho": rho,
                      "memory_from_file": from_file,
                      "build_seconds": round(time.perf_counter() - started, 1)}  # building, or reading the file
        prepared = time.perf_counter()
        results = []
        asked = slice(0, ctx.cfg.limit) if ctx.cfg.limit else slice(None)  # --limit: questions on the first facts
        for fact, method in list(zip(facts, methods))[asked]:
            conv = [{"role": "user", "content": fact.question}]
            ctx.seed()
            [reply] = generate(model, tok, method, [conv], max_new_tokens=opts.reply_tokens)
            others = [f.number for f in facts if f.number != fact.number]
            candidates = [fact.number] + random.Random(fact.number).sample(others, 3)
            lps = score_shared(model, tok, method, conv, [f" {c}" for c in candidates], answer_prefix=fact.answer_prefix)
            sums = [float(lp.sum()) for lp in lps]
            results.append({"name": fact.name, "number": fact.number, "reply": reply,
                            "exact": fact.number in reply, "choice": int(np.argmax(sums)) == 0,
                            "margin": sums[0] - max(sums[1:])})
        return {**extra, "questions": results, "answer_seconds": round(time.perf_counter() - prepared, 1)}

    def report(self, records: list[dict[str, Any]], cfg: EvalConfig, out: Path) -> str:
        sizes = sorted({r["size"] for r in records})
        conditions = [c for c in CONDITIONS if any(r["condition"] == c for r in records)]
        by = {(r["size"], r["condition"]): r for r in records}
        rows = []
        for condition in conditions:
            for size in sizes:
                r = by.get((size, condition))
                if r is None:
                    continue
                qs = r["questions"]
                rows.append([condition, f"{r['document_tokens']:,}", f"{nanmean([q['exact'] for q in qs]):.0%}",
                             f"{nanmean([q['choice'] for q in qs]):.0%}", fmt(nanmean([q["margin"] for q in qs]), signed=True),
                             r.get("facts_in_prompt", "-"), f"{r['seconds']:.0f}"])
        opts = LongMemoryOptions(**cfg.options)
        parts = [f"## Long memory ({cfg.model})", "",
                 (f"{opts.facts} facts in a passkey document of N tokens, one question per fact. truncated: the last "
                 f"{opts.truncate_tokens} tokens in the prompt; retriever: the {opts.passages} MiniLM-closest passages of "
                 f"{opts.passage_tokens} tokens; memory: every token a slot, top {opts.top_k} per query row at the sites, "
                 f"normalize={opts.normalize}. exact: the greedy reply contains the number; choice: the number beats three "
                 "other facts' numbers in log-probability (chance 25%); margin: its log-probability minus the best "
                 "other's (nats)."), "",
                 table(["condition", "document tokens", "exact", "choice", "margin", "facts in prompt", "seconds"], rows), ""]
        return "\n".join(parts)
