"""Runs tp_models' cases at world size 2 over gloo (two processes) and collects, per case, what
the pass reported and how the compiled outputs compare with the eager model's."""

from __future__ import annotations

import json
import os
import socket
import traceback
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tp_models
from ranks import end_rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_backend():
    """The same decomposed graph as tpfuse.torch.compile(backend="aot_eager"), without the pass."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    return aot_autograd(fw_compiler=lambda gm, _: gm, decompositions=select_decomp_table())


def _compare(a: torch.Tensor, b: torch.Tensor) -> Dict[str, float]:
    d = (a.float() - b.float()).abs()
    return {"equal": bool(torch.equal(a, b)), "max_abs": float(d.max()),
            "differing": int((d > 0).sum()), "elements": a.numel()}


def run_case(case: tp_models.Case, rank: int, world: int, backend: str) -> Dict:
    import tpfuse.torch as tt

    torch._dynamo.reset()
    model = tp_models.build(case, rank, world, dist.group.WORLD.group_name)
    fn = tp_models.forward_fn(model)
    ids = tp_models.example_input()
    with torch.no_grad():
        eager = fn(ids)
        plain = torch.compile(fn, backend=_plain_backend())(ids)
        torch._dynamo.reset()
        compiled = tt.compile(fn, backend=backend)
        fused = compiled(ids)
    report = compiled.tpfuse_pass.report
    return {
        "case": case.name,
        "graphs": len(report.graphs),
        "all_reduces": report.all_reduces,
        "all_reduces_after": report.all_reduces_after,
        "fused": report.fused,
        "left_alone": report.left_alone,
        "skipped": {k: v for g in report.graphs for k, v in g.skipped.items()},
        "untranslated": report.untranslated,
        "fusions": [{"anchor": f.anchor, "quant": str(f.attrs.get("quant", "none")),
                     "emit": [str(e) for e in f.attrs.get("emit", [])],
                     "rounding": [str(r) for r in f.attrs.get("rounding", [])],
                     "bias": bool(f.attrs.get("bias", False))}
                    for g in report.graphs for f in g.fusions],
        "vs_eager": _compare(fused, eager),
        "vs_unfused": _compare(fused, plain),
        "unfused_vs_eager": _compare(plain, eager),
    }


def _worker(rank: int, world: int, port: int, cases: List[tp_models.Case], backend: str,
            out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    try:
        for case in cases:
            try:
                results.append(run_case(case, rank, world, backend))
            except Exception:  # noqa: BLE001  reported per case
                results.append({"case": case.name, "error": traceback.format_exc()})
    except BaseException:
        dist.destroy_process_group()
        raise
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f, indent=1)
    end_rank()


def run_all(cases: List[tp_models.Case], out_dir: str, backend: str = "aot_eager",
            world: int = 2) -> List[List[Dict]]:
    """Per rank, the list of per-case results."""
    mp.spawn(_worker, args=(world, _free_port(), cases, backend, out_dir), nprocs=world)
    out = []
    for rank in range(world):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            out.append(json.load(f))
    return out
