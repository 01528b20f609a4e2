"""bench/second_sum_local.py without a GPU: its two paths (the fused op reading both sums, and
the add as its own op before the fused op of one) give the same bits on the CPU backend, for
both forms and both quant modes it times (its no-GPU exit: test_bench_scripts.py). The timing
needs a GPU: docs/perf/h100x1/NOTES.md."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "second_sum_local.py")
_spec = importlib.util.spec_from_file_location("second_sum_local", _PATH)
ssl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ssl)


@pytest.mark.parametrize("into_residual", [False, True])
@pytest.mark.parametrize("quant", ["none", "fp8_token"])
def test_the_two_paths_give_the_same_bits(quant, into_residual):
    g = torch.Generator().manual_seed(7)
    x, x2, r = [(torch.rand(37, 512, generator=g) * 2 - 1).to(torch.bfloat16) for _ in range(3)]
    w = (torch.rand(512, generator=g) + 0.5).to(torch.bfloat16)
    fused, two_ops = ssl.paths(quant, into_residual)
    assert ssl.same_bits(fused(x, x2, r, w), two_ops(x, x2, r, w))
    # A planted difference is seen.
    assert not ssl.same_bits(fused(x, x2, r, w), two_ops(x, x2 * 2, r, w))
