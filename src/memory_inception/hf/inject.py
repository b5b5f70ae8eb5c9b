"""`inject(model, steering)`: steer a model inside a `with` block and restore it exactly on exit.

Nothing is monkey-patched: the model's attention implementation is switched to a registered one
(`mi_sdpa` / `mi_eager`), each site layer's attention module carries its `LayerPlan`, and two hooks record
per forward which rows are steered (decoder pre-hook) and the RoPE applied (rotary forward hook)."""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import nn

from memory_inception.core.architecture import (
    attention_modules,
    geometry,
    inverse_tables,
    is_steered,
    model_fingerprint,
    rotary_embedding,
    text_config,
)
from memory_inception.core.plan import ForwardState, LayerPlan, plan_layers
from memory_inception.core.steering import Steering
from memory_inception.errors import SteeringError
from memory_inception.hf.attention import STOCK, steered_name

STEER_MASK_KWARG = "mi_steer_mask"


class Injection:
    """The live injection: use as a context manager (`with mi.inject(model, steering):`)."""

    def __init__(self, model: nn.Module, steering: Steering) -> None:
        self.model = model
        self.steering = steering
        self.state = ForwardState()
        self.plans: dict[int, LayerPlan] = self._plan() if steering.banks else {}
        self._exit = ExitStack()  # what __exit__ undoes
        self._original_impl: str | None = None
        self._active = False

    # ---- planning -----------------------------------------------------------------------------------
    def _plan(self) -> dict[int, LayerPlan]:
        model, st = self.model, self.steering
        param = next(model.parameters())
        return plan_layers(
            st,
            geometry(model),
            fingerprint=model_fingerprint(model),
            device=param.device,
            dtype=param.dtype,
            prefix_rope=self._prefix_rope() if st.positions == "prefix" else None,
            state=self.state,
        )

    def _prefix_rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of the prefix positions -M_total .. -1 (banks laid out in order before the first token)."""
        total = sum(b.num_slots for _, b in self.steering.banks)
        param = next(self.model.parameters())
        positions = torch.arange(-total, 0, device=param.device).unsqueeze(0)
        cos, sin = rotary_embedding(self.model)(torch.zeros(1, dtype=param.dtype, device=param.device), positions)
        return cos[0], sin[0]  # [M_total, d], broadcast over KV heads

    # ---- per-forward bookkeeping ---------------------------------------------------------------------
    def _before_forward(self, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        explicit = kwargs.pop(STEER_MASK_KWARG, None)
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        batch, q_len = (ids.shape if ids is not None else embeds.shape[:2])
        # transformers >= 5.20 passes the decoder's cache as `cache`, earlier versions as `past_key_values`
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        rows = self._rows(explicit, batch, q_len, past, kwargs.get("attention_mask"))
        valid = None
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            rows, valid = row_lists(rows)
        self.state.begin(rows, valid)
        return args, kwargs

    def _rows(self, explicit, batch: int, q_len: int, past: int, attention_mask) -> None | str | torch.Tensor:
        if explicit is not None:
            explicit = torch.as_tensor(explicit, dtype=torch.bool, device=self._device)
            if explicit.shape != (batch, q_len):
                raise SteeringError(
                    f"{STEER_MASK_KWARG} has shape {tuple(explicit.shape)}, expected (batch, length) = {(batch, q_len)}"
                )
            if bool(explicit.all()):
                return "all"
            return explicit if bool(explicit.any()) else None
        if past > 0 and q_len == 1:  # decode: every generated token is steered
            return "all"
        mode = self.steering.prefill
        if mode == "none":
            return None
        if mode == "all" or q_len == 1:
            return "all"
        if attention_mask is None or attention_mask.dim() != 2:
            last = torch.full((batch, 1), q_len - 1, dtype=torch.long, device=self._device)
        else:  # last non-padding token of each row (right padding), q_len - 1 with left padding
            tail = attention_mask[:, -q_len:].to(torch.long)
            pos = torch.arange(q_len, device=tail.device).expand_as(tail)
            last = torch.where(tail > 0, pos, -1).amax(-1, keepdim=True)
            last = torch.where(last < 0, q_len - 1, last).to(self._device)
        return last

    def _capture_rope(self, module: nn.Module, _args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.state.cos, self.state.sin = inverse_tables(module, *output)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- enter / exit --------------------------------------------------------------------------------
    def __enter__(self) -> Injection:
        if self._active:
            raise SteeringError("this injection is already active; leave its `with` block before entering it again")
        if not self.plans:
            return self  # no banks or no sites: the model runs untouched
        config = text_config(self.model)
        impl = config._attn_implementation
        if is_steered(self.model):
            raise SteeringError("this model is already steered; leave the other `mi.inject` block first")
        if impl not in STOCK:
            raise SteeringError(
                f"attention implementation {impl!r} is not supported; load the model with "
                "attn_implementation='sdpa' or 'eager' (also 'flex_attention', and 'flash_attention_2' where "
                "flash-attn is installed), or call model.set_attn_implementation('sdpa')"
            )
        self._original_impl = impl
        with ExitStack() as stack:  # undone in reverse order on exit, or at once if anything here fails
            stack.callback(self._unplan)
            rope = rotary_embedding(self.model)
            decoder = _owner_of(self.model, rope)
            stack.enter_context(decoder.register_forward_pre_hook(self._before_forward, with_kwargs=True))
            if self.steering.positions == "canonical":
                stack.enter_context(rope.register_forward_hook(self._capture_rope))
            modules = attention_modules(self.model)
            for layer, plan in self.plans.items():
                modules[layer]._mi_plan = plan
            self.model.set_attn_implementation(steered_name(impl))
            self._active = True
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _unplan(self) -> None:
        """Drop the plans and the steered attention implementation; forget the forward's prepared state."""
        for module in attention_modules(self.model).values():
            module.__dict__.pop("_mi_plan", None)
        if self._original_impl is not None and text_config(self.model)._attn_implementation != self._original_impl:
            self.model.set_attn_implementation(self._original_impl)
        self.state.clear()
        self._active = False


def row_lists(steer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A `[B, T]` bool mask of steered positions as per-row position lists `[B, R]` (R: the most in a row).

    Shorter rows repeat their first steered position (computed and written twice, to the same value). A row with
    none lists position 0, marked not real in the returned `[B, R]` mask (None when every row has one), so its
    write puts back the stock output.
    """
    counts = steer.sum(-1)
    width = int(counts.max())
    order = torch.sort((~steer).to(torch.int8), dim=-1, stable=True).indices[:, :width]  # steered first, in order
    listed = torch.arange(width, device=steer.device).view(1, -1) < counts.view(-1, 1)
    rows = torch.where(listed, order, order[:, :1])
    has_any = counts > 0
    if bool(has_any.all()):
        return rows, None
    return torch.where(has_any.view(-1, 1), rows, torch.zeros_like(rows)), has_any.view(-1, 1).expand_as(rows)


def inject(model: nn.Module, steering: Steering | Injection | None) -> Injection:
    """Steer `model` with `steering` inside a `with` block; on exit the model is exactly as before.

    An `Injection` (planned once, e.g. when a server validates a request) is returned as it is, so callers that
    prepare steering ahead of generation do not plan it twice; it may be entered again, one block at a time.
    """
    if isinstance(steering, Injection):
        if steering.model is not model:
            raise SteeringError("this Injection was planned for another model; plan it with mi.inject(model, ...)")
        return steering
    return Injection(model, steering if steering is not None else Steering())


def _owner_of(model: nn.Module, child: nn.Module) -> nn.Module:
    """The module that holds `child` directly (the decoder stack that owns the rotary embedding)."""
    for module in model.modules():
        if any(c is child for c in module.children()):
            return module
    raise SteeringError("could not find the decoder module that owns the rotary embedding")
