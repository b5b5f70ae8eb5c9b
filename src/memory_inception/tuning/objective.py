"""The label-free control `mi.tune` maximizes: reply contrast.

A bank should make the model answer as it answers when the bank's text is its visible system prompt. On a few
neutral prompts the model first answers twice, greedily and visibly prompted: once with the target text
(replies y_T) and once with the reference text (y_R; without a reference, a neutral text of the same length,
so that what any system text of that length does cancels). A steering's control is how much it raises the
likelihood of y_T against y_R over what the plain model gives them:

    contrast(s) = mean_p [ lp_s(y_T,p) - lp_s(y_R,p) ] - mean_p [ lp_0(y_T,p) - lp_0(y_R,p) ]

with lp the mean per-token log-probability of a reply as the assistant's own, steered exactly as if it had
generated it (generation semantics: the last prompt token and every reply token). It is the persona
statement margin with the model's own replies in place of labelled statements: no trait statements, no labels,
only the bank's text. A shift that moves both reply sets alike (what any bank does to any reply) cancels.

Scoring reuses the prompts' plain KV cache: with `prefill="last"` every prompt token but the last is computed
exactly as without steering, so only the last prompt token and the replies run per candidate.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from memory_inception.core.architecture import cache_kwargs, output_cache
from memory_inception.core.steering import Steering
from memory_inception.errors import SteeringError
from memory_inception.hf.inject import STEER_MASK_KWARG, inject
from memory_inception.hf.text import encode, left_pad, model_device, pad_token_id
from memory_inception.methods.interface import Messages, Plain
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import generate, render

logger = logging.getLogger(__name__)

# A reference text with no persona, style or topic: cut or repeated to the target text's length.
NEUTRAL_TEXT = (
    "You are an assistant. You read the question and you answer it. You use plain words. You give the answer "
    "and then you stop. You do not add anything that was not asked. "
)


def neutral_text(tokenizer: Any, like: str) -> str:
    """`NEUTRAL_TEXT` repeated or cut (at a word) to about as many tokens as `like`."""
    want = max(1, len(encode(tokenizer, like)))
    words = (NEUTRAL_TEXT * (1 + want // max(1, len(encode(tokenizer, NEUTRAL_TEXT))))).split()
    out: list[str] = []
    for word in words:
        if out and len(encode(tokenizer, " ".join(out + [word]))) > want:
            break
        out.append(word)
    return " ".join(out)


class ReplyContrast:
    """The reply-contrast control of one target text against one reference text on a set of prompts.

    Built once (two visibly prompted greedy generations and the prompts' plain KV cache); each call scores a
    steering with one forward over the replies.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        target_text: str,
        reference_text: str,
        prompts: Sequence[str | Messages],
        *,
        max_new_tokens: int = 32,
    ) -> None:
        if not prompts:
            raise SteeringError("the reply contrast needs at least one prompt")
        if not target_text.strip() or not reference_text.strip():
            raise SteeringError("the reply contrast needs a target text and a reference text (a bank's text)")
        self.model, self.tokenizer = model, tokenizer
        self.conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
        self.target_text, self.reference_text = target_text, reference_text
        targets = generate(model, tokenizer, Prompting(target_text), self.conversations, max_new_tokens=max_new_tokens)
        references = generate(model, tokenizer, Prompting(reference_text), self.conversations,
                              max_new_tokens=max_new_tokens)
        kept = [i for i, (t, r) in enumerate(zip(targets, references)) if encode(tokenizer, t) and encode(tokenizer, r)]
        if not kept:
            raise SteeringError("every prompt got an empty reply; use other prompts or a longer max_new_tokens")
        if len(kept) < len(targets):
            logger.info("reply contrast: %d of %d prompts got an empty reply and are left out",
                        len(targets) - len(kept), len(targets))
        self.conversations = [self.conversations[i] for i in kept]
        self.target_replies = [targets[i] for i in kept]
        self.reference_replies = [references[i] for i in kept]
        self._prepare()
        self.plain = self.per_prompt(None)

    def _prepare(self) -> None:
        """Token rows (two replies per prompt: target, reference) and the plain cache of every prompt token but
        the last."""
        device = model_device(self.model)
        prompts = [render(self.tokenizer, Plain(), conv)[0] for conv in self.conversations]
        conts = []
        for t, r in zip(self.target_replies, self.reference_replies):
            conts += [encode(self.tokenizer, t), encode(self.tokenizer, r)]
        heads = [p[:-1] for p in prompts for _ in range(2)]
        lasts = [p[-1] for p in prompts for _ in range(2)]
        head = left_pad(heads, pad_token_id(self.tokenizer), device)
        with torch.no_grad():
            self._cache = output_cache(self.model(**head, use_cache=True))
        n, width = len(conts), 1 + max(len(c) for c in conts)
        suffix = torch.full((n, width), pad_token_id(self.tokenizer), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        steer = torch.zeros((n, width), dtype=torch.bool)
        for row, (last, c) in enumerate(zip(lasts, conts)):  # right padding: later pads cannot change earlier logits
            suffix[row, : 1 + len(c)] = torch.tensor([last] + c)
            mask[row, : 1 + len(c)] = 1
            steer[row, : 1 + len(c)] = True
        lengths = head["attention_mask"].sum(-1, keepdim=True).cpu()
        self._inputs = {
            "input_ids": suffix.to(device),
            "attention_mask": torch.cat([head["attention_mask"], mask.to(device)], 1),
            "position_ids": (lengths + torch.arange(width)).to(device),
        }
        self._steer = steer.to(device)
        self._conts = conts

    def per_prompt(self, steering: Steering | None) -> np.ndarray:
        """`lp(y_T) - lp(y_R)` per prompt under `steering` (None: the plain model)."""
        if steering is not None and steering.prefill != "last":
            raise SteeringError("the reply contrast reuses the plain prompt cache, so it needs prefill='last'")
        past = copy.deepcopy(self._cache)
        with torch.no_grad(), inject(self.model, steering) as injection:
            extra = {STEER_MASK_KWARG: self._steer} if injection.plans else {}
            logits = self.model(**self._inputs, use_cache=True, **cache_kwargs(self.model, past), **extra).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        means = []
        for row, c in enumerate(self._conts):
            target = torch.tensor(c, device=logprobs.device).unsqueeze(-1)
            means.append(float(logprobs[row, : len(c)].gather(-1, target).mean()))
        pairs = np.asarray(means).reshape(-1, 2)
        return pairs[:, 0] - pairs[:, 1]

    def __call__(self, steering: Steering | None) -> float:
        """The contrast of `steering` over the plain model (0 for the plain model)."""
        return float((self.per_prompt(steering) - self.plain).mean())
