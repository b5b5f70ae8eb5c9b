"""Quantized banks: the int8 / int4 codes and their error bound, bytes as stored, the file format (and older files),
and the operator on a quantized bank against the fp32 bank's."""

from __future__ import annotations

import json

import pytest
import torch

import memory_inception as mi
from conftest import ARCHS, make_tiny
from memory_inception.core.artifacts import ArtifactKind, write_artifact
from memory_inception.core.quantize import QMAX, QuantizedTensor, pack_int4, quantize_tensor, unpack_int4
from memory_inception.errors import BankError

TEXT = "you are a cheerful pirate who loves the sea and speaks with great joy . be brief kind calm honest"
SPECS = ("int8", "int4", "int8-channel", "int4-channel")


@pytest.fixture(scope="module")
def model():
    return make_tiny("llama")


def test_int4_packing_round_trips_every_code():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2, 1)  # [3, 2, 16]: every nibble, both positions
    assert torch.equal(unpack_int4(pack_int4(codes), 16), codes)
    odd = codes[..., :15]
    packed = pack_int4(odd)
    assert packed.shape == (3, 2, 8) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, 15), odd)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scales", ["slot", "channel"])
def test_dequantized_values_are_within_half_a_step(bits, scales):
    torch.manual_seed(0)
    t = torch.randn(3, 40, 16) * torch.linspace(0.1, 8, 16)  # channels of very different size, as keys have
    q = quantize_tensor(t, bits, scales)
    assert q.scale.shape == ((3, 40, 1) if scales == "slot" else (3, 1, 16)) and q.scale.dtype == torch.float16
    err = (q.dequantize() - t).abs()
    step = q.scale.float().expand_as(t)
    assert bool((err <= step / 2 + 1e-6).all())
    # the largest value of every scale group is represented almost exactly (it sets the scale)
    assert float(err.max()) > 0 and float((t.abs().amax() - q.dequantize().abs().amax()).abs()) < float(step.max())
    codes = unpack_int4(q.data, 16) if bits == 4 else q.data
    assert int(codes.abs().max()) == QMAX[bits]


def test_quantization_names_and_errors(model):
    assert [mi.Quantization(8).name, mi.Quantization(4, "channel").name] == ["int8", "int4-channel"]
    bank = mi.Bank.from_token_ids(model, [3, 4, 5], layers=[1])
    for bad in ("int2", "fp8", ""):
        with pytest.raises(BankError, match="unknown quantization"):
            bank.quantize(bad)
    with pytest.raises(BankError, match="bits must be 8 or 4"):
        mi.Quantization(3)
    with pytest.raises(BankError, match="key scales"):
        mi.Quantization(8, "head")  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", SPECS)
def test_nbytes_is_what_is_stored(model, spec, tmp_path):
    bank = mi.Bank.from_token_ids(model, list(range(3, 23)), layers=[1, 3])
    h, m, d = bank.keys(1).shape
    q = bank.quantize(spec)
    bits = 8 if spec.startswith("int8") else 4
    data = h * m * d * bits // 8
    key_scales = h * d * 2 if spec.endswith("channel") else h * m * 2
    value_scales = h * m * 2
    assert q.nbytes == len(bank.layers) * (2 * data + key_scales + value_scales)
    assert q.nbytes < bank.nbytes / (3 if bits == 8 else 5)
    path = q.save(tmp_path / "q.safetensors")
    raw = path.read_bytes()
    assert len(raw) - 8 - int.from_bytes(raw[:8], "little") == q.nbytes  # the file's tensor data is nbytes
    assert "quantization" in repr(q) and q.dtype == torch.float32 and q.quantization == mi.Quantization.from_json(
        {"bits": bits, "keys": "channel" if spec.endswith("channel") else "slot"})


@pytest.mark.parametrize("spec", SPECS)
def test_file_round_trip(model, spec, tmp_path):
    bank = mi.Bank.from_token_ids(model, list(range(3, 19)), layers=[0, 2], name="pirate").quantize(spec)
    loaded = mi.Bank.load(bank.save(tmp_path / "b.safetensors"), model=model)
    assert loaded.quantization == bank.quantization and loaded.options == bank.options
    assert (loaded.name, loaded.token_ids, loaded.layers, loaded.nbytes) == (bank.name, bank.token_ids, (0, 2), bank.nbytes)
    for layer in bank.layers:
        for a, b in ((loaded._keys[layer], bank._keys[layer]), (loaded._values[layer], bank._values[layer])):
            assert isinstance(a, QuantizedTensor) and torch.equal(a.data, b.data) and torch.equal(a.scale, b.scale)
        assert torch.equal(loaded.keys(layer), bank.keys(layer)) and torch.equal(loaded.values(layer), bank.values(layer))


def test_older_bank_files_are_still_read(model, tmp_path):
    """Formats 2 (kv_heads) and 1 (no kv_heads), written the way those versions wrote them."""
    bank = mi.Bank.from_token_ids(model, [3, 4, 5, 6], layers=[1, 2], name="old")
    for version in (1, 2):
        kind = ArtifactKind("memory-inception-bank", version, "bank", "memory-inception bank", BankError, "rebuild")
        metadata = {"name": "old", "text": json.dumps(None), "token_ids": json.dumps([3, 4, 5, 6]),
                    "fingerprint": bank.fingerprint, "num_kv_heads": "2", "head_dim": "16",
                    "options": json.dumps(bank.options)}
        if version == 2:
            metadata["kv_heads"] = json.dumps({})
        tensors = {f"{kind_}.{layer}": getattr(bank, kind_)(layer) for layer in (1, 2) for kind_ in ("keys", "values")}
        path = write_artifact(tmp_path / f"v{version}.safetensors", kind, tensors, metadata)
        loaded = mi.Bank.load(path, model=model)
        assert loaded.quantization is None and loaded.layers == (1, 2)
        assert torch.equal(loaded.keys(2), bank.keys(2)) and torch.equal(loaded.values(1), bank.values(1))


def test_damaged_quantized_file_is_named(model, tmp_path):
    bank = mi.Bank.from_token_ids(model, [3, 4, 5], layers=[1]).quantize("int8")
    tensors = {"keys.1": bank._keys[1].data, "values.1": bank._values[1].data, "values_scales.1": bank._values[1].scale}
    metadata = {"name": "x", "text": "null", "token_ids": "[3, 4, 5]", "fingerprint": bank.fingerprint,
                "num_kv_heads": "2", "head_dim": "16", "options": "{}", "kv_heads": "{}",
                "quantization": json.dumps({"bits": 8, "keys": "slot", "values": "slot", "dtype": "float32"})}
    kind = ArtifactKind("memory-inception-bank", 3, "bank", "memory-inception bank", BankError, "rebuild")
    path = write_artifact(tmp_path / "damaged.safetensors", kind, tensors, metadata)
    with pytest.raises(BankError, match="keys scales do not cover"):
        mi.Bank.load(path)


def test_restrict_and_sites_keep_the_bank_quantized(model, tiny_tokenizer):
    sites = mi.Sites({1: [0, 1], 3: None})  # layer 1 reads KV group 0 only
    full = mi.build_bank(model, tiny_tokenizer, TEXT, layers="all", quantize="int4")
    bank = mi.build_bank(model, tiny_tokenizer, TEXT, sites=sites, quantize="int4")
    assert bank.quantization == mi.Quantization(4) and bank.layers == (1, 3) and bank.stored_kv_heads(1) == (0,)
    assert isinstance(bank._keys[1], QuantizedTensor) and bank.keys(1).shape == (1, bank.num_slots, 16)
    assert torch.equal(bank.keys(1), full.keys(1)[:1]) and torch.equal(bank.values(3), full.values(3))
    assert bank.nbytes == full.restrict([1, 3], {1: [0]}).nbytes
    assert mi.MI(mi.Steering(target=bank, sites=sites)).cost(model, tiny_tokenizer).stored_bytes == bank.nbytes


def test_quantizing_twice_starts_from_the_dequantized_values(model):
    bank = mi.Bank.from_token_ids(model, list(range(3, 13)), layers=[1])
    twice = bank.quantize("int8").quantize("int4")
    assert twice.quantization == mi.Quantization(4)
    assert torch.equal(twice.keys(1), bank.quantize("int8").dequantize().quantize("int4").keys(1))
    assert bank.dequantize() is bank


def _logits(model, bank, ids, **steering):
    with torch.no_grad(), mi.inject(model, mi.Steering(target=bank, **steering)):
        return model(ids).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_operator_on_a_quantized_bank(tiny_models, arch):
    """A quantized bank steers exactly as its dequantized copy does, and close to the fp32 bank: int8 keeps all but
    2% of the steering effect (the logit change from plain), int4 all but 20%."""
    model = tiny_models(arch)
    ids = torch.tensor([[1, 9, 22, 17, 4, 8, 30]])
    bank = mi.Bank.from_token_ids(model, list(range(3, 40)))
    settings = {"sites": mi.Sites({1: [0, 3], 2: None, 3: None}), "rho": 2.0, "prefill": "all"}
    with torch.no_grad():
        plain = model(ids).logits
    fp32 = _logits(model, bank, ids, **settings)
    effect = float((fp32 - plain).abs().max())
    assert effect > 0.1
    for spec, share in (("int8", 0.02), ("int4", 0.2), ("int8-channel", 0.02), ("int4-channel", 0.2)):
        q = bank.quantize(spec)
        steered = _logits(model, q, ids, **settings)
        assert torch.equal(steered, _logits(model, q.dequantize(), ids, **settings))
        assert float((steered - fp32).abs().max()) < share * effect, spec


def test_cli_bank_quantize(model, tmp_path):
    from typer.testing import CliRunner

    from memory_inception.cli import app

    path = mi.Bank.from_token_ids(model, list(range(3, 23)), layers=[1, 2], name="pirate").save(tmp_path / "b.safetensors")
    out = tmp_path / "b4.safetensors"
    result = CliRunner().invoke(app, ["bank", "quantize", str(path), "-o", str(out), "--bits", "int4"])
    assert result.exit_code == 0, result.output
    assert "int4" in result.output and "smaller" in result.output
    loaded = mi.Bank.load(out)
    assert loaded.quantization == mi.Quantization(4) and loaded.name == "pirate"
    assert torch.equal(loaded.keys(1), mi.Bank.load(path).quantize("int4").keys(1))
    bad = CliRunner().invoke(app, ["bank", "quantize", str(path), "-o", str(out), "--bits", "int3"])
    assert bad.exit_code == 2 and "unknown quantization" in bad.output
