#!/usr/bin/env python3
"""FlashInfer's fused all-reduce + residual + RMSNorm + FP8 kernels against tpfuse's fused op.

On the GPUs of one node (2 or more), one process per GPU over NCCL, the same shapes and inputs
go through FlashInfer's `trtllm_allreduce_fusion` (flashinfer.comm) and through
torch.ops.tpfuse.allreduce_rmsnorm (python/tpfuse), both inside CUDA graphs:

  quant        FlashInfer pattern                                  tpfuse op
  fp8_tensor   kARResidualRMSNormFP8Quant: residual_out, q         emit residual,quant; static
               (static per-tensor FP8, scale 1/64)                 scale, q = fp8(y * (1/scale))
  fp8_group    kARResidualRMSNormOutPerTokenGroupFP8PackedQuant:   emit norm,residual,quant;
               residual_out, norm, q, UE8M0 scales packed four     fp8_group, group 128,
               to an int32, column-major (T padded to 4)           scale_fmt ue8m0, scale_layout
                                                                   col (f32 scales, [G, pad4(T)])

Activations and the norm weight are bf16, the residual is on, eps = 1e-6. FlashInfer runs with
fp32_acc (f32 accumulation of the partial sums, as Contract 3) and, unless --no-pdl,
launch_with_pdl; its one-shot / two-shot choice is --fi-strategy.

Before timing a shape, tpfuse and each FlashInfer path run once on the same inputs (FlashInfer's
outputs poisoned with NaN first) and every output is compared, element by element, on every
rank (DESIGN.md Contract 3's tolerance: bf16 within 1 ulp, dequantized FP8
within 1 FP8 ulp after scale differences, scales within 2^-7 relative; residual_out bitwise at
world size 2, where both sum two partials in f32 and round once). What differs is printed on
stderr and in the CSV; the table's last column says bitwise, ok or FAIL. A shape FlashInfer
refuses (its host-side checks raise) is a note under the table, not a failure.

Method (docs/benchmarking.md): x random bf16 in [-1, 1) and different on every rank, the
residual and the weight (in [0.5, 1.5)) the same on every rank; a CUDA graph of
--ops-per-graph calls back to back, call j on input set j mod K, K the smallest count of sets
with (K - 1) x set >= 2 x L2 (at most the ops per graph; below that the L2 is overwritten
between replays, outside the timed interval); a barrier, --warmup replays, a barrier, then
--replays replays each between two CUDA events; per-op µs = the replay's time / ops per graph;
rank 0's median (every rank's median is gathered; one more than 10% off rank 0's is a note).
FlashInfer JIT-compiles its all-reduce module with nvcc at first use (minutes), before any
collective.

    NCCL_NVLS_ENABLE=0 python bench/flashinfer_compare.py --out docs/perf/h200x2
    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 bench/flashinfer_compare.py --tokens 1,128

Without torchrun the script starts one process per visible GPU (or --world-size N). It refuses
to start unless NCCL_NVLS_ENABLE=0 is set (NVLink multicast stays off); it sets
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 where they are unset (by default
FlashInfer's workspace is torch symmetric memory). It exits 1 naming what is missing when
flashinfer is not importable or lacks a function, pattern or parameter it needs, with fewer
than 2 GPUs, or when libtpfuse was built without CUDA; 3 when every shape ran but some output
broke the tolerance; 2 on usage errors. Tables on stdout, progress on stderr,
flashinfer_compare.txt and .csv in --out DIR.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import os
import socket
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from graph_timing import replay_us_per_op  # noqa: E402  (beside this script)
from tpfuse.tolerance import fp8_step_distance, fp8_ulp, ulp_distance_16  # noqa: E402

HIDDEN = [4096, 7168]
TOKENS = [1 << i for i in range(14)]  # 1 .. 8192
QUANTS = ["fp8_tensor", "fp8_group"]
STRATEGIES = ["auto", "oneshot", "twoshot"]
EPS = 1e-6
GROUP_SIZE = 128
STATIC_SCALE = 1.0 / 64
FP8_MAX = 448.0
BF16_BYTES = 2

EMIT = {"fp8_tensor": ["residual", "quant"], "fp8_group": ["norm", "residual", "quant"]}
PATTERN = {"fp8_tensor": "kARResidualRMSNormFP8Quant",
           "fp8_group": "kARResidualRMSNormOutPerTokenGroupFP8PackedQuant"}


# ---------------------------------------------------------------- arguments and the plan

@dataclasses.dataclass(frozen=True)
class Case:
    hidden: int
    tokens: int
    quant: str

    @property
    def groups(self) -> int:
        return self.hidden // GROUP_SIZE


def _int_list(option: str, text: str) -> List[int]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option}: {item!r} is not an integer") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{option}: {value} is not positive")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError(f"{option}: empty list")
    return values


def _name_list(option: str, text: str, allowed: Sequence[str]) -> List[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    for name in names:
        if name not in allowed:
            raise argparse.ArgumentTypeError(
                f"{option}: unknown {name!r} (expected {', '.join(allowed)})")
    if not names:
        raise argparse.ArgumentTypeError(f"{option}: empty list")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="flashinfer_compare.py", description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default=",".join(map(str, HIDDEN)),
                    help="H list, each a multiple of 128 (default %(default)s)")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)),
                    help="T list (default %(default)s)")
    ap.add_argument("--quant", default=",".join(QUANTS),
                    help="quant modes from fp8_tensor, fp8_group (default %(default)s)")
    ap.add_argument("--fi-strategy", default="auto",
                    help="FlashInfer paths to time, from auto (its own one-shot/two-shot "
                         "choice), oneshot, twoshot; one column each (default %(default)s)")
    ap.add_argument("--fi-workspace", choices=["torch", "flashinfer"], default="torch",
                    help="peer memory of FlashInfer's workspace: torch (torch's symmetric "
                         "memory, the default of trtllm_create_ipc_workspace_for_all_reduce_"
                         "fusion) or flashinfer (its own SymmDeviceMemory, use_symm_dev_mem, as "
                         "its unified allreduce_fusion API uses); multicast off in both "
                         "(default %(default)s)")
    ap.add_argument("--world-size", type=int, default=0,
                    help="processes (GPUs) to start; default: every visible GPU. Ignored "
                         "under torchrun")
    ap.add_argument("--ops-per-graph", type=int, default=20, help="default %(default)s")
    ap.add_argument("--warmup", type=int, default=5, help="replays before timing "
                    "(default %(default)s)")
    ap.add_argument("--replays", type=int, default=50, help="timed replays (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="input seed (default %(default)s)")
    ap.add_argument("--no-pdl", action="store_true",
                    help="launch FlashInfer's kernel without programmatic dependent launch")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the output comparison before timing")
    ap.add_argument("--out", metavar="DIR",
                    help="write flashinfer_compare.txt (the tables) and flashinfer_compare.csv "
                         "here")
    ap.add_argument("--port", type=int, default=0,
                    help="rendezvous port without torchrun (default: a free one)")
    return ap


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        args.hidden = _int_list("--hidden", args.hidden)
        args.tokens = _int_list("--tokens", args.tokens)
        args.quant = _name_list("--quant", args.quant, QUANTS)
        args.fi_strategy = _name_list("--fi-strategy", args.fi_strategy, STRATEGIES)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    for h in args.hidden:
        if h % GROUP_SIZE:
            ap.error(f"--hidden: {h} is not a multiple of {GROUP_SIZE} (the FP8 group)")
    for name in ("ops_per_graph", "replays"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: must be at least 1")
    if args.warmup < 0:
        ap.error("--warmup: must not be negative")
    if args.world_size < 0 or args.world_size == 1:
        ap.error("--world-size: must be 2 or more (0: every visible GPU)")
    return args


def shape_plan(hiddens: Sequence[int], tokens: Sequence[int],
               quants: Sequence[str]) -> List[Case]:
    """Every shape, in the order the tables come out: per H, per quant, T ascending."""
    return [Case(h, t, q) for h in hiddens for q in quants for t in sorted(set(tokens))]


def set_bytes(case: Case) -> int:
    """Bytes of one input set: x and residual read, FlashInfer's outputs written."""
    act = case.tokens * case.hidden * BF16_BYTES
    n = 2 * act + act + case.tokens * case.hidden  # x, residual; residual_out, q
    if case.quant == "fp8_group":
        n += act + 4 * ((case.tokens + 3) // 4 * 4) * ((case.groups + 3) // 4)  # norm, scales
    return n


def rotation(one_set: int, l2_bytes: int, ops: int) -> Tuple[int, bool]:
    """(K, flush): the smallest K with (K - 1) x set >= 2 x L2, at most `ops`; flush when even
    that leaves less than 2 x L2 between two reads of one set."""
    need = 2 * l2_bytes
    k = 1 + max(1, -(-need // max(one_set, 1)))
    k = min(k, ops)
    return k, (k - 1) * one_set < need


# ---------------------------------------------------------------- the comparison

def unpack_ue8m0(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """FlashInfer's packed UE8M0 scales, int32 [T, ceil(G / 4)] (any strides; byte p of word k
    is group 4k + p), as f32 [T, G]: byte e is 2^(e - 127)."""
    tokens = packed.shape[0]
    dense = torch.empty(packed.shape, dtype=torch.int32).copy_(packed)  # row-major, on the CPU
    words = dense.view(torch.uint8).reshape(tokens, -1)  # little-endian: byte p of word k
    exponents = words[:, :groups].to(torch.int32) - 127
    return torch.ldexp(torch.ones(exponents.shape, dtype=torch.float32), exponents)


def col_scales_to_rows(s: torch.Tensor, tokens: int) -> torch.Tensor:
    """tpfuse's column-major scales [G, pad4(T)] as [T, G]."""
    return s[:, :tokens].t().contiguous()


@dataclasses.dataclass
class Finding:
    """One output compared: what differs, and whether that is within the tolerance."""
    name: str
    elements: int
    differing: int  # not bitwise equal
    out_of_tolerance: int
    rule: str
    worst: str = ""  # the largest difference, in words
    first_bad: str = ""  # the first element out of tolerance: index and both values

    @property
    def ok(self) -> bool:
        return self.out_of_tolerance == 0

    def line(self) -> str:
        state = "ok" if self.ok else "OUT OF TOLERANCE"
        text = (f"{self.name}: {state} ({self.rule}); {self.differing} of {self.elements} "
                f"not bitwise equal")
        if self.worst:
            text += f", {self.worst}"
        if self.first_bad:
            text += f"; {self.out_of_tolerance} out of tolerance, first {self.first_bad}"
        return text


def _first_bad(bad: torch.Tensor, got: torch.Tensor, ref: torch.Tensor) -> str:
    """Where the first element out of tolerance is, and its two values."""
    i = tuple(bad.nonzero()[0].tolist())
    return f"at {list(i)}: {float(got[i])!r} vs {float(ref[i])!r}"


def compare_16(name: str, got: torch.Tensor, ref: torch.Tensor, bitwise: bool) -> Finding:
    """bf16/f16: within 1 ulp (Contract 3), or bitwise."""
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return Finding(name, ref.numel(), ref.numel(), ref.numel(), "shape/dtype",
                       first_bad=f"{got.dtype}{list(got.shape)} vs {ref.dtype}{list(ref.shape)}")
    d = ulp_distance_16(got, ref)
    limit = 0 if bitwise else 1
    bad = d > limit
    f = Finding(name, ref.numel(), int((d != 0).sum()), int(bad.sum()),
                "bitwise" if bitwise else "1 ulp")
    if f.differing:
        f.worst = f"max {int(d.max())} ulp"
    if f.out_of_tolerance:
        f.first_bad = _first_bad(bad, got, ref)
    return f


def compare_scales(name: str, got: torch.Tensor, ref: torch.Tensor) -> Finding:
    """f32 scales [T, G]: within 2^-7 relative."""
    if got.shape != ref.shape:
        return Finding(name, ref.numel(), ref.numel(), ref.numel(), "shape",
                       first_bad=f"{list(got.shape)} vs {list(ref.shape)}")
    rel = (got - ref).abs() / ref.abs().clamp_min(1e-30)
    differing = got.view(torch.int32) != ref.view(torch.int32)
    bad = differing & ~(rel <= 2.0 ** -7)  # NaN or inf on one side only: out of tolerance
    f = Finding(name, ref.numel(), int(differing.sum()), int(bad.sum()), "2^-7 relative")
    if f.differing:
        f.worst = f"max relative {float(rel.max()):.3g}"
    if f.out_of_tolerance:
        f.first_bad = _first_bad(bad, got, ref)
    return f


def compare_fp8(name: str, got: torch.Tensor, ref: torch.Tensor, got_scale: torch.Tensor,
                ref_scale: torch.Tensor, group: int) -> Finding:
    """FP8 [T, H], dequantized with each side's scales ([T, G] of `group` columns each, or one
    element): within 1 FP8 ulp of the reference's, after scale differences."""
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return Finding(name, ref.numel(), ref.numel(), ref.numel(), "shape/dtype",
                       first_bad=f"{got.dtype}{list(got.shape)} vs {ref.dtype}{list(ref.shape)}")
    gq, rq = got.float(), ref.float()
    if got_scale.numel() == 1:
        gs = got_scale.float().reshape(1, 1)
        rs = ref_scale.float().reshape(1, 1)
    else:
        gs = got_scale.float().repeat_interleave(group, dim=1)
        rs = ref_scale.float().repeat_interleave(group, dim=1)
    err = (gq * gs - rq * rs).abs()
    bound = fp8_ulp(rq) * rs + rq.abs() * (gs - rs).abs()
    differing = got.view(torch.uint8) != ref.view(torch.uint8)
    bad = differing & ~(err <= bound * (1 + 1e-6))  # a NaN on one side only: out of tolerance
    f = Finding(name, ref.numel(), int(differing.sum()), int(bad.sum()),
                "1 FP8 ulp after scales")
    if f.differing:
        f.worst = f"max {int(fp8_step_distance(got, ref).max())} FP8 steps"
    if f.out_of_tolerance:
        f.first_bad = _first_bad(bad, gq, rq)
    return f


def compare_outputs(case: Case, fi: Dict[str, torch.Tensor], tp: Dict[str, torch.Tensor],
                    world_size: int) -> List[Finding]:
    """FlashInfer's outputs (got) against tpfuse's (the reference), CPU tensors by name:
    residual, norm (fp8_group), q, and s ([T, G] f32 for fp8_group; the static scale for
    fp8_tensor, the same tensor on both sides)."""
    findings = [compare_16("residual_out", fi["residual"], tp["residual"], world_size == 2)]
    if case.quant == "fp8_group":
        findings.append(compare_16("norm", fi["norm"], tp["norm"], False))
        findings.append(compare_scales("scales", fi["s"], tp["s"]))
    findings.append(compare_fp8("q", fi["q"], tp["q"], fi["s"], tp["s"], GROUP_SIZE))
    return findings


# ---------------------------------------------------------------- FlashInfer's API

class FlashInferUnavailable(RuntimeError):
    pass


REQUIRED_PARAMS = ["allreduce_in", "world_size", "world_rank", "token_num", "hidden_dim",
                   "workspace_ptrs", "launch_with_pdl", "trigger_completion_at_end", "fp32_acc",
                   "pattern_code", "use_oneshot", "residual_in", "residual_out", "norm_out",
                   "quant_out", "scale_out", "rms_gamma", "rms_eps", "scale_factor"]


def load_flashinfer(quants: Sequence[str], workspace: str = "torch"):
    """flashinfer.comm, checked for what this script calls; FlashInferUnavailable says exactly
    what is missing."""
    try:
        import flashinfer  # noqa: F401
        import flashinfer.comm as comm
    except Exception as e:  # noqa: BLE001  (any import failure: the message names it)
        raise FlashInferUnavailable(
            f"flashinfer is not importable: {type(e).__name__}: {e} (install flashinfer-python "
            "and its dependencies: docs/perf/h200x2/README.md)") from e
    version = getattr(flashinfer, "__version__", "unknown version")
    missing = []
    for fn in ("trtllm_allreduce_fusion", "trtllm_create_ipc_workspace_for_all_reduce_fusion",
               "AllReduceFusionPattern"):
        if not hasattr(comm, fn):
            missing.append(f"flashinfer.comm.{fn}")
    if not missing:
        for quant in quants:
            if not hasattr(comm.AllReduceFusionPattern, PATTERN[quant]):
                missing.append(f"AllReduceFusionPattern.{PATTERN[quant]} (for --quant {quant})")
        params = inspect.signature(comm.trtllm_allreduce_fusion).parameters
        need = REQUIRED_PARAMS + (["block_quant_group_size"] if "fp8_group" in quants else [])
        for p in need:
            if p not in params:
                missing.append(f"parameter {p!r} of trtllm_allreduce_fusion")
        ws = inspect.signature(comm.trtllm_create_ipc_workspace_for_all_reduce_fusion).parameters
        ws_need = ["tp_rank", "tp_size", "max_token_num", "hidden_dim", "group"]
        if workspace == "flashinfer":
            ws_need += ["use_symm_dev_mem", "create_metadata"]
        for p in ws_need:
            if p not in ws:
                missing.append(f"parameter {p!r} of trtllm_create_ipc_workspace_for_all_reduce_"
                               "fusion")
    if missing:
        raise FlashInferUnavailable(f"flashinfer {version} lacks: " + "; ".join(missing))
    return comm


# ---------------------------------------------------------------- output

def fi_column(strategy: str) -> str:
    return f"fi_{strategy}_us"


def format_table(hidden: int, quant: str, world_size: int, strategies: Sequence[str],
                 rows: Sequence[Dict]) -> str:
    emit = ",".join(EMIT[quant])
    out = [f"== H={hidden}  quant={quant}  emit={emit}  world size {world_size}",
           "   µs per op, rank 0: median of the replays; FI/tp = best FlashInfer / tpfuse "
           "(above 1: tpfuse faster); busbw GB/s of tpfuse and of the best FlashInfer path"]
    head = f"{'T':>6} {'tpfuse':>9}" + "".join(f" {'FI ' + s:>12}" for s in strategies)
    head += f" {'FI/tp':>7} {'busbw tp':>9} {'busbw FI':>9}  check"
    out.append(head)
    for r in rows:
        line = f"{r['tokens']:>6} {_cell(r.get('tpfuse_us')):>9}"
        line += "".join(f" {_cell(r.get(fi_column(s))):>12}" for s in strategies)
        ratio = r.get("fi_over_tpfuse")
        line += f" {('-' if ratio is None else f'{ratio:.2f}'):>7}"
        line += f" {_gbps(r.get('tpfuse_busbw_gbps')):>9} {_gbps(r.get('fi_busbw_gbps')):>9}"
        line += f"  {r.get('check', '-')}"
        out.append(line)
    notes = [n for r in rows for n in r.get("notes", [])]
    out += [f"   note: {n}" for n in notes]
    return "\n".join(out)


def _cell(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def _gbps(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0f}"


CSV_FIELDS = ["world_size", "hidden", "tokens", "quant", "emit", "tpfuse_us"] + \
             [fi_column(s) for s in STRATEGIES] + ["fi_over_tpfuse", "tpfuse_busbw_gbps",
                                                  "fi_busbw_gbps", "input_sets", "l2_flush",
                                                  "check", "check_details"]


def write_csv(rows: Sequence[Dict], stream) -> None:
    writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v)
                         for k, v in row.items() if k in CSV_FIELDS})


def busbw_gbps(case: Case, world_size: int, us: Optional[float]) -> Optional[float]:
    """All-reduce bus bandwidth as nccl-tests defines it: the bf16 payload S = T x H x 2 bytes,
    S x 2(N - 1)/N per `us`, in GB/s (1e9 bytes/s)."""
    if us is None:
        return None
    payload = case.tokens * case.hidden * BF16_BYTES
    return payload * 2 * (world_size - 1) / world_size / (us * 1e3)


def best_ratio(row: Dict, strategies: Sequence[str]) -> Optional[float]:
    fis = [row[fi_column(s)] for s in strategies if row.get(fi_column(s)) is not None]
    if not fis or row.get("tpfuse_us") is None:
        return None
    return min(fis) / row["tpfuse_us"]


# ---------------------------------------------------------------- the GPU part (each rank)

def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Rank:
    def __init__(self, args, rank: int, world: int, local_rank: int):
        import torch.distributed as dist
        self.args, self.rank, self.world = args, rank, world
        self.dist = dist
        self.device = torch.device("cuda", local_rank)
        torch.cuda.set_device(self.device)
        self.comm = load_flashinfer(args.quant, args.fi_workspace)
        # NOTE: FlashInfer compiles its kernels (nvcc, once per machine and version) at first
        # use. Built here, before any collective, so that no rank waits on a peer inside NCCL
        # for the minutes the build may take (the ranks share the build through a file lock).
        t0 = time.time()
        if rank == 0:
            _progress("building or loading FlashInfer's trtllm_comm module (JIT at first use)")
        from flashinfer.comm import trtllm_ar
        build = getattr(trtllm_ar, "get_trtllm_comm_module", None)
        if build is not None:
            build()
        if rank == 0:
            _progress(f"FlashInfer module ready ({time.time() - t0:.0f} s)")
        import tpfuse
        if not tpfuse.has_cuda():
            raise RuntimeError("libtpfuse was built without CUDA: build with "
                               "-DTPFUSE_ENABLE_CUDA=ON and set TPFUSE_LIBRARY")
        self.group = dist.group.WORLD
        self.max_tokens, self.max_hidden = max(args.tokens), max(args.hidden)
        tpfuse.ops.configure(max_tokens=self.max_tokens, max_hidden=self.max_hidden)
        tpfuse.ops.init_comm(self.group, self.device)
        self.op = torch.ops.tpfuse.allreduce_rmsnorm
        create = self.comm.trtllm_create_ipc_workspace_for_all_reduce_fusion
        kwargs = dict(tp_rank=rank, tp_size=world, max_token_num=self.max_tokens,
                      hidden_dim=self.max_hidden, group=self.group)
        if args.fi_workspace == "flashinfer":
            kwargs.update(use_symm_dev_mem=True, create_metadata=True)
        # (ipc pointers, workspace pointer tensor[, memory handles][, metadata]): the first two
        # are what the kernel takes; the rest must stay alive with this object.
        self.fi_made = made = create(**kwargs)
        self.fi_ipc, self.fi_workspace = made[0], made[1]
        self.l2 = torch.cuda.get_device_properties(self.device).L2_cache_size
        self.flush = torch.empty(2 * self.l2, dtype=torch.uint8, device=self.device)
        self.pattern = {q: getattr(self.comm.AllReduceFusionPattern, PATTERN[q])
                        for q in args.quant}

    def barrier(self) -> None:
        self.dist.barrier(device_ids=[self.device.index])
        torch.cuda.synchronize()

    # -- inputs and calls

    def make_sets(self, case: Case, count: int):
        dev, t, h = self.device, case.tokens, case.hidden
        seed = self.args.seed * 1000003 + t * 131 + h
        g_shared = torch.Generator(device=dev).manual_seed(seed)
        g_rank = torch.Generator(device=dev).manual_seed(seed + 7919 * (self.rank + 1))
        weight = (torch.rand(h, generator=g_shared, device=dev) + 0.5).to(torch.bfloat16)
        scale = torch.full((1,), STATIC_SCALE, dtype=torch.float32, device=dev)
        sets = []
        for _ in range(count):
            x = (torch.rand(t, h, generator=g_rank, device=dev) * 2 - 1).to(torch.bfloat16)
            r = (torch.rand(t, h, generator=g_shared, device=dev) * 2 - 1).to(torch.bfloat16)
            outs = {"residual": torch.empty_like(x),
                    "q": torch.empty(t, h, dtype=torch.float8_e4m3fn, device=dev)}
            if case.quant == "fp8_group":
                outs["norm"] = torch.empty_like(x)
                packed = (case.groups + 3) // 4
                outs["s"] = torch.zeros(packed, (t + 3) // 4 * 4, dtype=torch.int32,
                                        device=dev).t()[:t]
            sets.append((x, r, outs))
        return weight, scale, sets

    def tpfuse_fn(self, case: Case, weight, scale, sets) -> Callable[[int], List[torch.Tensor]]:
        group_mode = case.quant == "fp8_group"
        name = self.group.group_name

        def call(j: int):
            x, r, _ = sets[j % len(sets)]
            return self.op(x, r, weight, None if group_mode else scale, emit=EMIT[case.quant],
                           group_name=name, eps=EPS, quant=case.quant, group_size=GROUP_SIZE,
                           scale_layout="col" if group_mode else "row",
                           scale_fmt="ue8m0" if group_mode else "f32",
                           rounding=["ue8m0_floor"] if group_mode else [])
        return call

    def fi_fn(self, case: Case, strategy: str, weight, scale, sets) -> Callable[[int], None]:
        group_mode = case.quant == "fp8_group"
        oneshot = {"auto": None, "oneshot": True, "twoshot": False}[strategy]
        extra = {"block_quant_group_size": GROUP_SIZE} if group_mode else {}
        fn = self.comm.trtllm_allreduce_fusion

        def call(j: int):
            x, r, o = sets[j % len(sets)]
            fn(allreduce_in=x, world_size=self.world, world_rank=self.rank,
               token_num=case.tokens, hidden_dim=case.hidden, workspace_ptrs=self.fi_workspace,
               launch_with_pdl=not self.args.no_pdl, trigger_completion_at_end=True,
               fp32_acc=True, pattern_code=self.pattern[case.quant], use_oneshot=oneshot,
               allreduce_out=None, residual_in=r, residual_out=o["residual"],
               norm_out=o.get("norm"), quant_out=o["q"], scale_out=o.get("s"),
               rms_gamma=weight, rms_eps=EPS, scale_factor=None if group_mode else scale,
               layout_code=None, **extra)
        return call

    # -- checking

    def check(self, case: Case, tp_call, fi_call, scale, sets) -> List[Finding]:
        _, _, o = sets[0]
        # NOTE: FlashInfer writes into these buffers: poisoned first, an element it leaves
        # unwritten reads NaN (an FP8 NaN, a scale exponent of 255) and cannot pass.
        for name in ("residual", "norm"):
            if name in o:
                o[name].fill_(float("nan"))
        o["q"].view(torch.uint8).fill_(0x7F)
        if "s" in o:
            o["s"].fill_(-1)  # every byte 0xFF
        tp_out = tp_call(0)
        fi_call(0)
        torch.cuda.synchronize()
        names = ["norm", "residual", "q", "s"] if case.quant == "fp8_group" else \
                ["residual", "q"]
        tp = {n: v.cpu() for n, v in zip(names, tp_out)}
        fi = {n: o[n].cpu() for n in names}
        if case.quant == "fp8_group":
            tp["s"] = col_scales_to_rows(tp["s"], case.tokens)
            fi["s"] = unpack_ue8m0(fi["s"], case.groups)
        else:
            tp["s"] = fi["s"] = scale.cpu()
        return compare_outputs(case, fi, tp, self.world)

    # -- timing

    def time_per_op(self, call: Callable[[int], object], count: int,
                    flush: bool) -> Tuple[float, List[float]]:
        """(rank 0's median µs per op, every rank's median)."""
        a = self.args
        ops = a.ops_per_graph
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for j in range(min(ops, count)):  # outside the graph: validates the call
                call(j)
        torch.cuda.current_stream().wait_stream(stream)
        self.barrier()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="relaxed"):
            keep = [call(j) for j in range(ops)]
        self.barrier()
        for _ in range(a.warmup):
            graph.replay()
        self.barrier()
        times = replay_us_per_op(graph, a.replays, ops, self.flush if flush else None)
        del keep, graph
        mine = statistics.median(times)
        medians = [None] * self.world
        self.dist.all_gather_object(medians, mine)
        return medians[0], medians

    def run(self) -> int:
        a = self.args
        plan = shape_plan(a.hidden, a.tokens, a.quant)
        rows: List[Dict] = []
        text_parts = [self.header()]
        if self.rank == 0:
            print(text_parts[0], flush=True)
        failed_checks = 0
        t0 = time.time()
        current: List[Dict] = []
        for i, case in enumerate(plan):
            if self.rank == 0:
                _progress(f"[{i + 1}/{len(plan)}] H={case.hidden} {case.quant} T={case.tokens} "
                          f"({time.time() - t0:.0f} s)")
            row, bad = self.measure(case)
            failed_checks += bad
            rows.append(row)
            current.append(row)
            last = i + 1 == len(plan) or (plan[i + 1].hidden, plan[i + 1].quant) != \
                (case.hidden, case.quant)
            if last:
                table = format_table(case.hidden, case.quant, self.world, a.fi_strategy, current)
                text_parts.append(table)
                if self.rank == 0:
                    print("\n" + table, flush=True)
                current = []
        if self.rank == 0:
            summary = (f"# checks: {failed_checks} shape(s) out of tolerance"
                       if not a.no_check else "# checks: skipped (--no-check)")
            print("\n" + summary, flush=True)
            text_parts.append(summary)
            if a.out:
                os.makedirs(a.out, exist_ok=True)
                with open(os.path.join(a.out, "flashinfer_compare.txt"), "w") as f:
                    f.write("\n\n".join(text_parts) + "\n")
                with open(os.path.join(a.out, "flashinfer_compare.csv"), "w", newline="") as f:
                    write_csv(rows, f)
                _progress(f"wrote {a.out}/flashinfer_compare.txt and .csv")
        return 3 if failed_checks else 0

    def header(self) -> str:
        props = torch.cuda.get_device_properties(self.device)
        import flashinfer
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        return (f"# {props.name} x {self.world} ({socket.gethostname()}), "
                f"{props.multi_processor_count} SMs, L2 {props.L2_cache_size >> 20} MiB; "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {nccl}; "
                f"flashinfer {flashinfer.__version__}\n"
                f"# µs per op: median of {self.args.replays} replays x {self.args.ops_per_graph} "
                f"ops (CUDA graph, rotating input sets); bf16, residual on, eps {EPS}, static "
                f"scale {STATIC_SCALE}, group {GROUP_SIZE}\n"
                f"# FlashInfer: trtllm_allreduce_fusion, fp32_acc, launch_with_pdl="
                f"{not self.args.no_pdl}, workspace {self.args.fi_workspace}; tpfuse: "
                f"torch.ops.tpfuse.allreduce_rmsnorm (dispatched strategy)")

    def measure(self, case: Case) -> Tuple[Dict, int]:
        a = self.args
        one = set_bytes(case)
        count, flush = rotation(one, self.l2, a.ops_per_graph)
        weight, scale, sets = self.make_sets(case, count)
        row: Dict = {"world_size": self.world, "hidden": case.hidden, "tokens": case.tokens,
                     "quant": case.quant, "emit": ",".join(EMIT[case.quant]),
                     "input_sets": count, "l2_flush": int(flush), "notes": []}
        tp_call = self.tpfuse_fn(case, weight, scale, sets)
        fi_calls = {}
        for s in a.fi_strategy:
            if s == "twoshot" and case.tokens <= self.world:
                row["notes"].append(f"T={case.tokens}: FlashInfer's two-shot needs T > world "
                                    "size")
                continue
            call = self.fi_fn(case, s, weight, scale, sets)
            try:  # FlashInfer's host-side checks refuse some shapes (the same on every rank)
                call(0)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001  (the reason goes into the table's notes)
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                row["notes"].append(f"T={case.tokens}: FlashInfer {s} refused: {reason}")
                continue
            fi_calls[s] = call
        bad = 0
        if a.no_check or not fi_calls:
            row["check"] = "-"
        else:
            lines: List[str] = []
            ok = exact = True
            for s, call in fi_calls.items():
                findings = self.check(case, tp_call, call, scale, sets)
                ok = ok and all(f.ok for f in findings)
                exact = exact and all(f.differing == 0 for f in findings)
                lines += [f"FI {s} {f.line()}" for f in findings]
            everyone = [None] * self.world
            self.dist.all_gather_object(everyone, (ok, exact, lines))
            ok_all = all(e[0] for e in everyone)
            bad = 0 if ok_all else 1
            row["check"] = ("bitwise" if all(e[1] for e in everyone) else "ok") if ok_all \
                else "FAIL"
            details = []
            for r, (ok_r, _, lines_r) in enumerate(everyone):
                if r == 0 or not ok_r:
                    details += [f"rank {r} {line}" for line in lines_r
                                if r == 0 or "OUT OF TOLERANCE" in line]
            row["check_details"] = " | ".join(details)
            if self.rank == 0:
                for line in details:
                    _progress(f"  check H={case.hidden} {case.quant} T={case.tokens}: {line}")
        tp_us, tp_all = self.time_per_op(tp_call, count, flush)
        row["tpfuse_us"] = tp_us
        self.note_spread(row, "tpfuse", tp_all)
        for s, call in fi_calls.items():
            us, all_us = self.time_per_op(call, count, flush)
            row[fi_column(s)] = us
            self.note_spread(row, f"FI {s}", all_us)
        row["fi_over_tpfuse"] = best_ratio(row, list(fi_calls))
        fi_best = min((row[fi_column(s)] for s in fi_calls), default=None)
        row["tpfuse_busbw_gbps"] = busbw_gbps(case, self.world, tp_us)
        row["fi_busbw_gbps"] = busbw_gbps(case, self.world, fi_best)
        del sets
        return row, bad

    def note_spread(self, row: Dict, path: str, medians: Sequence[float]) -> None:
        for r, m in enumerate(medians):
            if r and abs(m - medians[0]) > 0.1 * medians[0]:
                row["notes"].append(f"T={row['tokens']} {path}: rank {r} median {m:.2f} µs, "
                                    f"rank 0 {medians[0]:.2f} µs")


def rank_main(local_rank: int, args, world: int, status_dir: Optional[str]) -> None:
    import warnings

    import torch.distributed as dist
    # trtllm_* are marked deprecated in favour of flashinfer.comm.allreduce_fusion, which calls
    # them; the warning would repeat on every call.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    rank = int(os.environ.get("RANK", local_rank))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", rank=rank, world_size=world,
                            device_id=torch.device("cuda", local_rank))
    try:
        code = Rank(args, rank, world, local_rank).run()
        dist.barrier(device_ids=[local_rank])
    finally:
        dist.destroy_process_group()
    if status_dir is not None and rank == 0:
        with open(os.path.join(status_dir, "status"), "w") as f:
            f.write(str(code))
    if status_dir is None and code:
        sys.exit(code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preflight(args) -> Optional[str]:
    """What stops the run before any GPU work, in words; None when it can start."""
    if os.environ.get("NCCL_NVLS_ENABLE") != "0":
        return ("NCCL_NVLS_ENABLE=0 must be set in the environment (NVLink multicast stays "
                "off); run as: NCCL_NVLS_ENABLE=0 python bench/flashinfer_compare.py ...")
    try:
        load_flashinfer(args.quant, args.fi_workspace)
    except FlashInferUnavailable as e:
        return str(e)
    try:
        import tpfuse
    except Exception as e:  # noqa: BLE001
        return f"tpfuse is not importable: {type(e).__name__}: {e} (PYTHONPATH=python)"
    if not tpfuse.has_cuda():
        return "libtpfuse was built without CUDA (-DTPFUSE_ENABLE_CUDA=ON; TPFUSE_LIBRARY)"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")
    problem = preflight(args)
    if problem:
        print(f"flashinfer_compare: {problem}", file=sys.stderr)
        return 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:  # torchrun
        world = int(os.environ["WORLD_SIZE"])
        if world < 2:
            print("flashinfer_compare: needs 2 or more processes", file=sys.stderr)
            return 1
        rank_main(int(os.environ["LOCAL_RANK"]), args, world, None)
        return 0
    world = args.world_size or gpus
    if gpus < 2 or world > gpus:
        print(f"flashinfer_compare: needs {max(world, 2)} GPUs, {gpus} visible", file=sys.stderr)
        return 1
    import torch.multiprocessing as mp
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(args.port or _free_port())
    with tempfile.TemporaryDirectory() as status_dir:
        try:
            mp.spawn(rank_main, args=(args, world, status_dir), nprocs=world, join=True)
        except Exception as e:  # noqa: BLE001  (a rank failed: its traceback is above)
            print(f"flashinfer_compare: a rank failed: {e}", file=sys.stderr)
            return 1
        path = os.path.join(status_dir, "status")
        return int(open(path).read()) if os.path.exists(path) else 1


if __name__ == "__main__":
    sys.exit(main())
