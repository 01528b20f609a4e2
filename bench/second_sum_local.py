#!/usr/bin/env python3
"""Two summed all_reduces' epilogue on one GPU: the fused op that reads both sums against the
add of the two as its own kernel followed by the fused op of one.

At world size 1 the sums are the partials themselves (the compiler forms this op there for a
graph whose all_reduces are the identity; above it the op runs on the nccl strategy, whose
epilogue is this kernel). Granite-MoE's form, the default:

    fused:    allreduce_rmsnorm(x, residual, w, x2=x2, sum_scale=0.22, local=True)    one kernel
    two ops:  t = x + x2 (torch, bf16);  allreduce_rmsnorm(t, residual, w, sum_scale=0.22)

With --into-residual, the parallel blocks' `residual + attention + mlp` (second_sum_into_residual):
the two ops add x2 to the residual first. Every shape is checked first: the two give the same
bits. Method (as bench/inductor_epilogue.py, whose timer this uses): a CUDA graph of
--ops-per-graph calls over --input-sets rotating input sets, the L2 overwritten between replays
where the sets are smaller than 2 x L2; the median of --replays replays, per op.

    python bench/second_sum_local.py
    python bench/second_sum_local.py --hidden 4096 --tokens 1,1024 --quant fp8_token --csv out.csv
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tpfuse  # noqa: E402,F401  (registers the op)
from inductor_epilogue import (Timer, add_local_bench_arguments, lacks_a_gpu,  # noqa: E402
                               parse_list, parse_quants)

OP = torch.ops.tpfuse.allreduce_rmsnorm
SUM_SCALE = 0.22


def emit_of(quant: str) -> List[str]:
    return ["norm", "residual"] if quant == "none" else ["residual", "quant"]


def paths(quant: str, into_residual: bool) -> Tuple[Callable, Callable]:
    """(fused, two ops), each called as f(x, x2, residual, weight) on any device."""
    attrs = dict(emit=emit_of(quant), quant=quant, sum_scale=SUM_SCALE, local=True)
    if into_residual:
        def fused(x, x2, r, w):
            return OP(x, r, w, None, x2, second_sum_into_residual=True, **attrs)

        def two_ops(x, x2, r, w):
            return OP(x, r + x2, w, None, **attrs)
    else:
        def fused(x, x2, r, w):
            return OP(x, r, w, None, x2, **attrs)

        def two_ops(x, x2, r, w):
            return OP(x + x2, r, w, None, **attrs)
    return fused, two_ops


def same_bits(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(p.view(torch.uint8), q.view(torch.uint8))
                                    for p, q in zip(a, b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_local_bench_arguments(ap, "4096,7168", "H list (default %(default)s)")
    ap.add_argument("--into-residual", action="store_true",
                    help="the second sum into the residual first (residual + attention + mlp)")
    args = ap.parse_args()
    if lacks_a_gpu("second_sum_local"):
        return 2
    quants = parse_quants(ap, args.quant, ("none", "fp8_token"))
    timer = Timer(args)
    rows = []
    form = "into the residual" if args.into_residual else "added"
    print(f"# {torch.cuda.get_device_name(0)}; the second sum {form}; "
          "µs per op, median of replays of a CUDA graph")
    print(f"{'H':>6} {'T':>6} {'quant':>9} {'fused':>9} {'two ops':>9} {'fused/two':>10}")
    for hidden in parse_list(args.hidden):
        for quant in quants:
            for tokens in parse_list(args.tokens):
                g = torch.Generator(device="cuda").manual_seed(hidden * 7 + tokens)
                w = (torch.rand(hidden, generator=g, device="cuda") + 0.5).to(torch.bfloat16)

                def act():
                    return (torch.rand(tokens, hidden, generator=g, device="cuda") * 2 - 1).to(
                        torch.bfloat16)

                sets = [(act(), act(), act(), w) for _ in range(args.input_sets)]
                fused, two_ops = paths(quant, args.into_residual)
                if not same_bits(fused(*sets[0]), two_ops(*sets[0])):
                    print(f"second_sum_local: H {hidden} T {tokens} {quant}: the fused op and "
                          "the two ops give different bits", file=sys.stderr)
                    return 1
                set_bytes = 3 * tokens * hidden * 2
                t_fused = timer.time_per_op(fused, sets, set_bytes)
                t_two = timer.time_per_op(two_ops, sets, set_bytes)
                rows.append((hidden, tokens, quant, t_fused, t_two))
                print(f"{hidden:>6} {tokens:>6} {quant:>9} {t_fused:>9.2f} {t_two:>9.2f} "
                      f"{t_fused / t_two:>10.2f}", flush=True)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("hidden,tokens,quant,fused_us,two_ops_us,ratio\n")
            for h, t, q, a, b in rows:
                f.write(f"{h},{t},{q},{a:.3f},{b:.3f},{a / b:.4f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
