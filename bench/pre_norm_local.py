#!/usr/bin/env python3
"""Sandwich norms' epilogue on one GPU: the fused op that norms the sum before the residual add
and the stream after it (pre_residual_norm) against the two fused ops it replaces, and against
Inductor's kernel for the same chain written in torch.

At world size 1 (a local op) the sum is x itself. Gemma 2/3's form (x * (1 + w) in f32, one
rounding per norm):

    fused:     allreduce_rmsnorm(x, residual, w, pre_weight=w0, weight_bias=1, local=True)
    two ops:   p = allreduce_rmsnorm(x, None, w0, ...);  allreduce_rmsnorm(p, residual, w, ...)
    inductor:  torch.compile(residual + norm(x, w0), then norm(., w))

Every shape is checked first: the fused op and the two ops give the same bits. The share of
16-bit results whose bits differ is printed for the fused op against Inductor's kernel and for
Inductor's kernel against the same chain run eagerly (each sums squares and rounds in its own
order: Contract 3 holds the fused op within 1 ulp of eager torch). Method (the timer of
bench/inductor_epilogue.py): a CUDA graph of --ops-per-graph calls over --input-sets rotating
input sets, the L2 overwritten between replays where the sets are smaller than 2 x L2; the
median of --replays replays, per op.

    python bench/pre_norm_local.py
    python bench/pre_norm_local.py --hidden 3584 --tokens 1,1024 --quant fp8_token --csv out.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tpfuse  # noqa: E402,F401  (registers the op)
from inductor_epilogue import (FP8_MAX, Timer, add_local_bench_arguments,  # noqa: E402
                               lacks_a_gpu, parse_list, parse_quants)
from second_sum_local import same_bits  # noqa: E402

OP = torch.ops.tpfuse.allreduce_rmsnorm
EPS = 1e-6


def emit_of(quant: str) -> List[str]:
    return ["norm", "residual"] if quant == "none" else ["residual", "quant"]


def paths(quant: str) -> Tuple[Callable, Callable]:
    """(fused, two ops), each called as f(x, residual, w0, w) on any device."""
    attrs = dict(quant=quant, weight_bias=1.0, local=True, eps=EPS)

    def fused(x, r, w0, w):
        return OP(x, r, w, None, None, w0, emit=emit_of(quant), pre_eps=EPS, **attrs)

    def two_ops(x, r, w0, w):
        p, = OP(x, None, w0, None, emit=["norm"], weight_bias=1.0, local=True, eps=EPS)
        return OP(p, r, w, None, emit=emit_of(quant), **attrs)
    return fused, two_ops


def gemma_norm(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    f = v.float()
    n = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + EPS)
    return (n * (1.0 + w.float())).to(v.dtype)


def torch_chain(quant: str) -> Callable:
    """The chain written in torch (what Inductor compiles), with the fused op's results."""
    def chain(x, r, w0, w):
        h = r + gemma_norm(x, w0)
        y = gemma_norm(h, w)
        if quant == "none":
            return y, h
        s = y.float().abs().amax(-1, keepdim=True).clamp_min(1e-10) / FP8_MAX
        q = (y.float() / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return h, q, s
    return chain


def differing(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """The fraction of elements of the 16-bit results (h, y) whose bits differ."""
    diff = total = 0
    for p, q in zip(a, b):
        if p.dtype in (torch.bfloat16, torch.float16):
            diff += int((p.view(torch.int16) != q.view(torch.int16)).sum())
            total += p.numel()
    return diff / max(total, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_local_bench_arguments(ap, "2304,3584,5376",
                              "H list (default %(default)s: Gemma 2 2B/9B, Gemma 3 27B)")
    ap.add_argument("--no-inductor", action="store_true", help="skip Inductor's kernel")
    args = ap.parse_args()
    if lacks_a_gpu("pre_norm_local"):
        return 2
    quants = parse_quants(ap, args.quant, ("none", "fp8_token"))
    hiddens, tokens_list = parse_list(args.hidden), parse_list(args.tokens)
    timer = Timer(args)
    rows = []
    print(f"# {torch.cuda.get_device_name(0)}; Gemma's sandwich norms; µs per op, median of "
          "replays of a CUDA graph; diff: the share of 16-bit results whose bits differ, the "
          "fused op's from Inductor's and Inductor's from eager torch's")
    print(f"{'H':>6} {'T':>6} {'quant':>9} {'fused':>8} {'two ops':>8} {'inductor':>9} "
          f"{'fused/two':>10} {'fused/ind':>10} {'diff f/i':>9} {'diff i/e':>9}")
    total, done, t0 = len(hiddens) * len(quants) * len(tokens_list), 0, time.time()
    for hidden in hiddens:
        for quant in quants:
            torch._dynamo.reset()
            compiled = None if args.no_inductor else torch.compile(torch_chain(quant))
            for tokens in tokens_list:
                done += 1
                print(f"[{done}/{total}] H={hidden} {quant} T={tokens} ({time.time() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
                g = torch.Generator(device="cuda").manual_seed(hidden * 7 + tokens)

                def act():
                    return torch.randn(tokens, hidden, generator=g, device="cuda").to(
                        torch.bfloat16)

                def weight():
                    return (torch.rand(hidden, generator=g, device="cuda") - 0.5).to(
                        torch.bfloat16)

                w0, w = weight(), weight()
                sets = [(act(), act(), w0, w) for _ in range(args.input_sets)]
                fused, two_ops = paths(quant)
                got = fused(*sets[0])
                if not same_bits(got, two_ops(*sets[0])):
                    print(f"pre_norm_local: H {hidden} T {tokens} {quant}: the fused op and the "
                          "two ops give different bits", file=sys.stderr)
                    return 1
                set_bytes = 2 * tokens * hidden * 2
                t_fused = timer.time_per_op(fused, sets, set_bytes)
                t_two = timer.time_per_op(two_ops, sets, set_bytes)
                t_ind, diff, diff_eager = float("nan"), float("nan"), float("nan")
                if compiled is not None:
                    inductor = compiled(*sets[0])
                    diff = differing(got, inductor)
                    diff_eager = differing(inductor, torch_chain(quant)(*sets[0]))
                    t_ind = timer.time_per_op(compiled, sets, set_bytes)
                rows.append((hidden, tokens, quant, t_fused, t_two, t_ind, diff, diff_eager))
                print(f"{hidden:>6} {tokens:>6} {quant:>9} {t_fused:>8.2f} {t_two:>8.2f} "
                      f"{t_ind:>9.2f} {t_fused / t_two:>10.2f} {t_fused / t_ind:>10.2f} "
                      f"{diff:>9.4f} {diff_eager:>9.4f}", flush=True)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("hidden,tokens,quant,fused_us,two_ops_us,inductor_us,fused_over_two,"
                    "fused_over_inductor,differing_fused_inductor,differing_inductor_eager\n")
            for h, t, q, a, b, c, d, e in rows:
                f.write(f"{h},{t},{q},{a:.3f},{b:.3f},{c:.3f},{a / b:.4f},{a / c:.4f},{d:.5f},"
                        f"{e:.5f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
