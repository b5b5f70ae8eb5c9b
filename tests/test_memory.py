"""Memory banks: top-k reading against the full mixture (k = M: identical) and against an ordinary bank of the
top-k slots found independently (k < M), the HNSW index against exact top-k, chunked building, files, errors."""

from __future__ import annotations

import math

import pytest
import torch

import memory_inception as mi
from conftest import ARCHS, make_tiny
from memory_inception import extras
from memory_inception.core import memory as memory_module
from memory_inception.core.architecture import attention_modules, geometry
from memory_inception.core.memory import HNSWIndex
from memory_inception.errors import MissingExtraError

IDS = torch.tensor([[1, 9, 22, 17, 4, 8, 30, 12]])
PADDED = {"input_ids": torch.tensor([[0, 0, 5, 9, 22, 17], [1, 9, 22, 17, 4, 8]]),
          "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])}


def _logits(model, steering, **inputs):
    with torch.no_grad(), mi.inject(model, steering):
        return model(**inputs).logits


def _memory_and_aux(model):
    memory = mi.Bank.from_token_ids(model, [(7 * i) % 120 + 3 for i in range(60)], name="memory")
    aux = mi.Bank.from_token_ids(model, [5, 6, 7], name="aux")
    return memory, aux


SITES = {
    "heads": lambda model: mi.Sites({1: [0, 3], 2: [1]}),  # selected heads (two KV groups at layer 1)
    "all-heads": lambda model: mi.Sites({1: None, 3: None}),  # every head: grouped heads folded into rows
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sites", list(SITES))
@pytest.mark.parametrize("normalize", ["retrieved", "slots"])
def test_top_k_with_k_equal_to_the_bank_is_the_full_mixture(tiny_models, arch, sites, normalize):
    model = tiny_models(arch)
    memory, aux = _memory_and_aux(model)
    for role in ("target", "auxiliary"):
        for prefill, inputs in (("all", {"input_ids": IDS}), ("last", PADDED)):
            settings = {"sites": SITES[sites](model), "rho": 2.0, "prefill": prefill, "schedule": "flat"}
            read = mi.as_memory(memory, top_k=memory.num_slots, normalize=normalize, index="exact")
            if role == "target":
                full = mi.Steering(target=memory, auxiliary=[(aux, 0.5)], **settings)
                top = mi.Steering(target=read, auxiliary=[(aux, 0.5)], **settings)
            else:
                full = mi.Steering(target=aux, auxiliary=[(memory, 0.7)], **settings)
                top = mi.Steering(target=aux, auxiliary=[(read, 0.7)], **settings)
            expected = _logits(model, full, **inputs)
            assert (expected - _logits(model, mi.Steering(), **inputs)).abs().max() > 0.1  # the memory steers
            assert torch.allclose(_logits(model, top, **inputs), expected, atol=2e-6, rtol=0), (role, prefill)


def test_top_k_cached_generation_equals_the_full_mixture(tiny_models):
    model = tiny_models("qwen2")
    memory, _ = _memory_and_aux(model)
    settings = {"sites": mi.Sites({1: None, 2: [2]}), "rho": 3.0}
    outs = []
    for bank in (memory, mi.as_memory(memory, top_k=memory.num_slots)):
        with torch.no_grad(), mi.inject(model, mi.Steering(target=bank, **settings)):
            outs.append(model.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=0))
    assert torch.equal(outs[0], outs[1])


def _pre_rope_query(model, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The unsteered pre-RoPE query of every head at `layer`'s last position, `[H, d]`, read from the projections."""
    attn = attention_modules(model)[layer]
    geo = geometry(model)
    module = getattr(attn, "q_norm", None) or attn.q_proj  # Qwen3 normalizes queries per head after q_proj
    seen = []
    handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return seen[0][0, -1].reshape(geo.num_heads, geo.head_dim)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("k", [1, 5, 17])
def test_top_k_reads_the_k_slots_of_largest_bank_score(tiny_models, arch, k):
    """Below M: one site head at one layer and the last row steered read exactly the bank made of that head's k
    best slots by s <q~, k~> (found here from the projections), with `retrieved` normalization (-log k); with
    `slots` (-log M) the same bank at rho + log k - log M."""
    model = tiny_models(arch)
    memory, _ = _memory_and_aux(model)
    layer, head = 2, 3
    geo = geometry(model)
    q = _pre_rope_query(model, layer, IDS)[head]
    keys = memory.keys(layer)  # [H_kv, M, d]
    scores = keys[geo.kv_head_of(head)] @ q * attention_modules(model)[layer].scaling
    best = torch.topk(scores, k).indices
    chosen = mi.Bank(memory.name, None, (), memory.fingerprint, memory.num_kv_heads, memory.head_dim, {}, {},
                     {layer: keys[:, best].contiguous()}, {layer: memory.values(layer)[:, best].contiguous()})
    settings = {"sites": mi.Sites({layer: [head]}), "prefill": "last"}
    m = memory.num_slots
    for normalize, rho in (("retrieved", 2.0), ("slots", 2.0 + math.log(k) - math.log(m))):
        read = mi.as_memory(memory, top_k=k, normalize=normalize, index="exact")
        got = _logits(model, mi.Steering(target=read, rho=2.0, **settings), input_ids=IDS)
        want = _logits(model, mi.Steering(target=chosen, rho=rho, **settings), input_ids=IDS)
        assert torch.allclose(got, want, atol=2e-6, rtol=0), normalize
    full = _logits(model, mi.Steering(target=memory, rho=2.0, **settings), input_ids=IDS)
    if k < 5:
        assert (got - full).abs().max() > 1e-4  # reading fewer slots is not the full mixture


def test_explicit_and_fused_forms_agree_on_a_memory(tiny_models):
    """site_attention (the explicit reference, what the vLLM backend calls) equals mix_prompt_and_banks (the fused
    form, what inject runs) on a plan with a memory read top-k < M."""
    from memory_inception.core.architecture import model_fingerprint
    from memory_inception.core.kernels import explicit_attention_lse
    from memory_inception.core.operator import mix_prompt_and_banks, site_attention
    from memory_inception.core.plan import plan_layers

    model = tiny_models("llama")
    memory, aux = _memory_and_aux(model)
    steering = mi.Steering(target=aux, auxiliary=[(mi.as_memory(memory, top_k=7), 0.8)],
                           sites=mi.Sites({1: [0, 2, 3]}), rho=1.5)
    plan = plan_layers(steering, geometry(model), fingerprint=model_fingerprint(model))[1]
    torch.manual_seed(0)
    q, bq = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 5, 16)
    k, v = torch.randn(2, 3, 9, 16), torch.randn(2, 3, 9, 16)
    mask = torch.zeros(2, 1, 5, 9)
    mask[0, :, :, :3] = float("-inf")
    log_n = torch.log((mask == 0).sum(-1, keepdim=True).float())
    explicit = site_attention(q, bq, k, v, mask, log_n, 0.25, plan)
    out, lse = explicit_attention_lse(q, k, v, mask, False, 0.25)
    fused = mix_prompt_and_banks(out, lse, bq, log_n, 0.25, plan)
    assert torch.allclose(explicit, fused, atol=1e-5)
    assert plan.memory is not None and plan.memory.keys.shape == (2, memory.num_slots, 16)  # KV heads 0, 1 once each


def test_hnsw_index_finds_the_exact_top_k():
    torch.manual_seed(0)
    keys = torch.randn(4000, 16) * torch.linspace(0.5, 2, 16)
    keys[:50] *= 3  # a few keys of large norm, which plain L2 search would get wrong for inner products
    queries = torch.randn(64, 16)
    index = HNSWIndex(keys, links=32, ef_search=128)
    for k in (1, 8, 32):
        found = index.search(queries, k)
        exact = torch.topk(queries @ keys.T, k).indices
        recall = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact)) / exact.numel()
        assert recall >= 0.95, (k, recall)


def test_hnsw_memory_steers_as_exact_top_k(tiny_models):
    model = tiny_models("mistral")
    memory = mi.Bank.from_token_ids(model, [(11 * i) % 120 + 3 for i in range(400)], name="memory")
    settings = {"sites": mi.Sites({1: None, 2: [0, 3]}), "rho": 2.0, "prefill": "all"}
    exact = _logits(model, mi.Steering(target=mi.as_memory(memory, top_k=8, index="exact"), **settings), input_ids=IDS)
    hnsw_bank = mi.as_memory(memory, top_k=8, index="hnsw")
    hnsw = _logits(model, mi.Steering(target=hnsw_bank, **settings), input_ids=IDS)
    assert torch.allclose(hnsw, exact, atol=1e-5)
    assert {key[0] for key in hnsw_bank.cache} == {"hnsw"} and len(hnsw_bank.cache) == 2 * 2  # per layer, KV head
    again = _logits(model, mi.Steering(target=hnsw_bank, **settings), input_ids=IDS)  # the indexes are reused
    assert torch.equal(again, hnsw) and len(hnsw_bank.cache) == 4


def test_missing_faiss_is_named_and_auto_falls_back_to_exact(tiny_models, monkeypatch, caplog):
    model = tiny_models("llama")
    memory, _ = _memory_and_aux(model)
    monkeypatch.setattr(extras, "missing", lambda extra: ["faiss-cpu"] if extra == "memory" else [])
    sites = mi.Sites({1: None})
    with pytest.raises(MissingExtraError, match=r"pip install 'memory-inception\[memory\]'"):
        mi.inject(model, mi.Steering(target=mi.as_memory(memory, top_k=4, index="hnsw"), sites=sites))
    monkeypatch.setattr(memory_module, "AUTO_INDEX_SLOTS", 10)
    auto = mi.as_memory(memory, top_k=4)
    with caplog.at_level("WARNING"):
        got = _logits(model, mi.Steering(target=auto, sites=sites), input_ids=IDS)
    assert "exact top-k" in caplog.text and not auto.cache
    want = _logits(model, mi.Steering(target=mi.as_memory(memory, top_k=4, index="exact"), sites=sites), input_ids=IDS)
    assert torch.equal(got, want)


def test_build_memory_chunks_with_overlap(tiny_tokenizer):
    model = make_tiny("llama")
    doc = "you are a cheerful pirate who loves the sea and speaks with great joy . be brief kind calm honest"
    ids = list(tiny_tokenizer(doc, add_special_tokens=False)["input_ids"])
    memory = mi.build_memory(model, tiny_tokenizer, [doc, "hello how is weather today"], layers="all",
                             chunk_tokens=5, overlap=3, top_k=4)
    second = list(tiny_tokenizer("hello how is weather today", add_special_tokens=False)["input_ids"])
    assert memory.num_slots == len(ids) + len(second) and memory.token_ids == tuple(ids + second)
    assert mi.core.memory.memory_read(memory) == mi.MemoryRead(top_k=4)
    # the chunk starting at token 10 was run with tokens 7..14 as its forward: its slots are tokens 10..14 of that
    window = mi.Bank.from_token_ids(model, ids[7:15], layers="all")
    for layer in (0, 3):
        assert torch.allclose(memory.keys(layer)[:, 10:15], window.keys(layer)[:, 3:], atol=1e-5)
        assert torch.allclose(memory.values(layer)[:, 10:15], window.values(layer)[:, 3:], atol=1e-6)
    # the second document starts its own chunks: no context from the first
    alone = mi.Bank.from_token_ids(model, second, layers="all")
    assert torch.allclose(memory.keys(2)[:, len(ids):], alone.keys(2), atol=1e-5)


def test_build_memory_for_sites_quantized_and_its_file(tiny_tokenizer, tmp_path):
    model = make_tiny("qwen2")
    doc = " ".join(["tell me about cats dogs ships math"] * 6)
    sites = mi.Sites({1: [0, 1], 3: None})
    memory = mi.build_memory(model, tiny_tokenizer, doc, sites=sites, chunk_tokens=8, overlap=2, top_k=3,
                             quantize="int8", name="notes")
    assert memory.layers == (1, 3) and memory.stored_kv_heads(1) == (0,) and memory.quantization == mi.Quantization(8)
    loaded = mi.Bank.load(memory.save(tmp_path / "notes.safetensors"), model=model)
    assert loaded.options == memory.options and loaded.nbytes == memory.nbytes and loaded.num_slots == memory.num_slots
    a = _logits(model, mi.Steering(target=memory, sites=sites, rho=2.0), input_ids=IDS)
    b = _logits(model, mi.Steering(target=loaded, sites=sites, rho=2.0), input_ids=IDS)
    assert torch.equal(a, b)


def test_memory_errors(tiny_models, tiny_tokenizer):
    model = tiny_models("llama")
    memory, aux = _memory_and_aux(model)
    read = mi.as_memory(memory, top_k=4)
    sites = mi.Sites({1: None})
    with pytest.raises(mi.SteeringError, match="at most one memory"):
        mi.inject(model, mi.Steering(target=read, auxiliary=[(mi.as_memory(aux), 1.0)], sites=sites))
    with pytest.raises(mi.SteeringError, match="gate=False"):
        mi.inject(model, mi.Steering(target=read, reference=aux, sites=sites))
    mi.inject(model, mi.Steering(target=read, reference=aux, sites=sites, gate=False))  # ungated: fine
    with pytest.raises(mi.SteeringError, match="canonical"):
        mi.inject(model, mi.Steering(target=read, sites=sites, positions="prefix"))
    for bad in ({"top_k": 0}, {"index": "ivf"}, {"normalize": "mean"}):
        with pytest.raises(mi.BankError):
            mi.as_memory(memory, **bad)
    with pytest.raises(mi.BankError, match="either sites"):
        mi.build_memory(model, tiny_tokenizer, "hello", sites=sites, layers=[1])
    with pytest.raises(mi.BankError, match="non-empty"):
        mi.build_memory(model, tiny_tokenizer, ["hello", " "])


@pytest.mark.real_model
def test_cli_memory_build_and_generate(tmp_path):
    from typer.testing import CliRunner

    from memory_inception.cli import app

    doc = tmp_path / "notes.txt"
    doc.write_text("The passkey of the blue door is 4721. " * 20)
    out = tmp_path / "notes.safetensors"
    runner = CliRunner()
    result = runner.invoke(app, ["memory", "build", f"@{doc}", "Another note about ships.", "-o", str(out),
                                 "--top-k", "8", "--chunk-tokens", "64", "--overlap", "8", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    memory = mi.Bank.load(out)
    assert mi.core.memory.memory_read(memory).top_k == 8 and memory.quantization == mi.Quantization(8)
    assert memory.options["documents"] == 2 and memory.num_slots > 200
    gen = runner.invoke(app, ["generate", "What is the passkey of the blue door?", "--bank", str(out), "-n", "6"])
    assert gen.exit_code == 0, gen.output and gen.output.strip()


def test_long_memory_task_keeps_its_memory_in_the_run_directory(tiny_tokenizer, tmp_path):
    from memory_inception.errors import EvaluationError
    from memory_inception.evaluation.base import Context
    from memory_inception.evaluation.config import EvalConfig, MIConfig
    from memory_inception.evaluation.tasks.long_memory import LongMemoryOptions, memory_bank

    model = make_tiny("llama")
    cfg = EvalConfig(task="long-memory", device="cpu", mi=MIConfig(sites="1-2"))
    ctx = Context(cfg, tmp_path, model, tiny_tokenizer)
    opts = LongMemoryOptions(facts=4, chunk_tokens=6, overlap=2)
    doc = "tell me about cats dogs ships math and the weather today"
    built, from_file = memory_bank(ctx, opts, 300, doc)
    assert not from_file and built.layers == (1, 2)  # the run's sites
    [path] = (tmp_path / "banks").iterdir()
    assert path.name == "memory-300-4facts-seed0-c6-o2-float32.safetensors"
    again, from_file = memory_bank(ctx, opts, 300, doc)
    assert from_file and again.token_ids == built.token_ids and torch.equal(again.keys(1), built.keys(1))
    with pytest.raises(EvaluationError, match="different document"):
        memory_bank(ctx, opts, 300, doc + " again")
