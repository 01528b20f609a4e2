"""bench/inductor_epilogue.py without a GPU: the bitwise check of the fused op's rows against the
CPU backend (check_rows), run here with the CPU backend on both sides, and a planted difference
it must report. The timing needs a GPU: docs/perf/h200x1/inductor_epilogue.md."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

import tpfuse  # noqa: F401  (registers the op)
from tpfuse.tolerance import ulp_distance_16

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "inductor_epilogue.py")
_spec = importlib.util.spec_from_file_location("inductor_epilogue", _PATH)
ie = importlib.util.module_from_spec(_spec)
sys.modules["inductor_epilogue"] = ie
_spec.loader.exec_module(ie)


def inputs(tokens: int, hidden: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(tokens, hidden, generator=g) * 2 - 1).to(torch.bfloat16)
    r = (torch.rand(tokens, hidden, generator=g) * 2 - 1).to(torch.bfloat16)
    w = (torch.rand(hidden, generator=g) + 0.5).to(torch.bfloat16)
    return x, r, w, torch.full((), 1.0 / 64)


@pytest.mark.parametrize("quant", ie.QUANTS)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("tokens", [3, 600])
def test_rows_of_one_call_are_the_oracles(quant, residual, tokens):
    fused = ie.tpfuse_call(quant, residual)
    assert ie.check_rows(fused, *inputs(tokens, 256, tokens)) == "bitwise"


@pytest.mark.parametrize("row", [0, 255, 256, 343, 344, 599])
def test_a_changed_bit_in_a_checked_row_is_reported(row):
    # Rows 0-255 and 344-599 of 600 are checked; 256-343 are not.
    base = ie.tpfuse_call("fp8_group", True)
    calls = []

    def flipped_on_the_first_call(*args):
        results = list(base(*args))
        if not calls:
            results[1] = results[1].clone()
            results[1].view(torch.int16)[row, 3] ^= 1
        calls.append(1)
        return results

    got = ie.check_rows(flipped_on_the_first_call, *inputs(600, 256, 7))
    assert got == ("bitwise" if 256 <= row < 344 else "MISMATCH (result 1)")


@pytest.mark.parametrize("quant", ie.QUANTS)
def test_the_f32_residual_stream_is_the_same_chain_on_both_sides(quant):
    # --f32-residual: the fused op's rows are the oracle's, its h is the torch chain's f32 sum
    # bit for bit, and its norm the chain's to the sum order of the squares (one ulp).
    x, r, w, scale = inputs(40, 256, 5)
    r = r.float() + 1e-3 * torch.rand(r.shape)  # off bf16's grid
    fused = ie.tpfuse_call(quant, True, True)
    assert ie.check_rows(fused, x, r, w, scale) == "bitwise"
    got = fused(x, r, w, scale)
    want = ie.torch_chain(quant, True, True)(x, r, w, 1.0 / scale)
    h_got = got[1] if quant in ("none", "fp8_group") else got[0]
    assert h_got.dtype == torch.float32 and torch.equal(h_got, want[0])
    if quant == "none":
        assert ulp_distance_16(got[0], want[1]).max() <= 1
    assert ie.bytes_moved(40, 256, quant, True, True) - ie.bytes_moved(40, 256, quant) == \
        2 * 2 * 40 * 256


@pytest.mark.parametrize("f32_residual", [False, True], ids=["bf16_residual", "f32_residual"])
def test_the_f32_norm_is_the_same_chain_on_both_sides(f32_residual):
    # --f32-norm: the fused op's rows are the oracle's, its norm is the torch chain's f32 norm to
    # the sum order of the squares (a few f32 ulps), its residual the chain's bit for bit.
    x, r, w, scale = inputs(40, 256, 6)
    if f32_residual:
        r = r.float() + 1e-3 * torch.rand(r.shape)
    fused = ie.tpfuse_call("none", True, f32_residual, True)
    assert ie.check_rows(fused, x, r, w, scale) == "bitwise"
    got = fused(x, r, w, scale)
    want = ie.torch_chain("none", True, f32_residual, True)(x, r, w, 1.0 / scale)
    assert got[0].dtype == torch.float32 and torch.equal(got[1], want[0])
    torch.testing.assert_close(got[0], want[1], rtol=4e-7, atol=0)
    assert ie.bytes_moved(40, 256, "none", True, f32_residual, True) - \
        ie.bytes_moved(40, 256, "none", True, f32_residual) == 2 * 40 * 256
