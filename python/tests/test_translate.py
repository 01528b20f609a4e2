"""FX -> IR translation on small hand-written graphs (no process group needed: the graphs are
traced with fake tensors)."""

import operator

import pytest
import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

from tpfuse.torch import ir
from tpfuse.torch.translate import translate

GROUP = "tp0"
ar = torch.ops._c10d_functional.all_reduce
ar_ = torch.ops._c10d_functional.all_reduce_
wait = torch.ops._c10d_functional.wait_tensor


def trace(fn, *shapes_dtypes):
    args = [torch.randn(s, dtype=torch.float32).to(d) for s, d in shapes_dtypes]
    return make_fx(fn, tracing_mode="fake")(*args).graph


def body(tr):
    """The func's statements without parameter order details: one line per node."""
    return [line.strip().split(" : ")[0] for line in tr.text.splitlines()[1:-1]]


def llama_norm(h, w, eps=1e-6):
    hf = h.to(torch.float32)
    var = hf.pow(2).mean(-1, keepdim=True)
    hf = hf * torch.rsqrt(var + eps)
    return w * hf.to(h.dtype)


def test_all_reduce_add_rmsnorm_chain():
    def f(x, res, w):
        s = wait(ar(x, "sum", GROUP))
        h = s + res
        return llama_norm(h, w), h

    bf = torch.bfloat16
    tr = translate(trace(f, ((4, 64), bf), ((4, 64), bf), ((64,), bf)))
    assert [p for p, _ in tr.func.params] == ["x_1", "res_1", "w_1"]
    assert str(tr.params["x_1"]) == "bf16[4, 64]"
    assert body(tr) == [
        '%wait_tensor = all_reduce(%x_1) {group = "tp"}',
        "%add = add(%wait_tensor, %res_1)",
        "%_to_copy = cast(%add) {to = f32}",
        "%pow_1 = pow(%_to_copy) {exponent = 2.0}",
        "%mean = mean(%pow_1) {dim = -1, keepdim = true}",
        "%add_1 = add(%mean) {scalar = 1e-06}",
        "%rsqrt = rsqrt(%add_1)",
        "%mul = mul(%_to_copy, %rsqrt)",
        "%_to_copy_1 = cast(%mul) {to = bf16}",
        "%mul_1 = mul(%w_1, %_to_copy_1)",
        "return %mul_1, %add",
    ]
    other = translate(trace(f, ((4, 64), bf), ((4, 64), bf), ((64,), bf)), tp_groups=["tp1"])
    assert body(other)[0] == '%wait_tensor = all_reduce(%x_1) {group = "tp0"}'
    site = tr.all_reduces["wait_tensor"]
    assert site.group == GROUP and not site.inplace
    assert site.collective.name == "all_reduce" and site.wait.name == "wait_tensor"
    assert not tr.opaque


def test_inplace_all_reduce_later_reads_see_the_sum():
    def f(x, res, w):
        wait(ar_(x, "sum", GROUP))
        return llama_norm(x + res, w)

    bf = torch.bfloat16
    g = trace(f, ((4, 64), bf), ((4, 64), bf), ((64,), bf))
    tr = translate(g)
    assert body(tr)[0] == '%wait_tensor = all_reduce(%x_1) {group = "tp"}'
    assert body(tr)[1] == "%add = add(%wait_tensor, %res_1)"
    assert tr.all_reduces["wait_tensor"].inplace


def test_unmapped_nodes_are_opaque_ops_with_declared_types():
    def f(x, w):
        s = wait(ar(x, "sum", GROUP))
        t = torch.sin(s)           # no IR op
        return llama_norm(t, w)

    bf = torch.bfloat16
    tr = translate(trace(f, ((4, 64), bf), ((64,), bf)))
    assert '%sin = opaque(%wait_tensor) {name = "aten.sin.default"} : bf16[4, 64]' in [
        line.strip() for line in tr.text.splitlines()]
    assert "%_to_copy = cast(%sin) {to = f32}" in body(tr)
    assert [n.name for n in tr.opaque] == ["sin"]
    assert tr.opaque[next(iter(tr.opaque))] == "aten.sin.default has no IR op"


def test_every_statement_declares_its_torch_type():
    def f(x, w):
        return llama_norm(wait(ar(x, "sum", GROUP)), w)

    tr = translate(trace(f, ((4, 64), torch.bfloat16), ((64,), torch.bfloat16)))
    lines = [line.strip() for line in tr.text.splitlines()[1:-1]]
    assert lines[0].endswith(" : bf16[4, 64]")
    assert lines[3] == "%mean = mean(%pow_1) {dim = -1, keepdim = true} : f32[4, 1]"


def test_cut_nodes_leave_the_func_and_enter_as_parameters():
    def f(x, w):
        s = wait(ar(x, "sum", GROUP))
        return llama_norm(torch.sin(s), w)

    tr = translate(trace(f, ((4, 64), torch.bfloat16), ((64,), torch.bfloat16)), cut=["sin"])
    assert "sin" in tr.params and "%wait_tensor" in body(tr)[-1]
    assert not any("opaque" in line for line in body(tr))


def test_values_without_ir_type_are_left_out():
    def f(x, idx):
        s = wait(ar(x, "sum", GROUP))
        return s.index_select(0, idx) * 2.0

    g = trace(f, ((4, 64), torch.bfloat16), ((2,), torch.int64))
    tr = translate(g)
    assert "idx_1" not in tr.types            # i64 has no IR type
    assert '%index_select = opaque(%wait_tensor) {name = "aten.index_select.default"}' in body(tr)
    assert "%mul = mul(%index_select) {scalar = 2.0}" in body(tr)


def test_type_promotion_the_ir_does_not_share_is_opaque():
    # bf16 / f32[] is bf16 in torch (a 0-dim tensor does not promote) and f32 in the IR.
    def f(x, scale):
        return (x / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)

    tr = translate(trace(f, ((4, 64), torch.bfloat16), ((), torch.float32)))
    assert [n.name for n in tr.opaque] == ["div"]
    assert "%clamp = clamp(%div) {min = -448.0, max = 448.0}" in body(tr)
    assert "%_to_copy = cast(%clamp) {to = f8e4m3}" in body(tr)

    def g(x, scale):
        return (x.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)

    tr = translate(trace(g, ((4, 64), torch.bfloat16), ((), torch.float32)))
    assert not tr.opaque
    assert "%div = div(%_to_copy, %scale_1)" in body(tr)


def test_views_and_matmul():
    def f(x, w):
        s = wait(ar(x, "sum", GROUP))          # [2, 3, 64]
        y = s.view(6, 64)
        return torch.mm(y, w).view(2, 3, 32)

    bf = torch.bfloat16
    tr = translate(trace(f, ((2, 3, 64), bf), ((64, 32), bf)))
    assert body(tr)[1:4] == ["%view = view(%wait_tensor) {shape = [6, 64]}",
                             "%mm = matmul(%view, %w_1)",
                             "%view_1 = view(%mm) {shape = [2, 3, 32]}"]


def test_ir_text_reads_back():
    text = ('func @g(%x: bf16[T, 64], %w: f32[64]) {\n'
            '  %y, %h = allreduce_rmsnorm(%x, %w) {emit = ["norm"], eps = 1e-06, quant = "none", '
            'rounding = [weight_after_round]}  # bf16[T, 64]\n'
            '  return %y\n}\n')
    (func,) = ir.parse_module(text)
    assert func.params == [("x", ir.TensorType("bf16", ("T", 64))), ("w", ir.TensorType("f32", (64,)))]
    (node,) = func.nodes
    assert node.op == "allreduce_rmsnorm" and node.results == ["y", "h"]
    assert node.attrs == {"emit": ["norm"], "eps": 1e-06, "quant": "none",
                          "rounding": ["weight_after_round"]}
    assert func.outputs == ["y"]
    assert ir.parse_module(ir.print_func(func))[0] == func


def test_ir_text_errors_name_the_line():
    with pytest.raises(ValueError, match="cannot read statement"):
        ir.parse_module("func @g(%x: bf16[4]) {\n  %y = \n  return %y\n}\n")


def test_graph_with_no_typed_output_has_an_empty_func():
    g = trace(lambda idx: idx + 1, ((3,), torch.int64))
    tr = translate(g)
    assert tr.func.outputs == [] and tr.func.nodes == []


def test_a_copy_of_the_sum_is_the_sum():
    # torch.distributed.all_reduce(x) functionalized: the sum copied back into x.
    def f(x, w):
        s = wait(ar(x, "sum", GROUP))
        y = torch.ops.aten.copy.default(x, s)
        return llama_norm(y, w)

    tr = translate(trace(f, ((4, 64), torch.bfloat16), ((64,), torch.bfloat16)))
    assert body(tr)[1] == "%_to_copy = cast(%wait_tensor) {to = f32}"
    assert [n.name for n in tr.aliases["wait_tensor"]] == ["copy"]


def test_an_inplace_op_reads_as_its_functional_form_only_when_nothing_else_reads_what_it_writes():
    def alone(x):
        t = x * 2
        return t.add_(1.0)

    tr = translate(trace(alone, ((4, 64), torch.float32)))
    assert body(tr)[1:] == ["%add_ = add(%mul) {scalar = 1.0}", "return %add_"], body(tr)
    assert not tr.opaque

    def read_before(x):
        t = x * 2
        u = t + 0.5  # reads t before the write
        return u, t.add_(1.0)

    # Another reader before the write, the caller's tensor, a view's base: each sees the write.
    def input_written(x):
        return x.add_(1.0)

    def view_written(x):
        t = x * 2
        t.view(-1).add_(1.0)
        return t

    for fn in (read_before, input_written, view_written):
        tr = translate(trace(fn, ((4, 64), torch.float32)))
        (why,) = [why for n, why in tr.opaque.items() if n.name.startswith("add_")]
        assert why.startswith("aten.add_.") and why.endswith(" has no IR op"), (fn, why)
