"""Devices and dtypes: resolution and its errors, loading placements, and steering a bfloat16 model.

Only the CPU is here; CUDA and MPS are simulated (monkeypatched availability) for the resolution rules,
and a bfloat16 copy of a model stands in for a GPU's dtype. Steering tolerance, measured with
`_steered_logits` below (max |bf16 - fp32| over every position and vocabulary entry, relative to the
largest fp32 logit): the tiny models 0.8-1.0% (tolerance 2%), SmolLM2-135M 5.0% (1.85 of 36.8; the
unsteered bf16 model is off by 1.56 of the same logits: steering adds no error of its own).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import memory_inception as mi
from conftest import ARCHS, make_tiny, make_tiny_tokenizer
from memory_inception.errors import EvaluationError, ModelLoadError
from memory_inception.evaluation.config import from_dict, load_config
from memory_inception.evaluation.runner import check_config
from memory_inception.hf.models import available_devices, load_model, resolve_device, resolve_dtype
from memory_inception.methods.caa.method import CAA
from memory_inception.methods.caa.vectors import SteeringVector
from memory_inception.methods.interface import Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.runners import generate

ROOT = Path(__file__).resolve().parents[1]
TINY_TOLERANCE = 0.02  # of the largest fp32 logit; observed <= 0.0102 on the five tiny architectures
PROMPT = "<|user|> hello how is weather today <|end|> <|assistant|> you are"
PERSONA = "you are a cheerful pirate who loves the sea"
GPU_HERE = torch.cuda.is_available() or torch.backends.mps.is_available()


def _no_accelerators(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _one_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny Llama and the word-level tokenizer, saved as a local checkpoint directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny("llama").save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


def _logits(model, tok, text: str = PROMPT) -> torch.Tensor:
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=next(model.parameters()).device)
    with torch.no_grad():
        return model(ids).logits.float()


def _steered_logits(model, tok, steering, text: str = PROMPT) -> torch.Tensor:
    with mi.inject(model, steering):
        return _logits(model, tok, text)


# ---- resolution ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(GPU_HERE, reason="auto picks the accelerator on this machine")
def test_auto_is_the_cpu_in_float32_here():
    assert available_devices() == ["cpu"]
    assert resolve_device() == resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_dtype(None, resolve_device()) is torch.float32


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    _no_accelerators(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps") and available_devices() == ["cpu", "mps"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert available_devices() == ["cpu", "cuda:0", "cuda:1", "mps"]


def test_default_dtype_follows_the_device():
    assert resolve_dtype(None, "cuda") is torch.bfloat16 and resolve_dtype(None, "cuda:1") is torch.bfloat16
    assert resolve_dtype(None, "cpu") is torch.float32 and resolve_dtype(None, "mps") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16 and resolve_dtype("torch.float16", "cuda") is torch.float16
    assert resolve_dtype("float32", "cuda") is torch.float32 and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'float13'.*bfloat16"):
        resolve_dtype("float13", "cpu")


def test_absent_cuda_is_a_clear_error(monkeypatch):
    _no_accelerators(monkeypatch)
    for name in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(ModelLoadError, match="CUDA is not available") as info:
            resolve_device(name)
        message = str(info.value)
        assert "This machine has: cpu" in message and "'auto' or 'cpu'" in message


def test_a_cuda_index_past_the_visible_gpus_is_a_clear_error(monkeypatch):
    _one_gpu(monkeypatch)
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ModelLoadError, match="no CUDA device 7; 1 visible") as info:
        resolve_device("cuda:7")
    assert "cuda:0" in str(info.value) and "CUDA_VISIBLE_DEVICES" in str(info.value)


def test_absent_mps_is_a_clear_error(monkeypatch):
    _no_accelerators(monkeypatch)
    with pytest.raises(ModelLoadError, match="MPS is not available.*Apple") as info:
        resolve_device("mps")
    assert "This machine has: cpu" in str(info.value)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    with pytest.raises(ModelLoadError, match="MPS has one device"):
        resolve_device("mps:1")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda0", "", "tpu:0", "cuda:-1"])
def test_malformed_device_names_are_refused(name, monkeypatch):
    _no_accelerators(monkeypatch)
    with pytest.raises(ModelLoadError, match="is not a device name") as info:
        resolve_device(name)
    assert "'cuda:N'" in str(info.value) and "This machine has: cpu" in str(info.value)


def test_the_cpu_takes_no_index():
    with pytest.raises(ModelLoadError, match="takes no index"):
        resolve_device("cpu:1")


def test_device_map_rules(monkeypatch):
    _no_accelerators(monkeypatch)
    for explicit in ("cpu", "cuda", "cuda:0", "mps"):
        with pytest.raises(ModelLoadError, match="both given.*leave device as 'auto'"):
            resolve_device(explicit, device_map="auto")
    assert resolve_device("auto", device_map="auto") == resolve_device(None, device_map={"": "cpu"}) == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="not a placement strategy.*balanced_low_0"):
        resolve_device(device_map="fastest")
    with pytest.raises(ModelLoadError, match="non-empty dict"):
        resolve_device(device_map={})
    with pytest.raises(ModelLoadError, match=r"device_map\['model.layers.1'\].*CUDA is not available"):
        resolve_device(device_map={"model.embed_tokens": "cpu", "model.layers.1": 0})
    with pytest.raises(ModelLoadError, match="use a GPU index"):
        resolve_device(device_map={"": 1.5})
    _one_gpu(monkeypatch)
    assert resolve_device(device_map="auto") == torch.device("cuda")  # hence bfloat16 by default
    assert resolve_device(device_map={"model": 0, "lm_head": "cpu"}) == torch.device("cuda")
    assert resolve_device(device_map={"model": "cpu", "lm_head": "disk"}) == torch.device("cpu")


# ---- loading ------------------------------------------------------------------------------------------------
def test_device_and_dtype_errors_come_before_any_weights(tiny_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were read before the device / dtype check")

    _no_accelerators(monkeypatch)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    for kwargs, match in (
        ({"device": "cuda"}, "CUDA is not available"),
        ({"device": "cuda:7"}, "CUDA is not available"),
        ({"device": "mps"}, "MPS is not available"),
        ({"device": "gpu"}, "not a device name"),
        ({"device": "cpu", "device_map": "auto"}, "both given"),
        ({"dtype": "float13"}, "unknown dtype"),
    ):
        with pytest.raises(ModelLoadError, match=match):
            load_model(str(tiny_dir), **kwargs)
        with pytest.raises(ModelLoadError, match=match):  # the registry name too: no GGUF conversion first
            load_model(**kwargs)


@pytest.mark.skipif(GPU_HERE, reason="the default is the accelerator on this machine")
def test_the_default_load_is_cpu_float32_bit_for_bit(tiny_dir):
    model, tok = load_model(str(tiny_dir))
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert getattr(model, "hf_device_map", None) is None  # not placed through accelerate
    explicit, _ = load_model(str(tiny_dir), device="cpu", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32, attn_implementation="sdpa").eval()
    want = _logits(plain, tok)
    assert torch.equal(_logits(model, tok), want) and torch.equal(_logits(explicit, tok), want)


def test_device_map_placements_load_on_the_cpu(tiny_dir, monkeypatch):
    _no_accelerators(monkeypatch)
    reference, tok = load_model(str(tiny_dir), device="cpu")
    want = _logits(reference, tok)
    for device_map in ("auto", {"": "cpu"}):
        model, _ = load_model(str(tiny_dir), device_map=device_map)
        assert model.dtype == torch.float32 and {p.device.type for p in model.parameters()} == {"cpu"}
        assert torch.allclose(_logits(model, tok), want, atol=1e-6)


def test_bfloat16_on_the_cpu_loads_and_generates(tiny_dir):
    model, tok = load_model(str(tiny_dir), device="cpu", dtype="bfloat16")
    assert model.device == torch.device("cpu") and model.dtype == torch.bfloat16
    conv = [{"role": "user", "content": "hello how is weather today"}]
    assert isinstance(generate(model, tok, Plain(), [conv], max_new_tokens=4)[0], str)


# ---- steering a bfloat16 model with fp32-built banks and vectors ----------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_an_fp32_bank_steers_a_bf16_copy_within_tolerance(tiny_models, tiny_tokenizer, arch):
    fp32 = tiny_models(arch)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    bank = mi.build_bank(fp32, tiny_tokenizer, PERSONA, layers=[1, 2, 3])
    assert bank.dtype == torch.float32
    steering = mi.Steering(target=bank, sites=mi.Sites({1: None, 2: None, 3: None}), rho=3.0, prefill="all")
    before = {k: v.clone() for k, v in bf16.state_dict().items()}
    plain = _logits(fp32, tiny_tokenizer)
    want = _steered_logits(fp32, tiny_tokenizer, steering)
    got = _steered_logits(bf16, tiny_tokenizer, steering)
    error = (got - want).abs().max()
    assert error <= TINY_TOLERANCE * want.abs().max(), f"bf16 off by {error:.4f} of {want.abs().max():.2f}"
    assert (want - plain).abs().max() > 20 * error  # the steering itself is far larger than the rounding
    assert bank.dtype == torch.float32  # the bank is converted per inject, not in place
    assert all(torch.equal(before[k], v) for k, v in bf16.state_dict().items())  # the model is left as it was
    assert torch.equal(_logits(bf16, tiny_tokenizer), _logits(copy.deepcopy(fp32).to(torch.bfloat16), tiny_tokenizer))


def test_a_bank_file_from_fp32_loads_into_and_steers_a_bf16_load(tiny_dir, tmp_path):
    fp32, tok = load_model(str(tiny_dir), device="cpu")
    bf16, _ = load_model(str(tiny_dir), device="cpu", dtype="bfloat16")
    path = mi.build_bank(fp32, tok, PERSONA, layers=[2, 3]).save(tmp_path / "pirate.safetensors")
    bank = mi.Bank.load(path, model=bf16)  # same weights, same fingerprint, whatever the dtype
    steering = mi.Steering(target=bank, sites=mi.Sites({2: None, 3: None}), rho=3.0)
    want = _steered_logits(fp32, tok, steering)
    got = _steered_logits(bf16, tok, steering)
    assert (got - want).abs().max() <= TINY_TOLERANCE * want.abs().max()
    conv = [{"role": "user", "content": "hello how is weather today"}]
    replies = generate(bf16, tok, MI(steering), [conv, conv[:1]], max_new_tokens=4)
    assert len(replies) == 2 and replies[0] == replies[1]


@pytest.mark.parametrize("arch", ARCHS)
def test_an_fp32_caa_vector_steers_a_bf16_copy(tiny_models, tiny_tokenizer, arch):
    fp32 = tiny_models(arch)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    vector = SteeringVector({2: 2.0 * torch.randn(fp32.config.hidden_size, generator=gen)}, "residual", name="random")
    method = CAA(vector, multiplier=3.0, layers=[2])
    before = {k: v.clone() for k, v in bf16.state_dict().items()}
    plain = _logits(fp32, tiny_tokenizer)
    with method.active(fp32, steer_from=0):
        want = _logits(fp32, tiny_tokenizer)
    with method.active(bf16, steer_from=0):
        got = _logits(bf16, tiny_tokenizer)
    error = (got - want).abs().max()
    assert error <= TINY_TOLERANCE * want.abs().max() and (want - plain).abs().max() > 20 * error
    assert vector.vectors[2].dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in bf16.state_dict().items())


@pytest.mark.real_model
def test_smollm2_bf16_steered_logits_match_fp32():
    fp32, tok = load_model(device="cpu")
    bf16, _ = load_model(device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    steering = mi.Steering(target=mi.build_bank(fp32, tok, "You are a pirate captain who talks about the sea."),
                           prefill="all")
    text = tok.apply_chat_template([{"role": "user", "content": "How do I make tea?"}], add_generation_prompt=True,
                                   tokenize=False)
    want, got = _steered_logits(fp32, tok, steering, text), _steered_logits(bf16, tok, steering, text)
    rounding = (_logits(bf16, tok, text) - _logits(fp32, tok, text)).abs().max()  # bf16 without any steering
    error = (got - want).abs().max()
    assert error <= 0.08 * want.abs().max() and error <= 1.5 * rounding, (error, rounding)  # observed 1.85, 1.56
    assert (got[0, -1].argmax() == want[0, -1].argmax()).item()


# ---- mi eval: dtype is part of a run's identity, device is not ------------------------------------------------
def test_eval_config_device_and_dtype(tmp_path, monkeypatch):
    _no_accelerators(monkeypatch)
    cfg = load_config(task="bigfive")
    assert cfg.device == "auto" and cfg.dtype is None and cfg.device_map is None and cfg.torch_dtype is torch.float32
    fp32 = cfg.identity()
    assert not {"device", "dtype", "device_map"} & set(fp32)  # fp32: as runs made before these keys
    toml = tmp_path / "run.toml"
    toml.write_text('device = "cpu"\ndtype = "bf16"\n')
    bf16 = load_config(toml, task="bigfive")
    assert bf16.device == "cpu" and bf16.identity()["dtype"] == "bfloat16"
    assert load_config(toml, task="bigfive", dtype="bfloat16").identity() == bf16.identity()
    assert load_config(toml, task="bigfive", device="auto", dtype="float32").identity() == fp32
    assert from_dict(bf16.identity()).identity() == bf16.identity()  # what `mi report` rebuilds
    with pytest.raises(EvaluationError, match="CUDA is not available"):
        load_config(task="bigfive", device="cuda")
    with pytest.raises(EvaluationError, match="unknown dtype"):
        load_config(task="bigfive", dtype="int3")
    with pytest.raises(EvaluationError, match="both given"):
        load_config(task="bigfive", device="cpu", device_map="auto")
    _one_gpu(monkeypatch)  # on CUDA the default dtype is bfloat16, which changes results
    assert load_config(task="bigfive").identity()["dtype"] == cfg.identity()["dtype"] == "bfloat16"
    assert load_config(task="bigfive", dtype="float32").identity() == fp32


def test_a_rerun_in_another_dtype_is_refused_and_device_is_free(tmp_path, monkeypatch):
    _no_accelerators(monkeypatch)
    check_config(tmp_path, load_config(task="bigfive", dtype="bfloat16", device="cpu"))
    check_config(tmp_path, load_config(task="bigfive", dtype="bf16", device="auto", threads=3))  # same identity
    with pytest.raises(EvaluationError, match=r"differs in: dtype\)"):
        check_config(tmp_path, load_config(task="bigfive"))
    _one_gpu(monkeypatch)
    check_config(tmp_path, load_config(task="bigfive", device="cuda:0"))  # bfloat16 by default on CUDA


@pytest.mark.parametrize("stored", sorted(ROOT.glob("reports/eval/*/*.config.json")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_runs_still_resume_and_report(stored, tmp_path, monkeypatch):
    """The committed runs predate device / dtype: they were fp32 on the CPU, and still match an fp32 rerun."""
    _no_accelerators(monkeypatch)
    identity = json.loads(stored.read_text())["config"]
    assert "dtype" not in identity and "device" not in identity
    assert from_dict(identity).identity() == identity  # `mi report` and the resume check read it back unchanged
    (tmp_path / stored.name).write_text(stored.read_text())
    check_config(tmp_path, from_dict(identity))  # a resume on this machine is accepted
    check_config(tmp_path, from_dict({**identity, "device": "cpu", "dtype": "float32", "threads": 2}))
    with pytest.raises(EvaluationError, match="dtype"):
        check_config(tmp_path, from_dict({**identity, "dtype": "bfloat16"}))
