"""Contract 3 (DESIGN.md) written in plain torch: the reference the op's tests compare against.

The arithmetic follows the contract step by step: a = round(sum of partials in rank order,
f32), h = a + residual in f32 and rounded, the norm of round(h) (or of the f32 h), its sum of
squares in the one order fixed by H (the GPU's row layout, src/common/row_layout.h),
y = round((h * r) * w') (or round(round(h * r) * w')), and FP8 e4m3fn with round-to-nearest-even,
saturating at +-448; `rounding` takes the recipe's flags by name.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

FP8_MAX = 448.0


def _fp8(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def _pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= s, as exp2(ceil(log2(s))) gives it: zeros, inf and NaN stay
    (frexp gives them the exponent 0, which would make them 1)."""
    mantissa, exponent = torch.frexp(s)  # s = m * 2^e, m in [0.5, 1)
    up = torch.where(mantissa == 0.5, s, torch.ldexp(torch.ones_like(s), exponent))
    return torch.where(torch.isfinite(s) & (s != 0), up, s)


def row_sum_in_kernel_order(values: torch.Tensor) -> torch.Tensor:
    """Sum of each row of values [T, H] (f32) in the kernels' order: thread t of the row's block
    sums its 8-element vectors t, t + threads, ... element by element from +0; a xor butterfly
    in each warp of 32; the warps' sums in order. Rows the layout does not cover (H % 8 != 0)
    are summed left to right."""
    tokens, hidden = values.shape
    # src/common/row_layout.h: kMaxRowThreads, kMaxRowVecsPerThread (an independent copy: the
    # tests compare it bit for bit with the library's reference, so a drift fails them).
    max_threads, max_per_thread = 512, 4
    if hidden % 8 != 0 or hidden > max_threads * max_per_thread * 8:
        total = torch.zeros(tokens, dtype=torch.float32)
        for c in range(hidden):
            total = total + values[:, c]
        return total
    vecs = hidden // 8
    per_thread = 2 if vecs >= 256 else 1  # kRowVecsForTwoPerThread
    while per_thread < max_per_thread and per_thread * max_threads < vecs:
        per_thread *= 2
    threads = (vecs + per_thread - 1) // per_thread
    threads = (threads + 31) // 32 * 32
    v = values.reshape(tokens, vecs, 8)
    lane = torch.zeros(tokens, threads, dtype=torch.float32)
    for k in range(per_thread):
        index = torch.arange(threads) + k * threads
        valid = index < vecs
        for i in range(8):
            lane[:, valid] = lane[:, valid] + v[:, index[valid], i]
    lane = lane.reshape(tokens, threads // 32, 32)
    for offset in (16, 8, 4, 2, 1):
        lane = lane + lane[..., torch.arange(32) ^ offset]
    total = lane[:, 0, 0]
    for w in range(1, threads // 32):
        total = total + lane[:, w, 0]
    return total


def _norm_rows(u: torch.Tensor, weight: torch.Tensor, eps: float, weight_bias: float,
               rounding: Sequence[str], dtype: torch.dtype) -> torch.Tensor:
    """Step 3 on f32 rows u: (u * r) * w' unrounded, r = 1 / sqrt(sum of squares / H + eps) in
    f32, round(u * r) first under weight_after_round; w' = w + weight_bias in f32 (or rounded to
    w's dtype)."""
    hidden = u.shape[-1]
    sum_sq = row_sum_in_kernel_order(u * u).unsqueeze(-1)
    # NOTE: sqrt in double, rounded once to f32, is the correctly rounded f32 sqrt (sqrtf);
    # torch's vectorized f32 sqrt on the CPU is not.
    r = 1.0 / torch.sqrt((sum_sq / hidden + eps).double()).float()
    w = weight.float()
    if weight_bias != 0.0:
        w = w + weight_bias
        if "weight_bias_in_weight_dtype" in rounding:
            w = w.to(weight.dtype).float()
    n = u * r
    if "weight_after_round" in rounding:
        n = n.to(dtype).float()
    return n * w


def allreduce_rmsnorm(partials: Sequence[torch.Tensor], residual: Optional[torch.Tensor],
                      weight: torch.Tensor, scale: Optional[torch.Tensor], *,
                      emit: Sequence[str], eps: float = 1e-6, weight_bias: float = 0.0,
                      quant: str = "none", group_size: int = 128, scale_layout: str = "row",
                      scale_fmt: str = "f32", rounding: Sequence[str] = (),
                      local: bool = False, sum_scale: float = 1.0,
                      partials2: Optional[Sequence[torch.Tensor]] = None, first_scale: float = 1.0,
                      second_scale: float = 1.0,
                      second_sum_into_residual: bool = False,
                      pre_weight: Optional[torch.Tensor] = None,
                      pre_eps: Optional[float] = None,
                      bias: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    shape = partials[0].shape
    dtype = partials[0].dtype
    hidden = shape[-1]
    tokens = partials[0].reshape(-1, hidden).shape[0]

    def reduced(ps: Sequence[torch.Tensor]) -> torch.Tensor:
        # 1. a = round(x_0 + x_1 + ... ) in f32, rank order.
        xs = [p.reshape(-1, hidden) for p in ps]
        acc = xs[0].float()
        for x in xs[1:]:
            acc = acc + x.float()
        return acc.to(dtype)

    def times(v: torch.Tensor, s: float) -> torch.Tensor:
        # round(v * s), the f32 product (the scale taken as f32); a scale of 1 is no step.
        return v if s == 1.0 else (v.float() * torch.tensor(s, dtype=torch.float32)).to(dtype)

    a = reduced(partials[:1] if local else partials)
    # 1a. Two all_reduces summed: round(round(a * first_scale) + round(a2 * second_scale)); or
    # the second into the residual first: round(residual + round(a2 * second_scale)).
    summed = a
    if partials2 is not None:
        a2 = reduced(partials2[:1] if local else partials2)
        if second_sum_into_residual:
            residual = (residual.reshape(-1, hidden).float()
                        + times(a2, second_scale).float()).to(dtype)
        else:
            summed = (times(a, first_scale).float() + times(a2, second_scale).float()).to(dtype)
    # 1b. A bias added to the sum first: round(a + bias), the same bias for every row ([H]) or
    # each row its own (x's shape).
    if bias is not None:
        summed = (summed.float() + bias.reshape(-1, hidden).float()).to(dtype)
    # 1c. a' = round(a * sum_scale), where the graph scaled the sum before the add.
    scaled = times(summed, sum_scale)
    # 1d. The norm of the sum before the residual add (pre_weight), rounded: sandwich norms.
    if pre_weight is not None:
        scaled = _norm_rows(scaled.float(), pre_weight, eps if pre_eps is None else pre_eps,
                            weight_bias, rounding, dtype).to(dtype)
    # 2. h = a' + residual in f32 (the residual bf16/f16 or f32), residual_out = round(h) or,
    # under residual_out_f32, the f32 h; the norm reads round(h) or the f32 h.
    if residual is not None:
        h32 = scaled.float() + residual.reshape(-1, hidden).float()
        h = h32 if "residual_out_f32" in rounding else h32.to(dtype)
        u = h32 if "norm_input_f32" in rounding else h32.to(dtype).float()
    else:
        h, u = scaled, scaled.float()
    # 3. y = round((u * r) * w') or round(round(u * r) * w') (_norm_rows); the norm output
    # unrounded, in f32, under norm_out_f32 (quant none: nothing quantizes it).
    y = _norm_rows(u, weight, eps, weight_bias, rounding, dtype)
    if "norm_out_f32" not in rounding:
        y = y.to(dtype)
    divide_default = quant != "fp8_tensor"
    divides = divide_default != ("scale_op_swapped" in rounding)

    results = {"allreduce": [a.reshape(shape)], "norm": [y.reshape(shape)],
               "residual": [h.reshape(shape)]}
    # 4. quantization of the rounded y.
    if quant == "fp8_tensor":
        sc = scale.float().reshape(())
        qv = y.float() / sc if divides else y.float() * (1.0 / sc)
        results["quant"] = [_fp8(qv).reshape(shape)]
    elif quant in ("fp8_token", "fp8_group"):
        g = hidden if quant == "fp8_token" else group_size
        groups = hidden // g
        yg = y.float().reshape(tokens, groups, g)
        amax = yg.abs().amax(-1)  # [T, G]
        floor_after_div = "scale_floor_after_div" in rounding
        if scale_fmt == "ue8m0":
            # Rounded up to a power of two (from max(s, 1e-10) under ue8m0_floor), then under
            # scale_floor_after_div floored: vLLM's QuantFP8 UE8M0 form.
            s = amax.clamp_min(1e-10) / FP8_MAX
            s = _pow2_ceil(s.clamp_min(1e-10) if "ue8m0_floor" in rounding else s)
            if floor_after_div:
                s = s.clamp_min(1.0 / (FP8_MAX * 512.0))
        elif floor_after_div:
            s = (amax / FP8_MAX).clamp_min(1.0 / (FP8_MAX * 512.0))
        else:
            s = amax.clamp_min(1e-10) / FP8_MAX
        qv = yg / s.unsqueeze(-1) if divides else yg * (1.0 / s.unsqueeze(-1))
        q = _fp8(qv).reshape(shape)
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
