"""The forms mixed, as torch code writes them: one all_reduce site built with a random choice at
every point where model code differs (rank 2 or 3, a no-op view, the residual add's operand
order or vLLM's f32 sum, pow(2) or v * v, rsqrt or pow(-0.5), operand orders, the weight's
dtype, Gemma's 1 + w in f32 or in the weight's dtype, the weight multiply before or after the
cast, and the quant: none, static by division or by the reciprocal, per token or per group as
DeepSeek's reference and vLLM's QuantFP8 write them, UE8M0 included),
traced to aten and given to the pass at world size 1 (the all_reduce is the identity, so the
fused graph runs without a process group). Every mix fuses into one op with the recipe its form
implies, and the fused graph agrees with eager torch within Contract 3's tolerance on every
element (torch sums the squares in another order, so not bit for bit)."""

import random

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import tpfuse.torch as tt
from tpfuse.tolerance import fp8_step_distance, ulp_distance_16

GROUP = "tp0"
FUSED = "tpfuse.allreduce_rmsnorm.default"
FP8 = torch.float8_e4m3fn
SITES = 64


def random_site(rng: random.Random):
    """(fn(x, res, w, scale, use_ar), example args, expected quant, expected rounding, words)."""
    dt = rng.choice([torch.bfloat16, torch.float16])
    hidden = rng.choice([128, 256])
    shape = rng.choice([(5, hidden), (2, 3, hidden)])
    w_dtype = rng.choice([dt, torch.float32])
    residual = rng.randrange(3)  # none, add in dt, vLLM's f32 sum
    bias = rng.randrange(3)      # none, 1 + w in f32, 1 + w in the weight's dtype
    after_cast = w_dtype == dt and bias != 1 and rng.random() < 0.5
    quant = rng.choice(["none", "div", "reciprocal", "token", "group", "vllm_token", "vllm_group",
                        "ue8m0_group", "vllm_ue8m0_group"])
    c = {k: rng.random() < 0.5 for k in ("view", "res_first", "pow2", "rsqrt", "vr", "nw",
                                         "ret_norm", "ret_res", "clamp")}
    rounding, words = set(), [str(dt).split(".")[1], f"w {str(w_dtype).split('.')[1]}", quant]
    if residual == 2:
        rounding.add("norm_input_f32")
    if after_cast:
        rounding.add("weight_after_round")
    if bias == 2 and w_dtype != torch.float32:
        rounding.add("weight_bias_in_weight_dtype")
    if quant in ("div", "vllm_token", "ue8m0_group"):
        rounding.add("scale_op_swapped")  # the static form divides; these dynamic ones multiply
    if quant.startswith("vllm"):
        rounding.add("scale_floor_after_div")
    words += [k for k, v in c.items() if v] + [f"residual {residual}", f"bias {bias}"]
    words += ["after_cast"] if after_cast else []

    def fn(x, res, w, scale, use_ar=True):
        a = x
        if use_ar:
            a = torch.ops._c10d_functional.wait_tensor(
                torch.ops._c10d_functional.all_reduce(x, "sum", GROUP))
        if c["view"]:
            a = a.view(a.shape)
        outs = []
        if residual == 2:
            v = a.float() + res.float() if c["res_first"] else res.float() + a.float()
            h = v.to(dt)
        else:
            h = (res + a if c["res_first"] else a + res) if residual == 1 else a
            v = h.float()
        sq = v.pow(2) if c["pow2"] else v * v
        ms = sq.mean(-1, keepdim=True) + 1e-6
        r = torch.rsqrt(ms) if c["rsqrt"] else torch.pow(ms, -0.5)
        n = v * r if c["vr"] else r * v
        wb = w
        if bias == 2 and w_dtype != torch.float32:
            wb = 1 + w
        if after_cast:
            nc = n.to(dt)
            y = wb * nc if c["nw"] else nc * wb
        else:
            wf = wb.float()
            if bias == 1 or (bias == 2 and w_dtype == torch.float32):
                wf = 1.0 + wf
            y = (n * wf if c["nw"] else wf * n).to(dt)
        if c["ret_norm"] or quant == "none":
            outs.append(y)
        if residual and c["ret_res"]:
            outs.append(h)
        yf = y.float()
        if quant == "div":
            d = yf / scale
        elif quant == "reciprocal":
            d = yf * scale.reciprocal()
        elif quant in ("token", "group", "ue8m0_group"):
            g = yf.unflatten(-1, (-1, 64)) if quant != "token" else yf
            s = g.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
            if quant == "ue8m0_group":  # DeepSeek's: a power of two, y times its reciprocal
                s = torch.exp2(torch.ceil(torch.log2(s)))
                d = g * s.reciprocal()
            else:
                d = g / s
        elif quant == "vllm_token":  # vLLM's QuantFP8 forms: the amax of the 16-bit y
            s = (y.abs().max(dim=-1)[0].unsqueeze(-1).to(torch.float32) / 448.0).clamp(
                min=1.0 / (448.0 * 512.0))
            d = yf * s.reciprocal()
        elif quant == "vllm_group":
            g = y.unflatten(-1, (-1, 64))
            s = (g.abs().max(dim=-1, keepdim=True)[0].float() / 448.0).clamp(
                min=1.0 / (448.0 * 512.0))
            d = g / s
        elif quant == "vllm_ue8m0_group":  # use_ue8m0: rounded up, then floored
            g = y.unflatten(-1, (-1, 64))
            s = g.abs().max(dim=-1, keepdim=True)[0].float() / 448.0
            s = torch.exp2(torch.ceil(torch.log2(s))).clamp(min=1.0 / (448.0 * 512.0))
            d = g / s
        if quant != "none":
            q = (d.clamp(-448.0, 448.0) if c["clamp"] else d).to(FP8)
            if quant.endswith("group"):
                outs += [q.flatten(-2), s.squeeze(-1)]
            elif quant.endswith("token"):
                outs += [q, s]
            else:
                outs.append(q)
        return tuple(outs)

    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    args = (torch.randn(shape, generator=gen).to(dt), torch.randn(shape, generator=gen).to(dt),
            (torch.rand(hidden, generator=gen) + 0.5).to(w_dtype),
            torch.tensor(0.01 + 0.01 * torch.rand((), generator=gen).item()))
    want_quant = {"none": "none", "div": "fp8_tensor", "reciprocal": "fp8_tensor",
                  "token": "fp8_token", "vllm_token": "fp8_token"}.get(quant, "fp8_group")
    return fn, args, want_quant, sorted(rounding), " ".join(words)


def eager_ulps(rounding):
    """How far a bf16/f16 result may lie from eager torch's: Contract 3's 1 ulp, or 2 where the
    norm rounds before the weight multiply: torch's sum of squares takes its own order (it
    differs between CPUs), and a flip of that first rounding reaches y scaled by the weight."""
    return 2 if "weight_after_round" in rounding else 1


def assert_within_contract3(got, want, what, ulps=1):
    assert len(got) == len(want), what
    for i, (g, e) in enumerate(zip(got, want)):
        assert g.shape == e.shape and g.dtype == e.dtype, (what, i, g.shape, e.shape)
        if e.dtype == FP8:
            assert int(fp8_step_distance(g, e).max()) <= 1, (what, i)
        elif e.dtype == torch.float32:  # scales
            rel = ((g - e).abs() / e.abs().clamp(min=1e-30)).max()
            assert float(rel) <= 2.0 ** -7, (what, i, float(rel))
        else:
            assert int(ulp_distance_16(g, e).max()) <= ulps, (what, i)


@pytest.mark.parametrize("seed", range(SITES))
def test_every_mix_fuses_with_its_recipe(seed):
    fn, args, want_quant, want_rounding, words = random_site(random.Random(seed))
    gm = make_fx(lambda x, res, w, scale: fn(x, res, w, scale), tracing_mode="fake")(*args)
    p = tt.FusionPass(world_size=1)
    p(gm.graph)
    gm.recompile()
    fusions = [f for g in p.report.graphs for f in g.fusions]
    assert len(fusions) == 1 and not p.report.graphs[0].left_alone, (words, p.report, gm.graph)
    attrs = fusions[0].attrs
    assert str(attrs.get("quant", "none")) == want_quant, (words, attrs)
    assert sorted(str(r) for r in attrs.get("rounding", [])) == want_rounding, (words, attrs)
    assert not any(str(n.target).startswith("_c10d_functional") for n in gm.graph.nodes), words
    got = gm(*args)
    want = fn(*args, use_ar=False)
    assert_within_contract3(list(got), list(want), words, eager_ulps(want_rounding))


@pytest.mark.parametrize("seed", range(1000, 1016))
def test_a_mix_with_dynamic_rows_fuses_once_for_every_row_count(seed):
    """The same sites through torch.compile with the rows (and a rank-3 batch) marked dynamic:
    one graph, one fusion, right at two row counts."""
    fn, args, want_quant, want_rounding, words = random_site(random.Random(seed))
    torch._dynamo.reset()
    compiled = tt.compile(lambda x, res, w, scale: fn(x, res, w, scale, use_ar=False),
                          world_size=1, fuse_local="on", backend="aot_eager")
    for extra in (0, 3):
        shape = args[0].shape[:-2] + (args[0].shape[-2] + extra, args[0].shape[-1])
        gen = torch.Generator().manual_seed(seed + extra)
        x, res = (torch.randn(shape, generator=gen).to(args[0].dtype) for _ in range(2))
        for t in (x, res):
            torch._dynamo.mark_dynamic(t, t.dim() - 2)
            if t.dim() == 3:
                torch._dynamo.mark_dynamic(t, 0)
        got = compiled(x, res, args[2], args[3])
        assert_within_contract3(list(got), list(fn(x, res, args[2], args[3], use_ar=False)),
                                f"{words}, rows {shape[:-1]}", eager_ulps(want_rounding))
    report = compiled.tpfuse_pass.report
    fusions = [f for g in report.graphs for f in g.fusions]
    assert len(report.graphs) == 1 and len(fusions) == 1, (words, report)
    assert str(fusions[0].attrs.get("quant", "none")) == want_quant, (words, fusions[0].attrs)
