"""An independent, plain implementation of the spec's operator, for tests only.

It shares nothing with `memory_inception.operator` / `injection`: its own RoPE (from the config's theta),
its own schedule weights, its own gate and the explicit per-source mixture of spec section 3
(pi = softmax of evidences, then pi-weighted per-source attention), computed with loops over banks.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask


def _theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate x [..., T, d] by integer positions [..., T] (Llama's half-split convention)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = positions.to(torch.float64).unsqueeze(-1) * inv  # [..., T, d/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def schedule_weights(n: int, schedule: str, ranks: list[int] | None = None) -> list[float]:
    if schedule == "flat":
        return [1.0] * n
    if schedule == "middle_heavy":
        return [float(min(i + 1, n - i)) for i in range(n)]
    if schedule == "late_heavy":
        return [float(i + 1) for i in range(n)]
    if schedule == "early_heavy":
        return [float(n - i) for i in range(n)]
    if schedule == "rank_linear":
        return [float(n - r) for r in ranks]
    raise ValueError(schedule)


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    cfg = module._ref_cfg
    B, H, T, d = query.shape
    S = key.shape[-2]
    group = H // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    x_all = torch.matmul(query, k.transpose(-1, -2)) * scaling + attention_mask  # eager mask: always materialized
    out = torch.matmul(torch.softmax(x_all.double(), -1).to(v.dtype), v)  # unsteered heads and rows
    heads = cfg["heads"].get(module.layer_idx)
    if heads is None:
        return out.transpose(1, 2).contiguous(), None
    # which rows are steered: decode (cached, one token) -> all; otherwise by prefill mode
    if T == 1 and S > 1:
        rows = list(range(T))
    elif cfg["prefill"] == "all":
        rows = list(range(T))
    elif cfg["prefill"] == "last":
        rows = [T - 1]
    else:
        rows = []
    positions = kwargs["position_ids"].expand(B, T)
    rho_l = cfg["rho"][module.layer_idx]
    banks = cfg["banks"]  # list of (role, keys[Hkv,M,d], values[Hkv,M,d], gain)
    total = sum(bk.shape[1] for _, bk, _, _ in banks)
    for b in range(B):
        for h in heads:
            g = h // group
            for t in rows:
                q = query[b, h, t].double()
                visible = attention_mask[b, 0, t] > torch.finfo(attention_mask.dtype).min / 2
                x = x_all[b, h, t][visible].double()
                vx = v[b, h][visible].double()
                if cfg["positions"] == "canonical":
                    q_bank = _rope(q.unsqueeze(0), -positions[b, t].view(1), cfg["theta"])[0]
                else:
                    q_bank = q
                scores, vals, start = [], [], -total
                for role, bk, bv, gain in banks:
                    kk = bk[g].double()
                    if cfg["positions"] == "prefix":
                        m = kk.shape[0]
                        kk = _rope(kk, torch.arange(start, start + m), cfg["theta"])
                        start += m
                    scores.append(scaling * kk @ q_bank)
                    vals.append(bv[g].double())
                gp = gm = 1.0
                roles = [r for r, *_ in banks]
                if cfg["gate"] and "target" in roles and "reference" in roles:
                    u = cfg["gate_scale"] * (scores[roles.index("target")].max() - scores[roles.index("reference")].max())
                    gp, gm = torch.sigmoid(u), torch.sigmoid(-u)
                evid = [torch.logsumexp(x, 0) - (math.log(x.numel()) if cfg["normalize"] == "paper" else 0.0)]
                for (role, _, _, gain), sc in zip(banks, scores):
                    if role == "target":
                        c = rho_l * cfg["positive_gain"] * gp
                    elif role == "reference":
                        c = -rho_l * cfg["negative_gain"] * gm
                    else:
                        c = rho_l * gain
                    evid.append(torch.logsumexp(sc, 0) - (math.log(sc.numel()) if cfg["normalize"] == "paper" else 0.0) + c)
                pi = torch.softmax(torch.stack([torch.as_tensor(e, dtype=torch.float64) for e in evid]), 0)
                mixed = pi[0] * (torch.softmax(x, 0) @ vx)
                for i, (sc, vb) in enumerate(zip(scores, vals)):
                    mixed = mixed + pi[i + 1] * (torch.softmax(sc, 0) @ vb)
                out[b, h, t] = mixed.to(out.dtype)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("mi_reference", _reference_attention)
AttentionMaskInterface.register("mi_reference", eager_mask)


@contextmanager
def reference_steering(model, *, banks, heads, rho=1.0, schedule="middle_heavy", ranks=None, positive_gain=1.0,
                       negative_gain=1.0, gate=True, gate_scale=1.0, prefill="last", positions="canonical",
                       normalize="paper", full_per_layer=False):
    """Run `model` with the reference operator. banks: list of (role, Bank, gain); heads: {layer: [heads]}."""
    layers = sorted(heads)
    if full_per_layer:
        rho_per = {layer: rho for layer in layers}
    else:
        w = schedule_weights(len(layers), schedule, [ranks[layer] for layer in layers] if ranks else None)
        rho_per = {layer: rho * wi / sum(w) for layer, wi in zip(layers, w)}
    cfg = {
        "heads": heads, "rho": rho_per, "prefill": prefill, "positions": positions, "normalize": normalize,
        "gate": gate, "gate_scale": gate_scale, "positive_gain": positive_gain, "negative_gain": negative_gain,
        "theta": _theta(model.config),
    }
    attn = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    original = model.config._attn_implementation
    per_layer_banks = {
        m.layer_idx: [(role, bank.keys(m.layer_idx), bank.values(m.layer_idx), gain) for role, bank, gain in banks]
        for m in attn if m.layer_idx in heads
    }
    try:
        for m in attn:
            m._ref_cfg = dict(cfg, banks=per_layer_banks.get(m.layer_idx, []))
        model.set_attn_implementation("mi_reference")
        yield
    finally:
        model.set_attn_implementation(original)
        for m in attn:
            del m._ref_cfg
