"""Banks: construction options, pre-RoPE keys, files and their errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import memory_inception as mi
from conftest import make_tiny
from memory_inception.core.architecture import attention_modules

TEXT = "you are a cheerful pirate\nbe brief and kind"


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("llama")


def test_descriptor_tokens_are_kept(model, tiny_tokenizer):
    bank = mi.build_bank(model, tiny_tokenizer, TEXT)
    want = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert list(bank.token_ids) == want
    assert bank.num_slots == len(want)
    assert bank.layers == (0, 1, 2, 3)
    assert bank.keys(2).shape == (2, len(want), 16) and bank.values(2).shape == (2, len(want), 16)
    assert bank.nbytes == 2 * 4 * 2 * len(want) * 16 * 4
    assert bank.text == TEXT and bank.options["chat_template"] is True


def test_keep_all_keeps_the_rendered_template(model, tiny_tokenizer):
    bank = mi.build_bank(model, tiny_tokenizer, TEXT, keep="all")
    rendered = tiny_tokenizer.apply_chat_template([{"role": "system", "content": TEXT}], tokenize=False)
    assert list(bank.token_ids) == tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_templates_variants_and_pooling(model, tiny_tokenizer):
    n = len(tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    lines = [len(tiny_tokenizer(x, add_special_tokens=False)["input_ids"]) for x in TEXT.splitlines()]
    templates = ("{descriptor}", "persona : {descriptor} .")
    concat = mi.build_bank(model, tiny_tokenizer, TEXT, templates=templates, variants="lines")
    assert concat.num_slots == 2 * (n + sum(lines))
    mean = mi.build_bank(model, tiny_tokenizer, TEXT, templates=templates, variants="lines", pooling="mean")
    assert mean.num_slots == 2 * (1 + len(lines))  # one slot per (variant, template) pair
    # the first pair's mean slot is the mean of the first pair's concat slots
    assert torch.allclose(mean.keys(1)[:, 0], concat.keys(1)[:, :n].mean(1), atol=1e-6)
    # the same descriptor tokens read in another template give other keys
    other = concat.keys(1)[:, n : 2 * n]
    assert not torch.allclose(concat.keys(1)[:, :n], other)


def test_chat_template_switch(model, tiny_tokenizer):
    chat = mi.build_bank(model, tiny_tokenizer, TEXT)
    plain = mi.build_bank(model, tiny_tokenizer, TEXT, chat_template=False)
    assert chat.token_ids == plain.token_ids
    assert not torch.allclose(chat.keys(2), plain.keys(2))  # layer 0 keys see no context; later ones do


@pytest.mark.parametrize("arch", ["llama", "qwen3", "llama_yarn"])
def test_keys_are_pre_rope_projections(tiny_models, arch):
    """Keys equal k_proj (and k_norm) of the normed hidden state entering each layer: no rotation."""
    model = tiny_models(arch)
    ids = [3, 9, 27, 4, 50, 61]
    bank = mi.Bank.from_token_ids(model, ids)
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer, attn in attention_modules(model).items():
            decoder_layer = model.model.layers[layer]
            x = decoder_layer.input_layernorm(hidden[layer])
            k = attn.k_proj(x).view(1, len(ids), -1, 16)
            if hasattr(attn, "k_norm"):
                k = attn.k_norm(k)
            v = attn.v_proj(x).view(1, len(ids), -1, 16)
            assert torch.allclose(bank.keys(layer), k[0].transpose(0, 1), atol=1e-5)
            assert torch.allclose(bank.values(layer), v[0].transpose(0, 1), atol=1e-6)


def test_layer_subset(model, tiny_tokenizer):
    bank = mi.build_bank(model, tiny_tokenizer, TEXT, layers=[3, 1])
    assert bank.layers == (1, 3)
    with pytest.raises(mi.BankError, match="no slots for layer 2"):
        bank.keys(2)
    with pytest.raises(mi.BankError, match="out of range"):
        mi.build_bank(model, tiny_tokenizer, TEXT, layers=[4])


def test_save_load_roundtrip(model, tiny_tokenizer, tmp_path):
    bank = mi.build_bank(model, tiny_tokenizer, TEXT, name="pirate", layers=[1, 2])
    path = bank.save(tmp_path / "pirate.safetensors")
    loaded = mi.Bank.load(path, model=model)
    assert (loaded.name, loaded.text, loaded.token_ids, loaded.layers) == (bank.name, bank.text, bank.token_ids, (1, 2))
    assert loaded.fingerprint == bank.fingerprint and loaded.options == bank.options
    for layer in bank.layers:
        assert torch.equal(loaded.keys(layer), bank.keys(layer))
        assert torch.equal(loaded.values(layer), bank.values(layer))


def test_file_errors(model, tiny_tokenizer, tmp_path):
    bank = mi.build_bank(model, tiny_tokenizer, TEXT)
    path = bank.save(tmp_path / "b.safetensors")
    with pytest.raises(mi.BankError, match="another model"):
        mi.Bank.load(path, model=make_tiny("llama", seed=3))
    with pytest.raises(mi.BankError, match="no bank file"):
        mi.Bank.load(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(mi.BankError, match="not a readable bank file"):
        mi.Bank.load(broken)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(mi.BankError, match="not a memory-inception bank"):
        mi.Bank.load(other)


def test_input_errors(model, tiny_tokenizer):
    for text in ("", "   \n"):
        with pytest.raises(mi.BankError, match="empty"):
            mi.build_bank(model, tiny_tokenizer, text)
    with pytest.raises(mi.BankError, match="empty"):
        mi.Bank.from_token_ids(model, [])
    with pytest.raises(mi.BankError, match="placeholder"):
        mi.build_bank(model, tiny_tokenizer, TEXT, templates=("no placeholder",))
    with pytest.raises(mi.BankError, match="pooling"):
        mi.build_bank(model, tiny_tokenizer, TEXT, pooling="max")


def test_banks_are_built_unsteered(model, tiny_tokenizer):
    bank = mi.build_bank(model, tiny_tokenizer, TEXT)
    with mi.inject(model, mi.Steering(target=bank, sites=mi.Sites({1: None}))):
        with pytest.raises(mi.BankError, match="outside"):
            mi.build_bank(model, tiny_tokenizer, TEXT)


def _safetensors_data_bytes(path) -> int:
    """Bytes of a safetensors file's tensor data: the file less its 8-byte length and its JSON header."""
    raw = path.read_bytes()
    return len(raw) - 8 - int.from_bytes(raw[:8], "little")


def test_bank_built_for_sites_stores_what_the_sites_read(model, tiny_tokenizer, tmp_path):
    # layer 1: heads 0 and 1 read KV group 0 only; layer 3: every head (both groups)
    sites = mi.Sites({1: [0, 1], 3: None})
    full = mi.build_bank(model, tiny_tokenizer, TEXT, layers="all")
    bank = mi.build_bank(model, tiny_tokenizer, TEXT, sites=sites)
    assert bank.layers == (1, 3) and bank.stored_kv_heads(1) == (0,) and bank.stored_kv_heads(3) == (0, 1)
    assert bank.keys(1).shape == (1, bank.num_slots, 16)
    assert torch.equal(bank.keys(1), full.keys(1)[:1]) and torch.equal(bank.values(3), full.values(3))
    m = bank.num_slots
    assert bank.nbytes == 2 * (1 + 2) * m * 16 * 4  # layer 1: one KV head, layer 3: two
    cost = mi.MI(mi.Steering(target=bank, sites=sites)).cost(model, tiny_tokenizer)
    assert cost.stored_bytes == bank.nbytes
    assert mi.MI(mi.Steering(target=full, sites=sites)).cost(model, tiny_tokenizer).stored_bytes == bank.nbytes
    path = bank.save(tmp_path / "sites.safetensors")
    assert _safetensors_data_bytes(path) == bank.nbytes
    loaded = mi.Bank.load(path, model=model)
    assert loaded.kv_heads == {1: (0,)} and torch.equal(loaded.keys(1), bank.keys(1))
    # steering with the restricted bank is the same as with the full one at these sites
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    outs = []
    for b in (full, bank, loaded):
        with torch.no_grad(), mi.inject(model, mi.Steering(target=b, sites=sites, prefill="all")):
            outs.append(model(ids).logits)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # sites reading a KV group the bank did not keep are refused, naming the fix
    with pytest.raises(mi.BankError, match="build the bank for these sites"):
        mi.inject(model, mi.Steering(target=bank, sites=mi.Sites({1: [2]})))


def test_default_bank_keeps_the_default_sites(model, tiny_tokenizer):
    bank = mi.build_bank(model, tiny_tokenizer, TEXT)
    assert bank.layers == mi.Sites.default(model).layers
    assert mi.MI(mi.Steering(target=bank)).cost(model, tiny_tokenizer).stored_bytes == bank.nbytes
    with pytest.raises(mi.BankError, match="either sites"):
        mi.build_bank(model, tiny_tokenizer, TEXT, sites=mi.Sites({1: None}), layers=[1])
