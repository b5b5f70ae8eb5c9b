"""Quantized bank storage: int8 and int4 keys and values with float16 scales, dequantized when a bank is read.

Symmetric absmax quantization: `q = round(x / s)` clamped to `[-qmax, qmax]` (127 for int8, 7 for int4) and
`x ~ q * s`, so every value is off by at most `s / 2`. Scales are per slot and KV head (`[H, M, 1]`: one scale per
stored d-vector) or, for keys, optionally per channel (`[H, 1, d]`: one scale per KV head and channel over all
slots, KIVI's choice for keys, whose outliers sit in fixed channels). Values are always scaled per slot. int4 packs
two values per byte along the head dimension. A `QuantizedTensor` stores exactly these bytes (`nbytes`), and
`dequantize()` gives back a tensor of the bank's dtype, so the operator never sees quantized numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from memory_inception.errors import BankError

Scales = Literal["slot", "channel"]
BITS = (8, 4)
QMAX = {8: 127, 4: 7}
SCALE_DTYPE = torch.float16
SCALES = ("slot", "channel")


@dataclass(frozen=True)
class Quantization:
    """How a bank is stored: `bits` (8 or 4) and where the key scales sit (values are always per slot)."""

    bits: int
    key_scales: Scales = "slot"

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise BankError(f"quantization bits must be 8 or 4, not {self.bits!r}")
        if self.key_scales not in SCALES:
            raise BankError(f"key scales must be 'slot' or 'channel', not {self.key_scales!r}")

    @property
    def name(self) -> str:
        """'int8', 'int4', 'int8-channel' or 'int4-channel' (what `parse_quantization` reads back)."""
        return f"int{self.bits}" + ("-channel" if self.key_scales == "channel" else "")

    def to_json(self) -> dict[str, Any]:
        return {"bits": self.bits, "keys": self.key_scales, "values": "slot"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Quantization:
        return cls(int(data["bits"]), data.get("keys", "slot"))


def parse_quantization(spec: str | Quantization | None) -> Quantization | None:
    """None, a `Quantization`, or one of 'int8', 'int4', 'int8-channel', 'int4-channel' (keys scaled per channel)."""
    if spec is None or isinstance(spec, Quantization):
        return spec
    names = {q.name: q for q in (Quantization(b, s) for b in BITS for s in SCALES)}
    if spec not in names:
        raise BankError(f"unknown quantization {spec!r}; use one of {', '.join(names)}")
    return names[spec]


@dataclass(frozen=True)
class QuantizedTensor:
    """A `[H, M, d]` bank tensor stored quantized: `data` (int8 `[H, M, d]`, or uint8 `[H, M, d/2]` for int4, two
    values per byte) and float16 `scale` (`[H, M, 1]` per slot or `[H, 1, d]` per channel)."""

    data: torch.Tensor
    scale: torch.Tensor
    bits: int
    head_dim: int
    dtype: torch.dtype  # what dequantize() returns: the bank's dtype when it was quantized

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.data.shape[:2], self.head_dim))

    @property
    def nbytes(self) -> int:
        """Bytes stored: the quantized values plus their scales."""
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale))

    def dequantize(self) -> torch.Tensor:
        """`q * s` as a `[H, M, d]` tensor of `dtype`."""
        q = unpack_int4(self.data, self.head_dim) if self.bits == 4 else self.data
        return (q.float() * self.scale.float()).to(self.dtype)

    def rows(self, index: torch.Tensor) -> QuantizedTensor:
        """The KV heads `index` (dim 0), still quantized (both scale layouts keep the head axis first)."""
        index = index.to(self.data.device)
        return QuantizedTensor(self.data[index].contiguous(), self.scale[index].contiguous(), self.bits,
                               self.head_dim, self.dtype)


def quantize_tensor(t: torch.Tensor, bits: int, scales: Scales = "slot") -> QuantizedTensor:
    """`t` `[H, M, d]` quantized to `bits` with scales per slot (`[H, M, 1]`) or per channel (`[H, 1, d]`)."""
    if t.dim() != 3:
        raise BankError(f"bank tensors are [H, M, d]; got shape {tuple(t.shape)}")
    qmax = QMAX[bits]
    x = t.detach().float()
    absmax = x.abs().amax(dim=-1 if scales == "slot" else 1, keepdim=True)
    scale = (absmax / qmax).clamp(min=torch.finfo(SCALE_DTYPE).tiny).to(SCALE_DTYPE)
    if not bool(torch.isfinite(scale).all()):
        raise BankError(f"bank values up to {float(absmax.max()):.3g} overflow the float16 scales; the bank is damaged")
    q = torch.round(x / scale.float()).clamp(-qmax, qmax).to(torch.int8)
    data = pack_int4(q) if bits == 4 else q
    return QuantizedTensor(data.contiguous(), scale.contiguous(), bits, t.shape[-1], t.dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] `[..., d]` as uint8 `[..., ceil(d/2)]`: element 2i in the low nibble, 2i+1 high."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    if u.shape[-1] % 2:
        u = torch.nn.functional.pad(u, (0, 1), value=8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, d: int) -> torch.Tensor:
    """The int8 values `[..., d]` that `pack_int4` packed."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)[..., :d]


def stored(t: torch.Tensor | QuantizedTensor) -> torch.Tensor:
    """The tensor a bank slot store holds, dequantized when it is quantized."""
    return t.dequantize() if isinstance(t, QuantizedTensor) else t


def stored_nbytes(t: torch.Tensor | QuantizedTensor) -> int:
    """Bytes a bank slot store holds (quantized values plus scales, or the plain tensor's)."""
    return t.nbytes if isinstance(t, QuantizedTensor) else t.numel() * t.element_size()
