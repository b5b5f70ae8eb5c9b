"""Shared fixtures: the real default model (transformers path), banks built from it, one MIEngine (vLLM path).

Run only by `make test-vllm`, in .venv-vllm (vLLM pins transformers below 5.20); the main suite never collects
this directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# vLLM's usage telemetry off in every engine these tests start (also set by `make test-vllm`)
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402
import torch

import memory_inception as mi
from memory_inception.methods.interface import Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.runners import render

BANK_TEXTS = {
    "pirate": "You are a pirate captain who talks about the sea, ships and treasure.",
    "professor": "You are a grumpy old professor who hates small talk and loves mathematics.",
    "poet": "Answer in the style of a romantic poet, full of flowers and moonlight.",
}
MAX_NEW_TOKENS = 24

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # servers.RunningServer: uvicorn on loopback


@pytest.fixture(scope="session")
def hf():
    """The transformers path: the default model (fp32) and its tokenizer, from the same converted checkpoint."""
    torch.set_num_threads(1)
    from memory_inception.vllm.engine import checkpoint_dir

    model, tokenizer = mi.load_model(str(checkpoint_dir(None)))
    return model, tokenizer


@pytest.fixture(scope="session")
def bank_dir(tmp_path_factory, hf):
    model, tokenizer = hf
    directory = tmp_path_factory.mktemp("banks")
    for name, text in BANK_TEXTS.items():
        mi.build_bank(model, tokenizer, text, layers="all", name=name).save(directory / f"{name}.safetensors")
    return directory


@pytest.fixture(scope="session")
def banks(hf, bank_dir):
    model, _ = hf
    return {name: mi.Bank.load(bank_dir / f"{name}.safetensors", model=model) for name in BANK_TEXTS}


@pytest.fixture(scope="session")
def engine(bank_dir):
    """One vLLM engine with the plugin for the whole session (startup ~30 s); a small token budget per step
    (256), so longer prompts are prefilled in chunks."""
    from memory_inception.vllm import MIEngine

    engine = MIEngine(bank_dir=bank_dir, max_num_batched_tokens=256, enable_prefix_caching=True)
    yield engine
    engine.close()


def eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos])
    ids.add(tokenizer.eos_token_id)
    return ids


def until_eos(tokens, eos: set[int]) -> list[int]:
    """Token ids up to (without) the first end-of-sequence token."""
    out = []
    for t in tokens:
        if t in eos:
            break
        out.append(int(t))
    return out


def transformers_generate(hf, steering, conversations, max_new_tokens=MAX_NEW_TOKENS) -> list[list[int]]:
    """Greedy token ids from the transformers path, exactly as `methods.generate` runs it (left-padded batch,
    `mi.inject` around `model.generate`, the KV cache on)."""
    model, tokenizer = hf
    method = MI(steering) if steering is not None else Plain()
    rendered = [render(tokenizer, method, conv)[0] for conv in conversations]
    width = max(len(ids) for ids in rendered)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rendered), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rendered), width), dtype=torch.long)
    for row, ids in enumerate(rendered):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    with torch.no_grad(), method.active(model):
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    eos = eos_ids(model, tokenizer)
    return [until_eos(row[width:].tolist(), eos) for row in out]
