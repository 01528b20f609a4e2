"""CUDA-graph replay timing shared by the benchmark scripts (docs/benchmarking.md's method)."""

from __future__ import annotations

from typing import List, Optional

import torch


def replay_us_per_op(graph: "torch.cuda.CUDAGraph", replays: int, ops: int,
                     flush: Optional[torch.Tensor] = None) -> List[float]:
    """µs per op of each of `replays` replays of `graph` (a graph of `ops` calls), each replay
    between two CUDA events. `flush`, when given, is zeroed before every replay, outside the
    timed interval (it overwrites the L2)."""
    start = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for i in range(replays):
        if flush is not None:
            flush.zero_()
        start[i].record()
        graph.replay()
        end[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e3 / ops for s, e in zip(start, end)]
