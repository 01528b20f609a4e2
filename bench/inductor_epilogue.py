#!/usr/bin/env python3
"""torch.compile's own kernel for the epilogue chain against tpfuse's fused op, on one GPU.

The chain is what a TP-1 layer (or a norm no all_reduce feeds) runs between two GEMMs:

    h = x + residual                      (bf16, as Hugging Face models write it; with
                                           --no-residual h = x: a norm alone, as the first
                                           layer's, or q_norm/k_norm over heads of H 64-256)
    y = RMSNorm(h) in f32, * weight       (rounded once to bf16)
    q [, s] = FP8 quantization of y       (fp8_tensor | fp8_token | fp8_group; none: no q)

written in plain torch and compiled by Inductor, and the same through
torch.ops.tpfuse.allreduce_rmsnorm at world size 1 (the local op, one kernel) on the same inputs.
The results they emit: fp8_tensor and fp8_token emit (h, q[, s]); fp8_group (groups of 128, 64
at H 2880) also emits y (the norm output, as DeepSeek's indexer reads it); none emits (h, y).
Without the residual h is not emitted (it is x). T counts rows: a head norm's rows are
tokens x heads.

Method (as docs/benchmarking.md): random bf16 inputs in [-1, 1), the weight in [0.5, 1.5), the
static scale 1/64; a CUDA graph of --ops-per-graph calls (default 20) back to back, call j on
input set j mod --input-sets (default 4); --warmup replays, then --replays replays each between
two CUDA events; the time per op is the median replay time / ops per graph. When the input sets
together are under 2 x L2 the L2 is overwritten between replays, outside the timed interval.

    python bench/inductor_epilogue.py                        # the whole sweep
    python bench/inductor_epilogue.py --hidden 4096 --tokens 1,128,8192 --quant fp8_group
    python bench/inductor_epilogue.py --csv out.csv
    python bench/inductor_epilogue.py --no-residual --quant none --hidden 64,128,256 \
        --tokens 32,1024,32768,262144                        # q_norm / k_norm rows
    python bench/inductor_epilogue.py --f32-residual         # the residual stream in f32
    python bench/inductor_epilogue.py --f32-norm --quant none # the norm returned in f32

With --f32-residual the residual stream is kept in f32 (SGLang's fp32_residual, vLLM's f16
Gemma): the residual is f32, h = x.float() + residual is returned unrounded and normalized as it
is (the fused op's rounding norm_input_f32 and residual_out_f32), 4 bytes a value each way.
With --f32-norm (quant none) the norm is returned unrounded, in f32 (FlashInfer's fusion tests'
reference; the fused op's rounding norm_out_f32), 4 bytes a value.

Checked: in every cell, the fused op's results for the first and last 256 rows of its call on all
T rows (the launch the timing replays) against the CPU backend, the oracle, on those rows, bit for
bit; a mismatch is printed in the cell's "checked" column and the script exits 1 after the tables.

Prints one table per (H, quant) as it completes, progress on stderr, and a CSV (stdout's end, or
--csv FILE). GB/s counts the bytes each path must move: x and residual read, the weight, and the
emitted results written.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from graph_timing import replay_us_per_op  # noqa: E402  (beside this script)

HIDDEN = [2880, 4096, 5120, 7168, 8192]
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
QUANTS = ["none", "fp8_tensor", "fp8_token", "fp8_group"]
EPS = 1e-6
FP8_MAX = 448.0


def group_size(hidden: int) -> int:
    """fp8_group's group: 128, or 64 where 128 does not divide H (H 2880)."""
    return 128 if hidden % 128 == 0 else 64


def parse_list(text: str, kind=int) -> List:
    return [kind(v) for v in text.split(",") if v]


def parse_quants(ap: argparse.ArgumentParser, text: str, allowed: Sequence[str]) -> List[str]:
    """The --quant list, each mode one of `allowed` (else the parser's error names it)."""
    quants = parse_list(text, str)
    for q in quants:
        if q not in allowed:
            ap.error(f"--quant: unknown mode {q!r} (expected {', '.join(allowed)})")
    return quants


# ---------------------------------------------------------------- the chain in torch

def torch_chain(quant: str, with_residual: bool = True, f32_residual: bool = False,
                f32_norm: bool = False) -> Callable:
    def chain(x, residual, weight, inv_scale):
        if f32_residual:  # the f32 sum is the new residual and the norm's input
            h = hf = x.float() + residual
        else:
            h = x + residual if with_residual else x
            hf = h.float()
        r = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + EPS)
        y = hf * r * weight.float()
        if not f32_norm:
            y = y.to(x.dtype)
        hs = (h,) if with_residual else ()
        if quant == "none":
            return hs + (y,)
        yf = y.float()
        if quant == "fp8_tensor":
            q = (yf * inv_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return hs + (q,)
        if quant == "fp8_token":
            s = yf.abs().amax(-1, keepdim=True).clamp_min(1e-10) / FP8_MAX
            q = (yf / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return hs + (q, s)
        t, hidden = yf.shape
        g = group_size(hidden)
        yg = yf.view(t, hidden // g, g)
        s = yg.abs().amax(-1, keepdim=True).clamp_min(1e-10) / FP8_MAX
        q = (yg / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(t, hidden)
        return hs + (y, q, s.view(t, hidden // g))
    return chain


def emitted(quant: str, with_residual: bool) -> List[str]:
    """The fused op's emit list for the results the torch chain returns."""
    emit = ["norm"] if quant in ("none", "fp8_group") else []
    emit += ["residual"] if with_residual else []
    return emit + ([] if quant == "none" else ["quant"])


def tpfuse_call(quant: str, with_residual: bool = True, f32_residual: bool = False,
                f32_norm: bool = False) -> Callable:
    import tpfuse  # noqa: F401  (registers the op)
    op = torch.ops.tpfuse.allreduce_rmsnorm
    emit = emitted(quant, with_residual)
    rounding = (["norm_input_f32", "residual_out_f32"] if f32_residual else []) + \
        (["norm_out_f32"] if f32_norm else [])

    def call(x, residual, weight, scale):
        return op(x, residual if with_residual else None, weight,
                  scale if quant == "fp8_tensor" else None, emit=emit, eps=EPS, quant=quant,
                  group_size=group_size(x.shape[-1]), rounding=rounding or None)
    return call


def check_rows(fused: Callable, x, residual, weight, scale, rows: int = 256) -> str:
    """The fused op's results on the GPU for the first and last `rows` rows of one call on all T
    rows, against the CPU backend (the oracle) on the same rows: "bitwise", or what differs."""
    tokens = x.shape[0]
    head = torch.arange(0, min(rows, tokens))
    tail = torch.arange(max(min(rows, tokens), tokens - rows), tokens)
    idx = torch.cat([head, tail]).to(x.device)

    def bytes_of(t: torch.Tensor) -> torch.Tensor:  # [rows, bytes per row]
        return t.contiguous().view(torch.uint8)

    got = [bytes_of(t).index_select(0, idx).cpu() for t in fused(x, residual, weight, scale)]
    inputs = (x.index_select(0, idx).cpu(), residual.index_select(0, idx).cpu(), weight.cpu(),
              scale.cpu())
    want = [bytes_of(t) for t in fused(*inputs)]
    for i, (g, w) in enumerate(zip(got, want)):
        if not torch.equal(g, w):
            return f"MISMATCH (result {i})"
    return "bitwise"


def bytes_moved(tokens: int, hidden: int, quant: str, with_residual: bool = True,
                f32_residual: bool = False, f32_norm: bool = False) -> int:
    act = tokens * hidden * 2
    n = act + hidden * 2            # x, weight
    if with_residual:
        n += (4 if f32_residual else 2) * act  # residual read, h written
    if quant != "none":
        n += tokens * hidden        # q
    if quant in ("none", "fp8_group"):
        n += 2 * act if f32_norm else act  # y
    if quant == "fp8_group":
        n += tokens * (hidden // group_size(hidden)) * 4  # s
    elif quant == "fp8_token":
        n += tokens * 4
    return n


# ---------------------------------------------------------------- timing

class Timer:
    @staticmethod
    def add_arguments(ap: argparse.ArgumentParser) -> None:
        """The timing options every bench of this folder that times with a Timer takes."""
        ap.add_argument("--ops-per-graph", type=int, default=20,
                        help="calls per CUDA graph (default %(default)s)")
        ap.add_argument("--input-sets", type=int, default=4,
                        help="rotating input sets (default %(default)s)")
        ap.add_argument("--warmup", type=int, default=5,
                        help="replays before timing (default %(default)s)")
        ap.add_argument("--replays", type=int, default=50,
                        help="timed replays, the median taken (default %(default)s)")

    def __init__(self, args):
        self.args = args
        self.l2 = torch.cuda.get_device_properties(0).L2_cache_size
        self.flush = torch.empty(2 * self.l2, dtype=torch.uint8, device="cuda")

    def time_per_op(self, fn: Callable, sets: Sequence[Sequence[torch.Tensor]],
                    set_bytes: int) -> float:
        """Median µs per op of --replays replays of a graph of --ops-per-graph calls."""
        ops = self.args.ops_per_graph
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for j in range(min(ops, len(sets))):  # outside the graph: validates the call
                fn(*sets[j % len(sets)])
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            keep = [fn(*sets[j % len(sets)]) for j in range(ops)]
        flush_l2 = len(sets) * set_bytes < 2 * self.l2
        for _ in range(self.args.warmup):
            graph.replay()
        torch.cuda.synchronize()
        times = replay_us_per_op(graph, self.args.replays, ops, self.flush if flush_l2 else None)
        del keep, graph
        return statistics.median(times)


def add_local_bench_arguments(ap: argparse.ArgumentParser, hidden: str, hidden_help: str) -> None:
    """The grid and output options of the world-size-1 benches that time the fused op against the
    ops it replaces (second_sum_local.py, pre_norm_local.py): H, T, quant none and fp8_token, the
    Timer's options, --csv."""
    ap.add_argument("--hidden", default=hidden, help=hidden_help)
    ap.add_argument("--tokens", default="1,128,1024,8192", help="T list (default %(default)s)")
    ap.add_argument("--quant", default="none,fp8_token",
                    help="quant modes: none, fp8_token (default %(default)s)")
    Timer.add_arguments(ap)
    ap.add_argument("--csv", help="also write the rows here")


def lacks_a_gpu(name: str) -> bool:
    """Whether there is no CUDA GPU or no CUDA build of libtpfuse, said on stderr as `name`'s."""
    import tpfuse
    if torch.cuda.is_available() and tpfuse.has_cuda():
        return False
    print(f"{name}: needs a CUDA GPU and libtpfuse built with CUDA", file=sys.stderr)
    return True


def make_sets(tokens: int, hidden: int, count: int, seed: int, dynamic_tokens: bool,
              f32_residual: bool = False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    weight = (torch.rand(hidden, generator=g, device="cuda") + 0.5).to(torch.bfloat16)
    scale = torch.full((), 1.0 / 64, dtype=torch.float32, device="cuda")
    inv_scale = torch.full((), 64.0, dtype=torch.float32, device="cuda")
    sets_torch, sets_tpfuse = [], []
    for _ in range(count):
        x = (torch.rand(tokens, hidden, generator=g, device="cuda") * 2 - 1).to(torch.bfloat16)
        r = torch.rand(tokens, hidden, generator=g, device="cuda") * 2 - 1
        if not f32_residual:
            r = r.to(torch.bfloat16)
        if dynamic_tokens:  # T symbolic for Inductor, H a constant it specializes on
            torch._dynamo.maybe_mark_dynamic(x, 0)
            torch._dynamo.maybe_mark_dynamic(r, 0)
        sets_torch.append((x, r, weight, inv_scale))
        sets_tpfuse.append((x, r, weight, scale))
    return sets_torch, sets_tpfuse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default=",".join(map(str, HIDDEN)), help="H list")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="T list")
    ap.add_argument("--quant", default=",".join(QUANTS), help="quant modes")
    Timer.add_arguments(ap)
    ap.add_argument("--static", action="store_true",
                    help="compile per T (default: T dynamic, H static: one compile per H and "
                         "quant after T = 1)")
    ap.add_argument("--no-tpfuse", action="store_true", help="time the torch chain alone")
    ap.add_argument("--no-residual", action="store_true",
                    help="the norm alone (h = x), as the first layer's norm or a head norm")
    ap.add_argument("--f32-residual", action="store_true",
                    help="the residual stream in f32: an f32 residual, h returned in f32")
    ap.add_argument("--f32-norm", action="store_true",
                    help="the norm returned in f32, unrounded (quant none only)")
    ap.add_argument("--csv", help="write the CSV here (default: after the tables, on stdout)")
    args = ap.parse_args()
    if args.f32_residual and args.no_residual:
        ap.error("--f32-residual needs the residual: drop --no-residual")
    hiddens, tokens_list = parse_list(args.hidden), parse_list(args.tokens)
    quants = parse_quants(ap, args.quant, QUANTS)
    if args.f32_norm and quants != ["none"]:
        ap.error("--f32-norm takes --quant none: the fused op quantizes the rounded norm")
    if not torch.cuda.is_available():
        print("inductor_epilogue: no CUDA GPU visible; nothing to measure", file=sys.stderr)
        return 1
    use_tpfuse = not args.no_tpfuse
    if use_tpfuse:
        import tpfuse
        if not tpfuse.has_cuda():
            print("inductor_epilogue: libtpfuse was built without CUDA; use --no-tpfuse or "
                  "build with CUDA", file=sys.stderr)
            return 1

    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, {props.multi_processor_count} SMs, L2 {props.L2_cache_size >> 20} MiB;"
          f" torch {torch.__version__}; µs per op: median of {args.replays} replays x "
          f"{args.ops_per_graph} ops over {args.input_sets} input sets")
    timer = Timer(args)
    if args.static:
        torch._dynamo.config.recompile_limit = max(64, len(tokens_list) + 1)
    rows: List[Dict] = []
    total = len(hiddens) * len(quants) * len(tokens_list)
    done = mismatches = 0
    t0 = time.time()
    for hidden in hiddens:
        for quant in quants:
            # Every (H, quant) compiles afresh: the chains share one code object, and Dynamo's
            # cache per code object would otherwise fill up and fall back to eager.
            torch._dynamo.reset()
            with_residual, f32, f32_norm = not args.no_residual, args.f32_residual, args.f32_norm
            compiled = torch.compile(torch_chain(quant, with_residual, f32, f32_norm),
                                     dynamic=False if args.static else None)
            fused = tpfuse_call(quant, with_residual, f32, f32_norm) if use_tpfuse else None
            table = []
            for tokens in tokens_list:
                done += 1
                print(f"[{done}/{total}] H={hidden} {quant} T={tokens} "
                      f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
                sets_torch, sets_tpfuse = make_sets(tokens, hidden, args.input_sets, tokens,
                                                    not args.static, f32)
                set_bytes = bytes_moved(tokens, hidden, quant, with_residual, f32, f32_norm)
                row = {"hidden": hidden, "tokens": tokens, "quant": quant,
                       "residual": "f32" if f32 else int(with_residual),
                       "norm": "f32" if f32_norm else "16-bit"}
                row["inductor_us"] = timer.time_per_op(compiled, sets_torch, set_bytes)
                row["inductor_gbps"] = set_bytes / row["inductor_us"] / 1e3
                if fused is not None:
                    row["tpfuse_us"] = timer.time_per_op(fused, sets_tpfuse, set_bytes)
                    row["tpfuse_gbps"] = set_bytes / row["tpfuse_us"] / 1e3
                    row["tpfuse_over_inductor"] = row["tpfuse_us"] / row["inductor_us"]
                    row["checked"] = check_rows(fused, *sets_tpfuse[0])
                    mismatches += row["checked"] != "bitwise"
                table.append(row)
                rows.append(row)
                del sets_torch, sets_tpfuse
            print_table(hidden, quant, emitted(quant, with_residual), table)
    out = io.StringIO() if not args.csv else open(args.csv, "w", newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()})
    if args.csv:
        out.close()
        print(f"# wrote {args.csv}")
    else:
        print("\n# CSV\n" + out.getvalue(), end="")
    if mismatches:
        print(f"inductor_epilogue: the fused op differed from the oracle in {mismatches} cell(s)",
              file=sys.stderr)
        return 1
    return 0


def print_table(hidden: int, quant: str, emit: List[str], table: List[Dict]) -> None:
    print(f"\n== H={hidden}  quant={quant}  emit={','.join(emit)}  (µs per op, GB/s)")
    has_fused = "tpfuse_us" in table[0]
    head = f"{'T':>6} {'inductor':>10} {'GB/s':>7}"
    if has_fused:
        head += f" {'tpfuse':>10} {'GB/s':>7} {'tpfuse/ind':>11}  checked"
    print(head)
    for r in table:
        line = f"{r['tokens']:>6} {r['inductor_us']:>10.2f} {r['inductor_gbps']:>7.0f}"
        if has_fused:
            line += (f" {r['tpfuse_us']:>10.2f} {r['tpfuse_gbps']:>7.0f}"
                     f" {r['tpfuse_over_inductor']:>11.2f}  {r['checked']}")
        print(line, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    sys.exit(main())
