"""Tiny random models of the five supported architectures (no downloads, built from config classes)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=4096),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON),
    # not one of the five architectures: Llama with YaRN RoPE, whose cos/sin carry an attention scaling
    "llama_yarn": lambda: LlamaConfig(
        **COMMON,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "rope_theta": 1e4},
    ),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        **COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1
    ),
}
ARCHS = [arch for arch in CONFIGS if arch != "llama_yarn"]


def make_tiny(arch: str, attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A tiny random model of `arch`, fp32, eval mode, with larger-than-default weights so steering shows."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0, 0.08)
    return model


@pytest.fixture(scope="session")
def tiny_models():
    cache: dict[tuple[str, str], torch.nn.Module] = {}

    def get(arch: str, attn: str = "sdpa") -> torch.nn.Module:
        if (arch, attn) not in cache:
            cache[(arch, attn)] = make_tiny(arch, attn)
        return cache[(arch, attn)]

    return get


WORDS = (
    "you are a cheerful pirate who loves the sea and speaks with great joy . be brief kind calm honest "
    "curious careful answer every question in one short sentence hello how is weather today tell me about "
    "cats dogs ships math what do like to eat please thanks yes no maybe always never very quite rather "
    "friendly grumpy quiet loud persona : reply with energy"
).split()


def make_tiny_tokenizer():
    """A word-level fast tokenizer (vocab < 128) with a chat template, for bank and session tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    assert len(vocab) <= 128
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|end|>",
        additional_special_tokens=specials[2:],
    )
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    fast.padding_side = "left"
    return fast


@pytest.fixture(scope="module")
def model_and_tok():
    """The real default model for server tests, on one thread (steadier on a small shared CPU)."""
    import memory_inception as mi

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok = mi.load_model(device="cpu")
    yield model, tok
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (steadier on a small shared CPU), the previous count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _threads_restored():
    """Every test leaves torch's thread count as it found it, so results never depend on test order."""
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads, "the test changed torch's thread count and did not restore it"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()
