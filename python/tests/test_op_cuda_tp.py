"""torch.ops.tpfuse.allreduce_rmsnorm across GPUs (world size 2, one process a GPU, NCCL): the
tpfuse communicator made once per process group, results against the CPU reference within
Contract 3's tolerance on every rank, and under torch.compile(mode="reduce-overhead"). Skips
with fewer than 2 GPUs or a libtpfuse built without CUDA."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tpfuse
from ranks import end_rank
from test_op_cpu import (CASES, SECOND_SUM_CASES, assert_bitwise, make_inputs,
                         second_sum_inputs)
from test_op_cuda import _names, assert_contract3_close

OP = torch.ops.tpfuse.allreduce_rmsnorm
WORLD_SIZE = 2

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < WORLD_SIZE
    or not tpfuse.has_cuda(),
    reason=f"needs {WORLD_SIZE} CUDA GPUs and libtpfuse built with CUDA")


def _rank_main(rank: int, store_path: str) -> None:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store_path}", rank=rank,
                            world_size=WORLD_SIZE, device_id=torch.device("cuda", rank))
    try:
        group_name = dist.group.WORLD.group_name
        tpfuse.ops.init_comm()  # once, before any capture
        for name, attrs, residual in CASES:
            for tokens, hidden in ((1, 4096), (19, 2880), (1000, 7168)):
                attrs = dict(attrs)
                if attrs.get("quant") == "fp8_group" and hidden % attrs.get("group_size", 128):
                    attrs["group_size"] = 64
                partials, res, weight, scale = make_inputs(tokens + hidden, (tokens, hidden),
                                                           WORLD_SIZE, residual,
                                                           attrs.get("quant", "none"))
                expected = tpfuse.ops.reference(partials, res, weight, scale, **attrs)
                dev = [t.cuda() if t is not None else None
                       for t in (partials[rank], res, weight, scale)]
                got = OP(*dev, group_name=group_name, **attrs)
                torch.cuda.synchronize()
                assert_contract3_close(got, expected, _names(attrs),
                                       f"rank {rank} {name} T={tokens} H={hidden}",
                                       col=attrs.get("scale_layout") == "col")

        # Two summed all_reduces: the nccl strategy's two collectives and one epilogue, bitwise
        # the CPU reference (ncclAllReduce's sum of two is Contract 3's).
        for name, attrs in SECOND_SUM_CASES:
            for tokens, hidden in ((1, 4096), (1000, 7168)):
                partials, partials2, res, weight, scale = second_sum_inputs(
                    tokens + hidden, (tokens, hidden), WORLD_SIZE, attrs.get("quant", "none"))
                expected = tpfuse.ops.reference(partials, res, weight, scale,
                                                partials2=partials2, **attrs)
                dev = [t.cuda() if t is not None else None
                       for t in (partials[rank], res, weight, scale, partials2[rank])]
                got = OP(*dev, group_name=group_name, **attrs)
                torch.cuda.synchronize()
                assert_bitwise([g.cpu() for g in got], expected,
                               f"rank {rank} {name} T={tokens} H={hidden}")

        attrs = dict(emit=["norm", "residual"])

        def layer(x, r, w):
            y, h = OP(x * 1, r, w, None, group_name=group_name, **attrs)
            return y, h

        compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
        for step in range(4):
            partials, res, weight, _ = make_inputs(50 + step, (64, 4096), WORLD_SIZE, True, "none")
            x, r, w = partials[rank].cuda(), res.cuda(), weight.cuda()
            got = [t.clone() for t in compiled(x, r, w)]
            assert_bitwise(got, list(layer(x, r, w)), f"rank {rank} compiled step {step}")
    except BaseException:
        dist.destroy_process_group()
        raise
    end_rank()


def test_world_size_2_nccl_matches_reference():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(os.path.join(tmp, "store"),), nprocs=WORLD_SIZE, join=True)
