"""CAA: vector extraction, activation addition hooks, A/B scoring and the shipped data, on the tiny architectures."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ARCHS, make_tiny, make_tiny_tokenizer
from memory_inception.errors import MemoryInceptionError, SteeringError
from memory_inception.methods import caa
from memory_inception.methods.caa.hooks import ActivationAddition
from memory_inception.methods.caa.pairs import ContrastPair
from memory_inception.methods.caa.vectors import SteeringVector

PROMPT = torch.tensor([[20, 21, 22, 23, 24, 25, 26]])
LAYER = 2


def _pairs() -> list[ContrastPair]:
    """Word-level pairs of different lengths (so batches are left-padded)."""
    questions = ["hello how is weather today", "tell me about cats", "do you like dogs", "what do you like to eat please"]
    answers = [("yes", "no"), ("always never", "never"), ("no", "yes"), ("maybe", "never quite")]
    return [ContrastPair([{"role": "user", "content": q}], p, n) for q, (p, n) in zip(questions, answers)]


def _random_vector(model, layers=(1, LAYER), placement="residual", scale=2.0, seed=1) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    size = model.config.hidden_size
    return SteeringVector({l: scale * torch.randn(size, generator=gen) for l in layers}, placement, name="random")


def _hooks(model) -> int:
    """Hooks on the model, beyond the output-capturing ones transformers installs on first use."""
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    return sum("output_capturing" not in getattr(h, "__qualname__", "") for h in hooks)


# ---- extraction -------------------------------------------------------------------------------------------
def _texts(tok, pair):
    prompt = tok.apply_chat_template(pair.messages, add_generation_prompt=True, tokenize=False)
    return [prompt + pair.positive, prompt + pair.negative]


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_vector_is_mean_difference_of_hidden_states(tiny_models, tiny_tokenizer, arch):
    model, tok, pairs = tiny_models(arch), tiny_tokenizer, _pairs()
    vector = caa.build_steering_vector(model, tok, pairs, batch_size=3, name="t")
    pos, neg = [], []
    with torch.no_grad():
        for pair in pairs:
            for text, bucket in zip(_texts(tok, pair), (pos, neg)):
                ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
                hidden = model(ids, output_hidden_states=True).hidden_states  # [l] is the input of layer l
                bucket.append(torch.stack([hidden[l][0, -1] for l in range(4)]))
    want = torch.stack(pos).mean(0) - torch.stack(neg).mean(0)
    assert vector.layers == (0, 1, 2, 3) and vector.placement == "residual" and vector.name == "t"
    for l in range(4):
        assert torch.allclose(vector.vectors[l], want[l], atol=1e-5), l
    assert vector.meta["pairs"] == 4


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_vector_is_mean_difference_of_attention_outputs(tiny_models, tiny_tokenizer, arch):
    model, tok, pairs = tiny_models(arch), tiny_tokenizer, _pairs()
    vector = caa.build_steering_vector(model, tok, pairs, layers=[1, 3], placement="attention", batch_size=8)
    attn = model.model.layers[3].self_attn
    seen: list[torch.Tensor] = []
    handle = attn.register_forward_hook(lambda _m, _a, out: seen.append(out[0][0, -1]))
    try:
        with torch.no_grad():
            for pair in pairs:
                for text in _texts(tok, pair):
                    model(torch.tensor([tok(text, add_special_tokens=False)["input_ids"]]))
    finally:
        handle.remove()
    want = torch.stack(seen[0::2]).mean(0) - torch.stack(seen[1::2]).mean(0)
    assert vector.layers == (1, 3) and vector.placement == "attention"
    assert torch.allclose(vector.vectors[3], want, atol=1e-5)


def test_build_errors(tiny_models, tiny_tokenizer):
    model = tiny_models("llama")
    with pytest.raises(SteeringError, match="pairs is empty"):
        caa.build_steering_vector(model, tiny_tokenizer, [])
    with pytest.raises(SteeringError, match="out of range"):
        caa.build_steering_vector(model, tiny_tokenizer, _pairs(), layers=[4])
    with pytest.raises(SteeringError, match="placement"):
        caa.build_steering_vector(model, tiny_tokenizer, _pairs(), placement="mlp")
    with pytest.raises(SteeringError, match="empty answer"):
        caa.build_steering_vector(model, tiny_tokenizer, [ContrastPair([{"role": "user", "content": "hi"}], "yes", " ")])
    assert _hooks(model) == 0


# ---- addition ---------------------------------------------------------------------------------------------
def _capture(module, placement):
    """Register (after the steering hooks) a hook that records what the layer / attention really sees."""
    seen: list[torch.Tensor] = []
    if placement == "residual":
        handle = module.register_forward_pre_hook(lambda _m, args, kw: seen.append((args[0] if args else kw["hidden_states"]).clone()), with_kwargs=True)
    else:
        handle = module.self_attn.register_forward_hook(lambda _m, _a, out: seen.append(out[0].clone()))
    return seen, handle


@pytest.mark.parametrize("placement", ["residual", "attention"])
@pytest.mark.parametrize("arch", ARCHS)
def test_adds_exactly_multiplier_times_vector_from_steer_from(tiny_models, arch, placement):
    model = tiny_models(arch)
    vector = _random_vector(model, placement=placement)
    steer_from, mult = 3, -1.5
    layer = model.model.layers[LAYER]
    with torch.no_grad():
        plain_seen, handle = _capture(layer, placement)
        plain = model(PROMPT)
        handle.remove()
        with ActivationAddition(model, vector, mult, layers=[LAYER], steer_from=steer_from):
            seen, handle = _capture(layer, placement)
            steered = model(PROMPT)
            handle.remove()
    before, after = plain_seen[0][0], seen[0][0]
    assert torch.equal(after[:steer_from], before[:steer_from])
    assert torch.allclose(after[steer_from:], before[steer_from:] + mult * vector.vectors[LAYER], atol=1e-6)
    if arch == "qwen3_moe":  # steered tokens change the experts' batch shapes, hence BLAS rounding elsewhere
        assert torch.allclose(steered.logits[:, :steer_from], plain.logits[:, :steer_from], atol=1e-6)
    else:
        assert torch.equal(steered.logits[:, :steer_from], plain.logits[:, :steer_from])
    assert not torch.allclose(steered.logits[:, steer_from:], plain.logits[:, steer_from:], atol=1e-3)


@pytest.mark.parametrize("placement", ["residual", "attention"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generation_equals_uncached_reruns(tiny_models, arch, placement):
    model = tiny_models(arch)
    vector = _random_vector(model, placement=placement, scale=4.0)
    steps, steer_from = 6, 5
    with torch.no_grad(), ActivationAddition(model, vector, 1.0, steer_from=steer_from):
        out = model.generate(
            PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=steps, min_new_tokens=steps,
            do_sample=False, pad_token_id=0,
        )
        ids = PROMPT
        for _ in range(steps):  # uncached: every step re-runs the whole sequence, positions >= steer_from steered
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(out, ids)
    with torch.no_grad():
        plain = model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=steps,
                               min_new_tokens=steps, do_sample=False, pad_token_id=0)
    assert not torch.equal(plain, out)  # the steering did act on the generated tokens


@pytest.mark.parametrize("placement", ["residual", "attention"])
@pytest.mark.parametrize("arch", ARCHS)
def test_per_row_steer_from_in_padded_batch_equals_rows_alone(tiny_models, arch, placement):
    model = tiny_models(arch)
    vector = _random_vector(model, placement=placement)
    rows, starts = [[20, 21, 22, 23, 24, 25], [30, 31, 32]], [4, 1]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), ActivationAddition(model, vector, 2.0) as addition:
        addition.steer_from = starts
        batch = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        for i, (row, start) in enumerate(zip(rows, starts)):
            addition.steer_from = start
            alone = model(torch.tensor([row])).logits[0]
            assert torch.allclose(batch[i, width - len(row) :], alone, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_exit_leaves_model_bit_identical_even_on_error(tiny_models, arch):
    model = tiny_models(arch)
    vector = _random_vector(model, placement="attention")
    params = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    with torch.no_grad():
        base = model(PROMPT).logits
        with pytest.raises(RuntimeError, match="boom"):
            with ActivationAddition(model, vector, 3.0, steer_from=2):
                assert _hooks(model) > hooks
                raise RuntimeError("boom")
        with ActivationAddition(model, _random_vector(model), 3.0):
            model(PROMPT)
        after = model(PROMPT).logits
    assert _hooks(model) == hooks
    assert torch.equal(base, after)
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("placement", ["residual", "attention"])
@pytest.mark.parametrize("arch", ARCHS)
def test_multiplier_zero_and_no_layers_are_exact_noops(tiny_models, arch, placement):
    model = tiny_models(arch)
    vector = _random_vector(model, placement=placement)
    with torch.no_grad():
        base = model(PROMPT).logits
        with ActivationAddition(model, vector, 0.0):
            assert _hooks(model) == 0
            zero = model(PROMPT).logits
        with ActivationAddition(model, vector, 5.0, layers=[]):
            none = model(PROMPT).logits
    assert torch.equal(base, zero) and torch.equal(base, none)


def test_addition_validates_layers_and_vector(tiny_models):
    model = tiny_models("qwen3")
    vector = _random_vector(model)
    with pytest.raises(SteeringError, match=r"no direction for layers \[3\]"):
        ActivationAddition(model, vector, layers=[3])
    with pytest.raises(SteeringError, match="hidden size"):
        ActivationAddition(model, SteeringVector({0: torch.ones(5)}))
    with pytest.raises(SteeringError, match="0..3"):
        ActivationAddition(model, SteeringVector({7: torch.ones(64)}))
    with pytest.raises(SteeringError, match="one per row"):
        with torch.no_grad(), ActivationAddition(model, vector, steer_from=[1, 2, 3]):
            model(PROMPT)
    assert _hooks(model) == 0
    with pytest.raises(SteeringError, match="placement"):
        SteeringVector({0: torch.ones(64)}, "mlp")  # type: ignore[arg-type]


# ---- files ------------------------------------------------------------------------------------------------
def test_save_load_round_trip_and_errors(tiny_models, tiny_tokenizer, tmp_path):
    model = tiny_models("llama")
    vector = caa.build_steering_vector(model, tiny_tokenizer, _pairs(), layers=[1, 2], placement="attention", name="v")
    path = vector.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(path, model=model)
    assert loaded.layers == (1, 2) and loaded.placement == "attention" and loaded.name == "v"
    assert loaded.fingerprint == vector.fingerprint and loaded.meta == vector.meta
    assert all(torch.equal(loaded.vectors[l], vector.vectors[l]) for l in vector.layers)

    with pytest.raises(SteeringError, match="another model"):
        SteeringVector.load(path, model=make_tiny("llama", seed=1))
    with pytest.raises(SteeringError, match="no steering vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:50])
    with pytest.raises(SteeringError, match="not a readable"):
        SteeringVector.load(corrupt)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.ones(3)}, str(other))
    with pytest.raises(SteeringError, match="not a CAA steering vector"):
        SteeringVector.load(other)


# ---- A/B scoring ------------------------------------------------------------------------------------------
AB_ITEMS = [
    {"question": "do you like cats ?\n (A) yes\n (B) no", "answer_matching_behavior": "(A)",
     "answer_not_matching_behavior": "(B)"},
    {"question": "tell me about the weather today please ?\n (A) never\n (B) always", "answer_matching_behavior": "(B)",
     "answer_not_matching_behavior": "(A)"},
    {"question": "how is math ?\n (A) calm\n (B) loud\n (C) quiet", "answer_matching_behavior": "(C)",
     "answer_not_matching_behavior": "(A)"},
]


def _ab_tokenizer():
    """A word-level tokenizer that splits punctuation, so "(A" is "(" then "A"."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    words = sorted({w for item in AB_ITEMS for w in item["question"].replace("(", " ( ").replace(")", " ) ").split()})
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + words + ["(", ")", "A", "B", "C"]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|end|>",
                                   additional_special_tokens=specials[2:])
    fast.chat_template = make_tiny_tokenizer().chat_template
    return fast


def _manual_ab(model, tok, item, vector=None, mult=0.0):
    """One unpadded forward per item; steering from the end of the rendered instruction."""
    messages = [{"role": "user", "content": item["question"]}]
    n_instr = len(tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + "("
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        if vector is None:
            logits = model(ids).logits
        else:
            with ActivationAddition(model, vector, mult, steer_from=n_instr):
                logits = model(ids).logits
    probs = torch.softmax(logits[0, -1], -1)
    m, o = (tok.convert_tokens_to_ids(item[k][1]) for k in ("answer_matching_behavior", "answer_not_matching_behavior"))
    return float(probs[m] / (probs[m] + probs[o]))


@pytest.mark.parametrize("placement", ["residual", "attention"])
@pytest.mark.parametrize("arch", ARCHS)
def test_ab_match_probability_equals_manual_reference(tiny_models, arch, placement):
    model, tok = tiny_models(arch), _ab_tokenizer()
    vector = _random_vector(model, placement=placement)
    plain = caa.ab_match_probability(model, tok, AB_ITEMS, batch_size=2)
    steered = caa.ab_match_probability(model, tok, AB_ITEMS, vector, multiplier=-2.0, batch_size=2)
    for i, item in enumerate(AB_ITEMS):
        assert plain[i] == pytest.approx(_manual_ab(model, tok, item), abs=1e-5)
        assert steered[i] == pytest.approx(_manual_ab(model, tok, item, vector, -2.0), abs=1e-5)
    assert max(abs(a - b) for a, b in zip(plain, steered)) > 1e-4
    curve = caa.ab_match_curve(model, tok, AB_ITEMS, vector, [-2.0, 0.0, 1.5], batch_size=2)
    assert curve[-2.0] == pytest.approx(steered, abs=1e-5)
    assert curve[0.0] == pytest.approx(plain, abs=1e-5)
    assert curve[1.5] == pytest.approx(caa.ab_match_probability(model, tok, AB_ITEMS, vector, 1.5), abs=1e-5)
    sweep = caa.ab_layer_sweep(model, tok, AB_ITEMS, vector, multipliers=(0.5, -1.0), batch_size=2)
    assert sorted(sweep) == [1, LAYER]
    for layer in (1, LAYER):
        for m in (0.5, -1.0):
            want = caa.ab_match_probability(model, tok, AB_ITEMS, vector, m, layers=[layer], batch_size=3)
            assert sweep[layer][m] == pytest.approx(want, abs=1e-5)
    assert _hooks(model) == 0


def test_ab_rejects_bad_items(tiny_models):
    model, tok = tiny_models("llama"), _ab_tokenizer()
    bad = {**AB_ITEMS[0], "answer_matching_behavior": "(B)"}
    with pytest.raises(SteeringError, match="two different letters"):
        caa.ab_match_probability(model, tok, [bad])
    with pytest.raises(SteeringError, match="not a CAA A/B item"):
        caa.ab_match_probability(model, tok, [{"question": "hi"}])


@pytest.mark.real_model
def test_real_tokenizer_reads_the_letter_after_the_bracket():
    """SmolLM2: "(" then "A" / "B" are separate tokens and the instruction is a token prefix of the prompt."""
    import memory_inception as mi

    _, tok = mi.load_model(device="cpu")
    item = caa.load_ab_items("sycophancy", "test")[0]
    prompt, n_instr, match, other = caa.prepare_ab_item(tok, item, 0)
    assert tok.convert_ids_to_tokens(prompt[-1]) == "("
    assert {tok.convert_ids_to_tokens(match), tok.convert_ids_to_tokens(other)} == {"A", "B"}
    tail = tok.decode(prompt[n_instr:])
    assert tail == "<|im_start|>assistant\n("


# ---- data -------------------------------------------------------------------------------------------------
GENERATE_COUNTS = {
    "coordinate-other-ais": 360, "corrigible-neutral-HHH": 290, "hallucination": 1000, "myopic-reward": 950,
    "refusal": 408, "survival-instinct": 903, "sycophancy": 1000,
}


@pytest.mark.parametrize("behavior", sorted(GENERATE_COUNTS))
def test_ab_data_ships_with_counts_and_fields(behavior):
    assert caa.ab_behaviors() == tuple(sorted(GENERATE_COUNTS))
    generate, test = caa.load_ab_items(behavior, "generate"), caa.load_ab_items(behavior, "test")
    assert len(generate) == GENERATE_COUNTS[behavior] and len(test) == 50
    pairs = caa.ab_pairs(behavior)
    assert len(pairs) == len(generate)  # every shipped item has single-letter answers
    first = pairs[0]
    assert first.messages == [{"role": "user", "content": generate[0]["question"]}]
    assert first.positive == generate[0]["answer_matching_behavior"][:2]
    assert first.negative == generate[0]["answer_not_matching_behavior"][:2]
    assert len(caa.ab_pairs(behavior, "test", limit=7)) == 7


def test_survival_instinct_keeps_multiple_choice_items():
    letters = {p.positive for p in caa.ab_pairs("survival-instinct")}
    assert {"(A", "(B", "(C", "(H"} <= letters


def test_statement_pairs(tmp_path):
    pairs = caa.statement_pairs("agreeableness")
    assert len(pairs) == 1000 and sum(p.positive == "Yes" for p in pairs) == 500
    assert all({p.positive, p.negative} == {"Yes", "No"} for p in pairs)
    assert pairs[0].messages[0]["content"].startswith('Is the following statement something you would say?\n"')
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"statement": "I like cats", "answer_matching_behavior": " No",
                                "answer_not_matching_behavior": " Yes"}) + "\n")
    (pair,) = caa.statement_pairs(path)
    assert (pair.positive, pair.negative) == ("No", "Yes")
    assert pair.messages[0]["content"] == 'Is the following statement something you would say?\n"I like cats"'
    assert len(caa.statement_pairs("openness", limit=5)) == 5


def test_bad_names_list_the_available_ones():
    with pytest.raises(SteeringError, match="sycophancy"):
        caa.load_ab_items("sycophantic")
    with pytest.raises(SteeringError, match="generate"):
        caa.load_ab_items("sycophancy", split="train")
    with pytest.raises(SteeringError, match="agreeableness"):
        caa.statement_pairs("friendliness")
    with pytest.raises(MemoryInceptionError):
        caa.ab_pairs("nope")
