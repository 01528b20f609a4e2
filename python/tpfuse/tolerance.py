"""Distances that DESIGN.md Contract 3's tolerance is stated in, for comparing results of the
fused op with a reference in Python (the C++ side: src/common/tolerance.h)."""

from __future__ import annotations

import torch

__all__ = ["ulp_distance_16", "fp8_ulp", "fp8_step_distance"]


def _ordered(bits: torch.Tensor, sign_bit: int) -> torch.Tensor:
    """Bit patterns of a sign-magnitude float as integers in the order of their values."""
    b = bits.to(torch.int64) & ((sign_bit << 1) - 1)
    return torch.where(b >= sign_bit, -(b - sign_bit), b)


def ulp_distance_16(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units in the last place of a 16-bit float (bf16 or f16), per element."""
    return (_ordered(a.view(torch.int16), 0x8000) - _ordered(b.view(torch.int16), 0x8000)).abs()


def fp8_step_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in steps between adjacent e4m3fn values (a, b: float8_e4m3fn), per element."""
    return (_ordered(a.view(torch.uint8), 0x80) - _ordered(b.view(torch.uint8), 0x80)).abs()


def fp8_ulp(v: torch.Tensor) -> torch.Tensor:
    """The spacing of e4m3fn values at |v| (2^-9 among subnormals)."""
    exponent = torch.floor(torch.log2(v.abs().clamp_min(2.0 ** -6)))
    return torch.exp2(exponent - 3)
