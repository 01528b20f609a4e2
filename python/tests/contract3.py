"""Contract 3 (DESIGN.md) written in plain torch: the reference the op's tests compare against.

Covers the default rounding recipe. The arithmetic follows the contract step by step:
a = round(sum of partials in rank order, f32), h = a + residual in f32 and rounded, the norm of
round(h) with the mean of squares taken in double, y = round((h * r) * (w + weight_bias)), and
FP8 e4m3fn with round-to-nearest-even, saturating at +-448.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

FP8_MAX = 448.0


def _fp8(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def _pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    mantissa, exponent = torch.frexp(s)  # s = m * 2^e, m in [0.5, 1)
    return torch.where(mantissa == 0.5, s, torch.ldexp(torch.ones_like(s), exponent))


def allreduce_rmsnorm(partials: Sequence[torch.Tensor], residual: Optional[torch.Tensor],
                      weight: torch.Tensor, scale: Optional[torch.Tensor], *,
                      emit: Sequence[str], eps: float = 1e-6, weight_bias: float = 0.0,
                      quant: str = "none", group_size: int = 128, scale_layout: str = "row",
                      scale_fmt: str = "f32", local: bool = False) -> List[torch.Tensor]:
    shape = partials[0].shape
    dtype = partials[0].dtype
    hidden = shape[-1]
    xs = [p.reshape(-1, hidden) for p in (partials[:1] if local else partials)]
    tokens = xs[0].shape[0]

    # 1. a = round(x_0 + x_1 + ... ) in f32, rank order.
    acc = xs[0].float()
    for x in xs[1:]:
        acc = acc + x.float()
    a = acc.to(dtype)
    # 2. h = round(a + residual).
    h = (a.float() + residual.reshape(-1, hidden).float()).to(dtype) if residual is not None else a
    # 3. y = round((h * r) * (w + weight_bias)), r = 1 / sqrt(f32(mean of squares) + eps).
    hf = h.float()
    mean_sq = (hf.double() * hf.double()).sum(-1, keepdim=True) / hidden
    r = 1.0 / torch.sqrt(mean_sq.float() + eps)
    w = weight.float() + weight_bias
    y = ((hf * r) * w).to(dtype)

    results = {"allreduce": [a.reshape(shape)], "norm": [y.reshape(shape)],
               "residual": [h.reshape(shape)]}
    # 4. quantization of the rounded y.
    if quant == "fp8_tensor":
        inv = 1.0 / scale.float().reshape(())
        results["quant"] = [_fp8(y.float() * inv).reshape(shape)]
    elif quant in ("fp8_token", "fp8_group"):
        g = hidden if quant == "fp8_token" else group_size
        groups = hidden // g
        yg = y.float().reshape(tokens, groups, g)
        s = yg.abs().amax(-1).clamp_min(1e-10) / FP8_MAX  # [T, G]
        if scale_fmt == "ue8m0":
            s = _pow2_ceil(s)
        q = _fp8(yg / s.unsqueeze(-1)).reshape(shape)
        if scale_layout == "col":
            padded = torch.zeros(groups, (tokens + 3) // 4 * 4, dtype=torch.float32)
            padded[:, :tokens] = s.t()
            s = padded
        else:
            s = s.reshape(tuple(shape[:-1]) + (groups,))
        results["quant"] = [q, s]
    out: List[torch.Tensor] = []
    for name in ("allreduce", "norm", "residual", "quant"):
        if name in emit:
            out += results[name]
    return out
