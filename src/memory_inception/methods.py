"""Every steering method behind one interface: plain, visible prompting, CAA and Memory Inception.

A `Method` may change the conversation (prompting), install hooks (CAA), inject banks (MI), or several
(`Combined`). Evaluation code runs any method on any conversation through `generate`, `score` and
`statement_margin` below, without special cases, and asks each method for its `cost`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .architecture import cache_kwargs, geometry, output_cache, text_config
from .banks import Bank
from .caa import ActivationAddition, SteeringVector
from .errors import SteeringError
from .injection import STEER_MASK_KWARG, inject
from .operator import STOCK_TO_STEERED
from .scoring import next_token_batch, score_batch
from .sites import Sites
from .steering import Steering
from .storage import prompt_kv_bytes

Messages = list[dict[str, str]]

# The question persona statements answer in `statement_margin` (the statement is the assistant's reply).
ASK = "Tell me something about yourself, in one sentence."


@dataclass(frozen=True)
class Cost:
    """What a method costs one conversation.

    `visible_tokens`: tokens it adds to the transcript; `cache_bytes`: bytes those add to the KV cache;
    `stored_bytes`: bytes it keeps outside the cache (bank slots at the sites, steering vectors).
    """

    visible_tokens: int = 0
    cache_bytes: int = 0
    stored_bytes: int = 0


class Method:
    """Base class: the plain model. Subclasses override what they change."""

    name: str = "plain"

    def conversation(self, messages: Messages) -> Messages:
        """The conversation as the model sees it (visible changes only)."""
        return [dict(m) for m in messages]

    @contextlib.contextmanager
    def active(self, model: nn.Module, steer_from: int | Sequence[int] | None = None) -> Iterator[None]:
        """Steer `model` inside the block. `steer_from`: the first position after the instruction (one int, or per row)."""
        yield

    @property
    def mi_prefill(self) -> str | None:
        """The MI prefill mode if this method injects banks (scoring then names steered positions), else None."""
        return None

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        """Extra visible tokens, cache bytes and stored bytes (see `Cost`)."""
        return Cost()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Plain(Method):
    """No steering."""


@dataclass(repr=False)
class Prompting(Method):
    """The guidance as a visible system message, rendered as the bank is (`template` around `text`)."""

    text: str
    template: str = "{descriptor}"
    name: str = "prompting"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise SteeringError("prompting needs a non-empty guidance text")
        if "{descriptor}" not in self.template:
            raise SteeringError(f"template {self.template!r} has no '{{descriptor}}' placeholder")

    @classmethod
    def from_bank(cls, bank: Bank, name: str = "prompting") -> Prompting:
        """Prompting with the bank's own text and first template, so only the delivery differs."""
        templates = bank.options.get("templates") or ["{descriptor}"]
        return cls(bank.text, templates[0], name)

    @property
    def guidance(self) -> str:
        return self.template.replace("{descriptor}", self.text, 1)

    def conversation(self, messages: Messages) -> Messages:
        out = [dict(m) for m in messages]
        if out and out[0].get("role") == "system":  # keep the conversation's own system text after the guidance
            out[0]["content"] = f"{self.guidance}\n\n{out[0]['content']}"
            return out
        return [{"role": "system", "content": self.guidance}] + out

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        """The guidance tokens the transcript (and so the KV cache, at every layer) carries."""
        tokens = len(tokenizer(self.guidance, add_special_tokens=False)["input_ids"])
        return Cost(visible_tokens=tokens, cache_bytes=prompt_kv_bytes(model, tokens))


@dataclass(repr=False)
class CAA(Method):
    """Contrastive activation addition: `multiplier * vector` added at every position after the instruction."""

    vector: SteeringVector
    multiplier: float = 1.0
    layers: Sequence[int] | None = None
    name: str = "caa"

    @contextlib.contextmanager
    def active(self, model: nn.Module, steer_from: int | Sequence[int] | None = None) -> Iterator[None]:
        with ActivationAddition(model, self.vector, self.multiplier, layers=self.layers, steer_from=steer_from):
            yield

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        layers = self.layers if self.layers is not None else self.vector.layers
        stored = sum(self.vector.vectors[layer].numel() * next(model.parameters()).element_size() for layer in layers)
        return Cost(stored_bytes=stored)


@dataclass(repr=False)
class MI(Method):
    """Memory Inception: banks read by the site heads; nothing visible changes."""

    steering: Steering
    name: str = "mi"

    @contextlib.contextmanager
    def active(self, model: nn.Module, steer_from: int | Sequence[int] | None = None) -> Iterator[None]:
        with inject(model, self.steering):
            yield

    @property
    def mi_prefill(self) -> str | None:
        return self.steering.prefill

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        """Bank bytes kept at the sites: the site layers and, per layer, the KV groups the site heads read."""
        geo = geometry(model)
        sites = self.steering.sites if self.steering.sites is not None else Sites.default(model)
        stored = 0
        for layer, heads in sites.resolve(geo).items():
            groups = len({h // geo.group_size for h in heads})
            for _, bank in self.steering.banks:
                per_slot = 2 * bank.head_dim * bank.keys(layer).element_size()
                stored += groups * bank.num_slots * per_slot
        return Cost(stored_bytes=stored)


@dataclass(repr=False)
class Combined(Method):
    """Several methods at once (for example prompting plus MI); conversations change in order."""

    methods: Sequence[Method] = field(default_factory=tuple)
    name: str = "combined"

    def conversation(self, messages: Messages) -> Messages:
        for method in self.methods:
            messages = method.conversation(messages)
        return messages

    @contextlib.contextmanager
    def active(self, model: nn.Module, steer_from: int | Sequence[int] | None = None) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for method in self.methods:
                stack.enter_context(method.active(model, steer_from))
            yield

    @property
    def mi_prefill(self) -> str | None:
        modes = [m.mi_prefill for m in self.methods if m.mi_prefill is not None]
        if len(modes) > 1:
            raise SteeringError("a combined method can inject banks once only; merge the banks into one Steering")
        return modes[0] if modes else None

    def cost(self, model: nn.Module, tokenizer: Any) -> Cost:
        costs = [m.cost(model, tokenizer) for m in self.methods]
        return Cost(*(sum(getattr(c, f) for c in costs) for f in ("visible_tokens", "cache_bytes", "stored_bytes")))


# ---- running any method -------------------------------------------------------------------------------
def render(tokenizer: Any, method: Method, messages: Messages) -> tuple[list[int], int]:
    """Token ids of the conversation as `method` shows it, ready to generate, and where the instruction ends.

    The instruction ends where the assistant's turn begins: positions from there on (the assistant header,
    any answer prefix, every generated token) are "after the instruction" for CAA.
    """
    shown = method.conversation(messages)
    if not shown or shown[-1].get("role") not in ("user", "system"):
        raise SteeringError("a conversation must end with a user (or system) message for the assistant to answer")
    full = tokenizer.apply_chat_template(shown, add_generation_prompt=True, tokenize=False)
    bare = tokenizer.apply_chat_template(shown, add_generation_prompt=False, tokenize=False)
    ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
    instruction = list(tokenizer(bare, add_special_tokens=False)["input_ids"])
    end = len(instruction) if ids[: len(instruction)] == instruction else len(ids)
    return ids, min(end, len(ids))


def generate(
    model: nn.Module,
    tokenizer: Any,
    method: Method,
    conversations: Sequence[Messages],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    **generation_options: Any,
) -> list[str]:
    """The assistant's reply to each conversation under `method` (greedy unless told; left-padded batches)."""
    rendered = [render(tokenizer, method, conv) for conv in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    options = {"do_sample": False, "max_new_tokens": max_new_tokens, **generation_options}
    replies: list[str] = []
    for start in range(0, len(rendered), batch_size):
        chunk = rendered[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, _) in enumerate(chunk):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        with torch.no_grad(), method.active(model, steer_from=[end for _, end in chunk]):
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), pad_token_id=pad, **options
            )
        replies += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out.tolist()]
    return replies


def score(
    model: nn.Module,
    tokenizer: Any,
    method: Method,
    conversations: Sequence[Messages],
    continuations: Sequence[str | Sequence[int]],
    *,
    answer_prefix: str = "",
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """Per-token log-probabilities of each continuation as the assistant's reply, with generation semantics.

    Each method steers exactly the positions it would steer had it generated the continuation itself.
    `answer_prefix` is text the reply starts with (for example "(" before an A/B letter).
    """
    if len(conversations) != len(continuations):
        raise SteeringError(f"got {len(conversations)} conversations but {len(continuations)} continuations")
    prefix = list(tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]) if answer_prefix else []
    prompts, ends = [], []
    for conv in conversations:
        ids, end = render(tokenizer, method, conv)
        prompts.append(ids + prefix)
        ends.append(end)
    conts = [
        list(tokenizer(c, add_special_tokens=False)["input_ids"]) if isinstance(c, str) else [int(t) for t in c]
        for c in continuations
    ]
    for i, c in enumerate(conts):
        if not c:
            raise SteeringError(f"continuation {i} is empty")
    prefill = method.mi_prefill
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            with method.active(model, steer_from=ends[chunk]):
                out += score_batch(model, prompts[chunk], conts[chunk], prefill or "last", _banks_injected(model))
    return out


def next_token_logprobs(
    model: nn.Module,
    tokenizer: Any,
    method: Method,
    conversations: Sequence[Messages],
    *,
    answer_prefix: str = "",
    batch_size: int = 8,
) -> torch.Tensor:
    """Log-probabilities `[N, vocab]` of the assistant's first token (after `answer_prefix`) under `method`.

    One forward per batch; the method steers what it would steer before generating that token. For
    multiple-choice scoring (Likert letters, MMLU answers) read the option tokens' columns.
    """
    prefix = list(tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]) if answer_prefix else []
    rendered = [render(tokenizer, method, conv) for conv in conversations]
    prefill = method.mi_prefill
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(rendered), batch_size):
            chunk = rendered[start : start + batch_size]
            with method.active(model, steer_from=[end for _, end in chunk]):
                out.append(next_token_batch(model, [ids + prefix for ids, _ in chunk], prefill or "last", _banks_injected(model)))
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def score_shared(
    model: nn.Module,
    tokenizer: Any,
    method: Method,
    conversation: Messages,
    continuations: Sequence[str | Sequence[int]],
    *,
    answer_prefix: str = "",
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """`score` for many continuations of ONE conversation: its prompt is run once and its KV cache reused.

    Equal to `score(..., [conversation] * n, continuations)`; the saving grows with the conversation's length
    (long histories in persistence tests, statement margins).
    """
    prefix = list(tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]) if answer_prefix else []
    ids, end = render(tokenizer, method, conversation)
    ids = ids + prefix
    conts = [
        list(tokenizer(c, add_special_tokens=False)["input_ids"]) if isinstance(c, str) else [int(t) for t in c]
        for c in continuations
    ]
    for i, c in enumerate(conts):
        if not c:
            raise SteeringError(f"continuation {i} is empty")
    device = next(model.parameters()).device
    prefill = method.mi_prefill or "last"
    head, last = ids[:-1], ids[-1]
    out: list[torch.Tensor] = []
    with torch.no_grad(), method.active(model, steer_from=end):  # one int: every row of every forward
        steered = _banks_injected(model)
        cache = None
        if head:
            steer = torch.full((1, len(head)), prefill == "all", dtype=torch.bool)
            cache = output_cache(model(
                input_ids=torch.tensor([head], device=device),
                position_ids=torch.arange(len(head), device=device)[None],
                use_cache=True,
                **({STEER_MASK_KWARG: steer.to(device)} if steered else {}),
            ))
        for start in range(0, len(conts), batch_size):
            chunk = conts[start : start + batch_size]
            n, width = len(chunk), 1 + max(len(c) for c in chunk)
            suffix = torch.zeros((n, width), dtype=torch.long)
            mask = torch.zeros((n, len(head) + width), dtype=torch.long)
            mask[:, : len(head)] = 1
            steer = torch.zeros((n, width), dtype=torch.bool)
            for row, c in enumerate(chunk):  # right padding: later pads cannot change earlier logits
                suffix[row, : 1 + len(c)] = torch.tensor([last] + c)
                mask[row, len(head) : len(head) + 1 + len(c)] = 1
                steer[row, 0] = prefill != "none"
                steer[row, 1 : 1 + len(c)] = True
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(n)
            logits = model(
                input_ids=suffix.to(device),
                attention_mask=mask.to(device),
                position_ids=(len(head) + torch.arange(width, device=device))[None].expand(n, -1),
                use_cache=past is not None,
                **cache_kwargs(model, past),
                **({STEER_MASK_KWARG: steer.to(device)} if steered else {}),
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, c in enumerate(chunk):
                target = torch.tensor(c, device=device).unsqueeze(-1)
                out.append(logprobs[row, : len(c)].gather(-1, target).squeeze(-1).cpu())
    return out


def statement_margin(
    model: nn.Module,
    tokenizer: Any,
    method: Method,
    matching: Sequence[str],
    nonmatching: Sequence[str],
    *,
    ask: str = ASK,
    batch_size: int = 16,
) -> float:
    """Mean per-token log-probability of trait-matching statements as the model's own reply, minus non-matching.

    Judge-free and expressible by small models; steering toward a trait's high pole should raise it.
    """
    if not matching or not nonmatching:
        raise SteeringError("statement_margin needs matching and non-matching statements")
    statements = list(matching) + list(nonmatching)
    conversation: Messages = [{"role": "user", "content": ask}]
    lps = score_shared(model, tokenizer, method, conversation, statements, batch_size=batch_size)
    means = [float(lp.mean()) for lp in lps]
    k = len(matching)
    return sum(means[:k]) / k - sum(means[k:]) / len(nonmatching)


def _banks_injected(model: nn.Module) -> bool:
    """Whether an `inject` block is live on `model` (then scoring names the steered positions for it)."""
    return text_config(model)._attn_implementation in STOCK_TO_STEERED.values()
