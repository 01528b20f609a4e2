"""FusionPass on small hand-written FX graphs: what it puts into the graph, what it reports and
logs, and that a failure leaves the graph as it was."""

import logging
import operator

import pytest
import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.fx.experimental.proxy_tensor import make_fx

import tpfuse.ops
import tpfuse.torch as tt
from tpfuse.torch import fusion_pass
from tpfuse.torch.compiler import CompilerError
from tpfuse.torch.translate import _vllm_ir_group_attrs, translate
from tpfuse.tolerance import ulp_distance_16

import contract3

GROUP = "tp0"
ar = torch.ops._c10d_functional.all_reduce
ar_ = torch.ops._c10d_functional.all_reduce_
wait = torch.ops._c10d_functional.wait_tensor
FUSED = "tpfuse.allreduce_rmsnorm.default"
bf = torch.bfloat16


def llama_norm(h, w, eps=1e-6):
    hf = h.to(torch.float32)
    var = hf.pow(2).mean(-1, keepdim=True)
    hf = hf * torch.rsqrt(var + eps)
    return w * hf.to(h.dtype)


def trace_module(fn, *shapes_dtypes):
    """The traced module and the random inputs it was traced with."""
    args = [torch.randn(s, dtype=torch.float32).to(d) for s, d in shapes_dtypes]
    return make_fx(fn, tracing_mode="fake")(*args), args


def trace(fn, *shapes_dtypes):
    return trace_module(fn, *shapes_dtypes)[0].graph


def targets(graph):
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


def layer(x, res, w):
    h = wait(ar(x, "sum", GROUP)) + res
    return llama_norm(h, w), h


def test_fuses_all_reduce_add_rmsnorm_and_reports_it(caplog):
    g = trace(layer, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    p = tt.FusionPass(world_size=2)
    with caplog.at_level(logging.INFO, logger="tpfuse.torch"):
        p(g)
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert len(calls) == 1, g
    (call,) = calls
    assert call.kwargs["group_name"] == GROUP
    assert list(call.kwargs["emit"]) == ["norm", "residual"]
    assert call.kwargs["quant"] == "none" and call.kwargs["local"] is False
    assert [a.name if a is not None else None for a in call.args] == ["x_1", "res_1", "w_1", None]
    # The chain and the collective are gone; the outputs read the fused results.
    assert not any(t.startswith("_c10d_functional") for t in targets(g))
    assert not any(t in ("aten.rsqrt.default", "aten.mean.dim") for t in targets(g))
    out = next(n for n in g.nodes if n.op == "output")
    assert [a.target for a in out.args[0]] == [operator.getitem, operator.getitem]
    assert [a.args[1] for a in out.args[0]] == [0, 1]
    assert p.report.fused == 1 and p.report.all_reduces == 1 and not p.report.left_alone
    assert any("fused all_reduce %wait_tensor" in r.getMessage() for r in caplog.records)
    g.lint()


def test_world_size_one_fuses_the_all_reduce_chain_and_counts_it():
    # At world size 1 the compiler marks the fusion local (the all_reduce is the identity), but
    # it still replaces that all_reduce: the collective goes and the report counts the fusion.
    g = trace(layer, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    p = tt.FusionPass(world_size=1)
    p(g)
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert len(calls) == 1, g
    assert calls[0].kwargs["local"] is True
    assert not any(t.startswith("_c10d_functional") for t in targets(g)), g
    assert p.report.fused == 1 and p.report.all_reduces == 1 and not p.report.left_alone
    assert p.report.graphs[0].fusions[0].anchor == "wait_tensor"
    g.lint()


def test_inplace_all_reduce_is_fused_and_the_collective_erased():
    def f(x, res, w):
        wait(ar_(x, "sum", GROUP))
        h = x + res
        return llama_norm(h, w), h

    g = trace(f, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    assert targets(g).count(FUSED) == 1
    assert not any(t.startswith("_c10d_functional") for t in targets(g))


def test_torch_distributed_all_reduce_form_is_fused():
    def f(x, res, w):
        s = torch.ops.aten.copy.default(x, wait(ar(x, "sum", GROUP)))
        h = s + res
        return llama_norm(h, w), h

    g = trace(f, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    assert not any(t.startswith("_c10d_functional") or t == "aten.copy.default" for t in targets(g))


def test_all_reduce_without_norm_is_left_alone_with_the_reason(caplog):
    def f(x):
        return torch.sin(wait(ar(x, "sum", GROUP)))

    g = trace(f, ((6, 128), bf))
    before = str(g)
    p = tt.FusionPass(world_size=2)
    with caplog.at_level(logging.INFO, logger="tpfuse.torch"):
        p(g)
    assert str(g) == before
    assert p.report.fused == 0 and list(p.report.left_alone) == ["wait_tensor"]
    assert "not followed by an RMSNorm" in p.report.left_alone["wait_tensor"]
    assert any("all_reduce %wait_tensor left alone" in r.getMessage() for r in caplog.records)


def test_all_reduces_the_ir_cannot_read_are_counted_and_left_alone_with_the_reason():
    def f(x, idx):
        wait(ar(x, "sum", GROUP))  # its sum unread, and the graph returns no IR type
        return idx + 1

    g = trace(f, ((6, 128), bf), ((3,), torch.int64))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.left_alone == {"wait_tensor": "nothing the IR types reads its sum or returns "
                                                  "it, so there is no chain to compile"}

    def g64(x, y):
        return wait(ar(x, "sum", GROUP)) * 2, torch.sin(wait(ar(y, "max", GROUP)))

    g = trace(g64, ((6, 128), torch.float64), ((6, 128), bf))
    before = str(g)
    p = tt.FusionPass(world_size=2)
    p(g)
    assert str(g) == before
    assert p.report.all_reduces == 2 and p.report.all_reduces_after == 2 and p.report.fused == 0
    assert p.report.left_alone == {
        "wait_tensor": "the compiler cannot read it: all_reduce of a torch.float64 tensor, which "
                       "the IR does not type",
        "wait_tensor_1": "the compiler cannot read it: all_reduce with op 'max' (the fused op "
                         "sums)"}


def test_the_report_keeps_every_graphs_all_reduces_left_alone_when_their_names_repeat():
    def sine(x):
        return torch.sin(wait(ar(x, "sum", GROUP)))

    def two(x, y):
        return torch.cos(wait(ar(x, "sum", GROUP))), torch.sin(wait(ar(y, "sum", GROUP)))

    p = tt.FusionPass(world_size=2)
    for fn, n in ((sine, 1), (two, 2), (sine, 1)):
        p(trace(fn, *[((6, 128), bf)] * n))
    left = p.report.left_alone
    # Each graph names its first all_reduce wait_tensor; only the second has wait_tensor_1.
    assert sorted(left) == ["graph 0: wait_tensor", "graph 1: wait_tensor",
                            "graph 2: wait_tensor", "wait_tensor_1"], left
    assert all("not followed by an RMSNorm" in why for why in left.values()), left
    assert str(p.report).startswith("tpfuse: 3 graph(s), 4 all_reduce(s), 0 fused, 4 left alone")


def test_other_groups_are_not_fused_when_tp_groups_is_given():
    g = trace(layer, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    p = tt.FusionPass(world_size=2, tp_groups=["tp1"])
    p(g)
    assert p.report.fused == 0
    assert "not the tensor-parallel group" in p.report.left_alone["wait_tensor"]


def test_a_compiler_failure_leaves_the_graph_as_it_was(monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise CompilerError("<input>:1:1: something the compiler does not accept")

    monkeypatch.setattr(fusion_pass, "compile_module", boom)
    g = trace(layer, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    before = str(g)
    p = tt.FusionPass(world_size=2)
    with caplog.at_level(logging.WARNING, logger="tpfuse.torch"):
        p(g)
    assert str(g) == before
    assert p.report.fused == 0
    assert "something the compiler does not accept" in p.report.untranslated[0]
    assert any("graph left as it was" in r.getMessage() for r in caplog.records)


def test_a_statement_the_compiler_refuses_becomes_opaque_and_the_rest_still_fuses(monkeypatch):
    def f(x, res, w):
        h = wait(ar(x, "sum", GROUP)) + res
        side = torch.sin(res) * 2.0  # the statement the compiler is made to refuse
        return llama_norm(h, w), h, side

    g = trace(f, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    real = fusion_pass.compile_module
    texts = []

    def refuse_the_side_mul(text, *args, **kwargs):
        texts.append(text)
        for line, stmt in enumerate(text.splitlines(), start=1):
            if " = mul(" in stmt and "scalar = 2" in stmt:
                raise CompilerError(f"<input>:{line}:3: mul: refused for the test")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(fusion_pass, "compile_module", refuse_the_side_mul)
    p = tt.FusionPass(world_size=2)
    p(g)
    assert len(texts) == 2  # written again once, with the refused node opaque
    assert "scalar = 2" not in texts[1] and 'name = "aten.mul.Tensor"' in texts[1], texts[1]
    assert p.report.fused == 1 and p.report.untranslated == []
    assert p.report.graphs[0].opaque_nodes == 2  # sin and the refused mul
    assert sum(str(n.target) == FUSED for n in g.nodes) == 1
    g.lint()


def test_a_failure_while_applying_restores_the_graph(monkeypatch):
    from tpfuse.torch import apply

    real = apply.Applier._materialize

    def fail_after_first_node(self, node, args, group):
        out = real(self, node, args, group)
        raise RuntimeError("placement failed half way")

    monkeypatch.setattr(apply.Applier, "_materialize", fail_after_first_node)
    g = trace(layer, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    before = str(g)
    p = tt.FusionPass(world_size=2)
    p(g)
    assert str(g) == before
    assert "placement failed half way" in p.report.untranslated[0]
    g.lint()


def test_a_compiled_func_with_other_outputs_applies_nothing(monkeypatch):
    real = fusion_pass.compile_module

    def one_output_less(*args, **kwargs):
        c = real(*args, **kwargs)
        lines = c.text.splitlines()
        at = max(i for i, line in enumerate(lines) if line.strip().startswith("return "))
        lines[at] = lines[at].rsplit(",", 1)[0]  # drop the last returned value
        return type(c)("\n".join(lines) + "\n", c.report)

    monkeypatch.setattr(fusion_pass, "compile_module", one_output_less)
    g = trace(layer, ((6, 128), bf), ((6, 128), bf), ((128,), bf))
    before = str(g)
    p = tt.FusionPass(world_size=2)
    p(g)
    assert str(g) == before
    (why,) = p.report.graphs[0].skipped.values()
    assert "the compiled func returns 1 values, the graph 2" in why, why
    g.lint()


def test_no_all_reduce_and_local_fusion_off_means_no_compiler_call(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("compiled a graph with nothing to fuse")

    monkeypatch.setattr(fusion_pass, "compile_module", must_not_run)
    g = trace(lambda h, w: llama_norm(h, w), ((6, 128), bf), ((128,), bf))
    p = tt.FusionPass(world_size=2, fuse_local="off")
    p(g)
    assert p.report.all_reduces == 0 and not p.report.untranslated


@pytest.mark.parametrize("backend, fuse_local, fused", [
    ("cpu", "auto", False),   # the CPU backend at world size 2: Inductor's
    ("cuda", "auto", True),   # measured faster than Inductor's kernel on CUDA
    ("cuda", False, False),
    ("cpu", True, True),
])
def test_local_chains_follow_the_compilers_rule(backend, fuse_local, fused):
    g = trace(lambda h, w: llama_norm(h, w), ((6, 128), bf), ((128,), bf))
    p = tt.FusionPass(world_size=2, backend=backend, fuse_local=fuse_local)
    p(g)
    assert not p.report.untranslated
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert len(calls) == int(fused), g
    if fused:
        assert calls[0].kwargs["local"] is True
        assert [f.anchor for f in p.report.graphs[0].fusions] == [""]
        assert p.report.fused == 0  # counts all_reduce sites only
    g.lint()


@pytest.mark.parametrize("hidden, rows, fuse_local, fused", [
    (128, 4096, "auto", True),     # the fused op measured faster (rows packed into warps, run 51)
    (128, 16384, "auto", True),
    (128, 65536, "auto", False),   # Inductor's kernel (run 45's) measured faster from 65536 rows
    (128, 65536, "on", True),
    (512, 4096, "auto", True),     # rows of two warps, packed too (a warp per row: run 60)
    (512, 16384, "auto", False),   # Inductor's from 16384 rows (runs 57 and 60)
])
def test_a_head_norm_goes_where_it_was_measured_faster(hidden, rows, fuse_local, fused):
    """q_norm over heads of 128 (rows = tokens x heads) and MLA's kv_a_layernorm (H 512), the norm
    alone: where Inductor's kernel was measured faster (docs/perf/h200x1/inductor_epilogue.md),
    the compiler's table leaves such a chain to Inductor at world size 1 on CUDA."""
    g = trace(lambda h, w: llama_norm(h, w), ((rows, hidden), bf), ((hidden,), bf))
    p = tt.FusionPass(world_size=1, backend="cuda", fuse_local=fuse_local)
    p(g)
    assert not p.report.untranslated, p.report.untranslated
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert len(calls) == int(fused), g
    g.lint()


def token_tail(x, residual, weight):
    """A TP-1 layer's epilogue with a per-token FP8 quant in torch."""
    h = x + residual
    y = llama_norm(h, weight).to(torch.float32)
    s = y.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    q = (y / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return h, q, s


@pytest.mark.parametrize("tokens, fuse_local, fused", [
    (2048, "auto", True),
    (4096, "auto", True),   # run 12's kernel lost to Inductor's here; the fused op now wins (run 21)
    (8192, "auto", True),
    (8192, "off", False),
])
def test_auto_fuses_the_chains_measured_at_least_as_fast_as_inductor(tokens, fuse_local, fused):
    """fp8_token at H 8192, where the fused op was last closest to Inductor's kernel
    (docs/perf/h200x1/inductor_epilogue.md). Where the compiler's table lists a loss, the chain
    stays (its C++ tests, with a table of their own)."""
    g = trace(token_tail, ((tokens, 8192), bf), ((tokens, 8192), bf), ((8192,), bf))
    p = tt.FusionPass(world_size=1, backend="cuda", fuse_local=fuse_local)
    p(g)
    assert not p.report.untranslated, p.report.untranslated
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert len(calls) == int(fused), g
    if fused:
        assert str(calls[0].kwargs["quant"]) == "fp8_token"
    g.lint()


def layer_tail(x, residual, weight):
    """A TP-1 layer's epilogue as model code writes it: the residual add, LlamaRMSNorm, and a
    per-group (128) FP8 quant in torch, q and s returned as [T, H] and [T, H/128]."""
    h = x + residual
    y = llama_norm(h, weight)
    yg = y.to(torch.float32).unflatten(-1, (-1, 128))
    s = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    q = (yg / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return h, q.flatten(-2), s.squeeze(-1)


def test_an_output_the_compiler_reads_from_the_fused_op_under_another_name():
    """Inductor's graph of layer_tail, its local chain fused: the compiler cancels the group
    view of q against the flatten back to [T, H], so the output reads the fused q under the
    flatten's name; the FX output must read it too (it read the unfused q before)."""
    from test_op_cpu import assert_bitwise

    g = torch.Generator().manual_seed(11)
    x, res = (torch.randn(8, 256, generator=g).to(bf) for _ in range(2))
    w = (torch.rand(256, generator=g) + 0.5).to(bf)
    with torch._inductor.config.patch(force_disable_caches=True):
        torch._dynamo.reset()
        compiled = tt.compile(layer_tail, world_size=1, fuse_local="on", fullgraph=True)
        got = compiled(x, res, w)
    fusions = [f for gr in compiled.tpfuse_pass.report.graphs for f in gr.fusions]
    assert len(fusions) == 1 and fusions[0].anchor == "", compiled.tpfuse_pass.report
    want = torch.ops.tpfuse.allreduce_rmsnorm(
        x, res, w, None, emit=["residual", "quant"], quant="fp8_group", group_size=128,
        eps=1e-6, rounding=["weight_after_round"])
    assert_bitwise(list(got), list(want), "compiled layer_tail")


@pytest.mark.parametrize("where", ["options", "config"])
def test_a_post_grad_pass_the_caller_had_still_runs_after_the_fusion(where):
    """Inductor has one post-grad custom pass slot: tpfuse.torch.compile runs its pass, then the
    one the caller put there (in options, or in Inductor's config), which sees the fused op."""
    seen = []

    def theirs(graph):
        seen.append(sum(str(n.target) == FUSED for n in graph.nodes))

    g = torch.Generator().manual_seed(5)
    x, res = (torch.randn(4, 256, generator=g).to(bf) for _ in range(2))
    w = (torch.rand(256, generator=g) + 0.5).to(bf)
    kwargs = {"options": {"post_grad_custom_post_pass": theirs}} if where == "options" else {}
    patch = {"post_grad_custom_post_pass": theirs} if where == "config" else {}
    with torch._inductor.config.patch(force_disable_caches=True, **patch):
        torch._dynamo.reset()
        compiled = tt.compile(layer_tail, world_size=1, fuse_local="on", fullgraph=True, **kwargs)
        compiled(x, res, w)
    fusions = [f for gr in compiled.tpfuse_pass.report.graphs for f in gr.fusions]
    assert len(fusions) == 1, compiled.tpfuse_pass.report
    assert seen == [1]


def test_a_fusion_pass_already_in_the_slot_is_not_chained(caplog):
    g = torch.Generator().manual_seed(6)
    x, res = (torch.randn(4, 256, generator=g).to(bf) for _ in range(2))
    w = (torch.rand(256, generator=g) + 0.5).to(bf)
    theirs = tt.FusionPass(world_size=1, fuse_local="on")
    with torch._inductor.config.patch(force_disable_caches=True), \
            caplog.at_level(logging.WARNING, logger="tpfuse.torch"):
        torch._dynamo.reset()
        compiled = tt.compile(layer_tail, world_size=1, fuse_local="on", fullgraph=True,
                              options={"post_grad_custom_post_pass": theirs})
        compiled(x, res, w)
    assert sum(len(gr.fusions) for gr in compiled.tpfuse_pass.report.graphs) == 1
    assert theirs.report.graphs == []
    assert any("already Inductor's post-grad pass" in r.getMessage() for r in caplog.records)


def test_chained_pass_uuid_needs_both():
    class WithUuid(CustomGraphPass):
        def __call__(self, graph):
            pass

        def uuid(self):
            return "theirs"

    ours = tt.FusionPass(world_size=2)
    assert fusion_pass.ChainedPass(ours, WithUuid()).uuid() == (ours.uuid(), "theirs")
    assert fusion_pass.ChainedPass(ours, lambda graph: None).uuid() is None


@pytest.mark.parametrize("rows", [(1, 256), (1, 1, 256)], ids=["T1", "B1S1"])
def test_a_per_token_quant_of_one_row_fuses_as_per_token(rows):
    # A decode step of batch 1: the per-token scale of vLLM's QuantFP8 torch form has one
    # element. It is still the per-token quant (fused), not a per-tensor quant whose scale the
    # chain computes (left out).
    from tp_models import QuantizedInput

    quantize = QuantizedInput(torch.nn.Identity(), "vllm_token", 256, indexer=False).quantize

    def f(x, res, w):
        h = wait(ar(x, "sum", GROUP)) + res
        return quantize(llama_norm(h, w)), h

    g = trace(f, (rows, bf), (rows, bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    (call,) = [n for n in g.nodes if str(n.target) == FUSED]
    assert call.kwargs["quant"] == "fp8_token", call.kwargs
    assert count(g, "aten.abs") == 0, g


class _AddNorm(torch.nn.Module):
    """The residual add and a norm whose eps is a Python float attribute, as model code has it."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(1 + 0.1 * torch.randn(256).to(bf))
        self.eps = 1e-5

    def forward(self, x, res):
        h = x + res
        return llama_norm(h, self.w, self.eps), h


@pytest.mark.parametrize("as_module", [True, False], ids=["module", "function"])
def test_compile_with_dynamic_shapes_takes_the_norms_eps_as_a_constant(as_module):
    # torch.compile(dynamic=True) passes the floats a model reads into the graph as 0-dim
    # tensors; tpfuse.torch.compile traces with them specialized, so the chain fuses, and the
    # compiled callable serves other shapes.
    m = _AddNorm()
    fn = m if as_module else (lambda x, res: m(x, res))
    compiled = tt.compile(fn, world_size=1, fuse_local=True, backend="aot_eager", dynamic=True)
    with torch.no_grad():
        for shape in ((2, 5, 256), (3, 7, 256)):
            x, res = torch.randn(shape).to(bf), torch.randn(shape).to(bf)
            (y, h), (want_y, want_h) = compiled(x, res), m(x, res)
            assert torch.equal(h, want_h)
            assert ulp_distance_16(y, want_y).max() <= 1
    fusions = [f for g in compiled.tpfuse_pass.report.graphs for f in g.fusions]
    assert fusions and all(float(f.attrs["eps"]) == pytest.approx(1e-5) for f in fusions), fusions


class _Norm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(1 + 0.1 * torch.randn(256).to(bf))

    def forward(self, h):
        return llama_norm(h, self.w, 1e-5)


class _AddHookedNorm(torch.nn.Module):
    """The residual add, then a norm module with a full backward hook, as transformers' tp_plan
    puts one on each replicated_with_grad_allreduce module (Qwen3's per-head norms) to sum its
    gradients across ranks."""

    def __init__(self):
        super().__init__()
        self.norm = _Norm()
        self.hook_calls = 0
        self.norm.register_full_backward_hook(self._count)

    def _count(self, module, grad_input, grad_output):
        self.hook_calls += 1

    def forward(self, x, res):
        h = x + res
        return self.norm(h), h


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("as_module", [True, False], ids=["module", "function"])
def test_a_full_backward_hook_breaks_no_graph_of_a_call_without_grad(as_module, no_grad):
    # torch.compile breaks the graph at a module with a full backward hook (unless compiled
    # autograd is on), which splits the add from its norm. Without grad no hook can run:
    # tpfuse.torch.compile traces such calls in one graph, and the chain fuses.
    torch._dynamo.reset()
    m = _AddHookedNorm()
    fn = m if as_module else (lambda x, res: m(x, res))
    compiled = tt.compile(fn, world_size=1, fuse_local="on", backend="aot_eager")
    g = torch.Generator().manual_seed(6)
    x, res = (torch.randn(3, 256, generator=g).to(bf) for _ in range(2))
    with no_grad():
        (y, h), (want_y, want_h) = compiled(x, res), m(x, res)
    report = compiled.tpfuse_pass.report
    assert len(report.graphs) == 1, report
    fusions = report.graphs[0].fusions
    assert len(fusions) == 1 and fusions[0].attrs["emit"] == ["norm", "residual"], fusions
    assert torch.equal(h, want_h) and ulp_distance_16(y, want_y).max() <= 1
    # With grad, torch.compile's own graphs (broken at the norm), and the hook runs.
    y, h = compiled(x, res)
    assert y.requires_grad and len(report.graphs) > 1, report
    assert ulp_distance_16(y.detach(), want_y).max() <= 1
    y.float().sum().backward()
    assert m.hook_calls == 1 and m.norm.w.grad is not None


def test_a_norms_eps_passed_as_a_tensor_input_is_named_as_the_reason():
    # The pass under the caller's own torch.compile(dynamic=True): the eps is a graph input, the
    # norm stays as written, and the report says why and what to set.
    p = tt.FusionPass(world_size=1, fuse_local=True)
    compiled = torch.compile(_AddNorm(), backend=fusion_pass._aot_eager_backend(p), dynamic=True)
    with torch.no_grad():
        compiled(torch.randn(2, 5, 256).to(bf), torch.randn(2, 5, 256).to(bf))
    assert p.report.graphs and not any(g.fusions for g in p.report.graphs)
    reasons = " ".join(p.report.local_left_alone.values())
    assert "eps is not a scalar attribute of the add: it is a Python float" in reasons, reasons
    assert "specialize_float" in reasons


@pytest.mark.parametrize("weight_dtype", [bf, torch.float32, None], ids=["bf16", "f32", "no_weight"])
@pytest.mark.parametrize("eps", [1e-6, None])
def test_torch_rms_norm_fuses_and_computes_what_eager_does(weight_dtype, eps):
    """F.rms_norm (nn.RMSNorm's forward) decomposes to the f32 chain with one rounding; eps None
    is f32's machine epsilon; without a weight it fuses with a unit weight."""
    def f(x, res, w):
        h = x + res
        return torch.nn.functional.rms_norm(h, (128,), w, eps), h

    g = torch.Generator().manual_seed(4)
    x, res = (torch.randn(5, 128, generator=g).to(bf) for _ in range(2))
    w = (torch.rand(128, generator=g) + 0.5).to(weight_dtype) if weight_dtype else None
    torch._dynamo.reset()
    compiled = tt.compile(f, world_size=1, fuse_local="on", backend="aot_eager")
    got = compiled(x, res, w)
    fusions = [fu for gr in compiled.tpfuse_pass.report.graphs for fu in gr.fusions]
    assert len(fusions) == 1 and not fusions[0].attrs.get("rounding"), fusions
    want_eps = torch.finfo(torch.float32).eps if eps is None else eps
    assert fusions[0].attrs["eps"] == pytest.approx(want_eps, rel=1e-6)
    # Within Contract 3's tolerance (torch's own sum of squares may take another order).
    for a, b in zip(got, f(x, res, w)):
        assert int(ulp_distance_16(a, b).max()) <= 1


def test_a_local_chain_left_alone_is_reported_with_the_reason():
    """torch.compile(dynamic=True) on a weight passed as an input makes H a symbol: the fused
    op takes a constant H, so the chain stays, and the report says so by its input's name."""
    def f(x, res, w):
        h = x + res
        return llama_norm(h, w), h

    g = torch.Generator().manual_seed(2)
    x, res = (torch.randn(5, 128, generator=g).to(bf) for _ in range(2))
    w = (torch.rand(128, generator=g) + 0.5).to(bf)
    torch._dynamo.reset()
    compiled = tt.compile(f, world_size=1, fuse_local="on", backend="aot_eager", dynamic=True)
    compiled(x, res, w)
    report = compiled.tpfuse_pass.report
    assert not any(gr.fusions for gr in report.graphs), report
    (why,) = report.local_left_alone.values()
    assert "with a constant H" in why, report.local_left_alone


def _captured(f, *shapes_dtypes, v2: bool = False) -> fx.GraphModule:
    """The forward graph torch.compile hands a post-grad pass for `f` (aot_autograd with
    Inductor's decompositions), functionalized as auto_functionalized or, with `v2`, as
    auto_functionalized_v2 (torch's default; vLLM turns it off)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    graphs = []
    backend = aot_autograd(fw_compiler=lambda gm, _: graphs.append(gm) or gm,
                           decompositions=select_decomp_table())
    torch._dynamo.reset()
    with torch._inductor.config.patch(enable_auto_functionalized_v2=v2), FakeTensorMode():
        torch.compile(f, backend=backend, fullgraph=True)(
            *[torch.empty(s, dtype=d) for s, d in shapes_dtypes])
    (gm,) = graphs
    return gm


def _define_sglang_ops():
    """SGLang's all_reduce ops as its GroupCoordinator calls them under torch.compile (the sum
    is the input itself here: one process)."""
    if hasattr(torch.ops.sglang, "outplace_all_reduce"):
        return
    lib = torch.library.Library("sglang", "FRAGMENT")
    lib.define("outplace_all_reduce(Tensor tensor, str group_name, "
               "str outplace_all_reduce_method) -> Tensor")
    lib.impl("outplace_all_reduce", lambda t, group_name, method: t.clone(),
             "CompositeExplicitAutograd")
    lib.define("inplace_all_reduce(Tensor(a!) tensor, str group_name) -> ()")
    lib.impl("inplace_all_reduce", lambda t, group_name: None, "CompositeExplicitAutograd")
    _define_sglang_ops.lib = lib  # keep the registration alive


@pytest.mark.parametrize("form,v2", [("outplace", False), ("inplace", False), ("inplace", True)],
                         ids=["outplace", "inplace-v1", "inplace-v2"])
def test_sglangs_all_reduce_ops_fuse_as_torch_compile_captures_them(form, v2):
    # SGLang's tensor_model_parallel_all_reduce: outplace_all_reduce returns the sum; the
    # in-place op writes it into o_proj's output, which functionalization turns into
    # auto_functionalized and a getitem of the written tensor. Either is one all_reduce site,
    # fused with the residual add, the norm and the quant; its group is SGLang's name ("tp:0",
    # the process group's own where SGLang has that group).
    _define_sglang_ops()

    def layer(x, wo, res, w, scale):
        a = x @ wo
        if form == "outplace":
            a = torch.ops.sglang.outplace_all_reduce(a, "tp:0", "pynccl")
        else:
            torch.ops.sglang.inplace_all_reduce(a, "tp:0")
        h = a + res
        y = llama_norm(h, w)
        q = (y.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        return q, h

    gm = _captured(layer, ((8, 128), bf), ((128, 256), bf), ((8, 256), bf), ((256,), bf),
                   ((), torch.float32), v2=v2)
    assert count(gm.graph, "sglang" if form == "outplace" else "auto_functionalized") == 1
    p = tt.FusionPass(world_size=2)
    p(gm.graph)
    assert p.report.fused == 1 and p.report.all_reduces == 1, p.report.left_alone
    assert p.report.all_reduces_after == 0 and not p.report.untranslated, p.report
    (call,) = [n for n in gm.graph.nodes if str(n.target) == FUSED]
    assert call.kwargs["group_name"] == "tp:0" and call.kwargs["quant"] == "fp8_tensor"
    assert list(call.kwargs["emit"]) == ["residual", "quant"]
    assert count(gm.graph, "sglang") == 0 and count(gm.graph, "auto_functionalized") == 0, gm.graph
    gm.graph.lint()


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_vllms_group_quant_op_as_torch_compile_captures_it(v2):
    # per_token_group_fp8_quant(input, output_q!, output_s!, ...) -> (): its results are the
    # getitems 1 and 2 of the auto_functionalized call (1 + base index in v2). Scales written
    # column-major (torch.empty((G, T)).permute(-1, -2), DeepGEMM's layout) stay with the op,
    # and the fusion's note says why; the norm still fuses.
    _define_vllm_ops()

    def layer(x, res, w, column_major):
        h = torch.ops.vllm.all_reduce(x, "tp:0") + res
        y = llama_norm(h, w)
        q = torch.empty(y.shape, dtype=torch.float8_e4m3fn)
        groups = y.shape[-1] // 128
        s = (torch.empty((groups, y.shape[0]), dtype=torch.float32).permute(-1, -2)
             if column_major else torch.empty((y.shape[0], groups), dtype=torch.float32))
        torch.ops._C.per_token_group_fp8_quant(y, q, s, 128, 1e-10, -448.0, 448.0, False)
        return q, s, h

    shapes = ((8, 256), bf), ((8, 256), bf), ((256,), bf)
    for column_major in (False, True):
        gm = _captured(lambda x, r, w: layer(x, r, w, column_major), *shapes, v2=v2)
        p = tt.FusionPass(world_size=2)
        p(gm.graph)
        assert p.report.fused == 1 and not p.report.untranslated, p.report
        (call,) = [n for n in gm.graph.nodes if str(n.target) == FUSED]
        if column_major:
            assert str(call.kwargs["quant"]) == "none", call.kwargs
            (fusion,) = p.report.graphs[0].fusions
            assert any("_C.per_token_group_fp8_quant" in n for n in fusion.notes), fusion.notes
            if not v2:
                assert any("output_s is laid out with strides [1, 8]" in n for n in fusion.notes)
        else:
            assert str(call.kwargs["quant"]) == "fp8_group" and call.kwargs["group_size"] == 128
            assert list(call.kwargs["emit"]) == ["residual", "quant"], call.kwargs
            assert count(gm.graph, "per_token_group_fp8_quant") == 0, gm.graph
        gm.graph.lint()


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("residual", [False, True], ids=["rms_norm", "fused_add_rms_norm"])
def test_vllms_norm_kernels_with_the_static_quant_in_them_fuse_with_the_all_reduce(v2, residual):
    # What vLLM's norm-quant fusion leaves in the graph (a pass run after it sees these):
    # _C.rms_norm_static_fp8_quant(result!, input, weight, scale, epsilon) and the fused-add
    # kernel (result!, input, residual!, ...), read as the kernels' norm and a static quant of it.
    _define_vllm_ops()

    def layer(x, res, w, scale):
        h = torch.ops.vllm.all_reduce(x, "tp:0")
        q = torch.empty(h.shape, dtype=torch.float8_e4m3fn)
        if not residual:
            torch.ops._C.rms_norm_static_fp8_quant(q, h, w, scale, 1e-6)
            return q
        r = res * 2  # a base of its own, not the graph's input
        torch.ops._C.fused_add_rms_norm_static_fp8_quant(q, h, r, w, scale, 1e-6)
        return q, r

    gm = _captured(layer, ((8, 256), bf), ((8, 256), bf), ((256,), bf), ((1,), torch.float32),
                   v2=v2)
    p = tt.FusionPass(world_size=2)
    p(gm.graph)
    assert p.report.fused == 1 and p.report.all_reduces_after == 0, p.report
    attrs = fused_attrs(gm.graph)
    assert (str(attrs["quant"]), list(attrs["rounding"])) == ("fp8_tensor", ["weight_after_round"])
    assert list(attrs["emit"]) == (["residual", "quant"] if residual else ["quant"]), attrs
    assert count(gm.graph, "static_fp8_quant") == 0, gm.graph
    gm.graph.lint()


def vllm_norm_dynamic_quant_kernel(result, input, weight, scale, epsilon, scale_ub=None,
                                   residual=None, group_size=0):
    """vLLM's rms_norm_dynamic_per_token_quant (group_size 0) and rms_norm_per_block_quant in
    torch, as their CUDA kernels compute for FP8: the residual summed in f32 (the sum rounded
    into `residual`), rstd of the unrounded sum, the normalized value rounded before the weight
    multiply, per row or group s = max(amax / 448, 1 / (448 * 512)), q = fp8(y / s)."""
    x = input.float()
    if residual is not None:
        x = x + residual.float()
        residual.copy_(x.to(residual.dtype))
    rstd = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    y = ((x * rstd).to(input.dtype) * weight).float()
    groups = y.unflatten(-1, (-1, group_size or y.shape[-1]))
    amax = groups.abs().amax(dim=-1, keepdim=True)
    if scale_ub is not None:
        amax = torch.minimum(amax, scale_ub)
    s = (amax / 448.0).clamp(min=FP8_MIN_SCALING_FACTOR)
    result.copy_((groups / s).clamp(-448.0, 448.0).flatten(-2).to(result.dtype))
    scale.copy_(s.squeeze(-1))


_VLLM_NORM_QUANT_OPS = {"token": "rms_norm_dynamic_per_token_quant",
                        "group": "rms_norm_per_block_quant"}


def _vllm_norm_dynamic_quant_graph(kind: str, residual: bool, *, all_reduce: bool = True,
                                   scale_ub: bool = False, q_dtype=torch.float8_e4m3fn,
                                   transposed: bool = False):
    """[all_reduce ->] auto_functionalized(_C.<_VLLM_NORM_QUANT_OPS[kind]>) as vLLM's graphs
    hold it (placeholders x, res, w, q, s, ub; groups of 128), returning q, s [and the residual
    sum]."""
    _define_vllm_ops()
    op = getattr(torch.ops._C, _VLLM_NORM_QUANT_OPS[kind]).default
    shapes = {"x": ((6, 256), bf), "res": ((6, 256), bf), "w": ((256,), bf),
              "q": ((6, 256), q_dtype), "s": ((6, 1 if kind == "token" else 2), torch.float32),
              "ub": ((), torch.float32)}
    kwargs = {"result": "q", "input": "x", "weight": "w", "scale": "s", "epsilon": 1e-6,
              "scale_ub": "ub" if scale_ub else None, "residual": "res" if residual else None}
    if kind == "group":
        kwargs.update(group_size=128, is_scale_transposed=transposed)
    items = [(1, "q"), (2, "s")] + ([(3, "res")] if residual else [])
    return _auto_functionalized_graph(op, shapes, kwargs, items,
                                      all_reduce="x" if all_reduce else None)


def _define_flashinfer_norm_ops():
    """FlashInfer's norm ops and SGLang's sgl_kernel ones (FlashInfer's kernels), schemas only:
    rmsnorm(out!, input, weight, eps, enable_pdl), fused_add_rmsnorm(input!, residual!, ...)
    and their gemma_ forms."""
    if hasattr(torch.ops.sgl_kernel, "fused_add_rmsnorm"):
        return
    libs = []
    for ns, out in (("sgl_kernel", "output"), ("flashinfer", "out")):
        lib = torch.library.Library(ns, "FRAGMENT")
        for gemma in ("", "gemma_"):
            lib.define(f"{gemma}rmsnorm(Tensor! {out}, Tensor input, Tensor weight, float eps, "
                       "bool enable_pdl) -> ()")
            lib.define(f"{gemma}fused_add_rmsnorm(Tensor! input, Tensor! residual, "
                       "Tensor weight, float eps, bool enable_pdl) -> ()")
        libs.append(lib)
    # TensorRT-LLM's PyTorch flow: functional norms, the fused-add ones in place.
    lib = torch.library.Library("trtllm", "FRAGMENT")
    for gemma, bias in (("", 0.0), ("gemma_", 1.0)):
        lib.define(f"flashinfer_{gemma}rmsnorm(Tensor input, Tensor weight, float eps) -> Tensor")
        lib.impl(f"flashinfer_{gemma}rmsnorm",
                 lambda x, w, eps, bias=bias: flashinfer_norm_kernel(x, None, w, eps, bias),
                 "CompositeExplicitAutograd")
        lib.define(f"flashinfer_{gemma}fused_add_rmsnorm(Tensor! input, Tensor! residual, "
                   "Tensor weight, float eps) -> ()")
    libs.append(lib)
    _define_flashinfer_norm_ops.libs = libs  # keep the registrations alive


def flashinfer_norm_kernel(x, residual, weight, eps, weight_bias=0.0):
    """FlashInfer's norm kernels in torch: the residual summed in f32 (returned rounded), rstd
    of the unrounded sum, y = round(h * rstd * (weight_bias + w)) in f32."""
    h = x.float() if residual is None else x.float() + residual.float()
    rstd = torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = (h * rstd * (weight_bias + weight.float())).to(x.dtype)
    return y if residual is None else (y, h.to(x.dtype))


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("gemma", [False, True], ids=["w", "gemma"])
@pytest.mark.parametrize("ns", ["sgl_kernel", "flashinfer", "trtllm"])
def test_flashinfer_sglang_and_trtllm_norm_ops_fuse_with_the_all_reduce(ns, gemma, v2):
    # SGLang's RMSNorm calls sgl_kernel.fused_add_rmsnorm (FlashInfer's kernel; FlashInfer's
    # own op and TensorRT-LLM's trtllm.flashinfer_* the same): the f32 sum normalized, the f32
    # product with the weight rounded once; the gemma_ kernels add 1 to the weight in f32. Two
    # layers: the fused add, then the norm (functional in TensorRT-LLM's flow).
    _define_vllm_ops()
    _define_flashinfer_norm_ops()
    ops = getattr(torch.ops, ns)
    prefix = ("flashinfer_" if ns == "trtllm" else "") + ("gemma_" if gemma else "")
    fused_add, norm = (getattr(ops, prefix + n) for n in ("fused_add_rmsnorm", "rmsnorm"))
    pdl = () if ns == "trtllm" else (False,)

    def layer(x, res, w1, w2):
        h = torch.ops.vllm.all_reduce(x, "tp:0")
        r = res * 1  # a base of its own, not the graph's input
        fused_add(h, r, w1, 1e-6, *pdl)  # h: y, r: the residual sum
        h2 = torch.ops.vllm.all_reduce(h * 2, "tp:0")
        if ns == "trtllm":
            return norm(h2, w2, 1e-5), r
        y2 = torch.empty_like(h)
        norm(y2, h2, w2, 1e-5, *pdl)
        return y2, r

    shapes = ((6, 256), bf), ((6, 256), bf), ((256,), bf), ((256,), bf)
    gm = _captured(layer, *shapes, v2=v2)
    p = tt.FusionPass(world_size=2)
    p(gm.graph)
    assert p.report.fused == 2 and p.report.all_reduces_after == 0, p.report.left_alone
    calls = [n for n in gm.graph.nodes if str(n.target) == FUSED]
    assert [list(c.kwargs["emit"]) for c in calls] == [["norm", "residual"], ["norm"]]
    assert [list(c.kwargs["rounding"]) for c in calls] == [["norm_input_f32"], []]
    assert [c.kwargs["weight_bias"] for c in calls] == [1.0 if gemma else 0.0] * 2
    assert not any(ns in str(n.args[:1]) for n in gm.graph.nodes), gm.graph
    gm.graph.lint()


@pytest.mark.parametrize("gemma", [False, True], ids=["w", "gemma"])
def test_flashinfer_fused_add_norm_fused_computes_what_the_kernel_does(gemma):
    """Fused locally, y and the residual sum are Contract 3's oracle bit for bit, and the
    kernel's (written in torch above) within an ulp (the order of the sum of squares)."""
    _define_flashinfer_norm_ops()
    op = torch.ops.sgl_kernel.gemma_fused_add_rmsnorm if gemma else \
        torch.ops.sgl_kernel.fused_add_rmsnorm
    g = _auto_functionalized_graph(
        op.default, {"x": ((6, 256), bf), "res": ((6, 256), bf), "w": ((256,), bf)},
        {"input": "x", "residual": "res", "weight": "w", "eps": 1e-6, "enable_pdl": False},
        [(1, "x"), (2, "res")])
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(g)
    assert len(p.report.graphs[0].fusions) == 1, p.report
    gen = torch.Generator().manual_seed(13)
    x, res = (torch.randn(6, 256, generator=gen).to(bf) for _ in range(2))
    w = (torch.rand(256, generator=gen) - 0.5).to(bf)
    got = fx.GraphModule(torch.nn.Module(), g)(x, res, w)
    bias = 1.0 if gemma else 0.0
    oracle = contract3.allreduce_rmsnorm([x], res, w, None, emit=["norm", "residual"],
                                         local=True, eps=1e-6, weight_bias=bias,
                                         rounding=["norm_input_f32"])
    assert_the_contract_and_near_eager(got, oracle, flashinfer_norm_kernel(x, res, w, 1e-6, bias))


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("residual", [False, True], ids=["norm", "fused_add"])
@pytest.mark.parametrize("kind", ["token", "group"])
def test_vllms_norm_kernels_with_a_dynamic_quant_in_them_fuse_with_the_all_reduce(kind, residual,
                                                                                 v2):
    # What vLLM's norm-quant fusion leaves for a dynamic quant: one kernel, its residual
    # optional, read as the kernel's norm (the f32 sum normalized where there is a residual)
    # and a quant of it per token or per group of 128 (s floored after the division).
    _define_vllm_ops()
    op = getattr(torch.ops._C, _VLLM_NORM_QUANT_OPS[kind])

    def layer(x, res, w):
        h = torch.ops.vllm.all_reduce(x, "tp:0")
        q = torch.empty(h.shape, dtype=torch.float8_e4m3fn)
        s = torch.empty((h.shape[0], 1 if kind == "token" else 2), dtype=torch.float32)
        r = res * 2 if residual else None  # a base of its own, not the graph's input
        op(q, h, w, s, 1e-6, None, r, *((128, False) if kind == "group" else ()))
        return (q, s, r) if residual else (q, s)

    gm = _captured(layer, ((8, 256), bf), ((8, 256), bf), ((256,), bf), v2=v2)
    p = tt.FusionPass(world_size=2)
    p(gm.graph)
    assert p.report.fused == 1 and p.report.all_reduces_after == 0, p.report
    attrs = fused_attrs(gm.graph)
    assert str(attrs["quant"]) == f"fp8_{kind}", attrs
    assert list(attrs["rounding"]) == (["norm_input_f32"] if residual else []) + \
        ["weight_after_round", "scale_floor_after_div"], attrs
    assert list(attrs["emit"]) == (["residual", "quant"] if residual else ["quant"]), attrs
    assert count(gm.graph, _VLLM_NORM_QUANT_OPS[kind]) == 0, gm.graph
    gm.graph.lint()


@pytest.mark.parametrize("residual", [False, True], ids=["norm", "fused_add"])
@pytest.mark.parametrize("kind", ["token", "group"])
def test_vllms_norm_kernels_with_a_dynamic_quant_fused_compute_what_the_kernels_do(kind,
                                                                                 residual):
    """Fused locally, the graph's q, s and residual sum are Contract 3's oracle bit for bit, and
    the kernel's (written in torch above) but for the order of the sum of squares: the residual
    sum exactly, q and s where the rstd agrees. Row 0 is all zeros (the scale's floor)."""
    g = _vllm_norm_dynamic_quant_graph(kind, residual, all_reduce=False)
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(g)
    assert len(p.report.graphs[0].fusions) == 1, p.report
    gm = fx.GraphModule(torch.nn.Module(), g)
    gen = torch.Generator().manual_seed(11)
    x, res = (torch.randn(6, 256, generator=gen).to(bf) for _ in range(2))
    x[0], res[0] = 0, 0
    w = (torch.rand(256, generator=gen) + 0.5).to(bf)
    q = torch.empty(6, 256, dtype=torch.float8_e4m3fn)
    s = torch.empty(6, 1 if kind == "token" else 2)
    got = gm(x, res.clone(), w, q, s, torch.tensor(0.0))

    want_q, want_s, want_res = torch.empty_like(q), torch.empty_like(s), res.clone()
    vllm_norm_dynamic_quant_kernel(want_q, x, w, want_s, 1e-6,
                                   residual=want_res if residual else None,
                                   group_size=128 if kind == "group" else 0)
    rounding = (["norm_input_f32"] if residual else []) + ["weight_after_round",
                                                           "scale_floor_after_div"]
    oracle = contract3.allreduce_rmsnorm([x], res if residual else None, w, None,
                                         emit=["residual", "quant"] if residual else ["quant"],
                                         local=True, quant=f"fp8_{kind}", rounding=rounding,
                                         eps=1e-6)
    oracle = oracle[1:] + oracle[:1] if residual else oracle  # the graph's order: q, s[, h]
    assert len(got) == len(oracle)
    for i, (a, b) in enumerate(zip(got, oracle)):
        assert same_bits(a, b), f"result {i} differs from Contract 3's oracle"
    assert torch.all(got[1][0] == torch.tensor(FP8_MIN_SCALING_FACTOR))  # as f32
    if residual:
        assert same_bits(got[2], want_res)
    close = torch.isclose(got[1], want_s, rtol=2 ** -20, atol=0).all(dim=-1)
    assert close.sum() >= 5, (got[1], want_s)
    assert same_bits(got[0][close], want_q[close]) and same_bits(got[1][close], want_s[close])


@pytest.mark.parametrize("kind,kwargs,why", [
    ("token", {"scale_ub": True}, "scale_ub bounds the amax"),
    ("token", {"q_dtype": torch.int8}, "its result is torch.int8"),
    ("group", {"q_dtype": torch.int8}, "its result is torch.int8"),
    ("group", {"transposed": True}, "its scales are transposed"),
], ids=["scale_ub", "int8", "group_int8", "transposed"])
def test_vllms_norm_kernels_with_a_dynamic_quant_stay_where_the_fused_op_differs(kind, kwargs,
                                                                                why):
    # A bound on the amax, an int8 result, scales written [G, T]: the kernel stays, and the
    # translation says why.
    tr = translate(_vllm_norm_dynamic_quant_graph(kind, True, **kwargs))
    assert "fused_add_rms_norm" not in tr.text and "quant_fp8" not in tr.text, tr.text
    assert any(why in r for r in tr.opaque.values()), tr.opaque


def test_fuse_local_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="fuse_local"):
        tt.FusionPass(fuse_local="sometimes")


def test_uuid_is_stable_and_follows_the_options():
    assert tt.FusionPass(world_size=2).uuid() == tt.FusionPass(world_size=2).uuid()
    assert tt.FusionPass(world_size=2).uuid() != tt.FusionPass(world_size=4).uuid()
    assert tt.FusionPass(fuse_local=True).uuid() != tt.FusionPass().uuid()


# ---------------------------------------------------------------- vLLM's op names

def _define_vllm_ops():
    """vLLM's custom ops as its graphs call them: the _C kernels (schemas only) and
    torch.ops.vllm.all_reduce (tensor_model_parallel_all_reduce: the sum, no wait)."""
    if not hasattr(torch.ops.vllm, "all_reduce"):
        vllm = torch.library.Library("vllm", "FRAGMENT")
        vllm.define("all_reduce(Tensor tensor, str group_name) -> Tensor")
        vllm.impl("all_reduce", lambda t, group_name: t.clone(), "CompositeExplicitAutograd")
        _define_vllm_ops.vllm = vllm
    if hasattr(torch.ops._C, "fused_add_rms_norm"):
        return
    lib = torch.library.Library("_C", "FRAGMENT")
    lib.define("fused_add_rms_norm(Tensor! input, Tensor! residual, Tensor weight, float epsilon) -> ()")
    lib.define("static_scaled_fp8_quant(Tensor! result, Tensor input, Tensor scale) -> ()")
    lib.define("dynamic_per_token_scaled_fp8_quant(Tensor! result, Tensor input, Tensor! scale, "
               "Tensor? scale_ub) -> ()")
    lib.define("per_token_group_fp8_quant(Tensor input, Tensor! output_q, Tensor! output_s, "
               "int group_size, float eps, float fp8_min, float fp8_max, bool scale_ue8m0) -> ()")
    lib.define("rms_norm_static_fp8_quant(Tensor! result, Tensor input, Tensor weight, "
               "Tensor scale, float epsilon) -> ()")
    lib.define("fused_add_rms_norm_static_fp8_quant(Tensor! result, Tensor input, "
               "Tensor! residual, Tensor weight, Tensor scale, float epsilon) -> ()")
    lib.define("rms_norm_dynamic_per_token_quant(Tensor! result, Tensor input, Tensor weight, "
               "Tensor! scale, float epsilon, Tensor? scale_ub, Tensor!? residual) -> ()")
    lib.define("rms_norm_per_block_quant(Tensor! result, Tensor input, Tensor weight, "
               "Tensor! scale, float epsilon, Tensor? scale_ub, Tensor!? residual, "
               "int group_size, bool is_scale_transposed) -> ()")
    _define_vllm_ops.lib = lib  # keep the registration alive


def _vllm_norm_quant_graph(tokens: int, hidden: int, scale_shape=()):
    """all_reduce -> vLLM's fused_add_rms_norm -> static_scaled_fp8_quant, functionalized
    (auto_functionalized), as vLLM's graphs hold them; returns q and h."""
    _define_vllm_ops()
    af = torch.ops.higher_order.auto_functionalized
    g = fx.Graph()
    with FakeTensorMode():
        vals = {"x": torch.empty(tokens, hidden, dtype=bf),
                "res": torch.empty(tokens, hidden, dtype=bf),
                "w": torch.empty(hidden, dtype=bf),
                "scale": torch.empty(scale_shape, dtype=torch.float32),
                "q": torch.empty(tokens, hidden, dtype=torch.float8_e4m3fn)}
    nodes = {}
    for name, v in vals.items():
        nodes[name] = g.placeholder(name)
        nodes[name].meta["val"] = v
    a = g.call_function(ar, (nodes["x"], "sum", GROUP))
    s = g.call_function(wait, (a,))
    a.meta["val"] = s.meta["val"] = vals["x"]
    norm = g.call_function(af, (torch.ops._C.fused_add_rms_norm.default,),
                           {"input": s, "residual": nodes["res"], "weight": nodes["w"],
                            "epsilon": 1e-6})
    norm.meta["val"] = (None, vals["x"], vals["res"])
    y, h = (g.call_function(operator.getitem, (norm, i)) for i in (1, 2))
    y.meta["val"], h.meta["val"] = vals["x"], vals["res"]
    quant = g.call_function(af, (torch.ops._C.static_scaled_fp8_quant.default,),
                            {"result": nodes["q"], "input": y, "scale": nodes["scale"]})
    quant.meta["val"] = (None, vals["q"])
    q = g.call_function(operator.getitem, (quant, 1))
    q.meta["val"] = vals["q"]
    g.output((q, h))
    return g


def test_vllm_auto_functionalized_ops_translate_through_the_table():
    g = _vllm_norm_quant_graph(6, 128)
    tr = translate(g)
    lines = [line.strip().split(" : ")[0] for line in tr.text.splitlines()[1:-1]]
    assert lines == [
        '%wait_tensor = all_reduce(%x) {group = "tp"}',
        "%getitem, %getitem_1 = fused_add_rms_norm(%wait_tensor, %res, %w) "
        '{eps = 1e-06, rounding = ["weight_after_round"]}',
        '%getitem_2 = quant_fp8(%getitem, %scale) {mode = "tensor"}',
        "return %getitem_2, %getitem_1",
    ]
    assert not tr.opaque


def _auto_functionalized_graph(op, shapes, kwargs, items, all_reduce=None):
    """Placeholders of `shapes` (name -> (shape, dtype)), [all_reduce + wait of the one named
    `all_reduce`, standing in for it,] auto_functionalized(op, **kwargs) (a string value
    naming a placeholder becomes it) and its getitems `items` ((index, the placeholder whose
    value it holds)), returned."""
    g = fx.Graph()
    with FakeTensorMode():
        vals = {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}
    nodes = {}
    for name, v in vals.items():
        nodes[name] = g.placeholder(name)
        nodes[name].meta["val"] = v
    if all_reduce is not None:
        a = g.call_function(ar, (nodes[all_reduce], "sum", GROUP))
        nodes[all_reduce] = g.call_function(wait, (a,))
        a.meta["val"] = nodes[all_reduce].meta["val"] = vals[all_reduce]
    kw = {k: nodes[v] if isinstance(v, str) and v in nodes else v for k, v in kwargs.items()}
    call = g.call_function(torch.ops.higher_order.auto_functionalized, (op,), kw)
    outs = []
    for i, name in items:
        item = g.call_function(operator.getitem, (call, i))
        item.meta["val"] = vals[name]
        outs.append(item)
    g.output(tuple(outs))
    return g


def _vllm_quant_graph(op, kwargs, results):
    """input -> auto_functionalized(op, **kwargs) with its getitems; `kwargs` values naming a
    placeholder ("x", "q", "s", "ub") become that placeholder."""
    shapes = {"x": ((6, 256), bf), "q": ((6, 256), torch.float8_e4m3fn),
              "s": ((6, results["s"]), torch.float32), "ub": ((), torch.float32)}
    return _auto_functionalized_graph(op, shapes, kwargs, results["items"])


def test_vllm_dynamic_quant_ops_translate_with_their_kernels_rounding():
    _define_vllm_ops()
    token = torch.ops._C.dynamic_per_token_scaled_fp8_quant.default
    items = {"s": 1, "items": [(1, "q"), (2, "s")]}
    tr = translate(_vllm_quant_graph(token, {"result": "q", "input": "x", "scale": "s",
                                             "scale_ub": None}, items))
    assert 'mode = "token", rounding = ["scale_floor_after_div"]' in tr.text, tr.text
    # scale_ub bounds the amax: the op stays opaque, with the reason.
    tr = translate(_vllm_quant_graph(token, {"result": "q", "input": "x", "scale": "s",
                                             "scale_ub": "ub"}, items))
    assert "quant_fp8" not in tr.text and any("scale_ub" in r for r in tr.opaque.values())

    group = torch.ops._C.per_token_group_fp8_quant.default
    items = {"s": 2, "items": [(1, "q"), (2, "s")]}
    base = {"input": "x", "output_q": "q", "output_s": "s", "group_size": 128, "eps": 1e-10,
            "fp8_min": -448.0, "fp8_max": 448.0, "scale_ue8m0": False}
    tr = translate(_vllm_quant_graph(group, base, items))
    assert 'quant_fp8(%x) {mode = "group", group_size = 128}' in tr.text, tr.text
    tr = translate(_vllm_quant_graph(group, {**base, "scale_ue8m0": True}, items))
    assert 'scale_fmt = "ue8m0", rounding = ["ue8m0_floor"]' in tr.text, tr.text
    for other in ({"eps": 1e-6}, {"fp8_max": 240.0, "fp8_min": -240.0}):
        tr = translate(_vllm_quant_graph(group, {**base, **other}, items))
        assert "quant_fp8" not in tr.text and any("eps" in r for r in tr.opaque.values()), other


def gemma_norm(x, w, eps=1e-6):
    o = x.float()
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    o = o * (1.0 + w.float())
    return o.type_as(x)


def count(g, name):
    return sum(1 for t in targets(g) if name in t)


def test_a_fusion_reads_an_earlier_fusions_results_not_the_chain_it_replaced():
    # Two pre-norm layers: the second chain's residual is the first fused op's residual output.
    # Reading the first chain's add instead would keep it, and its all_reduce, alive.
    def f(x1, x2, res, w1, w2):
        h1 = wait(ar(x1, "sum", GROUP)) + res
        h2 = wait(ar(x2 + llama_norm(h1, w1), "sum", GROUP)) + h1
        return llama_norm(h2, w2), h2

    g = trace(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 2, p.report.left_alone
    assert count(g, "tpfuse.allreduce_rmsnorm") == 2, g
    assert count(g, "_c10d_functional") == 0, g
    assert count(g, "aten.rsqrt") == 0, g
    g.lint()


def test_sandwich_norms_fuse_into_one_op_and_keep_one_collective_per_site():
    # Gemma 2/3, GLM-4: the all_reduce's sum is normed, added to the residual, and the stream
    # normed again: one fused op (pre_residual_norm). Backend CUDA runs that at world size 1
    # only: at 2 the all_reduce fuses with the first norm, and the add and the second norm
    # become a local op.
    def f(x, res, w1, w2):
        h = res + gemma_norm(wait(ar(x, "sum", GROUP)), w1)
        return gemma_norm(h, w2), h

    for backend, ops in ((None, 1), ("cuda", 2)):
        g = trace(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf), ((256,), bf))
        p = tt.FusionPass(world_size=2, fuse_local=True, backend=backend)
        p(g)
        assert p.report.fused == 1, p.report.left_alone
        assert count(g, "tpfuse.allreduce_rmsnorm") == ops, g
        assert count(g, "_c10d_functional") == 0, g
        assert count(g, "aten.rsqrt") == 0, g
        g.lint()


@pytest.mark.parametrize("hidden", [2304, 5376])
def test_sandwich_norms_follow_inductors_measurement_on_cuda(hidden):
    # fuse_local auto on the CUDA backend at world size 1 (the Inductor rule): one fused op at
    # every H measured (MeasuredPreNormLosses is empty since run 118; H 5376 from 1024 rows was
    # Inductor's before). The rule's mechanics with a table: the C++
    # PassesLocalFusion.SandwichNormsFollowTheirOwnMeasurement.
    def f(attn, res, w1, w2):
        h = res + gemma_norm(attn, w1)
        return gemma_norm(h, w2), h

    rows = (4, 256, hidden)
    g = trace(f, (rows, bf), (rows, bf), ((hidden,), bf), ((hidden,), bf))
    p = tt.FusionPass(world_size=1, backend="cuda")
    p(g)
    assert count(g, "tpfuse.allreduce_rmsnorm") == 1, g
    assert not p.report.local_left_alone, p.report


def _sandwich_fused_locally(f, ops):
    """f(attn, res, w1, w2) on random bf16 rows of 256, traced and fused at world size 1 with local
    fusion on into `ops` fused ops with no rsqrt left: (its results, its inputs)."""
    gm, args = trace_module(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf), ((256,), bf))
    tt.FusionPass(world_size=1, fuse_local=True)(gm.graph)
    gm.recompile()
    assert count(gm.graph, "tpfuse.allreduce_rmsnorm") == ops, gm.graph
    assert count(gm.graph, "aten.rsqrt") == 0, gm.graph
    return gm(*args), args


def test_sandwich_norms_in_one_op_compute_what_the_graph_did():
    # At world size 1 the chain's one op (a local op with pre_weight) against the graph it
    # replaced: each norm within Contract 3's 1 ulp of torch's (the op sums squares in the
    # kernels' order), the residual stream exactly the graph's add of the op's first norm.
    def f(attn, res, w1, w2):
        h = res + gemma_norm(attn, w1)
        return gemma_norm(h, w2), h

    (y, h), (attn, res, w1, w2) = _sandwich_fused_locally(f, ops=1)
    a = tpfuse.ops.fused(attn, None, w1, emit=["norm"], weight_bias=1.0, local=True)[0]
    assert ulp_distance_16(a, gemma_norm(attn, w1)).max() <= 1
    assert torch.equal(h, res + a)
    assert ulp_distance_16(y, gemma_norm(h, w2)).max() <= 1


def test_sandwich_norms_at_world_size_one_compute_what_the_graph_did():
    # The fused op sums squares in the kernels' order, torch's CPU mean in its own, so each norm
    # is within Contract 3's 1 ulp of torch's, not bitwise; and the second chain must read the
    # first fused op's norm, not a norm of its own.
    def f(attn, res, w1, w2):
        a = gemma_norm(attn, w1)
        h = res + a
        return gemma_norm(h, w2), h, a

    (y, h, a), (attn, res, w1, w2) = _sandwich_fused_locally(f, ops=2)
    assert ulp_distance_16(a, gemma_norm(attn, w1)).max() <= 1
    assert torch.equal(h, res + a)
    assert ulp_distance_16(y, gemma_norm(h, w2)).max() <= 1


def test_a_norm_of_a_transposed_tensor_is_left_unfused_and_the_graph_still_runs():
    # A head-dim norm on [B, heads, S, D] after a transpose (Gemma 3's q_norm): the fused op's
    # result would be contiguous, and the graph views the normed tensor with its old strides.
    def f(q, w):
        qn = gemma_norm(q.view(2, 8, 4, 64).transpose(1, 2), w)
        return qn.transpose(1, 2).view(2, 8, 256)

    gm, args = trace_module(f, ((2, 8, 256), bf), ((64,), bf))
    want = gm(*args)
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    assert count(gm.graph, "tpfuse.allreduce_rmsnorm") == 0, gm.graph
    assert torch.equal(gm(*args), want)


def test_a_clone_between_the_all_reduce_and_the_add_is_fused():
    # Dropout in eval mode after o_proj (Phi-3, Seed-OSS) traces to a clone of the sum.
    def f(x, res, w):
        h = torch.ops.aten.clone.default(wait(ar(x, "sum", GROUP))) + res
        return llama_norm(h, w), h

    g = trace(f, ((16, 256), bf), ((16, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    assert count(g, "_c10d_functional") == 0 and count(g, "aten.clone") == 0, g


@pytest.mark.parametrize("mode", ["group", "vllm_token"])
def test_two_quants_of_a_batched_norm_fuse_one_and_read_the_emitted_norm_for_the_other(mode):
    # Blocks in parallel on one norm (Cohere's attention and MLP, a MoE beside its shared
    # expert) each quantize the norm output of [B, S, H] activations. The fused op takes one
    # quant; the other reads the emitted norm, in the compiled graph through the compiler's own
    # [rows, H] view, which the graph's ops do not need: the fusion still applies.
    from tp_models import QuantizedInput

    quantize = QuantizedInput(torch.nn.Identity(), mode, 256, indexer=False).quantize

    def f(x, res, w):
        h = wait(ar(x, "sum", GROUP)) + res
        y = llama_norm(h, w)
        return quantize(y), quantize(y), h

    rows = ((2, 8, 256), bf)
    g = trace(f, rows, rows, ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1 and not p.report.left_alone, p.report
    assert count(g, "tpfuse.allreduce_rmsnorm") == 1 and count(g, "_c10d_functional") == 0, g
    assert count(g, "aten.abs") == 1, g  # the other quant, in the graph's own ops

    # The same at world size 1, run: both quants of the one norm the fused op emits.
    def local(x, res, w):
        h = x + res
        y = llama_norm(h, w)
        return quantize(y), quantize(y), h

    gm, (x, res, w) = trace_module(local, rows, rows, ((256,), bf))
    tt.FusionPass(world_size=1, fuse_local=True)(gm.graph)
    gm.recompile()
    assert count(gm.graph, "tpfuse.allreduce_rmsnorm") == 1 and count(gm.graph, "aten.rsqrt") == 0
    q1, q2, h = gm(x, res, w)
    assert torch.equal(h, x + res)
    assert torch.equal(q1, q2)  # the fused quant is the graph's quant of the same norm (Contract 3)
    assert torch.equal(q1, quantize(tpfuse.ops.fused(x, res, w, emit=["norm"], local=True,
                                                     rounding=["weight_after_round"])[0]))


def _f32_stream_norm(h, res, w, eps=1e-6, gemma=False):
    """A norm that keeps the residual stream in f32 (SGLang's RMSNorm(fp32_residual=True), vLLM's
    GemmaRMSNorm.forward_static at f16): the sum in f32 is the new residual, unrounded."""
    t = h.float() + res.float()
    r = t.clone()
    t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)
    wf = (1.0 + w.float()) if gemma else w.float()
    return (t * wf).to(h.dtype), r


def _f32_stream_layers(x0, x1, res, w0, w1):
    # The first layer adds the 16-bit residual, the second the f32 one the first returned (its
    # partial sum reads the first's norm, as the GEMMs between them would).
    y0, r0 = _f32_stream_norm(wait(ar(x0, "sum", GROUP)), res, w0, gemma=True)
    y1, r1 = _f32_stream_norm(wait(ar(x1 + y0, "sum", GROUP)), r0, w1)
    return y1, r1


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [bf, torch.float16], ids=["bf16", "f16"])
def test_an_f32_residual_stream_fuses_and_keeps_the_residual_in_f32(dtype, backend):
    shapes = [((2, 8, 256), dtype)] * 3 + [((256,), dtype)] * 2
    g = trace(_f32_stream_layers, *shapes)
    p = tt.FusionPass(world_size=2, backend=backend)
    p(g)
    assert p.report.fused == 2, p.report.left_alone
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert [c.kwargs["rounding"] for c in calls] == [["norm_input_f32", "residual_out_f32"]] * 2
    # The second reads the first's f32 residual.
    residuals = [c.args[1] for c in calls]
    assert residuals[0].meta["val"].dtype == dtype, g
    assert residuals[1].meta["val"].dtype == torch.float32, g
    assert count(g, "_c10d_functional") == 0 and count(g, "aten.pow") == 0, g
    g.lint()


def _fused_locally_and_contract3(gm, args, rounding, **attrs):
    """Fuses gm's chain at world size 1 on the CPU into one fused op and returns its results on
    `args` beside contract3's for that op (x, residual, weight; emit norm and residual)."""
    p = tt.FusionPass(world_size=1, fuse_local=True, backend="cpu")
    p(gm.graph)
    gm.recompile()
    assert count(gm.graph, "tpfuse.allreduce_rmsnorm") == 1, gm.graph
    return gm(*args), contract3.allreduce_rmsnorm([args[0]], args[1], args[2], None,
                                                  emit=["norm", "residual"], local=True,
                                                  rounding=rounding, **attrs)


@pytest.mark.parametrize("residual_dtype", [torch.float16, torch.float32], ids=["f16", "f32"])
def test_an_f32_residual_stream_at_world_size_one_computes_what_the_graph_did(residual_dtype):
    def f(o, res, w):
        return _f32_stream_norm(o, res, w, gemma=True)

    gm, args = trace_module(f, ((2, 8, 256), torch.float16), ((2, 8, 256), residual_dtype),
                            ((256,), torch.float16))
    if residual_dtype == torch.float32:  # off f16's grid: a rounded residual would show
        args[1] = args[1] + 1e-4 * torch.randn_like(args[1])
    want_y, want_r = f(*args)
    (y, r), (cy, cr) = _fused_locally_and_contract3(gm, args, ["norm_input_f32", "residual_out_f32"],
                                                    weight_bias=1.0)
    assert r.dtype == torch.float32 and torch.equal(r, want_r)
    assert torch.equal(y, cy) and torch.equal(r, cr)
    assert ulp_distance_16(y, want_y).max() <= 1


def _f32_outputs_norm(h, res, w, eps=1e-3):
    """FlashInfer's fusion tests' reference: the sum and the norm (weight_bias 1) in f32, both
    returned unrounded."""
    ro = h.float() + res.float()
    hs = ro * torch.rsqrt(ro.pow(2).mean(-1, keepdim=True) + eps)
    return (1.0 + w.float()) * hs, ro


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_norm_returned_in_f32_fuses_with_its_output_unrounded(backend):
    def f(x, res, w):
        return _f32_outputs_norm(wait(ar(x, "sum", GROUP)), res, w)

    g = trace(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2, backend=backend)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    (call,) = [n for n in g.nodes if str(n.target) == FUSED]
    assert call.kwargs["rounding"] == ["norm_input_f32", "residual_out_f32", "norm_out_f32"]
    assert count(g, "_c10d_functional") == 0 and count(g, "aten.pow") == 0, g
    g.lint()


def test_a_norm_returned_in_f32_at_world_size_one_computes_what_the_graph_did():
    def f(h, res, w):
        return _f32_outputs_norm(h, res, w)

    gm, args = trace_module(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf))
    want_y, want_r = f(*args)
    (y, r), (cy, cr) = _fused_locally_and_contract3(
        gm, args, ["norm_input_f32", "residual_out_f32", "norm_out_f32"], weight_bias=1.0, eps=1e-3)
    assert y.dtype == torch.float32 and r.dtype == torch.float32
    assert torch.equal(r, want_r)
    assert torch.equal(y, cy) and torch.equal(r, cr)
    # Eager torch sums the squares in another order than Contract 3's one order: unrounded, y
    # shows it in the last bits of f32.
    torch.testing.assert_close(y, want_y, rtol=4e-7, atol=0)


def test_an_infinite_attribute_makes_its_node_opaque_not_the_graph():
    # A Mamba mixer's clamp(dt, 0, inf) (Falcon-H1, Bamba) has no IR text; the chain beside it
    # still fuses.
    def f(x, res, w, dt):
        h = wait(ar(x, "sum", GROUP)) + res
        return llama_norm(h, w), h, torch.clamp(dt, 0.0, float("inf"))

    g = trace(f, ((16, 256), bf), ((16, 256), bf), ((256,), bf), ((16, 8), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert not p.report.untranslated
    assert p.report.fused == 1, p.report.left_alone
    assert count(g, "aten.clamp") == 1, g


def test_granites_scaled_sum_is_fused_with_its_scale():
    # Granite: `residual + out * residual_multiplier` after each row-parallel linear.
    def f(x, res, w):
        h = res + wait(ar(x, "sum", GROUP)) * 0.22
        return llama_norm(h, w), h

    g = trace(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert len(calls) == 1 and calls[0].kwargs["sum_scale"] == pytest.approx(0.22), g
    assert count(g, "_c10d_functional") == 0 and count(g, "aten.mul") == 0, g
    g.lint()


def test_a_row_parallel_bias_after_the_all_reduce_is_fused_with_it():
    # transformers' row-wise plan: `out = all_reduce(out); out = out + bias` (Llama's
    # attention_bias and mlp_bias, GPT-OSS's o_proj), then the residual add and the norm.
    def f(x, res, b, w):
        h = res + (wait(ar(x, "sum", GROUP)) + b)
        return llama_norm(h, w), h

    g = trace(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert len(calls) == 1 and calls[0].args[6] is not None, g
    assert count(g, "_c10d_functional") == 0 and count(g, "aten.add") == 0, g
    g.lint()


def test_a_row_parallel_bias_at_world_size_one_computes_what_the_graph_did():
    # The biased sum rounds to bf16 before the residual add, in the fused op as in the graph.
    def f(o, res, b, w):
        h = res + (o + b)
        return llama_norm(h, w), h

    gm, args = trace_module(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf), ((256,), bf))
    o, res, b, w = args
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    assert count(gm.graph, "tpfuse.allreduce_rmsnorm") == 1, gm.graph
    y, h = gm(*args)
    assert torch.equal(h, res + (o + b))
    (want,) = contract3.allreduce_rmsnorm([o], res, w, None, emit=["norm"], local=True, bias=b,
                                          rounding=["weight_after_round"])
    assert torch.equal(y, want)


def test_granites_scaled_sum_at_world_size_one_computes_what_the_graph_did():
    # The scale rounds to bf16 before the add, in the fused op as in the graph: h is exact, y
    # bitwise Contract 3's (the kernels' sum order). Against torch's own norm (another sum order)
    # y is within 2 ulps: the norm rounds before the weight multiply, so a flip of that first
    # rounding reaches y scaled by w.
    def f(o, res, w):
        h = res + o * 0.22
        return llama_norm(h, w), h

    gm, args = trace_module(f, ((2, 8, 256), bf), ((2, 8, 256), bf), ((256,), bf))
    o, res, w = args
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    assert count(gm.graph, "tpfuse.allreduce_rmsnorm") == 1, gm.graph
    assert count(gm.graph, "aten.mul") == 0, gm.graph
    y, h = gm(*args)
    assert torch.equal(h, res + o * 0.22)
    assert not torch.equal(h, res + o)
    (want,) = contract3.allreduce_rmsnorm([o], res, w, None, emit=["norm"], local=True,
                                          sum_scale=0.22, rounding=["weight_after_round"])
    assert torch.equal(y, want)
    assert ulp_distance_16(y, llama_norm(h, w)).max() <= 2


def test_the_report_counts_the_all_reduces_left_in_the_graph():
    def f(x1, x2, res, w):
        h = wait(ar(x1, "sum", GROUP)) + res
        return llama_norm(h, w), torch.sin(wait(ar(x2, "sum", GROUP)))

    g = trace(f, ((16, 256), bf), ((16, 256), bf), ((16, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1 and len(p.report.left_alone) == 1, p.report.left_alone
    assert p.report.all_reduces_after == 1
    assert p.report.all_reduces_after == count(g, "_c10d_functional.all_reduce")


# ---------------------------------------------------------------- vLLM's QuantFP8 torch forms

FP8_MIN_SCALING_FACTOR = 1.0 / (448.0 * 512.0)


def quantfp8_token(y):
    """QuantFP8(static=False, PER_TOKEN).forward_native: the amax on y itself, no keepdim, the
    scale floored after the division, y * s.reciprocal()."""
    x_max, _ = y.abs().max(dim=-1)
    x_max = x_max.unsqueeze(-1).to(torch.float32)
    s = (x_max / 448.0).clamp(min=FP8_MIN_SCALING_FACTOR)
    q = (y.to(torch.float32) * s.to(torch.float32).reciprocal()).clamp(-448.0, 448.0)
    return q.to(torch.float8_e4m3fn), s


def quantfp8_group(y, col_major=False, ue8m0=False):
    """QuantFP8(static=False, group 128)._quantize_group_native: the 16-bit group view's amax,
    .float(), / 448 (with use_ue8m0 rounded up to a power of two, exp2(ceil(log2(.)))), floored,
    the 16-bit view / s; scales squeezed to [..., H/128] (and laid out column-major where
    asked)."""
    shape, hidden = y.shape, y.shape[-1]
    g = y.view(-1, hidden // 128, 128)
    absmax = g.abs().max(dim=-1, keepdim=True)[0].float()
    s = absmax / 448.0
    if ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    s = s.clamp(min=FP8_MIN_SCALING_FACTOR)
    q = (g / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(-1, hidden).view(shape)
    s = s.squeeze(-1).reshape(shape[:-1] + (hidden // 128,))
    if col_major:
        s = s.transpose(-2, -1).contiguous().transpose(-1, -2)
    return q, s


def quantfp8_static(y, scale):
    """QuantFP8(static=True).forward_native with a bf16 scale: its cast to f32 is a node of the
    graph, traced after the norm."""
    out = y.to(torch.float32) * scale.to(torch.float32).reciprocal()
    return out.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)


def same_bits(a, b):
    if a.dtype == torch.float8_e4m3fn:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return a.shape == b.shape and torch.equal(a, b)


def fused_attrs(graph):
    """The attributes of the graph's one fused op."""
    (node,) = [n for n in graph.nodes if str(n.target) == FUSED]
    return dict(node.kwargs)


def assert_the_contract_and_near_eager(got, oracle, eager, weight_after_round=False):
    """The fused graph's 16-bit results bitwise Contract 3's oracle (the fused op's own order of
    the sum of squares) and near the traced graph run eagerly: torch's CPU kernel sums the squares
    in another order, which Contract 3's tolerance covers (bitwise against eager, about 1 in 300
    random inputs differ in an element by an ulp). Within an ulp, or two where the form rounds the
    normalized value before the weight (weight_after_round): an ulp of round(n) times w is up to
    two of y (vLLM's forward_static: 2 in 2 of 2000 random inputs, never more)."""
    assert len(got) == len(oracle) == len(eager)
    ulps = 2 if weight_after_round else 1
    for i, (g, o, e) in enumerate(zip(got, oracle, eager)):
        assert same_bits(g, o), f"result {i} differs from Contract 3's oracle"
        distance = int(ulp_distance_16(g, e).max())
        assert distance <= ulps, f"result {i} {distance} ulps from eager (at most {ulps})"


@pytest.mark.parametrize("form, mode", [
    (quantfp8_token, "fp8_token"),
    (quantfp8_group, "fp8_group"),
    (lambda y: quantfp8_group(y, col_major=True), "fp8_group"),
    (lambda y: quantfp8_group(y, ue8m0=True), "fp8_group"),
    (lambda y: quantfp8_group(y, col_major=True, ue8m0=True), "fp8_group"),
], ids=["token", "group", "group_col_major", "group_ue8m0", "group_col_major_ue8m0"])
@pytest.mark.parametrize("weight_scale", [1.0, 1e-4], ids=["w", "tiny_w"])
@pytest.mark.parametrize("shape", [(7, 256), (2, 5, 256)], ids=["2d", "3d"])
def test_vllms_quantfp8_forms_fuse_and_quantize_the_fused_norm_exactly(form, mode, weight_scale,
                                                                       shape):
    # The fused op's q and s are what the torch form computes from the fused op's own norm, bit
    # for bit: with weights of 1e-4 every amax lies below 1/512 and the floor after the division
    # decides the scale; row 0 is all zeros (the floor there too).
    def f(x, res, w):
        h = x + res
        y = llama_norm(h, w)
        q, s = form(y)
        return y, q, s, h

    gm, (x, res, w) = trace_module(f, (shape, bf), (shape, bf), ((256,), bf))
    w = (w.float() * weight_scale).to(bf)
    x.view(-1, 256)[0] = 0
    res.view(-1, 256)[0] = 0
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    calls = [n for n in gm.graph.nodes if str(n.target) == FUSED]
    assert len(calls) == 1, gm.graph
    assert str(calls[0].kwargs["quant"]) == mode
    assert "scale_floor_after_div" in list(calls[0].kwargs["rounding"])
    assert count(gm.graph, "aten.max") == 0 and count(gm.graph, "aten.clamp") == 0, gm.graph
    y, q, s, h = gm(x, res, w)
    want_q, want_s = form(y)
    assert same_bits(q, want_q) and same_bits(s, want_s)
    assert s.stride() == want_s.stride()
    if weight_scale < 1:
        assert torch.all(s == torch.tensor(FP8_MIN_SCALING_FACTOR, dtype=torch.float32))
    assert torch.all(s.reshape(-1, s.shape[-1])[0] == torch.tensor(FP8_MIN_SCALING_FACTOR))
    assert torch.equal(h, x + res)


def test_a_static_quant_whose_scale_cast_comes_after_the_norm_is_fused():
    # scale.to(f32) of a bf16 scale is traced after the norm, so the fused op goes after it; the
    # norm's own reads of h before that point die with the chain.
    def f(x, res, w, scale):
        h = wait(ar(x, "sum", GROUP)) + res
        return quantfp8_static(llama_norm(h, w), scale), h

    g = trace(f, ((6, 256), bf), ((6, 256), bf), ((256,), bf), ((), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    (call,) = [n for n in g.nodes if str(n.target) == FUSED]
    assert str(call.kwargs["quant"]) == "fp8_tensor"
    g.lint()

    def local(x, res, w, scale):
        h = x + res
        y = llama_norm(h, w)
        return y, quantfp8_static(y, scale), h

    gm, args = trace_module(local, ((6, 256), bf), ((6, 256), bf), ((256,), bf), ((), bf))
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    assert count(gm.graph, "tpfuse.allreduce_rmsnorm") == 1, gm.graph
    gm.graph.lint()
    y, q, h = gm(*args)
    assert same_bits(q, quantfp8_static(y, args[3]))


def test_a_ue8m0_scale_floored_before_its_rounding_is_left_to_the_graph_with_the_reason(caplog):
    # exp2(ceil(log2(clamp(amax / 448, min = 1 / (448 * 512))))): the floor before the rounding
    # gives 2^-17 where vLLM's form (the rounding, then the floor) gives the floor; no fused
    # quant rounds so. The norm still fuses; the quant stays, and the fusion says why.
    def f(x, res, w):
        h = x + res
        y = llama_norm(h, w)
        g = y.view(-1, 2, 128)
        raw = (g.abs().max(dim=-1, keepdim=True)[0].float() / 448.0).clamp(min=FP8_MIN_SCALING_FACTOR)
        s = torch.exp2(torch.ceil(torch.log2(raw)))
        q = (g / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        return q, s, h

    g = trace(f, ((6, 256), bf), ((6, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=1, fuse_local=True)
    with caplog.at_level(logging.INFO, logger="tpfuse.torch"):
        p(g)
    calls = [n for n in g.nodes if str(n.target) == FUSED]
    assert len(calls) == 1 and str(calls[0].kwargs["quant"]) == "none", g
    assert count(g, "aten.exp2") == 1
    (fusion,) = p.report.graphs[-1].fusions
    assert len(fusion.notes) == 1 and "of the norm stays as written" in fusion.notes[0]
    assert "floored after the division and then rounded to a power of two" in fusion.notes[0]
    assert fusion.notes[0] in caplog.text


def test_a_group_quant_of_a_padded_row_stays_and_the_note_names_the_pad():
    # vLLM's QuantFP8 group form for a row its groups do not divide (H 200, group 128) pads the
    # row with zeros to whole groups (F.pad): the norm fuses, the quant stays, the note says why,
    # and the quant of the fused norm gives what it gave of Contract 3's norm.
    def quant(y):
        yp = torch.nn.functional.pad(y, (0, 56), mode="constant", value=0.0)
        g = yp.view(-1, 2, 128)
        s = (g.abs().max(dim=-1, keepdim=True)[0].float() / 448.0).clamp(min=FP8_MIN_SCALING_FACTOR)
        q = (g / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(-1, 256)[..., :200]
        return q, s.squeeze(-1)

    def f(x, res, w):
        h = x + res
        return *quant(llama_norm(h, w)), h

    gm, args = trace_module(f, ((6, 200), bf), ((6, 200), bf), ((200,), bf))
    y, h = contract3.allreduce_rmsnorm([args[0]], args[1], args[2], None, local=True,
                                       emit=["norm", "residual"], rounding=["weight_after_round"])
    want = (*quant(y), h)
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    calls = [n for n in gm.graph.nodes if str(n.target) == FUSED]
    assert len(calls) == 1 and str(calls[0].kwargs["quant"]) == "none", gm.graph
    (fusion,) = p.report.graphs[-1].fusions
    assert len(fusion.notes) == 1, fusion.notes
    assert "of the norm stays as written: the row is padded with opaque" in fusion.notes[0]
    assert "aten.constant_pad_nd.default) from 200 to 256 elements" in fusion.notes[0]
    for got, ref in zip(gm(*args), want):
        assert same_bits(got, ref)


def test_vllms_all_reduce_op_is_fused_like_the_functional_one():
    # vLLM registers tensor_model_parallel_all_reduce as torch.ops.vllm.all_reduce(tensor,
    # group_name): its model graphs hold that op, returning the sum, with no wait.
    _define_vllm_ops()

    def f(x, res, w):
        h = torch.ops.vllm.all_reduce(x.reshape(-1, 256), group_name="tp:0") + res
        y = llama_norm(h, w)
        return quantfp8_token(y)[0], h

    g = trace(f, ((6, 256), bf), ((6, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1 and p.report.all_reduces == 1, p.report.left_alone
    assert p.report.all_reduces_after == 0
    (call,) = [n for n in g.nodes if str(n.target) == FUSED]
    assert call.kwargs["group_name"] == "tp:0" and str(call.kwargs["quant"]) == "fp8_token"
    assert count(g, "vllm.all_reduce") == 0
    g.lint()


def _autodeploy_kernel_norm(x, w, eps):
    # The Triton and FlashInfer kernels' recipe: the f32 product, rounded once.
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


@pytest.mark.parametrize("op,rounding", [("torch_rmsnorm", ["weight_after_round"]),
                                         ("triton_rms_norm", []), ("flashinfer_rms_norm", [])])
@pytest.mark.parametrize("weight_dtype", [bf, torch.float32], ids=["bf16_w", "f32_w"])
def test_autodeploys_all_reduce_and_rmsnorm_ops_are_fused(op, rounding, weight_dtype):
    # TensorRT-LLM AutoDeploy's graphs: torch_dist_all_reduce(t, strategy) over the default
    # group, then its reference RMSNorm op or the kernel op its transforms swap in.
    if not hasattr(torch.ops.auto_deploy, "torch_dist_all_reduce"):
        lib = torch.library.Library("auto_deploy", "FRAGMENT")
        lib.define("torch_dist_all_reduce(Tensor t, str strategy) -> Tensor")
        lib.impl("torch_dist_all_reduce", lambda t, strategy: t.clone(), "CompositeExplicitAutograd")
        # torch_rmsnorm writes weight * normalized.to(input dtype) into a tensor like its input.
        reference = lambda x, w, eps: llama_norm(x, w, eps).to(x.dtype)  # noqa: E731
        for name, impl in (("torch_rmsnorm", reference),
                           ("triton_rms_norm", _autodeploy_kernel_norm),
                           ("flashinfer_rms_norm", _autodeploy_kernel_norm)):
            lib.define(f"{name}(Tensor input, Tensor weight, float eps) -> Tensor")
            lib.impl(name, lambda x, w, eps, impl=impl: impl(x, w, eps),
                     "CompositeExplicitAutograd")
        test_autodeploys_all_reduce_and_rmsnorm_ops_are_fused.lib = lib
    norm = getattr(torch.ops.auto_deploy, op)

    def f(x, res, w):
        h = torch.ops.auto_deploy.torch_dist_all_reduce(x, "AUTO") + res
        return norm(h, w, 1e-5), h

    g = trace(f, ((6, 256), bf), ((6, 256), bf), ((256,), weight_dtype))
    assert count(g, f"auto_deploy.{op}") == 1, g  # the op itself, not its decomposition
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1 and p.report.all_reduces_after == 0, p.report.left_alone
    assert count(g, "auto_deploy") == 0, g
    (call,) = [n for n in g.nodes if str(n.target) == FUSED]
    assert call.kwargs["group_name"] == "0" and call.kwargs["eps"] == 1e-5
    assert list(call.kwargs["rounding"] or []) == rounding
    assert list(call.kwargs["emit"]) == ["norm", "residual"]
    g.lint()


def test_auto_functionalized_v2_translates_like_v1():
    # torch's default functionalization of a mutating op (vLLM turns it off; a model compiled
    # with torch.compile's defaults has it): the mutated arguments are bases, the results getitem
    # 1 + base index.
    _define_vllm_ops()
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    graphs = []
    backend = aot_autograd(fw_compiler=lambda gm, _: graphs.append(gm) or gm,
                           decompositions=select_decomp_table())

    def f(x, res, w):
        x, res = x * 2, res + 1  # bases of their own, not the graph's inputs
        torch.ops._C.fused_add_rms_norm(x, res, w, 1e-6)
        return x, res

    torch._dynamo.reset()
    with torch._inductor.config.patch(enable_auto_functionalized_v2=True), FakeTensorMode() as m:
        args = (torch.empty(6, 128, dtype=bf), torch.empty(6, 128, dtype=bf),
                torch.empty(128, dtype=bf))
        torch.compile(f, backend=backend)(*args)
    (gm,) = graphs
    assert count(gm.graph, "auto_functionalized_v2") == 1, gm.graph
    tr = translate(gm.graph)
    line = next(l for l in tr.text.splitlines() if "fused_add_rms_norm" in l)
    assert line.strip().startswith("%getitem_1, %getitem_2 = fused_add_rms_norm(%mul, %add, %arg2_1)"), line
    assert not tr.opaque, tr.opaque
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    assert count(gm.graph, FUSED) == 1 and count(gm.graph, "auto_functionalized") == 0, gm.graph
    gm.graph.lint()


@pytest.mark.parametrize("scale_shape", [(), (1,), (1, 1)], ids=["0d", "1", "1x1"])
def test_a_static_scale_of_one_element_in_any_shape_is_fused_exactly(scale_shape):
    # vLLM's tests and many layers keep the static scale as torch.rand(1): f32[1] broadcasts as
    # a scalar, and the fused op reads it through a view to f32[].
    def f(x, res, w, scale):
        h = x + res
        y = llama_norm(h, w)
        return y, quantfp8_static(y, scale), h

    gm, args = trace_module(f, ((6, 256), bf), ((6, 256), bf), ((256,), bf),
                            (scale_shape, torch.float32))
    args[3] = args[3].abs() * 0.01 + 0.001
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    calls = [n for n in gm.graph.nodes if str(n.target) == FUSED]
    assert len(calls) == 1 and str(calls[0].kwargs["quant"]) == "fp8_tensor", gm.graph
    gm.graph.lint()
    y, q, h = gm(*args)
    assert same_bits(q, quantfp8_static(y, args[3]))


def test_vllms_static_quant_op_with_a_one_element_scale_is_fused():
    # vLLM's test_fusion_all_reduce: static_scaled_fp8_quant(out, norm, scale) with scale f32[1].
    g = _vllm_norm_quant_graph(16, 16, scale_shape=(1,))
    p = tt.FusionPass(world_size=2)
    p(g)
    (call,) = [n for n in g.nodes if str(n.target) == FUSED]
    assert str(call.kwargs["quant"]) == "fp8_tensor" and p.report.all_reduces_after == 0, g
    assert call.args[3].target == torch.ops.aten.reshape.default  # the scale, as f32[]
    g.lint()


@pytest.mark.parametrize("dynamic_dims", [(0,), (1,), (0, 1)], ids=["batch", "length", "both"])
def test_rank3_chains_with_dynamic_sizes_fuse(dynamic_dims):
    # torch.compile with a dynamic length at a fixed batch (rows 2*s0), a dynamic batch, or
    # both (rows s0*s1): the fused op reads [rows, H] views whose sizes the FX graph builds from
    # the inputs' symbolic sizes; q and s are the torch form's of the fused op's own norm.
    def f(x, res, w):
        h = x + res
        y = llama_norm(h, w)
        q, s = quantfp8_group(y)
        return y, q, s, h

    torch._dynamo.reset()
    compiled = tt.compile(f, world_size=1, fuse_local=True, backend="aot_eager")
    x, res = torch.randn(2, 5, 256).to(bf), torch.randn(2, 5, 256).to(bf)
    w = (torch.rand(256) + 0.5).to(bf)
    for d in dynamic_dims:
        torch._dynamo.mark_dynamic(x, d)
        torch._dynamo.mark_dynamic(res, d)
    y, q, s, h = compiled(x, res, w)
    report = compiled.tpfuse_pass.report
    assert not report.untranslated, report.untranslated
    quants = [str(f.attrs.get("quant")) for g in report.graphs for f in g.fusions]
    assert quants == ["fp8_group"], quants
    want_q, want_s = quantfp8_group(y)
    assert same_bits(q, want_q) and same_bits(s, want_s)
    assert torch.equal(h, x + res)


def nanochat_norm(x, eps=1e-6):
    """transformers' NanoChatRMSNorm: no weight; x.float() normalized, then .type_as(x)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_norm_without_a_weight_fuses_with_a_unit_weight_and_computes_what_the_graph_did(
        world_size):
    # The compiler gives the norm a unit weight, full([H], 1) in x's dtype; the pass writes it as
    # aten.full before the fused op. round(n * 1) = round(n): bitwise the traced graph.
    def f(x, res):
        a = wait(ar(x, "sum", GROUP)) if world_size == 2 else x
        h = a + res
        return nanochat_norm(h), h

    if world_size == 2:
        g = trace(f, ((6, 256), bf), ((6, 256), bf))
        p = tt.FusionPass(world_size=2)
        p(g)
        assert p.report.fused == 1, p.report.left_alone
        assert count(g, "aten.full") == 1, g
        g.lint()
        return
    gm, args = trace_module(f, ((6, 256), bf), ((6, 256), bf))
    want = gm(*args)
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    attrs = fused_attrs(gm.graph)
    assert (attrs["emit"], attrs["rounding"], attrs["eps"]) == (["norm", "residual"], [], 1e-6), \
        attrs
    assert count(gm.graph, "aten.rsqrt") == 0 and count(gm.graph, "aten.full") == 1, gm.graph
    x, res = args
    oracle = contract3.allreduce_rmsnorm([x], res, torch.ones(256, dtype=bf), None,
                                         emit=["norm", "residual"], local=True)
    assert_the_contract_and_near_eager(gm(*args), oracle, want)


# ---- the reference computations of peer projects' fusion tests, and vLLM's current norm

def vllm_forward_static(h, residual, w, eps=1e-6):
    """vLLM's RMSNorm.forward_static with a residual: the bf16 residual promoted by the add."""
    x = h.to(torch.float32)
    x = x + residual
    residual = x.to(h.dtype)
    x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    x = x.to(h.dtype)
    return x * w, residual


def trtllm_reference(h, residual, w, eps=1e-5):
    """TensorRT-LLM's ref_residual_rms_norm: bf16 add, the norm and the weight in f32, the
    residual returned through an f32 round trip."""
    residual_out = (h + residual).to(torch.float32)
    y = residual_out * torch.rsqrt(residual_out.pow(2).mean(-1, keepdim=True) + eps) * w
    return y.to(h.dtype), residual_out.to(h.dtype)


FP8 = torch.float8_e4m3fn


def flashinfer_token_quant(y):
    """FlashInfer's dynamic per-token reference: y.float() once for the amax, once to divide."""
    scale = torch.clamp(y.float().abs().amax(dim=-1, keepdim=True) / 448.0, min=2.0 ** -9 / 448.0)
    return (y.float() / scale).clamp(-448.0, 448.0).to(FP8), scale


def flashinfer_group_quant(y):
    """FlashInfer's per-group UE8M0 reference before packing: the amax without keepdim, the
    scale unsqueezed for the division, the reshape back to [T, H] before the cast."""
    t, hidden = y.shape
    xg = y.float().reshape(t, hidden // 128, 128)
    s = torch.exp2(torch.ceil(torch.log2((xg.abs().amax(dim=-1) / 448.0).clamp(min=1e-10))))
    return (xg / s.unsqueeze(-1)).clamp(-448.0, 448.0).reshape(t, hidden).to(FP8), s


def functional_rms_norm(h, residual, w, eps=1e-6):
    """F.rms_norm after a bf16 residual add: traced by make_fx (not functionalized), its
    decomposition adds the eps in place (aten.add_.Scalar)."""
    h = h + residual
    return torch.nn.functional.rms_norm(h, h.shape[-1:], w, eps), h


def assert_the_local_norm_is_the_contract(norm, shapes_dtypes, rounding, eps):
    """`norm` (h, residual, w) -> (y, residual sum) traced and fused at world size 1 with local
    fusion on: one fused op emitting both, with `rounding` and `eps`, its results bitwise
    Contract 3's oracle and near the traced graph run eagerly."""
    gm, args = trace_module(norm, *shapes_dtypes)
    want = gm(*args)
    tt.FusionPass(world_size=1, fuse_local=True)(gm.graph)
    gm.recompile()
    attrs = fused_attrs(gm.graph)
    assert (attrs["emit"], attrs["rounding"], attrs["eps"]) == \
        (["norm", "residual"], rounding, eps), attrs
    h, res, w = args
    oracle = contract3.allreduce_rmsnorm([h], res, w, None, emit=["norm", "residual"], local=True,
                                         rounding=rounding, eps=eps)
    assert_the_contract_and_near_eager(gm(*args), oracle, want, "weight_after_round" in rounding)


@pytest.mark.parametrize("norm,rounding,eps", [
    (vllm_forward_static, ["norm_input_f32", "weight_after_round"], 1e-6),
    (trtllm_reference, [], 1e-5), (functional_rms_norm, [], 1e-6)],
    ids=["vllm", "trtllm", "F.rms_norm"])
def test_peer_norm_forms_fuse_at_world_size_two_and_locally_bitwise(norm, rounding, eps):
    def layer(x, res, w):
        return norm(wait(ar(x, "sum", GROUP)), res, w)

    g = trace(layer, ((6, 256), bf), ((6, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1, p.report.left_alone
    assert count(g, "aten.rsqrt") == 0, g

    assert_the_local_norm_is_the_contract(lambda h, res, w: norm(h, res, w),
                                          (((6, 256), bf), ((6, 256), bf), ((256,), bf)),
                                          rounding, eps)


def _define_vllm_ir_norms():
    """vLLM's IR norm and FP8 quant ops (vllm.ir.ops: what its RMSNorm and QuantFP8 call) with
    their native bodies."""
    if hasattr(torch.ops.vllm_ir, "fused_add_rms_norm"):
        return

    def normalize(x, weight, epsilon, orig):
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + epsilon)
        if weight is not None:
            x = x.to(weight.dtype) * weight
        return x.to(orig)

    def rms_norm(x, weight, epsilon, variance_size=None):
        return normalize(x.to(torch.float32), weight, epsilon, x.dtype)

    def fused_add_rms_norm(x, x_residual, weight, epsilon, variance_size=None):
        h = x.to(torch.float32) + x_residual.to(torch.float32)
        return normalize(h, weight, epsilon, x.dtype), h.to(x.dtype)

    def static_quant_fp8(x, scale, fp8_dtype, num_token_padding=None):
        q = x.to(torch.float32) * scale.to(torch.float32).reshape(1, 1).reciprocal()
        return q.clamp(-448.0, 448.0).to(fp8_dtype)

    def dynamic_quant_fp8(x, per_token, fp8_dtype, scale_ub=None, num_token_padding=None):
        x_max, _ = x.abs().max(dim=-1)
        s = (x_max.unsqueeze(-1).to(torch.float32) / 448.0).clamp(min=FP8_MIN_SCALING_FACTOR)
        q = (x.to(torch.float32) * s.reciprocal()).clamp(-448.0, 448.0).to(fp8_dtype)
        return q, s

    def dynamic_group_quant_fp8(x, group_shape, column_major, use_ue8m0, fp8_dtype,
                                scale_alignment=1):
        q, s = quantfp8_group(x, col_major=column_major, ue8m0=use_ue8m0)  # its native body
        return q.to(fp8_dtype), s

    lib = torch.library.Library("vllm_ir", "FRAGMENT")
    lib.define("rms_norm(Tensor x, Tensor? weight, float epsilon, SymInt? variance_size=None) "
               "-> Tensor")
    lib.define("fused_add_rms_norm(Tensor x, Tensor x_residual, Tensor? weight, float epsilon, "
               "SymInt? variance_size=None) -> (Tensor, Tensor)")
    lib.define("static_quant_fp8(Tensor x, Tensor scale, ScalarType fp8_dtype, "
               "SymInt? num_token_padding=None) -> Tensor")
    lib.define("dynamic_quant_fp8(Tensor x, bool per_token, ScalarType fp8_dtype, "
               "Tensor? scale_ub=None, SymInt? num_token_padding=None) -> (Tensor, Tensor)")
    lib.define("dynamic_group_quant_fp8(Tensor x, int[] group_shape, bool column_major, "
               "bool use_ue8m0, ScalarType fp8_dtype, int scale_alignment=1) -> (Tensor, Tensor)")
    # The norms' maybe_inplace overloads (vllm.ir's allow_inplace): x [and x_residual] marked
    # as written, the native body.
    lib.define("rms_norm.maybe_inplace(Tensor(a!) x, Tensor? weight, float epsilon, "
               "SymInt? variance_size=None) -> Tensor")
    lib.define("fused_add_rms_norm.maybe_inplace(Tensor(a!) x, Tensor(b!) x_residual, "
               "Tensor? weight, float epsilon, SymInt? variance_size=None) -> (Tensor, Tensor)")
    for name, body in (("rms_norm", rms_norm), ("fused_add_rms_norm", fused_add_rms_norm),
                       ("rms_norm.maybe_inplace", rms_norm),
                       ("fused_add_rms_norm.maybe_inplace", fused_add_rms_norm),
                       ("static_quant_fp8", static_quant_fp8),
                       ("dynamic_quant_fp8", dynamic_quant_fp8),
                       ("dynamic_group_quant_fp8", dynamic_group_quant_fp8)):
        lib.impl(name, body, "CompositeExplicitAutograd")
    _define_vllm_ir_norms.lib = lib


@pytest.mark.parametrize("weight_dtype,rounding", [
    (bf, ["norm_input_f32", "weight_after_round"]), (torch.float32, ["norm_input_f32"])],
    ids=["bf16_w", "f32_w"])
def test_vllms_ir_norm_ops_fuse_at_world_size_two_and_locally_bitwise(weight_dtype, rounding):
    # vLLM's RMSNorm calls torch.ops.vllm_ir.fused_add_rms_norm / rms_norm: the f32 sum of the
    # residual add normalized, the normalized value rounded to the weight's dtype before the
    # multiply (an f32 weight, Gemma's w.float() + 1: the f32 product rounded once).
    _define_vllm_ops()
    _define_vllm_ir_norms()
    ir_ops = torch.ops.vllm_ir

    def layer(x, res, w1, w2):
        y, h = ir_ops.fused_add_rms_norm(torch.ops.vllm.all_reduce(x, "tp:0"), res, w1, 1e-6)
        return ir_ops.rms_norm(torch.ops.vllm.all_reduce(y, "tp:0"), w2, 1e-5), h

    shapes = ((6, 256), bf), ((6, 256), bf), ((256,), weight_dtype), ((256,), weight_dtype)
    g = trace(layer, *shapes)
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 2 and p.report.all_reduces_after == 0, p.report.left_alone
    assert count(g, "vllm_ir") == 0, g

    assert_the_local_norm_is_the_contract(
        lambda h, res, w: ir_ops.fused_add_rms_norm(h, res, w, 1e-6), shapes[:3], rounding, 1e-6)


def _run_fused_locally(fn, seed, weight=True):
    """`fn` (h, res[, w]) compiled at world size 1 with local fusion on (aot_eager) and run on
    fresh inputs (h, res: [6, 256] bf16; w in [0.5, 1.5)): its results, its fusions, the
    inputs."""
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(6, 256, generator=g).to(bf) for _ in range(2)]
    if weight:
        inputs.append((torch.rand(256, generator=g) + 0.5).to(bf))
    torch._dynamo.reset()
    compiled = tt.compile(fn, world_size=1, fuse_local="on", backend="aot_eager")
    got = compiled(*inputs)
    return got, [fu for gr in compiled.tpfuse_pass.report.graphs for fu in gr.fusions], inputs


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("form", ["vllm_ir", "_C", "_C_dynamic_token"])
def test_the_last_layers_norm_whose_residual_sum_is_not_read_fuses(form, v2):
    # vLLM's models end with `hidden_states, _ = self.norm(hidden_states, residual)`: the fused
    # add's residual result is not read, so no getitem holds it. The norm still fuses, emitting
    # only what the graph reads.
    _define_vllm_ops()
    _define_vllm_ir_norms()

    def last(x, res, w):
        h = torch.ops.vllm.all_reduce(x, "tp:0")
        if form == "vllm_ir":
            y, _ = torch.ops.vllm_ir.fused_add_rms_norm(h, res, w, 1e-6)
            return y
        r = res * 1  # a base of its own, not the graph's input
        if form == "_C":
            torch.ops._C.fused_add_rms_norm(h, r, w, 1e-6)
            return h
        q = torch.empty(h.shape, dtype=torch.float8_e4m3fn)
        s = torch.empty((h.shape[0], 1), dtype=torch.float32)
        torch.ops._C.rms_norm_dynamic_per_token_quant(q, h, w, s, 1e-6, None, r)
        return q, s

    gm = _captured(last, ((6, 256), bf), ((6, 256), bf), ((256,), bf), v2=v2)
    p = tt.FusionPass(world_size=2)
    p(gm.graph)
    assert p.report.fused == 1 and p.report.all_reduces_after == 0, p.report.left_alone
    want = ["quant"] if form == "_C_dynamic_token" else ["norm"]
    assert list(fused_attrs(gm.graph)["emit"]) == want, gm.graph
    gm.graph.lint()


def test_the_last_layers_norm_fused_locally_is_the_contract():
    """The norm of a fused add whose residual sum is not read, fused at world size 1 and run:
    y bitwise Contract 3's, within two ulps of the graph run eagerly (weight_after_round)."""
    _define_vllm_ir_norms()

    def last(h, res, w):
        return torch.ops.vllm_ir.fused_add_rms_norm(h, res, w, 1e-6)[0]

    got, (fusion,), (h, res, w) = _run_fused_locally(last, seed=6)
    assert list(fusion.attrs["emit"]) == ["norm"], fusion.attrs
    oracle = contract3.allreduce_rmsnorm([h], res, w, None, emit=["norm"], local=True, eps=1e-6,
                                         rounding=["norm_input_f32", "weight_after_round"])
    assert_the_contract_and_near_eager([got], oracle, [last(h, res, w)], weight_after_round=True)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_vllms_ir_norms_maybe_inplace_overloads_fuse_as_the_functional_ops(v2):
    # vLLM's fusion patterns call the maybe_inplace overloads, which torch.compile captures as
    # auto_functionalized: getitems 0 [and 1] are the results, the ones after them x [and
    # x_residual] as the kernel left them. Read as the functional op where nothing reads those.
    _define_vllm_ops()
    _define_vllm_ir_norms()
    ir_ops = torch.ops.vllm_ir

    def layer(x, res, w1, w2):
        r = res * 1  # a base of its own, not the graph's input
        y, h = ir_ops.fused_add_rms_norm.maybe_inplace(torch.ops.vllm.all_reduce(x, "tp:0"), r,
                                                       w1, 1e-6)
        return ir_ops.rms_norm.maybe_inplace(torch.ops.vllm.all_reduce(y * 2, "tp:0"), w2,
                                             1e-5), h

    def inplace_calls(graph):
        return sum(1 for n in graph.nodes if "maybe_inplace" in str(n.args[:1]))

    shapes = ((6, 256), bf), ((6, 256), bf), ((256,), bf), ((256,), bf)
    gm = _captured(layer, *shapes, v2=v2)
    assert inplace_calls(gm.graph) == 2, gm.graph
    p = tt.FusionPass(world_size=2)
    p(gm.graph)
    assert p.report.fused == 2 and p.report.all_reduces_after == 0, p.report.left_alone
    assert inplace_calls(gm.graph) == 0, gm.graph
    emits = [list(n.kwargs["emit"]) for n in gm.graph.nodes if str(n.target) == FUSED]
    assert emits == [["norm", "residual"], ["norm"]], emits
    gm.graph.lint()

    # Fused locally and run: y and the residual sum are Contract 3's, each in its place.
    def chain(h, res, w):
        return ir_ops.fused_add_rms_norm.maybe_inplace(h * 1, res * 1, w, 1e-6)

    got, fusions, (h, res, w) = _run_fused_locally(chain, seed=5)
    assert len(fusions) == 1, fusions
    oracle = contract3.allreduce_rmsnorm([h * 1], res, w, None, emit=["norm", "residual"],
                                         local=True, eps=1e-6,
                                         rounding=["norm_input_f32", "weight_after_round"])
    assert same_bits(got[0], oracle[0]) and same_bits(got[1], oracle[1])

    # On the graph's own input the overwritten x_residual is copied back into it: that read
    # keeps the op, and the all_reduce says why.
    def on_the_input(x, res, w):
        return ir_ops.fused_add_rms_norm.maybe_inplace(torch.ops.vllm.all_reduce(x, "tp:0"), res,
                                                       w, 1e-6)

    gm = _captured(on_the_input, *shapes[:3], v2=v2)
    p = tt.FusionPass(world_size=2)
    p(gm.graph)
    assert p.report.fused == 0, gm.graph
    (why,) = p.report.left_alone.values()
    assert "it may write its results into x and x_residual, and the graph returns one" in why


@pytest.mark.parametrize("mode", ["fp8_tensor", "fp8_token", "fp8_group", "fp8_group_ue8m0"])
def test_vllms_ir_quant_ops_fuse_and_quantize_the_fused_norm_exactly(mode):
    _define_vllm_ops()
    _define_vllm_ir_norms()
    ir_ops = torch.ops.vllm_ir
    fp8 = torch.float8_e4m3fn

    def chain(h, res, w, scale):
        y, r = ir_ops.fused_add_rms_norm(h, res, w, 1e-6)
        if mode == "fp8_tensor":
            return ir_ops.static_quant_fp8(y, scale, fp8), r
        if mode == "fp8_token":
            q, s = ir_ops.dynamic_quant_fp8(y, True, fp8)
        else:
            q, s = ir_ops.dynamic_group_quant_fp8(y, [1, 128], False, mode.endswith("ue8m0"), fp8)
        return q, s, r

    shapes = ((6, 256), bf), ((6, 256), bf), ((256,), bf), ((1,), torch.float32)
    g = trace(lambda x, res, w, scale: chain(torch.ops.vllm.all_reduce(x, "tp:0"), res, w, scale),
              *shapes)
    p = tt.FusionPass(world_size=2)
    p(g)
    quant = mode.replace("_ue8m0", "")
    assert p.report.fused == 1 and count(g, "vllm_ir") == 0, g
    assert fused_attrs(g)["quant"] == quant

    gm, args = trace_module(chain, *shapes)
    args[3] = torch.tensor([0.02])
    want = gm(*args)
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    attrs = fused_attrs(gm.graph)
    rounding = ["norm_input_f32", "weight_after_round"] + {
        "fp8_tensor": [], "fp8_token": ["scale_op_swapped", "scale_floor_after_div"]}.get(
        mode, ["scale_floor_after_div"])
    scale_fmt = "ue8m0" if mode.endswith("ue8m0") else "f32"
    assert (attrs["quant"], attrs["rounding"], attrs["scale_fmt"]) == (quant, rounding, scale_fmt)
    got = gm(*args)
    h, res, w, scale = args
    oracle = contract3.allreduce_rmsnorm([h], res, w, scale if mode == "fp8_tensor" else None,
                                         emit=["residual", "quant"], local=True, quant=quant,
                                         scale_fmt=scale_fmt, rounding=rounding, eps=1e-6)
    # Results in the graph's order (q[, s], residual); the oracle's: residual, q[, s].
    assert len(got) == len(oracle) == len(want)
    for i, (g, o) in enumerate(zip(got, oracle[1:] + oracle[:1])):
        assert same_bits(g, o), f"result {i} differs from Contract 3's oracle"
    assert int(ulp_distance_16(got[-1], want[-1]).max()) == 0  # the residual: no sum of squares


def test_vllms_ir_group_quant_reads_both_of_its_signatures():
    attrs = _vllm_ir_group_attrs
    # (x, group_shape, column_major, use_ue8m0, fp8_dtype, scale_alignment): its native body.
    native = dict(group_shape=[1, 128], column_major=False, use_ue8m0=True)
    assert attrs(native, 512) == {"mode": "group", "group_size": 128, "scale_fmt": "ue8m0",
                                  "rounding": ["scale_floor_after_div"]}
    for change in (dict(column_major=True), dict(group_shape=[128, 128]), dict(scale_alignment=4)):
        assert attrs({**native, **change}, 512) == \
            "groups over several rows, column-major or aligned scales", change
    assert attrs(native, 200) == "groups of 128 do not divide the row (200)"
    # (x, group_size, eps, dtype, column_major_scales, tma_aligned_scales, use_ue8m0, out): vLLM's
    # group kernel, max(amax, eps) / 448 (UE8M0: rounded up from there).
    kernel = dict(group_size=64, eps=1e-10, use_ue8m0=False)
    assert attrs(kernel, 512) == {"mode": "group", "group_size": 64}
    assert attrs({**kernel, "use_ue8m0": True}, 512) == {
        "mode": "group", "group_size": 64, "scale_fmt": "ue8m0", "rounding": ["ue8m0_floor"]}
    assert attrs({**kernel, "use_ue8m0": None}, 512) == \
        "use_ue8m0 left to vLLM's setting at run time"
    assert attrs({**kernel, "eps": 1e-6}, 512) == "eps 1e-06: the fused quant's is 1e-10"
    for change in (dict(column_major_scales=True), dict(tma_aligned_scales=True),
                   dict(dtype=torch.float8_e4m3fnuz), dict(out="q")):
        assert attrs({**kernel, **change}, 512) == (
            "an output buffer, column-major or aligned scales, or another FP8 type"), change


def test_vllms_ir_group_quant_with_column_major_scales_stays_and_the_norm_fuses():
    _define_vllm_ops()
    _define_vllm_ir_norms()

    def chain(x, res, w):
        y, r = torch.ops.vllm_ir.fused_add_rms_norm(torch.ops.vllm.all_reduce(x, "tp:0"), res, w,
                                                    1e-6)
        q, s = torch.ops.vllm_ir.dynamic_group_quant_fp8(y, [1, 128], True, False,
                                                         torch.float8_e4m3fn)
        return q, s, r

    g = trace(chain, ((6, 256), bf), ((6, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1 and fused_attrs(g)["quant"] == "none"
    (fusion,) = p.report.graphs[0].fusions
    assert any("vllm_ir.dynamic_group_quant_fp8.default (opaque %dynamic_group_quant_fp8.0), an op "
               "the compiler cannot see into (groups over several rows, column-major or aligned "
               "scales)" in n for n in fusion.notes), fusion.notes


@pytest.mark.parametrize("fused", [False, True], ids=["rms_norm", "fused_add_rms_norm"])
def test_vllms_ir_norms_without_a_weight_fuse_with_a_unit_weight(fused):
    # RMSNorm(has_weight=False) calls the IR norms with weight None: read as their native
    # bodies' arithmetic (the fused add's f32 sum normalized), which the compiler folds.
    _define_vllm_ops()
    _define_vllm_ir_norms()
    ir_ops = torch.ops.vllm_ir

    def norm(h, res):
        if fused:
            return ir_ops.fused_add_rms_norm(h, res, None, 1e-6)
        return ir_ops.rms_norm(h + res, None, 1e-6), h + res

    gm = _captured(lambda x, res: norm(torch.ops.vllm.all_reduce(x, "tp:0"), res),
                   ((6, 256), bf), ((6, 256), bf))
    p = tt.FusionPass(world_size=2)
    p(gm.graph)
    assert p.report.fused == 1 and p.report.all_reduces_after == 0, p.report.left_alone
    assert list(fused_attrs(gm.graph)["emit"]) == ["norm", "residual"], gm.graph

    got, fusions, (h, res) = _run_fused_locally(lambda h, res: norm(h * 1, res), seed=8,
                                                weight=False)
    assert len(fusions) == 1, fusions
    oracle = contract3.allreduce_rmsnorm([h], res, torch.ones(256, dtype=bf), None,
                                         emit=["norm", "residual"], local=True, eps=1e-6,
                                         rounding=["norm_input_f32"] if fused else [])
    assert_the_contract_and_near_eager(got, oracle, norm(h, res))


def test_vllms_ir_norm_ops_the_compiler_cannot_take_say_why():
    _define_vllm_ops()
    _define_vllm_ir_norms()

    def layer(x, res, w):
        h = torch.ops.vllm.all_reduce(x, "tp:0") + res
        return torch.ops.vllm_ir.rms_norm(h, w, 1e-6, 128), h  # the variance of a slice

    g = trace(layer, ((6, 256), bf), ((6, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.left_alone == {"all_reduce": (
        "all_reduce %all_reduce is followed by a norm the compiler cannot read, opaque %rms_norm "
        "(vllm_ir.rms_norm.default): its variance is over the first 128 elements of the row; it "
        "stays as written (its only use is add %add)")}


@pytest.mark.parametrize("quant,mode", [(flashinfer_token_quant, "fp8_token"),
                                        (flashinfer_group_quant, "fp8_group")],
                         ids=["token", "group"])
def test_flashinfers_quant_references_fuse_as_written_and_quantize_the_fused_norm_exactly(
        quant, mode):
    # The fused op's q and s are what the reference computes from the fused op's own norm, bit
    # for bit; the norm is F.rms_norm's within Contract 3's tolerance.
    def f(x, res, w):
        h = x + res
        y = torch.nn.functional.rms_norm(h, (256,), w, 1e-5)
        return (h, y) + quant(y)

    g = torch.Generator().manual_seed(11)
    x, res = (torch.randn(7, 256, generator=g).to(bf) for _ in range(2))
    w = (torch.rand(256, generator=g) + 0.5).to(bf)
    torch._dynamo.reset()
    compiled = tt.compile(f, world_size=1, fuse_local="on", backend="aot_eager")
    h, y, q, s = compiled(x, res, w)
    fusions = [fu for gr in compiled.tpfuse_pass.report.graphs for fu in gr.fusions]
    assert [fu.attrs["quant"] for fu in fusions] == [mode], fusions
    assert not any(fu.notes for fu in fusions), fusions
    want_q, want_s = quant(y)
    assert same_bits(q, want_q) and same_bits(s, want_s)
    want_h, want_y = f(x, res, w)[:2]
    assert same_bits(h, want_h)
    assert int(ulp_distance_16(y, want_y).max()) <= 1


def torch_fused_rms_norm(x, w, eps=1e-6):
    """torch's aten._fused_rms_norm, which F.rms_norm runs on the GPU (torch >= 2.8): y, and an
    rstd nobody reads."""
    y, _rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], w, eps)
    return y


def trace_pre_dispatch(fn, *shapes_dtypes):
    """As trace_module, before dispatch: on the CPU, tracing after it decomposes
    aten._fused_rms_norm (a kernel of its own on the GPU), and the node would not be seen."""
    args = [torch.randn(s, dtype=torch.float32).to(d) for s, d in shapes_dtypes]
    return make_fx(fn, tracing_mode="fake", pre_dispatch=True)(*args), args


@pytest.mark.parametrize("op,weight", [("_fused_rms_norm", True), ("_fused_rms_norm", False),
                                       ("rms_norm", False)],
                         ids=["fused", "fused_no_weight", "rms_norm_no_weight"])
def test_torchs_rms_norm_ops_fuse_at_world_size_two_and_locally(op, weight):
    # aten._fused_rms_norm, what F.rms_norm runs on the GPU; without a weight (nanochat's norm),
    # it and aten.rms_norm (traced before dispatch) read as the norm's arithmetic, folded with
    # a unit weight.
    def norm(h, w):
        if op == "rms_norm":
            return torch.nn.functional.rms_norm(h, (h.shape[-1],), w, 1e-6)
        return torch.ops.aten._fused_rms_norm(h, [h.shape[-1]], w, 1e-6)[0]

    shapes = [((6, 256), bf), ((6, 256), bf), ((256,), bf)]

    def layer(x, res, w):
        h = wait(ar(x, "sum", GROUP)) + res
        return norm(h, w if weight else None), h

    g = trace_pre_dispatch(layer, *shapes)[0].graph
    assert count(g, f"aten.{op}") == 1, g
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 1 and p.report.all_reduces_after == 0, p.report.left_alone
    assert count(g, f"aten.{op}") == 0, g

    def local(x, res, w):
        h = x + res
        return norm(h, w if weight else None), h

    gm, args = trace_pre_dispatch(local, *shapes)
    x, res, w = args
    want_y, want_h = gm(*args)
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    assert sum(str(n.target) == FUSED for n in gm.graph.nodes) == 1, gm.graph
    y, h = gm(*args)
    assert torch.equal(h, want_h)
    # Bitwise the fused op's contract (its own sum order); torch's CPU kernel sums in another
    # order, so against it y is within an ulp.
    (c3,) = contract3.allreduce_rmsnorm([x], res, w if weight else torch.ones(256, dtype=bf),
                                        None, emit=["norm"], local=True)
    assert torch.equal(y, c3)
    assert int(ulp_distance_16(y, want_y).max()) <= 1


def test_torchs_fused_rms_norm_op_whose_rstd_is_read_stays_with_the_reason():
    def layer(x, res, w):
        h = wait(ar(x, "sum", GROUP)) + res
        y, rstd = torch.ops.aten._fused_rms_norm(h, [h.shape[-1]], w, 1e-6)
        return y, h, rstd

    g = trace_pre_dispatch(layer, ((6, 256), bf), ((6, 256), bf), ((256,), bf))[0].graph
    p = tt.FusionPass(world_size=2)
    p(g)
    assert p.report.fused == 0
    assert count(g, "aten._fused_rms_norm") == 1, g
    (why,) = p.report.left_alone.values()
    assert "is followed by a norm the compiler cannot read" in why, why
    assert "aten._fused_rms_norm.default): its rstd is read" in why, why


def test_a_norm_whose_weight_multiply_stays_in_f32_fuses_with_its_output_in_f32():
    """vLLM's forward_static with an f32 weight: bf16(norm) * w computes in f32. The weight
    multiply fuses too: the norm rounds n to bf16 first (weight_after_round), and its output is
    the f32 product, unrounded (norm_out_f32)."""
    def norm(x, res):
        x = x.to(torch.float32) + res
        r = x.to(torch.bfloat16)
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16), r

    def f(x, res, w):
        y, r = norm(x, res)
        return y * w, r

    gm, args = trace_module(f, ((6, 256), bf), ((6, 256), bf), ((256,), torch.float32))
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(gm.graph)
    gm.recompile()
    attrs = fused_attrs(gm.graph)
    rounding = ["norm_input_f32", "weight_after_round", "norm_out_f32"]
    assert (attrs["emit"], attrs["rounding"]) == (["norm", "residual"], rounding), attrs
    assert count(gm.graph, "aten.mul") == 0, gm.graph
    got = gm(*args)
    assert got[0].dtype == torch.float32
    x, res, w = args
    oracle = contract3.allreduce_rmsnorm([x], res, w, None, emit=["norm", "residual"], local=True,
                                         rounding=rounding)
    assert same_bits(got[0], oracle[0]) and same_bits(got[1], oracle[1])
    # The oracle's y is its rounded norm (unit weight) times the f32 weight, bit for bit: the
    # multiply the graph wrote; that norm within an ulp of eager's (another order of the sum of
    # squares).
    unit = contract3.allreduce_rmsnorm([x], res, torch.ones(256, dtype=bf), None,
                                       emit=["norm", "residual"], local=True,
                                       rounding=["norm_input_f32"])
    assert same_bits(oracle[0], unit[0].float() * w)
    y_eager, h_eager = norm(x, res)
    assert int(ulp_distance_16(unit[0], y_eager).max()) <= 1 and same_bits(oracle[1], h_eager)


def test_a_local_norm_the_compiler_leaves_in_ops_is_reported_with_the_reason():
    """A norm computed in bf16 throughout (TensorRT-LLM's bf16 reference) stays: folding it
    would change its result. The report names its rsqrt and says so."""
    def f(h, w):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    g = trace(f, ((6, 256), bf), ((256,), bf))
    p = tt.FusionPass(world_size=1, fuse_local=True)
    p(g)
    assert p.report.fused == 0
    (why,) = p.report.local_left_alone.values()
    assert "computed in bf16, not in f32" in why, p.report.local_left_alone
