"""torch.ops.tpfuse.allreduce_rmsnorm on one GPU (world size 1, the local op): against the CPU
reference within Contract 3's tolerance, inside torch.compile(mode="reduce-overhead") and a
captured CUDA graph against eager, and the pass fusing a local chain under reduce-overhead.
Skips without a GPU or a libtpfuse built with CUDA."""

from __future__ import annotations

import pytest
import torch

import tpfuse
from tpfuse.tolerance import fp8_ulp, ulp_distance_16
from test_op_cpu import (BIAS_CASES, CASES, PRE_NORM_CASES, SECOND_SUM_CASES, assert_bitwise,
                         make_inputs, second_sum_inputs)
from test_pass import layer_tail

OP = torch.ops.tpfuse.allreduce_rmsnorm

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not tpfuse.has_cuda(),
    reason="needs a CUDA GPU and libtpfuse built with CUDA "
           f"(torch sees {torch.cuda.device_count() if torch.cuda.is_available() else 0} GPUs)")

TOKENS = [1, 3, 19, 128, 1000]
HIDDEN = [2880, 4096, 7168]


def assert_contract3_close(got, expected, names, what: str, col: bool = False):
    """DESIGN.md Contract 3's tolerance, every element: bf16/f16 within 1 ulp; dequantized FP8
    within 1 FP8 ulp of the reference's after scale differences; scales within 2^-7."""
    assert len(got) == len(expected)
    scales = {}
    if "s" in names:
        gs, es = got[names.index("s")].cpu(), expected[names.index("s")]
        rel = ((gs - es).abs() / es.abs().clamp_min(1e-30)).max().item()
        assert rel <= 2.0 ** -7, f"{what}: scale relative error {rel}"
        scales = {"got": gs, "expected": es}
    for name, g, e in zip(names, got, expected):
        g = g.cpu()
        assert g.shape == e.shape and g.dtype == e.dtype, f"{what} {name}: {g.dtype} {g.shape}"
        if name == "s":
            continue
        if name == "q":
            gq, eq = g.float(), e.float()
            if scales:
                tokens = gq.reshape(-1, gq.shape[-1]).shape[0]
                gs = _row_scales(scales["got"], tokens, gq.shape[-1], col)
                es = _row_scales(scales["expected"], tokens, gq.shape[-1], col)
            else:
                gs = es = torch.ones(())
            gq, eq = gq.reshape(-1, gq.shape[-1]), eq.reshape(-1, eq.shape[-1])
            err = (gq * gs - eq * es).abs()
            bound = fp8_ulp(eq) * es + eq.abs() * (gs - es).abs()
            bad = err > bound * (1 + 1e-6)
        else:
            bad = ulp_distance_16(g, e) > 1
        if bad.any():
            idx = bad.nonzero()[0].tolist()
            pytest.fail(f"{what} {name}: {int(bad.sum())} elements out of tolerance, first at {idx}")


def _row_scales(s: torch.Tensor, tokens: int, hidden: int, col: bool) -> torch.Tensor:
    """Scales broadcast to [T, H] from the row-major [..., G] or column-major [G, pad4(T)]
    scale output."""
    per_row = s[:, :tokens].t() if col else s.reshape(tokens, -1)
    return per_row.repeat_interleave(hidden // per_row.shape[-1], dim=-1)


def _names(attrs):
    names = [n for n in ("allreduce", "norm", "residual") if n in attrs["emit"]]
    if "quant" in attrs["emit"]:
        names.append("q")
        if attrs.get("quant") in ("fp8_token", "fp8_group"):
            names.append("s")
    return names


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("name,attrs,residual", CASES, ids=[c[0] for c in CASES])
def test_local_op_matches_cpu_reference(name, attrs, residual, hidden):
    attrs = dict(attrs)
    if attrs.get("quant") == "fp8_group" and hidden % attrs.get("group_size", 128):
        attrs["group_size"] = 64
    for tokens in TOKENS:
        partials, res, weight, scale = make_inputs(tokens * 7 + hidden, (tokens, hidden), 1,
                                                   residual, attrs.get("quant", "none"))
        expected = OP(partials[0], res, weight, scale, **attrs)  # the CPU reference
        dev = [t.cuda() if t is not None else None for t in (partials[0], res, weight, scale)]
        got = OP(*dev, **attrs)
        torch.cuda.synchronize()
        assert_contract3_close(got, expected, _names(attrs), f"{name} T={tokens} H={hidden}",
                               col=attrs.get("scale_layout") == "col")


def assert_gpu_is_the_cpu_bitwise(args, attrs, what: str):
    """The op on the GPU against the op on the CPU (the C ABI's reference), the same operands
    (None where absent), every result bit for bit."""
    expected = OP(*args, **attrs)
    got = OP(*[t.cuda() if t is not None else None for t in args], **attrs)
    torch.cuda.synchronize()
    assert_bitwise([g.cpu() for g in got], expected, what)


@pytest.mark.parametrize("name,attrs", SECOND_SUM_CASES, ids=[c[0] for c in SECOND_SUM_CASES])
def test_two_summed_all_reduces_match_the_cpu_reference_bitwise(name, attrs):
    # World size 1: each sum is its partial (a = x, a2 = x2); the kernels of the f32 recipe.
    for tokens in TOKENS:
        for hidden in HIDDEN:
            partials, partials2, res, weight, scale = second_sum_inputs(
                tokens * 5 + hidden, (tokens, hidden), 1, attrs.get("quant", "none"))
            assert_gpu_is_the_cpu_bitwise((partials[0], res, weight, scale, partials2[0]), attrs,
                                          f"{name} T={tokens} H={hidden}")


@pytest.mark.parametrize("name,attrs", PRE_NORM_CASES, ids=[c[0] for c in PRE_NORM_CASES])
def test_a_norm_before_the_residual_add_matches_the_cpu_reference_bitwise(name, attrs):
    # World size 1 (pre_weight: sandwich norms); the kernels of the pre-residual recipe.
    for tokens in TOKENS:
        for hidden in HIDDEN:
            if attrs.get("quant") == "fp8_group" and hidden % attrs.get("group_size", 128):
                continue
            partials, res, weight, scale = make_inputs(tokens * 7 + hidden, (tokens, hidden), 1,
                                                       True, attrs.get("quant", "none"))
            assert_gpu_is_the_cpu_bitwise((partials[0], res, weight, scale, None, weight.flip(0)),
                                          attrs, f"{name} T={tokens} H={hidden}")


@pytest.mark.parametrize("per_token", [False, True], ids=["row", "per_token"])
@pytest.mark.parametrize("name,attrs", BIAS_CASES, ids=[c[0] for c in BIAS_CASES])
def test_a_bias_added_to_the_sum_matches_the_cpu_reference_bitwise(name, attrs, per_token):
    # World size 1 (bias: a row-parallel layer's bias after its all_reduce, or a tensor of x's
    # shape, each row its own); the second-sum recipe's kernels.
    residual = name != "no_residual_tensor_quant"
    for tokens in TOKENS:
        for hidden in HIDDEN:
            if attrs.get("quant") == "fp8_group" and hidden % attrs.get("group_size", 128):
                continue
            partials, res, weight, scale = make_inputs(tokens * 11 + hidden, (tokens, hidden), 1,
                                                       residual, attrs.get("quant", "none"))
            bias = weight.flip(0) - 1.0
            if per_token:
                bias = (partials[0].float() * 0.5 + bias.float()).to(partials[0].dtype)
            assert_gpu_is_the_cpu_bitwise((partials[0], res, weight, scale, None, None, bias),
                                          attrs, f"{name} T={tokens} H={hidden}")


@pytest.mark.parametrize("name,attrs,residual", CASES, ids=[c[0] for c in CASES])
def test_no_rows_give_the_empty_results_the_cpu_gives(name, attrs, residual):
    partials, res, weight, scale = make_inputs(0, (0, 256), 1, residual, attrs.get("quant", "none"))
    expected = OP(partials[0], res, weight, scale, **attrs)
    dev = [t.cuda() if t is not None else None for t in (partials[0], res, weight, scale)]
    got = OP(*dev, **attrs)
    torch.cuda.synchronize()
    assert [(g.shape, g.dtype, g.device.type) for g in got] == \
        [(e.shape, e.dtype, "cuda") for e in expected], name


def test_reduce_overhead_compile_matches_eager():
    from torch._dynamo.utils import counters
    counters.clear()
    attrs = dict(emit=["residual", "quant"], quant="fp8_group")

    def layer(x, residual, weight):
        h, q, s = OP(x * 2, residual, weight, None, **attrs)
        return h + 1, q, s

    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    for step in range(5):  # warm-up runs, then replays of the recorded graph
        partials, res, weight, _ = make_inputs(100 + step, (64, 4096), 1, True, "fp8_group")
        x, r, w = partials[0].cuda(), res.cuda(), weight.cuda()
        got = [t.clone() for t in compiled(x, r, w)]
        assert_bitwise(got, list(layer(x, r, w)), f"step {step}")
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


def test_the_pass_fuses_a_local_chain_inside_reduce_overhead():
    """tpfuse.torch.compile at world size 1 on the GPU: fuse_local auto fuses the chain that no
    all_reduce feeds (docs/pytorch.md, "Local chains"), and the compiled layer, replayed from
    CUDA graphs, computes what the fused op computes when called directly. Inductor's caches
    are off: a graph served from them does not go through the pass, so the report (counts of
    this process's graphs) would be empty on a machine that compiled it before."""
    import tpfuse.torch as tt
    from torch._dynamo.utils import counters

    counters.clear()
    attrs = dict(emit=["residual", "quant"], quant="fp8_group", group_size=128, eps=1e-6,
                 rounding=["weight_after_round"])
    with torch._inductor.config.patch(force_disable_caches=True):
        torch._dynamo.reset()
        compiled = tt.compile(layer_tail, world_size=1, mode="reduce-overhead", fullgraph=True)
        for step in range(5):  # warm-up runs, then replays of the recorded graph
            partials, res, weight, _ = make_inputs(300 + step, (64, 4096), 1, True, "fp8_group")
            x, r, w = partials[0].cuda(), res.cuda(), weight.cuda()
            got = [t.clone() for t in compiled(x, r, w)]
            assert_bitwise(got, list(OP(x, r, w, None, **attrs)), f"step {step}")
    fusions = [f for g in compiled.tpfuse_pass.report.graphs for f in g.fusions]
    assert len(fusions) == 1, compiled.tpfuse_pass.report
    (fusion,) = fusions
    assert fusion.anchor == ""  # a local chain
    assert str(fusion.attrs["quant"]) == "fp8_group"
    assert [str(e) for e in fusion.attrs["emit"]] == attrs["emit"]
    assert [str(r) for r in fusion.attrs.get("rounding", [])] == attrs["rounding"]
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


def sandwich(x, residual, w0, w):
    """Gemma 2/3's sandwich norms at TP 1: the block's output normed, added to the residual, and
    the stream normed for the next block ((1 + w) norms in f32)."""
    def norm(v, weight):
        f = v.float()
        return (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + weight.float())
                ).to(v.dtype)
    h = residual + norm(x, w0)
    return norm(h, w), h


@pytest.mark.parametrize("hidden", [2304, 5376])
def test_the_pass_fuses_sandwich_norms_where_the_fused_op_was_measured_faster(hidden):
    """tpfuse.torch.compile at world size 1 on the GPU, fuse_local auto (the Inductor rule): the
    chain is one fused op (pre_residual_norm), replayed from CUDA graphs, bitwise the op called
    directly. At H 5376 and 1024 rows Inductor's kernel of the chain was measured faster until
    run 118 (MeasuredPreNormLosses, now empty; the rule's mechanics with a table are the C++
    PassesLocalFusion.SandwichNormsFollowTheirOwnMeasurement)."""
    import tpfuse.torch as tt

    attrs = dict(emit=["norm", "residual"], weight_bias=1.0, local=True)
    with torch._inductor.config.patch(force_disable_caches=True):
        torch._dynamo.reset()
        compiled = tt.compile(sandwich, world_size=1, mode="reduce-overhead", fullgraph=True)
        for step in range(4):
            g = torch.Generator().manual_seed(step)
            x, r = (torch.randn(1024, hidden, generator=g).to(torch.bfloat16).cuda()
                    for _ in range(2))
            w0, w = ((torch.rand(hidden, generator=g) - 0.5).to(torch.bfloat16).cuda()
                     for _ in range(2))
            got = [t.clone() for t in compiled(x, r, w0, w)]
            # The op called directly (test_a_norm_before_the_residual_add_matches_the_cpu_
            # reference_bitwise holds it to the CPU reference). Not eager torch on the GPU: a 1-ulp
            # difference in the first norm is many ulps of a residual sum that cancels.
            assert_bitwise(got, list(OP(x, r, w, None, None, w0, **attrs)), f"step {step}")
    report = compiled.tpfuse_pass.report
    fusions = [f for gr in report.graphs for f in gr.fusions]
    assert len(fusions) == 1, report
    assert bool(fusions[0].attrs.get("pre_residual_norm")), fusions[0].attrs
    assert not report.local_left_alone, report


def test_captured_cuda_graph_replays_with_new_inputs():
    attrs = dict(emit=["norm", "residual"])
    partials, res, weight, _ = make_inputs(5, (19, 4096), 1, True, "none")
    x, r, w = partials[0].cuda(), res.cuda(), weight.cuda()
    OP(x, r, w, None, **attrs)  # warm-up outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = OP(x, r, w, None, **attrs)
    for seed in (6, 7):
        partials, res2, _, _ = make_inputs(seed, (19, 4096), 1, True, "none")
        x.copy_(partials[0])
        r.copy_(res2)
        graph.replay()
        torch.cuda.synchronize()
        assert_bitwise([o.clone() for o in outs], OP(x, r, w, None, **attrs), f"replay {seed}")


def test_device_mismatch_names_the_argument():
    x = torch.zeros(2, 128, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="weight must be on x's device"):
        OP(x, None, torch.ones(128, dtype=torch.bfloat16), None, emit=["norm"])
