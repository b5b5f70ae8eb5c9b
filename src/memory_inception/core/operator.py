"""The Memory Inception operator at one site (spec section 3), written in the spec's order.

`bank_evidence` is the bank side: bank scores, gains and gate, normalization. `site_attention` is the whole
operator explicitly (prompt scores, bank evidence, one softmax, mixture): the reference. `mix_prompt_and_banks`
is the same mixture computed from a fused prompt kernel's output and log-sum-exp, what runs at the sites.
`memory_evidence` is the bank side of a memory bank (`core.memory`): each query row's top-k slots, whose scores and
values join the mixture after the ordinary banks' (both forms take it; with k = M it is the full mixture).
Diagnostics (`plan.trace`) see the bank scores, each slot's mixture weight and the prompt's weight."""

from __future__ import annotations

import torch

from memory_inception.core.plan import LayerPlan


def bank_evidence(
    bank_query: torch.Tensor, plan: LayerPlan, log_visible: torch.Tensor | float, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bank scores `b` and the bank's side of the mixture `z = b + c - log M (+ log N)`, `[B, Hs, R, M]` each.

    The evidence offsets c_b - log M_b are shifted by + log N_t so the prompt scores need no offset:
    softmax([x - log N ; b - log M + c]) == softmax([x ; b - log M + c + log N]).
    """
    # bank scores b_m = s <q~_t, k~_m>
    b = torch.matmul(bank_query, plan.bank_keys.transpose(-1, -2)) * scaling
    offset = plan.slot_bias
    if plan.target is not None:
        # query gate u = gate_scale (max_m b_target - max_n b_reference), g+ = sigmoid(u), g- = sigmoid(-u)
        u = plan.gate_scale * (b[..., plan.target].amax(-1, keepdim=True) - b[..., plan.reference].amax(-1, keepdim=True))
        on_target, on_reference = plan.gate_masks
        gains = (plan.positive * torch.sigmoid(u)) * on_target - (plan.negative * torch.sigmoid(-u)) * on_reference
        offset = offset + gains
    if plan.normalize:
        offset = offset + log_visible
    return b, b + offset


def memory_evidence(
    bank_query: torch.Tensor, plan: LayerPlan, log_visible: torch.Tensor | float, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The memory's side of the mixture: per query row its top-k slots' bank scores `b` and `z = b + c - log(k or M)
    (+ log N)`, `[B, Hs, R, k]` each, and their values `[B, Hs, R, k, d]`."""
    memory = plan.memory
    # retrieval: the k slots of largest bank score b_m = s <q~_t, k~_m>, and those scores
    b, values = memory.retrieve(bank_query, scaling)  # type: ignore[union-attr]
    # constant gain and normalization (memories are never gated)
    offset = memory.bias + (log_visible if plan.normalize else 0.0)  # type: ignore[union-attr]
    return b, b + offset, values


def site_attention(
    query: torch.Tensor,
    bank_query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    log_visible: torch.Tensor | float,
    scaling: float,
    plan: LayerPlan,
) -> torch.Tensor:
    """Steered output of selected heads, explicitly: one softmax over prompt and bank slots (spec section 3).

    The reference form of the operator (it materializes the prompt scores `[R, S]`); `mix_prompt_and_banks`
    computes the same with a fused prompt kernel. query / bank_query: `[B, Hs, R, d]` (bank_query is pre-RoPE in
    canonical mode); key / value: `[B, Hs, S, d]` (with grouped heads, Hs is the KV heads and R folds each
    group's query heads); prompt_mask: additive `[B, 1, R, S]` or None; log_visible: log N_t, the number of keys
    each row sees (`[B, 1, R, 1]` or a float). Returns `[B, Hs, R, d]`.
    """
    # prompt scores x_j = s <q_t, k_j> over visible keys
    x = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if prompt_mask is not None:
        x = x + prompt_mask
    b, z = bank_evidence(bank_query, plan, log_visible, scaling)
    if plan.memory is not None:
        b_memory, z_memory, memory_values = memory_evidence(bank_query, plan, log_visible, scaling)
        b, z = torch.cat([b, b_memory], dim=-1), torch.cat([z, z_memory], dim=-1)
    # mixture: pi = softmax over sources == one softmax over the concatenated scores
    probs = torch.softmax(torch.cat([x, z], dim=-1), dim=-1, dtype=torch.float32).to(value.dtype)
    s = key.shape[-2]
    if plan.trace is not None:
        plan.trace(plan, b, probs[..., s:], probs[..., :s].sum(-1))
    if plan.memory is None:
        return torch.matmul(probs[..., :s], value) + torch.matmul(probs[..., s:], plan.bank_values)
    m = plan.bank_values.shape[-2]
    return (torch.matmul(probs[..., :s], value) + torch.matmul(probs[..., s : s + m], plan.bank_values)
            + retrieved_output(probs[..., s + m :], memory_values))


def mix_prompt_and_banks(
    prompt_out: torch.Tensor,
    prompt_lse: torch.Tensor,
    bank_query: torch.Tensor,
    log_visible: torch.Tensor | float,
    scaling: float,
    plan: LayerPlan,
) -> torch.Tensor:
    """The operator from the prompt attention's output and log-sum-exp (a fused kernel's) and the explicit banks.

    softmax([x ; z]) [V ; V~] = (e^Lx o_x + e^Lz o_z) / (e^Lx + e^Lz), with Lx = LSE(x), Lz = LSE(z) and o_x, o_z
    each source's own attention output: exact, and the prompt scores are never materialized.
    prompt_out `[B, Hs, R, d]`, prompt_lse `[B, Hs, R]`; returns `[B, Hs, R, d]` in prompt_out's dtype.
    """
    b, z = bank_evidence(bank_query, plan, log_visible, scaling)
    if plan.memory is not None:
        b_memory, z_memory, memory_values = memory_evidence(bank_query, plan, log_visible, scaling)
        b, z = torch.cat([b, b_memory], dim=-1), torch.cat([z, z_memory], dim=-1)
    z = z.float()
    bank_lse = torch.logsumexp(z, dim=-1)
    total = torch.logaddexp(prompt_lse, bank_lse)
    w_prompt = torch.exp(prompt_lse - total).unsqueeze(-1)
    slot_weights = torch.exp(z - total.unsqueeze(-1))  # each slot's share of the whole mixture
    if plan.trace is not None:
        plan.trace(plan, b, slot_weights, w_prompt.squeeze(-1))
    if plan.memory is None:
        bank_out = torch.matmul(slot_weights.to(plan.bank_values.dtype), plan.bank_values)
    else:
        m = plan.bank_values.shape[-2]
        bank_out = (torch.matmul(slot_weights[..., :m].to(plan.bank_values.dtype), plan.bank_values).float()
                    + retrieved_output(slot_weights[..., m:], memory_values).float())
    return (w_prompt * prompt_out.float() + bank_out.float()).to(prompt_out.dtype)


def retrieved_output(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Sum over each row's own retrieved slots: weights `[B, Hs, R, k]`, values `[B, Hs, R, k, d]` -> `[B, Hs, R, d]`."""
    return torch.matmul(weights.unsqueeze(-2).to(values.dtype), values).squeeze(-2)
