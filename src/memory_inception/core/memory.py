"""Memory banks: banks far larger than the context window, read top-k per query (spec section 3, extended).

A memory is an ordinary `Bank` whose options carry a `MemoryRead` (`options["memory"]`): at each site, each query
row reads only its `top_k` slots of highest bank score `b_m = s <q~_t, k~_m>`, in the same one-softmax mixture as
every other bank. Which k: exact (one score per slot, cost linear in the bank size) or an HNSW graph over the keys
(faiss, the `[memory]` extra; cost per query roughly flat in the bank size), chosen by `MemoryRead.index`.

How `-log M` and top-k interact (`MemoryRead.normalize`, used when the steering normalizes, `normalize="paper"`):
- `"retrieved"` (default): the k read slots are the bank at that query, `E = LSE_topk(b) - log k + c`: the
  evidence of a memory does not shrink as the memory grows.
- `"slots"`: the k slots stand for all M, `E = LSE_topk(b) - log M + c`, a lower bound on the full bank's
  evidence that is tight when the slots outside the top k carry little weight.
With k >= M both are exactly the full mixture of the bank (`tests/test_memory.py`).

`build_memory` makes one from long text in chunked forwards: each chunk of `chunk_tokens` tokens is run with up to
`overlap` tokens of the text before it as context, at positions 0..len-1 of that forward; its own tokens become
slots, keys with RoPE undone (pre-RoPE, as every bank), so a slot's key does not depend on where its chunk sits in
the document and canonical reading puts every slot at distance 0 from every query.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from memory_inception.core.architecture import geometry, model_fingerprint
from memory_inception.core.banks import Bank, resolve_layers, run_and_read
from memory_inception.core.quantize import Quantization, parse_quantization
from memory_inception.core.sites import Sites
from memory_inception.errors import BankError, MissingExtraError
from memory_inception.extras import require_extra

logger = logging.getLogger(__name__)

Index = Literal["auto", "exact", "hnsw"]
MemoryNorm = Literal["retrieved", "slots"]
INDEXES = ("auto", "exact", "hnsw")
NORMS = ("retrieved", "slots")
# index="auto": exact top-k below this many slots, an HNSW index from here on (where faiss is installed)
AUTO_INDEX_SLOTS = 16384


@dataclass(frozen=True)
class MemoryRead:
    """How a memory bank is read: `top_k` slots per query row, found by `index`, normalized by `normalize`.

    `hnsw_links` (faiss's M: graph neighbours per vector) and `ef_search` (candidates kept while searching; at least
    2 k) tune the HNSW index: more is slower and closer to exact.
    """

    top_k: int = 32
    index: Index = "auto"
    normalize: MemoryNorm = "retrieved"
    hnsw_links: int = 32
    ef_search: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise BankError(f"top_k must be a positive number of slots, not {self.top_k!r}")
        if self.index not in INDEXES:
            raise BankError(f"index must be one of {', '.join(INDEXES)}, not {self.index!r}")
        if self.normalize not in NORMS:
            raise BankError(f"memory normalize must be 'retrieved' or 'slots', not {self.normalize!r}")
        if self.hnsw_links < 4 or self.ef_search < 1:
            raise BankError("hnsw_links must be at least 4 and ef_search at least 1")

    def uses_index(self, num_slots: int) -> bool:
        """Whether a memory of `num_slots` is searched with the HNSW index (else exactly)."""
        if self.index == "exact" or self.top_k >= num_slots:
            return False
        if self.index == "hnsw":
            return True
        if num_slots < AUTO_INDEX_SLOTS:
            return False
        try:
            faiss_module()
        except MissingExtraError:
            logger.warning("a memory of %d slots is read by exact top-k (cost linear in its size); install "
                           "memory-inception[memory] for the HNSW index", num_slots)
            return False
        return True


def memory_read(bank: Bank) -> MemoryRead | None:
    """The bank's `MemoryRead` when it is a memory (read top-k), else None."""
    spec = bank.options.get("memory")
    return MemoryRead(**spec) if spec is not None else None


def as_memory(bank: Bank, *, top_k: int = 32, index: Index = "auto", normalize: MemoryNorm = "retrieved",
              **index_options: int) -> Bank:
    """`bank` read as a memory (top-k per query); the same slots, no copy. `index_options`: hnsw_links, ef_search."""
    read = MemoryRead(top_k=top_k, index=index, normalize=normalize, **index_options)
    return replace(bank, options={**bank.options, "memory": asdict(read)}, cache={})


def build_memory(
    model: nn.Module,
    tokenizer: Any,
    documents: str | Sequence[str],
    *,
    sites: Sites | None = None,
    layers: Sequence[int] | Literal["all"] | None = None,
    name: str = "memory",
    chunk_tokens: int = 512,
    overlap: int = 64,
    top_k: int = 32,
    index: Index = "auto",
    normalize: MemoryNorm = "retrieved",
    quantize: str | Quantization | None = None,
) -> Bank:
    """A memory bank of every token of `documents` (one slot per token), read top-k (`MemoryRead`).

    Chunked forwards (module docstring): `chunk_tokens` new tokens per forward with up to `overlap` tokens of the
    same document before them as context. It stores what the sites read, as `build_bank` does: with `sites`, their
    layers and KV groups; with `layers`, every KV head of those layers; with neither, the model's default sites.
    `quantize` ('int8', 'int4', ...) stores the slots quantized.
    """
    docs = [documents] if isinstance(documents, str) else list(documents)
    if not docs or not all(isinstance(d, str) and d.strip() for d in docs):
        raise BankError("documents must be a text or a list of non-empty texts")
    if chunk_tokens < 1 or overlap < 0:
        raise BankError(f"chunk_tokens must be positive and overlap non-negative, got {chunk_tokens}, {overlap}")
    read = MemoryRead(top_k=top_k, index=index, normalize=normalize)
    quantization = parse_quantization(quantize)
    if sites is not None and layers is not None:
        raise BankError("give either sites (the memory keeps what they read) or layers, not both")
    if sites is None and layers is None:
        sites = Sites.default(model)
    layer_list = resolve_layers(model, list(sites.layers) if sites is not None else layers)
    geo = geometry(model)
    keep_heads = None
    if sites is not None:  # only the KV groups the site heads read
        keep_heads = {layer: sorted({geo.kv_head_of(h) for h in hs}) for layer, hs in sites.resolve(geo).items()}
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}
    values: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}
    all_ids: list[int] = []
    for doc in docs:
        ids = list(tokenizer(doc, add_special_tokens=False)["input_ids"])
        for start in range(0, len(ids), chunk_tokens):
            context = max(0, start - overlap)
            k, v = run_and_read(model, ids[context : start + chunk_tokens], layer_list)
            for layer in layer_list:
                heads = keep_heads[layer] if keep_heads is not None else slice(None)
                keys[layer].append(k[layer][heads, start - context :])
                values[layer].append(v[layer][heads, start - context :])
        all_ids += ids
    if not all_ids:
        raise BankError("the documents have no tokens")
    kv_heads = {layer: tuple(hs) for layer, hs in (keep_heads or {}).items() if len(hs) < geo.num_kv_heads}
    options = {"source": "memory", "documents": len(docs), "chunk_tokens": chunk_tokens, "overlap": overlap,
               "memory": asdict(read)}
    bank = Bank(name, "\n\n".join(docs), tuple(all_ids), model_fingerprint(model), geo.num_kv_heads, geo.head_dim,
                options, kv_heads, {l: torch.cat(t, dim=1).contiguous() for l, t in keys.items()},
                {l: torch.cat(t, dim=1).contiguous() for l, t in values.items()})
    logger.info("memory %r: %d slots from %d documents at layers %s, %d bytes", name, bank.num_slots, len(docs),
                list(bank.layers), bank.nbytes)
    return bank.quantize(quantization) if quantization is not None else bank


# ---- top-k search -------------------------------------------------------------------------------------------
def faiss_module() -> Any:
    """faiss, imported on first use (the `[memory]` extra), with as many OpenMP threads as torch uses (its default,
    every core, oversubscribes a CPU that torch already keeps busy: building an index ran 5x slower here)."""
    require_extra("memory", "the HNSW index of memory banks")
    try:
        import faiss
    except ImportError as exc:
        raise MissingExtraError(
            "the HNSW index of memory banks needs faiss; install it with pip install 'memory-inception[memory]'"
        ) from exc
    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


class HNSWIndex:
    """Maximum inner product search over one KV head's keys `[M, d]`: an HNSW graph (faiss, inner-product metric).

    The graph finds a query's best keys in about log M distance computations, so the cost per query stays nearly
    flat as the memory grows; `search` returns indices, and the operator recomputes their scores exactly.
    """

    def __init__(self, keys: torch.Tensor, links: int, ef_search: int) -> None:
        faiss = faiss_module()
        self.index = faiss.IndexHNSWFlat(keys.shape[-1], links, faiss.METRIC_INNER_PRODUCT)
        self.index.add(np.ascontiguousarray(keys.detach().float().cpu().numpy()))
        self.ef_search = ef_search
        self.num_slots = keys.shape[0]

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Indices `[N, k]` of the (approximately) top-k keys by inner product for queries `[N, d]`."""
        self.index.hnsw.efSearch = max(self.ef_search, 2 * k)
        _, idx = self.index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        return torch.from_numpy(idx).to(queries.device).clamp(min=0)  # -1 (fewer than k found) only when k > M


def memory_index(bank: Bank, layer: int, kv_head: int, read: MemoryRead) -> HNSWIndex:
    """The HNSW index of one KV head's keys at `layer`, built on first use and kept with the bank (`bank.cache`)."""
    key = ("hnsw", layer, kv_head, read.hnsw_links)
    if key not in bank.cache:
        keys, _ = bank.kv_rows(layer, [kv_head])
        bank.cache[key] = HNSWIndex(keys[0], read.hnsw_links, read.ef_search)
    index = bank.cache[key]
    index.ef_search = read.ef_search
    return index


@dataclass
class MemoryLayer:
    """One site layer's memory: the slots of the KV heads the plan reads and how each plan row finds its top k.

    keys / values `[H_read, M, d]` (one row per distinct model KV head read); `groups[j]` lists the plan rows
    (selected heads, or KV heads when every head is read) that read memory row j; `indexes[j]` is row j's HNSW
    index (None: exact top-k); `bias` is the memory's constant `c - log(M or k)`.
    """

    keys: torch.Tensor
    values: torch.Tensor
    groups: list[torch.Tensor]
    indexes: list[HNSWIndex | None]
    top_k: int
    bias: float

    def retrieve(self, bank_query: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per plan row and query, the bank scores of its top-k slots and their values.

        bank_query `[B, Hs, R, d]` -> scores `[B, Hs, R, k]` (`s <q~, k~_m>`, exact even when an index found m) and
        values `[B, Hs, R, k, d]`.
        """
        batch, heads, rows, dim = bank_query.shape
        k = min(self.top_k, self.keys.shape[1])
        scores = bank_query.new_empty(batch, heads, rows, k)
        values = bank_query.new_empty(batch, heads, rows, k, dim)
        for j, plan_rows in enumerate(self.groups):
            q = bank_query[:, plan_rows].reshape(-1, dim)  # [N, d], N = B * rows of group j * R
            keys_j, values_j = self.keys[j], self.values[j]
            if self.indexes[j] is None:  # exact: every slot's score, the k largest
                top, idx = torch.topk(torch.matmul(q, keys_j.T), k, dim=-1)
                top = top * scaling
            else:
                idx = self.indexes[j].search(q, k)
                top = torch.einsum("nd,nkd->nk", q, keys_j[idx]) * scaling
            shape = (batch, len(plan_rows), rows, k)
            scores[:, plan_rows] = top.reshape(shape)
            values[:, plan_rows] = values_j[idx].reshape(*shape, dim)
        return scores, values


def plan_memory(
    bank: Bank, read: MemoryRead, layer: int, read_heads: Sequence[int], gain: float, normalize: bool,
    device: torch.device | str, dtype: torch.dtype,
) -> MemoryLayer:
    """The `MemoryLayer` of memory `bank` at `layer` for plan rows reading model KV heads `read_heads` (in order),
    with constant gain `gain` (rho_l times the role's gain) and the paper's normalization when `normalize`."""
    distinct = sorted({int(h) for h in read_heads})
    keys, values = bank.kv_rows(layer, distinct)
    m = bank.num_slots
    use_index = read.uses_index(m)
    groups = [torch.tensor([i for i, h in enumerate(read_heads) if int(h) == d], dtype=torch.long, device=device)
              for d in distinct]
    indexes = [memory_index(bank, layer, d, read) if use_index else None for d in distinct]
    norm = 0.0
    if normalize:
        norm = -math.log(m) if read.normalize == "slots" else -math.log(min(read.top_k, m))
    return MemoryLayer(keys.to(device, dtype).contiguous(), values.to(device, dtype).contiguous(), groups, indexes,
                       read.top_k, gain + norm)
