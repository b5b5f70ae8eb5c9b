"""Bad requests fail clearly (naming the problem and the fix), before the engine or at admission.

The server's errors are in test_vllm_server.py; the key pool's refusal of a request whose prefix it never saw is in
test_batching.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import memory_inception as mi
from memory_inception.errors import BankError, SiteError, SteeringError
from memory_inception.vllm import BankUse, RequestSteering, steering_params


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_unknown_bank_names_the_bank_and_the_fix(engine):
    with pytest.raises(BankError, match=r"no bank named 'nope'.*mi bank build"):
        engine.chat([conv("Hi")], RequestSteering(banks=(BankUse("nope"),)))


def test_a_bank_of_another_model_is_refused(engine, bank_dir):
    torch.manual_seed(0)
    tiny = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                                        num_hidden_layers=30, num_attention_heads=4,
                                                        num_key_value_heads=2, head_dim=16)).eval()
    mi.Bank.from_token_ids(tiny, [1, 2, 3], name="foreign").save(bank_dir / "foreign.safetensors")
    with pytest.raises(BankError, match="built by another model.*rebuild the bank"):
        engine.chat([conv("Hi")], RequestSteering(banks=(BankUse("foreign"),)))


def test_bad_settings_are_refused_before_the_engine(engine):
    with pytest.raises(SteeringError, match="prefill='sometimes' is not one of last, all, none"):
        RequestSteering(banks=(BankUse("pirate"),), prefill="sometimes")
    with pytest.raises(SteeringError, match=r"unknown memory_inception setting\(s\) \['strength'\]"):
        RequestSteering.from_extra_args({"memory_inception": {"banks": ["pirate"], "strength": 3}})
    with pytest.raises(SteeringError, match="role 'boss'"):
        RequestSteering(banks=(BankUse("pirate", role="boss"),))
    with pytest.raises(SiteError, match="out of range: this model has layers 0..29"):
        engine.check(RequestSteering(banks=(BankUse("pirate"),), layers=(40,)))
    with pytest.raises(BankError, match="invalid bank name"):
        engine.check(RequestSteering(banks=(BankUse("../etc/passwd"),)))


def test_raw_vllm_requests_are_validated_at_admission_and_the_engine_lives_on(engine):
    """Hand-written extra_args go through the tracker's validate_params: a 400-style error, not a dead engine."""
    ids = [engine.tokenizer("Hello", add_special_tokens=False)["input_ids"]]
    bad = steering_params(None, max_tokens=4, temperature=0,
                          extra_args={"memory_inception": {"banks": [{"name": "pirate"}], "prefill": "bad"}})
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="prefill='bad' is not one of last, all, none"):
        engine.llm.generate([{"prompt_token_ids": ids[0]}], bad, use_tqdm=False)
    assert len(engine.generate(ids, None, max_tokens=4)[0].token_ids) == 4
