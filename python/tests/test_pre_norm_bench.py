"""bench/pre_norm_local.py without a GPU: its fused op and its two ops give the same bits on the
CPU backend for both quant modes it times, its torch chain (what Inductor compiles) stays within
Contract 3's 1 ulp of them (its no-GPU exit: test_bench_scripts.py). The timing needs a GPU:
docs/perf/h100x1/NOTES.md."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from tpfuse.tolerance import ulp_distance_16

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "pre_norm_local.py")
_spec = importlib.util.spec_from_file_location("pre_norm_local", _PATH)
pnl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pnl)


@pytest.mark.parametrize("quant", ["none", "fp8_token"])
def test_the_paths_give_the_same_bits(quant):
    g = torch.Generator().manual_seed(11)
    x, r = [torch.randn(37, 512, generator=g).to(torch.bfloat16) for _ in range(2)]
    w0, w = [(torch.rand(512, generator=g) - 0.5).to(torch.bfloat16) for _ in range(2)]
    fused, two_ops = pnl.paths(quant)
    got = fused(x, r, w0, w)
    assert pnl.same_bits(got, two_ops(x, r, w0, w))
    # A planted difference is seen.
    assert not pnl.same_bits(got, two_ops(x, r, w, w0))
    torch_results = pnl.torch_chain(quant)(x, r, w0, w)
    h = got[1] if quant == "none" else got[0]
    h_torch = torch_results[1] if quant == "none" else torch_results[0]
    assert ulp_distance_16(h, h_torch).max() <= 1
    assert pnl.differing(got, torch_results) < 0.05
    if quant == "none":
        assert ulp_distance_16(got[0], torch_results[0]).max() <= 1
