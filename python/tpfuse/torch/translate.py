"""FX graph -> IR func (docs/pytorch.md).

Every FX node that produces a tensor the IR can type becomes an IR value named after the node.
Nodes whose op maps onto the IR op set (the table below) become IR nodes; every other node is
opaque: its tensor results enter the func as parameters and the IR values it reads leave it as
outputs, so the compiler sees every use of every value and never drops a result something still
reads. Python decides nothing about fusion: it only writes down what the graph computes.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx as fx

from . import ir

_DTYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "f16",
    torch.float32: "f32",
    torch.float8_e4m3fn: "f8e4m3",
    torch.int32: "i32",
}
IR_TO_TORCH_DTYPE = {v: k for k, v in _DTYPES.items()}


class TranslationError(Exception):
    """The graph cannot be written in the IR at all (the pass then leaves it as it was)."""


@dataclasses.dataclass
class AllReduceSite:
    """One all_reduce of the FX graph, as one IR all_reduce value."""

    value: str                      # IR value name (the node users read: the wait, if any)
    # _c10d_functional.all_reduce / all_reduce_, vllm.all_reduce, sglang.outplace_all_reduce,
    # auto_functionalized(sglang.inplace_all_reduce)
    collective: fx.Node
    wait: Optional[fx.Node]         # its wait_tensor (the written tensor's getitem for SGLang's)
    group: str                      # process group name
    inplace: bool                   # all_reduce_: later reads of the input see the sum
    partial: fx.Node                # the input (this rank's partial sum)
    operand: str                    # the IR value of the input


@dataclasses.dataclass
class Translation:
    func: ir.Func
    # IR value name -> the FX node that holds that value (its primary definition).
    node_of: Dict[str, fx.Node]
    # FX node -> IR value name, for every node whose value the IR has (aliases included).
    value_of: Dict[fx.Node, str]
    all_reduces: Dict[str, AllReduceSite]
    # FX nodes written as opaque, with the reason (for debugging and docs).
    opaque: Dict[fx.Node, str]
    # IR value names that are func parameters.
    params: Dict[str, ir.TensorType]
    # Every IR value's type (parameters and node results).
    types: Dict[str, ir.TensorType]
    # IR value name -> further FX nodes that hold the same value (a copy of it, a wait on it).
    aliases: Dict[str, List[fx.Node]] = dataclasses.field(default_factory=dict)

    @property
    def opaque_all_reduces(self) -> Dict[str, str]:
        """The all_reduces written as opaque, by the FX node their sum is read from (the wait,
        if one), with why."""
        return {next((u.name for u in n.users if _target_name(u) == _WAIT), n.name): why
                for n, why in self.opaque.items() if is_all_reduce(n)}

    @property
    def text(self) -> str:
        return ir.print_func(self.func)

    def node_at_line(self, line: int) -> Optional[fx.Node]:
        """The FX node written on `line` of `text` (1-based; the header is line 1)."""
        index = line - 2
        if 0 <= index < len(self.func.nodes):
            return self.node_of.get(self.func.nodes[index].results[0])
        return None


# ---------------------------------------------------------------- types


def _dim(d: Any) -> ir.Dim:
    if isinstance(d, int):
        return d
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        if getattr(expr, "is_Integer", False):
            return int(expr)
        if getattr(expr, "is_Symbol", False):
            return str(expr)
        if getattr(expr, "is_Mul", False) and all(getattr(a, "is_Symbol", False) for a in expr.args):
            return "*".join(sorted(str(a) for a in expr.args))  # a product dim: s0*s1
        if getattr(expr, "is_Mul", False):
            # A positive constant times symbols (2*s0: the rows of [2, s0, H]): the constant first.
            consts = [a for a in expr.args if getattr(a, "is_Integer", False)]
            syms = [a for a in expr.args if getattr(a, "is_Symbol", False)]
            if len(consts) == 1 and int(consts[0]) > 0 and len(consts) + len(syms) == len(expr.args):
                return "*".join([str(int(consts[0]))] + sorted(str(a) for a in syms))
        # Any other expression (2*s0, s0 + 1) is one opaque symbol to the IR.
        return "e_" + re.sub(r"[^A-Za-z0-9_]", "_", str(expr))
    raise TranslationError(f"unknown dimension {d!r}")


def tensor_type(val: Any) -> Optional[ir.TensorType]:
    """The IR type of a FakeTensor, or None if the IR has no such type."""
    if not isinstance(val, torch.Tensor):
        return None
    dtype = _DTYPES.get(val.dtype)
    if dtype is None or val.layout != torch.strided:
        return None
    try:
        return ir.TensorType(dtype, tuple(_dim(d) for d in val.shape))
    except TranslationError:
        return None


def _node_type(node: fx.Node) -> Optional[ir.TensorType]:
    return tensor_type(node.meta.get("val"))


def _f32(ty: ir.TensorType) -> ir.TensorType:
    return ir.TensorType("f32", ty.shape)


def _element_count(shape: Sequence[ir.Dim]) -> Tuple[int, Tuple[str, ...]]:
    const, syms = 1, []
    for d in shape:
        if isinstance(d, int):
            const *= d
        else:
            for factor in d.split("*"):
                if factor.isdigit():  # the constant factor of 2*s0
                    const *= int(factor)
                else:
                    syms.append(factor)
    return const, tuple(sorted(syms))


def broadcast_shape(a: Tuple[ir.Dim, ...], b: Tuple[ir.Dim, ...]) -> Optional[Tuple[ir.Dim, ...]]:
    """Right-aligned broadcasting where each dim pair is equal or has a 1: torch's rule, and the
    IR's (which also refuses two different symbols; a node the compiler refuses becomes opaque,
    see FusionPass, so this rule only has to be no wider than torch's)."""
    out: List[ir.Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            return None
    return tuple(reversed(out))


# ---------------------------------------------------------------- op table
#
# A handler gets the node and a function that names a tensor argument's IR value (None when the
# argument has none) and returns (op, operands, attrs) or a reason string (the node is opaque).

Lowered = Tuple[str, List[str], Dict[str, ir.AttrValue]]
Handler = Callable[[fx.Node, Callable[[Any], Optional[str]], "Translator"], Any]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _binary(ir_op: str) -> Handler:
    def handle(node, value, tr):
        if len(node.args) != 2:
            return f"{ir_op}: expected two arguments"
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            return f"{ir_op}: alpha / rounding_mode"
        a, b = node.args
        out = _node_type(node)
        av = value(a)
        if av is None or out is None:
            return f"{ir_op}: operand or result has no IR type"
        at = tr.types[av]
        if _is_number(b):
            if out != at:
                return f"{ir_op}: scalar changes the type {at} -> {out}"
            return ir_op, [av], {"scalar": float(b)}
        bv = value(b)
        if bv is None:
            return f"{ir_op}: second operand has no IR type"
        bt = tr.types[bv]
        shape = broadcast_shape(at.shape, bt.shape)
        dtype = at.dtype if at.dtype == bt.dtype else "f32"
        if shape is None or ir.TensorType(dtype, shape) != out:
            return f"{ir_op}: {at} and {bt} give {out} in torch, not the IR's broadcast / promotion"
        return ir_op, [av, bv], {}

    return handle


def _unary(ir_op: str) -> Handler:
    def handle(node, value, tr):
        av = value(node.args[0])
        if av is None or len(node.args) != 1 or node.kwargs:
            return f"{ir_op}: unsupported arguments"
        if tr.types[av] != _node_type(node):
            return f"{ir_op}: result type differs from the operand's"
        return ir_op, [av], {}

    return handle


def _pow(node, value, tr):
    x, e = node.args
    xv = value(x)
    if xv is None or not _is_number(e) or tr.types[xv] != _node_type(node):
        return "pow: tensor exponent or type change"
    return "pow", [xv], {"exponent": float(e)}


def _mean(node, value, tr):
    xv = value(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if xv is None or node.kwargs.get("dtype") is not None:
        return "mean: operand has no IR type or dtype given"
    rank = len(tr.types[xv].shape)
    if not isinstance(dims, (list, tuple)) or len(dims) != 1 or dims[0] not in (-1, rank - 1):
        return f"mean: only the last dim is supported, got {dims}"
    return "mean", [xv], {"dim": -1, "keepdim": bool(keepdim)}


def _amax(node, value, tr):
    xv = value(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if xv is None:
        return "amax: operand has no IR type"
    rank = len(tr.types[xv].shape)
    if not isinstance(dims, (list, tuple)) or len(dims) != 1 or dims[0] not in (-1, rank - 1):
        return f"amax: only the last dim is supported, got {dims}"
    return "amax", [xv], {"dim": -1, "keepdim": bool(keepdim)}


def _clamp(node, value, tr):
    target = str(node.target)
    xv = value(node.args[0])
    args = list(node.args[1:])
    if "clamp_min" in target:
        lo, hi = (args[0] if args else node.kwargs.get("min")), None
    elif "clamp_max" in target:
        lo, hi = None, (args[0] if args else node.kwargs.get("max"))
    else:
        lo = args[0] if len(args) > 0 else node.kwargs.get("min")
        hi = args[1] if len(args) > 1 else node.kwargs.get("max")
    if xv is None or tr.types[xv] != _node_type(node):
        return "clamp: operand has no IR type or the type changes"
    attrs: Dict[str, ir.AttrValue] = {}
    for key, bound in (("min", lo), ("max", hi)):
        if bound is None:
            continue
        if not _is_number(bound):
            return "clamp: tensor bounds"
        attrs[key] = float(bound)
    if not attrs:
        return "clamp: no bounds"
    return "clamp", [xv], attrs


def _cast(node, value, tr):
    xv = value(node.args[0])
    out = _node_type(node)
    if str(node.target).startswith("aten._to_copy"):
        extra = {k: v for k, v in node.kwargs.items() if k not in ("dtype", "memory_format")}
        if extra.get("device") is not None and extra["device"] != node.args[0].meta["val"].device:
            return "_to_copy: moves devices"
        if any(k not in ("device", "layout", "pin_memory") for k in extra) or len(node.args) != 1:
            return "_to_copy: unsupported arguments"
    if xv is None or out is None or out.shape != tr.types[xv].shape:
        return "cast: operand or result has no IR type"
    return "cast", [xv], {"to": ir.Name(out.dtype)}


def _view(node, value, tr):
    xv = value(node.args[0])
    out = _node_type(node)
    if xv is None or out is None:
        return "view: operand or result has no IR type"
    if _element_count(out.shape) != _element_count(tr.types[xv].shape):
        return f"view: element counts of {tr.types[xv]} and {out} differ in the IR's terms"
    return "view", [xv], {"shape": [d if isinstance(d, int) else ir.Name(d) for d in out.shape]}


def _mm(node, value, tr):
    a, b = (value(x) for x in node.args[:2])
    out = _node_type(node)
    if a is None or b is None or out is None:
        return "matmul: operand has no IR type"
    at, bt = tr.types[a], tr.types[b]
    if at.dtype != bt.dtype or len(at.shape) != 2 or len(bt.shape) != 2 or out.dtype != at.dtype:
        return "matmul: not a same-dtype rank-2 product"
    return "matmul", [a, b], {}


def _rms_norm(node, value, tr, out: Optional[fx.Node] = None):
    """aten.rms_norm(x, shape, w, eps) with a weight (Translator._weightless_norm takes the
    others); `out` is the node holding the result where that is not `node`
    (aten._fused_rms_norm's getitem 0)."""
    args = _named_args(node)
    shape, eps = args.get("normalized_shape"), args.get("eps")
    xv, wv = value(args.get("input")), value(args.get("weight"))
    if xv is None or wv is None or len(shape) != 1 or eps is None:
        return "rms_norm: an operand has no IR type, no eps, or several normalized dims"
    if tr.types[xv] != _node_type(out if out is not None else node) or \
            tr.types[wv].dtype != tr.types[xv].dtype:
        return "rms_norm: mixed dtypes"
    return "rms_norm", [xv, wv], {"eps": float(eps)}


def _rms_norm_op(rounding: List[str], weight_bias: float = 0.0) -> Handler:
    """Functional RMSNorm ops (input, weight, eps) -> the input's dtype, with the weight in the
    input's dtype or f32. TensorRT-LLM AutoDeploy's: torch_rmsnorm (its reference, `weight *
    normalized.to(input dtype)`: weight_after_round), and the Triton and FlashInfer kernels its
    transforms put in its place (the f32 product of the normalized value and the weight, rounded
    once; the Triton kernel divides by the square root where the fused op multiplies by the
    reciprocal square root, so the two may differ in the last bit). TensorRT-LLM's
    flashinfer_rmsnorm and flashinfer_gemma_rmsnorm (FlashInfer's kernels; weight_bias 1)."""

    def handler(node, value, tr):
        x, w = node.args[:2]
        eps = node.args[2] if len(node.args) > 2 else node.kwargs.get("eps")
        op = _target_name(node).split(".")[1]
        xv, wv = value(x), value(w)
        if xv is None or wv is None or eps is None:
            return f"{op}: operand has no IR type or no eps"
        if tr.types[xv] != _node_type(node) or \
                tr.types[wv].dtype not in (tr.types[xv].dtype, "f32"):
            return f"{op}: mixed dtypes"
        attrs: Dict[str, ir.AttrValue] = {"eps": float(eps), "rounding": list(rounding)}
        if weight_bias:
            attrs["weight_bias"] = weight_bias
        return "rms_norm", [xv, wv], attrs

    return handler


ATEN_TABLE: Dict[str, Handler] = {
    "aten.add.Tensor": _binary("add"),
    "aten.add.Scalar": _binary("add"),
    "aten.sub.Tensor": _binary("sub"),
    "aten.sub.Scalar": _binary("sub"),
    "aten.mul.Tensor": _binary("mul"),
    "aten.mul.Scalar": _binary("mul"),
    "aten.div.Tensor": _binary("div"),
    "aten.div.Scalar": _binary("div"),
    "aten.pow.Tensor_Scalar": _pow,
    "aten.mean.dim": _mean,
    "aten.rsqrt.default": _unary("rsqrt"),
    "aten.sqrt.default": _unary("sqrt"),
    "aten.abs.default": _unary("abs"),
    "aten.neg.default": _unary("neg"),
    "aten.reciprocal.default": _unary("reciprocal"),
    "aten.log2.default": _unary("log2"),
    "aten.exp2.default": _unary("exp2"),
    "aten.ceil.default": _unary("ceil"),
    "aten.amax.default": _amax,
    "aten.clamp.default": _clamp,
    "aten.clamp_min.default": _clamp,
    "aten.clamp_max.default": _clamp,
    "prims.convert_element_type.default": _cast,
    "aten._to_copy.default": _cast,
    "aten.view.default": _view,
    "aten.reshape.default": _view,
    "aten._unsafe_view.default": _view,
    "aten.unsqueeze.default": _view,
    "aten.squeeze.dim": _view,
    "aten.squeeze.dims": _view,
    "aten.mm.default": _mm,
    "aten.rms_norm.default": _rms_norm,
    # TensorRT-LLM AutoDeploy's RMSNorm ops, and its PyTorch flow's FlashInfer ones.
    "auto_deploy.torch_rmsnorm.default": _rms_norm_op(["weight_after_round"]),
    "auto_deploy.triton_rms_norm.default": _rms_norm_op([]),
    "auto_deploy.flashinfer_rms_norm.default": _rms_norm_op([]),
    "trtllm.flashinfer_rmsnorm.default": _rms_norm_op([]),
    "trtllm.flashinfer_gemma_rmsnorm.default": _rms_norm_op([], weight_bias=1.0),
}


# ---------------------------------------------------------------- kernels' ops
#
# Custom kernels' ops (vLLM's _C, SGLang's sgl_kernel, FlashInfer's) write into `out` arguments;
# in a functionalized graph they appear as auto_functionalized(op, **kwargs), whose getitem k is
# the k-th mutated argument (index 0 is the op's own return, None for these ops). Each entry: IR
# op, operand kwarg names, attributes from kwargs, and which getitem index holds each IR result.


@dataclasses.dataclass(frozen=True)
class KernelOp:
    ir_op: str
    operands: Tuple[str, ...]
    results: Tuple[int, ...]          # getitem indices of the IR results, in IR result order
    attrs: Callable[[Dict[str, Any]], Dict[str, ir.AttrValue]]
    # A norm kernel that quantizes its output: ir_op's first result (the norm, no FX node of
    # its own) feeds a quant_fp8, whose q (and s, for a dynamic mode) come first in `results`.
    # static_quant: the kwarg of the static scale ({mode = "tensor"}); dynamic_quant: the
    # quant's attributes from the kwargs.
    static_quant: Optional[str] = None
    dynamic_quant: Optional[Callable[[Dict[str, Any]], Dict[str, ir.AttrValue]]] = None

    def quant_results(self) -> int:
        """How many of `results` the kernel's quantization holds (q, s): 0 for a plain op."""
        return 1 if self.static_quant else 2 if self.dynamic_quant else 0


def _vllm_dynamic_token(kw: Dict[str, Any]) -> Dict[str, ir.AttrValue]:
    # The kernel: s = max(amax / 448, 1 / (448 * 512)), q = fp8(y / s). scale_ub clamps the amax.
    if kw.get("scale_ub") is not None:
        raise ValueError("scale_ub bounds the amax, which the fused quant does not")
    return {"mode": "token", "rounding": ["scale_floor_after_div"]}


def _vllm_group(kw: Dict[str, Any]) -> Dict[str, ir.AttrValue]:
    # The kernel: s = max(amax, eps) / fp8_max, q = clamp(y / s, fp8_min, fp8_max); UE8M0 scales
    # rounded up from max(|s|, 1e-10) (rounding ue8m0_floor).
    eps, lo, hi = kw.get("eps", 1e-10), kw.get("fp8_min", -448.0), kw.get("fp8_max", 448.0)
    if float(eps) != 1e-10 or float(lo) != -448.0 or float(hi) != 448.0:
        raise ValueError(f"eps {eps}, fp8 range [{lo}, {hi}]: the fused quant's are 1e-10, "
                         "[-448, 448]")
    attrs: Dict[str, ir.AttrValue] = {"mode": "group", "group_size": int(kw["group_size"])}
    if kw.get("scale_ue8m0"):
        attrs.update(scale_fmt="ue8m0", rounding=["ue8m0_floor"])
    return attrs


def _vllm_per_block(kw: Dict[str, Any]) -> Dict[str, ir.AttrValue]:
    # rms_norm_per_block_quant's groups: s = max(amax / 448, 1 / (448 * 512)), q = fp8(y / s),
    # the scales [T, G] row-major unless is_scale_transposed.
    if kw.get("scale_ub") is not None:
        raise ValueError("scale_ub bounds the amax, which the fused quant does not")
    if kw.get("is_scale_transposed"):
        raise ValueError("its scales are transposed ([G, T]), and the fused op writes the "
                         "kernel's column-major layout only as [G, pad4(T)] from its own quant")
    return {"mode": "group", "group_size": int(kw["group_size"]),
            "rounding": ["scale_floor_after_div"]}


def _vllm_norm_dynamic(quant: Callable[[Dict[str, Any]], Dict[str, ir.AttrValue]]
                       ) -> Callable[[Dict[str, Any]], KernelOp]:
    """vLLM's norm kernels with a dynamic quant fused in, rms_norm_dynamic_per_token_quant and
    rms_norm_per_block_quant (result!, input, weight, scale!, epsilon, scale_ub, residual!?,
    ...): the norm (where a residual is given, the residual add summed in f32 and the norm taken
    of the unrounded sum; residual holds the sum rounded), the normalized value rounded before
    the weight multiply, then `quant` of it. getitems: result 1, scale 2, residual 3. The entry
    by whether a residual is given."""
    def entry(kw: Dict[str, Any]) -> KernelOp:
        if kw.get("residual") is None:
            return KernelOp("rms_norm", ("input", "weight"), (1, 2),
                            lambda k: {"eps": float(k["epsilon"]),
                                       "rounding": ["weight_after_round"]},
                            dynamic_quant=quant)
        return KernelOp("fused_add_rms_norm", ("input", "residual", "weight"), (1, 2, 3),
                        lambda k: {"eps": float(k["epsilon"]),
                                   "rounding": ["norm_input_f32", "weight_after_round"]},
                        dynamic_quant=quant)
    return entry


def _flashinfer_norm(fused: bool, weight_bias: float) -> KernelOp:
    """FlashInfer's norm kernels (its own ops, and SGLang's sgl_kernel and TensorRT-LLM's
    trtllm.flashinfer_* ones, which call them): rmsnorm(out!, input, weight, eps, ...) and
    fused_add_rmsnorm(input!, residual!, weight, eps, ...), the gemma_ ones with weight_bias 1:
    y = round(x * rstd * (weight_bias + w)) in f32, the fused-add ones summing in f32 and
    normalizing the unrounded sum (norm_input_f32; residual holds the sum rounded, input y)."""
    attrs: Dict[str, ir.AttrValue] = {"weight_bias": weight_bias} if weight_bias else {}
    if not fused:
        return KernelOp("rms_norm", ("input", "weight"), (1,),
                        lambda kw: {"eps": float(kw["eps"]), **attrs})
    return KernelOp("fused_add_rms_norm", ("input", "residual", "weight"), (1, 2),
                    lambda kw: {"eps": float(kw["eps"]), **attrs, "rounding": ["norm_input_f32"]})


# vLLM's norm kernels compute out = (scalar_t)(x * rstd) * weight: the normalized value rounded
# to the activation dtype before the weight multiply (weight_after_round); the fused-add kernel
# adds in the activation dtype (the norm reads round(h), the IR's default).
KERNEL_TABLE: Dict[str, Union[KernelOp, Callable[[Dict[str, Any]], KernelOp]]] = {
    "_C.rms_norm.default": KernelOp(
        "rms_norm", ("input", "weight"), (1,),
        lambda kw: {"eps": float(kw["epsilon"]), "rounding": ["weight_after_round"]}),
    "_C.fused_add_rms_norm.default": KernelOp(
        "fused_add_rms_norm", ("input", "residual", "weight"), (1, 2),
        lambda kw: {"eps": float(kw["epsilon"]), "rounding": ["weight_after_round"]}),
    # The norm kernels with the static quant fused in (what vLLM's norm-quant fusion leaves):
    # the same norms, the rounded norm times the reciprocal of the scale.
    "_C.rms_norm_static_fp8_quant.default": KernelOp(
        "rms_norm", ("input", "weight"), (1,),
        lambda kw: {"eps": float(kw["epsilon"]), "rounding": ["weight_after_round"]}, "scale"),
    "_C.fused_add_rms_norm_static_fp8_quant.default": KernelOp(
        "fused_add_rms_norm", ("input", "residual", "weight"), (1, 2),
        lambda kw: {"eps": float(kw["epsilon"]), "rounding": ["weight_after_round"]}, "scale"),
    # ... and with a dynamic quant, per token or per group (128 or 64 columns).
    "_C.rms_norm_dynamic_per_token_quant.default": _vllm_norm_dynamic(_vllm_dynamic_token),
    "_C.rms_norm_per_block_quant.default": _vllm_norm_dynamic(_vllm_per_block),
    "_C.static_scaled_fp8_quant.default": KernelOp(
        "quant_fp8", ("input", "scale"), (1,), lambda kw: {"mode": "tensor"}),
    "_C.dynamic_per_token_scaled_fp8_quant.default": KernelOp(
        "quant_fp8", ("input",), (1, 2), _vllm_dynamic_token),
    "_C.per_token_group_fp8_quant.default": KernelOp(
        "quant_fp8", ("input",), (1, 2), _vllm_group),
    **{f"{ns}.{gemma}{name}.default": _flashinfer_norm(fused, 1.0 if gemma else 0.0)
       for ns in ("sgl_kernel", "flashinfer") for gemma in ("", "gemma_")
       for name, fused in (("rmsnorm", False), ("fused_add_rmsnorm", True))},
    # TensorRT-LLM's PyTorch flow: FlashInfer's fused-add kernels (input!, residual!, weight, eps).
    **{f"trtllm.flashinfer_{gemma}fused_add_rmsnorm.default":
       _flashinfer_norm(True, 1.0 if gemma else 0.0) for gemma in ("", "gemma_")},
}


# ---------------------------------------------------------------- the translator


_ALL_REDUCE = "_c10d_functional.all_reduce.default"
_ALL_REDUCE_INPLACE = "_c10d_functional.all_reduce_.default"
_WAIT = "_c10d_functional.wait_tensor.default"
# Custom ops returning the sum over a group, no wait: vLLM's tensor_model_parallel_all_reduce
# (its group named by the op) and TensorRT-LLM AutoDeploy's (the default group).
_VLLM_ALL_REDUCE = "vllm.all_reduce.default"
_WORLD_ALL_REDUCES = ("auto_deploy.torch_dist_all_reduce.default",
                      "auto_deploy.trtllm_dist_all_reduce.default")
# SGLang's GroupCoordinator.all_reduce under torch.compile: outplace_all_reduce(tensor,
# group_name[, method]) returns the sum; inplace_all_reduce(tensor, group_name[, method]) writes
# it into the tensor, which functionalization turns into auto_functionalized(op, ...) and a
# getitem of the written tensor.
_SGLANG_ALL_REDUCE = "sglang.outplace_all_reduce.default"
_SGLANG_ALL_REDUCE_INPLACE = "sglang.inplace_all_reduce.default"
_AUTO_FUNCTIONALIZED = ("auto_functionalized", "higher_order.auto_functionalized")
_AUTO_FUNCTIONALIZED_V2 = ("auto_functionalized_v2", "higher_order.auto_functionalized_v2")


# vLLM's IR norm ops (vllm.ir.ops.rms_norm, fused_add_rms_norm: the ops its RMSNorm calls).
_VLLM_IR_NORMS = ("vllm_ir.rms_norm.default", "vllm_ir.fused_add_rms_norm.default")
# ... and its FP8 quant ops (what its QuantFP8 calls).
_VLLM_IR_QUANTS = ("vllm_ir.static_quant_fp8.default", "vllm_ir.dynamic_quant_fp8.default",
                   "vllm_ir.dynamic_group_quant_fp8.default")


# The IR's name of the tensor-parallel group (the compiler fuses all_reduces on it only).
TP_GROUP = "tp"

# Why a value computed from a Python float the graph takes as an input is opaque: under
# torch.compile(dynamic=True) the floats a model reads (a norm's eps) enter as 0-dim f64 tensors.
UNSPECIALIZED_FLOAT = ("it is a Python float the graph takes as a tensor input "
                       "(torch.compile(dynamic=True) passes floats so unless "
                       "torch._dynamo.config.specialize_float is True; "
                       "tpfuse.torch.compile sets it)")


class Translator:
    def __init__(self, graph: fx.Graph, name: str = "graph",
                 tp_groups: Optional[Sequence[str]] = None,
                 force_opaque: Optional[Dict[str, str]] = None,
                 cut: Optional[Sequence[str]] = None):
        self.graph = graph
        self.force_opaque = dict(force_opaque or {})
        self.cut = set(cut or ())
        self.name = name
        self.tp_groups = None if tp_groups is None else set(tp_groups)
        self.types: Dict[str, ir.TensorType] = {}
        self.value_of: Dict[fx.Node, str] = {}
        self.node_of: Dict[str, fx.Node] = {}
        self.params: List[Tuple[str, ir.TensorType]] = []
        self.nodes: List[ir.Node] = []
        self.outputs: List[str] = []
        self.opaque: Dict[fx.Node, str] = {}
        self.all_reduces: Dict[str, AllReduceSite] = {}
        self.pending: Dict[fx.Node, Tuple[str, bool, fx.Node]] = {}  # collective -> (group, inplace, input)
        self.tuples: Dict[fx.Node, Dict[int, str]] = {}
        self.aliases: Dict[str, List[fx.Node]] = {}  # tuple-valued node -> index -> IR value
        # Inputs that are Python floats passed as 0-dim f64 tensors, and the nodes computed from
        # them alone (UNSPECIALIZED_FLOAT).
        self.from_floats: set = set()

    # Value names must be unique; FX node names are, and '.'-suffixed names cannot clash.
    def _define(self, name: str, ty: ir.TensorType, node: fx.Node) -> str:
        if name in self.types:
            raise TranslationError(f"value name {name} defined twice")
        self.types[name] = ty
        self.node_of[name] = node
        return name

    def _value(self, arg: Any) -> Optional[str]:
        return self.value_of.get(arg) if isinstance(arg, fx.Node) else None

    def _escape(self, args: Any) -> None:
        """Every IR value an opaque node (or the graph output) reads becomes a func output."""
        for n in _flat_nodes(args):
            v = self.value_of.get(n)
            if v is not None and v not in self.outputs:
                self.outputs.append(v)

    def _opaque(self, node: fx.Node, reason: str) -> None:
        """An opaque node reads the IR values among its arguments and declares the types of its
        tensor results (a tuple's element i as `node.i`). One without a tensor result the IR can
        type (or one the compiler refused as opaque) is cut out instead: what it reads leaves
        the func as outputs."""
        self.opaque[node] = reason
        inputs = _flat_nodes((node.args, node.kwargs))
        from_floats = bool(inputs) and all(n in self.from_floats for n in inputs)
        if from_floats:
            self.from_floats.add(node)
        val = node.meta.get("val")
        results: List[Tuple[str, ir.TensorType]] = []
        ty = tensor_type(val)
        if ty is not None:
            results.append((node.name, ty))
        elif isinstance(val, (list, tuple)):
            elems = {}
            for i, v in enumerate(val):
                t = tensor_type(v)
                if t is not None:
                    elems[i] = f"{node.name}.{i}"
                    results.append((elems[i], t))
            self.tuples[node] = elems
        operands = list(dict.fromkeys(
            v for v in (self.value_of.get(n) for n in _flat_nodes((node.args, node.kwargs)))
            if v is not None))
        if not results or node.name in self.cut:
            self._escape((node.args, node.kwargs))
            for name, t in results:  # a cut node's results enter as parameters
                self.params.append((self._define(name, t, node), t))
            if ty is not None:
                self.value_of[node] = node.name
            return
        for name, t in results:
            self._define(name, t, node)
        if ty is not None:
            self.value_of[node] = node.name
        attrs: Dict[str, ir.AttrValue] = {"name": _opaque_name(node)}
        if from_floats:
            attrs["why"] = UNSPECIALIZED_FLOAT
        self.nodes.append(ir.Node("opaque", [n for n, _ in results], operands, attrs,
                                  [t for _, t in results]))

    def _add(self, node: fx.Node, op: str, operands: List[str], attrs: Dict[str, ir.AttrValue],
             results: List[Tuple[str, Union[fx.Node, ir.TensorType]]],
             ir_only: Optional[Tuple[str, ir.TensorType]] = None) -> None:
        """An IR node of `node`, its results held by the FX nodes of `results` or, where a
        result's entry has a type instead, by no FX node (a result the graph does not read);
        `ir_only`, a first result no FX node holds (a kernel's intermediate)."""
        names, types = [], []
        if ir_only is not None:
            results = [ir_only, *results]
        for name, owner in results:
            if isinstance(owner, ir.TensorType):
                names.append(self._define(name, owner, node))
                types.append(owner)
                continue
            ty = _node_type(owner)
            self._define(name, ty, owner)
            self.value_of[owner] = name
            names.append(name)
            types.append(ty)
        # Declared types: the parser checks them against its own inference, so a node whose
        # torch type the IR would infer differently is refused (and then written as opaque).
        self.nodes.append(ir.Node(op, names, operands, attrs, types))

    def run(self) -> Translation:
        for node in self.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor) and val.dim() == 0 and val.dtype == torch.float64:
                    self.from_floats.add(node)
                ty = _node_type(node)
                if ty is not None:
                    self.params.append((self._define(node.name, ty, node), ty))
                    self.value_of[node] = node.name
            elif node.op == "output":
                self._escape(node.args)
            elif node.op == "call_function":
                self._call(node)
            else:
                self._opaque(node, f"{node.op} node")
        func = ir.Func(self.name, self.params, self.nodes, self.outputs)
        return Translation(func, self.node_of, self.value_of, self.all_reduces, self.opaque,
                           dict(self.params), dict(self.types), self.aliases)

    def _call(self, node: fx.Node) -> None:
        if node in self.value_of:
            return  # a result of a node already translated (auto_functionalized's getitems)
        target = _target_name(node)
        if node.name in self.force_opaque:
            return self._opaque(node, self.force_opaque[node.name])
        if target in (_ALL_REDUCE, _ALL_REDUCE_INPLACE):
            return self._all_reduce(node, target == _ALL_REDUCE_INPLACE)
        if target in (_VLLM_ALL_REDUCE, _SGLANG_ALL_REDUCE) or target in _WORLD_ALL_REDUCES:
            return self._custom_all_reduce(node, target)
        if _functionalized_all_reduce(node):
            return self._written_all_reduce(node, target in _AUTO_FUNCTIONALIZED_V2)
        if target == _WAIT:
            return self._wait(node)
        if node.target is operator.getitem:
            return self._getitem(node)
        if target == "aten.copy.default" and self._copy_alias(node):
            return
        if target == "aten.clone.default" and self._clone_alias(node):
            return
        if target in _AUTO_FUNCTIONALIZED:
            return self._auto_functionalized(node)
        if target in _AUTO_FUNCTIONALIZED_V2:
            return self._auto_functionalized(node, v2=True)
        if target == "aten.max.dim":
            return self._max_dim(node)
        if target == "aten._fused_rms_norm.default":
            return self._fused_rms_norm(node)
        if target == "aten.rms_norm.default" and _named_args(node).get("weight") is None:
            return self._weightless_norm(node, node)
        if target in _VLLM_IR_NORMS:
            return self._vllm_ir_norm(node, target)
        if target in _VLLM_IR_QUANTS:
            return self._vllm_ir_quant(node, target)
        handler = ATEN_TABLE.get(target) or _functional_handler(node, target)
        if handler is None:
            return self._opaque(node, f"{target} has no IR op")
        if _node_type(node) is None:
            return self._opaque(node, f"{target}: result has no IR type")
        lowered = handler(node, self._value, self)
        if isinstance(lowered, str):
            return self._opaque(node, lowered)
        op, operands, attrs = lowered
        unwritable = _unwritable_attrs(attrs)
        if unwritable:
            return self._opaque(node, f"{target}: {unwritable}")
        self._add(node, op, operands, attrs, [(node.name, node)])

    def _all_reduce(self, node: fx.Node, inplace: bool) -> None:
        x, reduce_op, group = node.args[:3]
        xv = self._value(x)
        if reduce_op != "sum":
            return self._opaque(node, f"all_reduce with op {reduce_op!r} (the fused op sums)")
        if xv is None or _node_type(node) is None:
            return self._opaque(node, f"all_reduce of {_describe(node.meta.get('val'))}, which "
                                      "the IR does not type")
        users = list(node.users)
        waits = [u for u in users if _target_name(u) == _WAIT]
        if len(waits) != 1 or (not inplace and len(users) != 1):
            # Without exactly one wait there is no single value to hand to the compiler.
            return self._emit_all_reduce(node, None, str(group), inplace, x)
        self.pending[node] = (str(group), inplace, x)
        # The input is read by the collective: an opaque reader would need it as an output,
        # the IR all_reduce node is that reader here.

    def _custom_all_reduce(self, node: fx.Node, target: str) -> None:
        """A custom op returning the sum over a group: torch.ops.vllm.all_reduce(tensor,
        group_name) (vLLM registers its all_reduce so, and its model graphs hold it), or
        AutoDeploy's torch_dist_all_reduce / trtllm_dist_all_reduce(t[, strategy]) over the
        default group."""
        x = node.args[0] if node.args else node.kwargs.get(
            "tensor", node.kwargs.get("t", node.kwargs.get("input_")))
        if target in (_VLLM_ALL_REDUCE, _SGLANG_ALL_REDUCE):
            named = node.args[1] if len(node.args) > 1 else node.kwargs.get("group_name")
            group = _c10d_group_name(named) if isinstance(named, str) else None
        else:
            named, group = None, _default_group_name()
        if self._value(x) is None or _node_type(node) is None or group is None:
            return self._opaque(node, f"{target} with an input the IR cannot type")
        # tp_groups may name the group either way: vLLM's name or the c10d one.
        self._emit_all_reduce(node, None, group, False, x, also_named=named)

    def _written_all_reduce(self, node: fx.Node, v2: bool) -> None:
        """auto_functionalized[_v2](sglang.inplace_all_reduce, tensor=x, group_name=g): the
        getitem of the written tensor is the sum (the wait of a c10d all_reduce, as it were)."""
        read = _unfunctionalized(node, v2)
        if isinstance(read, str):
            return self._opaque(node, read)
        kwargs, (arg,), items = read
        x, named = kwargs.get(arg), kwargs.get("group_name")
        sums = [u for u in node.users
                if u.target is operator.getitem and u.args[1] == items.get(arg)]
        if (len(sums) != 1 or len(node.users) != 1 or not isinstance(named, str)
                or self._value(x) is None or _node_type(sums[0]) is None):
            return self._opaque(node, f"{_op_name(node.args[0])}: its written tensor is not read "
                                      "once as a value the IR types")
        self._emit_all_reduce(node, sums[0], _c10d_group_name(named), False, x, also_named=named)

    def _copy_alias(self, node: fx.Node) -> bool:
        """copy(dst, src) of the same type is src's value (what torch.distributed.all_reduce's
        in-place form becomes once functionalized: the sum copied back into the input)."""
        if len(node.args) < 2 or node.kwargs.get("non_blocking"):
            return False
        return self._alias(node, node.args[1])

    def _clone_alias(self, node: fx.Node) -> bool:
        """clone(x) that keeps x's layout and that nothing mutates is x's value (what dropout
        in eval mode and other identities become: phi3's resid_attn_dropout, say)."""
        if node.kwargs.get("memory_format") not in (None, torch.preserve_format) or not node.args:
            return False
        for user in node.users:
            schema = getattr(user.target, "_schema", None)
            if (schema is not None and schema.is_mutable) or _target_name(user) == _ALL_REDUCE_INPLACE:
                return False
        return self._alias(node, node.args[0])

    def _alias(self, node: fx.Node, of: Any) -> bool:
        """Makes `node` an alias of the value of `of` where both have the same type."""
        src = self._value(of)
        if src is None or _node_type(node) != self.types[src]:
            return False
        self.value_of[node] = src
        self.aliases.setdefault(src, []).append(node)
        return True

    def _wait(self, node: fx.Node) -> None:
        src = node.args[0]
        if src in self.pending:
            group, inplace, x = self.pending.pop(src)
            return self._emit_all_reduce(src, node, group, inplace, x)
        v = self._value(src)
        if v is not None:
            self.value_of[node] = v  # waiting on a value the IR already has changes nothing
            self.aliases.setdefault(v, []).append(node)
        else:
            self._opaque(node, "wait on an opaque collective")

    def _emit_all_reduce(self, collective: fx.Node, wait: Optional[fx.Node], group: str,
                         inplace: bool, x: fx.Node, also_named: Optional[str] = None) -> None:
        owner = wait if wait is not None else collective
        xv = self.value_of[x]
        is_tp = self.tp_groups is None or group in self.tp_groups or also_named in self.tp_groups
        self._add(owner, "all_reduce", [xv], {"group": TP_GROUP if is_tp else group},
                  [(owner.name, owner)])
        self.value_of[collective] = owner.name
        if inplace:
            # From here on the input holds the sum.
            self.value_of[x] = owner.name
        self.all_reduces[owner.name] = AllReduceSite(owner.name, collective, wait, group, inplace, x,
                                                      xv)

    def _getitem(self, node: fx.Node) -> None:
        src, index = node.args
        if src in self.tuples and isinstance(index, int):
            elems = self.tuples[src]
            if index in elems:
                self.value_of[node] = elems[index]
                self.node_of[elems[index]] = node  # the FX node that holds the element
                return
        self._opaque(node, "getitem of an opaque value")

    def _max_dim(self, node: fx.Node) -> None:
        """max(x, dim, keepdim) whose values alone are read (getitem 0; vLLM's
        `x.abs().max(dim=-1)`): the amax of the IR, named after that getitem. Read indices keep
        the node opaque."""
        getitems = {u.args[1]: u for u in node.users if u.target is operator.getitem}
        values = getitems.get(0)
        if values is None or (1 in getitems and getitems[1].users) or \
                len(getitems) != len(node.users):
            return self._opaque(node, "max.dim: its indices are read, or its values are not")
        if _node_type(values) is None:
            return self._opaque(node, "max.dim: the values have no IR type")
        xv = self._value(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if xv is None or self.types[xv].dtype != _node_type(values).dtype:
            return self._opaque(node, "max.dim: operand has no IR type or the dtype changes")
        if dim not in (-1, len(self.types[xv].shape) - 1):
            return self._opaque(node, f"max.dim: only the last dim is supported, got {dim}")
        self.tuples[node] = {}
        self._add(values, "amax", [xv], {"dim": -1, "keepdim": bool(keepdim)},
                  [(values.name, values)])

    def _fused_rms_norm(self, node: fx.Node) -> None:
        """aten._fused_rms_norm(x, shape, w, eps) -> (y, rstd), what F.rms_norm dispatches to on
        the GPU (torch >= 2.8), with y alone read (getitem 0): aten.rms_norm's rms_norm (its
        decomposition is the same arithmetic: x in f32, times the rsqrt, times w, back to x's
        dtype), named after that getitem. A read rstd keeps the node opaque."""
        getitems = {u.args[1]: u for u in node.users if u.target is operator.getitem}
        y = getitems.get(0)
        if y is None or (1 in getitems and getitems[1].users) or \
                len(getitems) != len(node.users):
            return self._opaque_why(node, "its rstd is read, or its output is not")
        if _named_args(node).get("weight") is None:
            return self._weightless_norm(node, y)
        made = _rms_norm(node, self._value, self, out=y)
        if isinstance(made, str):
            return self._opaque_why(node, made.split(": ", 1)[-1])
        op, operands, attrs = made
        self.tuples[node] = {}
        self._add(y, op, operands, attrs, [(y.name, y)])

    def _weightless_norm(self, node: fx.Node, out: fx.Node) -> None:
        """aten.rms_norm or aten._fused_rms_norm (x, [H], None, eps), F.rms_norm without a
        weight (nanochat's norm): its decomposition's arithmetic (_unit_weight_norm) of x in
        f32, `out` holding the result."""
        args = _named_args(node)
        shape, eps = args.get("normalized_shape"), args.get("eps")
        xv = self._value(args.get("input"))
        if xv is None or len(shape) != 1 or eps is None:
            return self._opaque_why(node, "no eps, or several normalized dims")
        act = self.types[xv]
        if _node_type(out) != act:
            return self._opaque_why(node, "its result's type is not its input's")
        if node.target is torch.ops.aten._fused_rms_norm.default:
            self.tuples[node] = {}
        step = self._steps(out, f"{out.name}.w")
        self._unit_weight_norm(out, step, step("cast", [xv], {"to": ir.Name("f32")}, _f32(act)),
                               float(eps), (out.name, out))

    def _steps(self, owner: fx.Node, prefix: str) -> Callable[..., str]:
        """A maker of IR nodes of `owner` whose one result no FX node holds, named `prefix`0,
        `prefix`1, ... in order."""
        count = itertools.count()

        def step(op: str, operands: List[str], attrs: Dict[str, ir.AttrValue],
                 ty: ir.TensorType) -> str:
            name = f"{prefix}{next(count)}"
            self._add(owner, op, operands, attrs, [(name, ty)])
            return name

        return step

    def _unit_weight_norm(self, owner: fx.Node, step: Callable[..., str], xf: str, eps: float,
                          result: Tuple[str, Union[fx.Node, ir.TensorType]]) -> None:
        """A norm without a weight written as its arithmetic, one IR node of `owner` each
        (`step`: _steps): the f32 value `xf` times the rsqrt of the mean of its squares plus eps,
        cast to `result`'s dtype; the compiler folds the chain into rms_norm with a unit weight,
        as it does the same chain written in torch."""
        f32 = self.types[xf]
        row = ir.TensorType("f32", tuple(f32.shape[:-1]) + (1,))
        mean = step("mean", [step("pow", [xf], {"exponent": 2.0}, f32)],
                    {"dim": -1, "keepdim": True}, row)
        rstd = step("rsqrt", [step("add", [mean], {"scalar": eps}, row)], {}, row)
        normed = step("mul", [xf, rstd], {}, f32)
        ty = _node_type(result[1]) if isinstance(result[1], fx.Node) else result[1]
        self._add(owner, "cast", [normed], {"to": ir.Name(ty.dtype)}, [result])

    def _vllm_ir_norm(self, node: fx.Node, target: str,
                      inplace_args: Optional[Dict[str, Any]] = None) -> None:
        """vLLM's IR norm ops (vllm.ir.ops, what its RMSNorm calls): rms_norm(x, weight,
        epsilon, variance_size=None) and fused_add_rms_norm(x, x_residual, weight, epsilon,
        variance_size=None) -> (y, residual), read through getitems. Their native bodies
        normalize in f32 (the f32 sum of the residual add, which is returned rounded) and
        multiply by a weight of x's dtype after rounding the normalized value to it
        (weight_after_round); an f32 weight multiplies the f32 value, rounded once.
        `inplace_args`: the arguments of their maybe_inplace overload under
        auto_functionalized (`node`), whose getitems 0 [and 1] are the op's results."""
        fused = target == "vllm_ir.fused_add_rms_norm.default"
        args = _named_args(node) if inplace_args is None else inplace_args
        op = target.rsplit(".", 1)[0]
        if args.get("variance_size") is not None:
            return self._opaque_why(node, f"its variance is over the first "
                                          f"{args['variance_size']} elements of the row", op)
        if args.get("epsilon") is None:
            return self._opaque_why(node, "it has no eps", op)
        has_weight = args.get("weight") is not None
        operands = [self._value(args.get(k)) for k in ("x", "x_residual", "weight")
                    if (k != "x_residual" or fused) and (k != "weight" or has_weight)]
        if any(v is None for v in operands):
            return self._opaque_why(node, "an operand has no IR type", op)
        act = self.types[operands[0]]
        weight = self.types[operands[-1]] if has_weight else None
        activations = operands[:-1] if has_weight else operands
        if (weight is not None and weight.dtype not in (act.dtype, "f32")) or \
                any(self.types[v] != act for v in activations):
            return self._opaque_why(node, "mixed dtypes", op)
        # The results: the node itself (rms_norm), or getitems 0 [and 1]; a result the graph
        # does not read (the last layer's residual sum) has no getitem, and a name of its own.
        results: List[Tuple[str, Union[fx.Node, ir.TensorType]]] = [(node.name, node)]
        if fused or inplace_args is not None:
            returns = (0, 1) if fused else (0,)
            # The maybe_inplace overload's getitems past the results, unread, are left out.
            users = [u for u in node.users if inplace_args is None or u.users or
                     u.target is not operator.getitem or u.args[1] in returns]
            getitems = {u.args[1]: u for u in users if u.target is operator.getitem}
            if not set(getitems) <= set(returns) or len(users) != len(getitems):
                return self._opaque_why(node, "a result is not read through getitem", op)
            results = [(getitems[i].name, getitems[i]) if i in getitems
                       else (f"{node.name}.{i}", act) for i in returns]
        if any(isinstance(o, fx.Node) and _node_type(o) != act for _, o in results):
            return self._opaque_why(node, "its result's type is not its input's", op)
        if not has_weight:
            # Without a weight: the native body's arithmetic, which the compiler folds.
            step = self._steps(node, f"{node.name}.w")
            h = step("cast", [operands[0]], {"to": ir.Name("f32")}, _f32(act))
            if fused:
                r = step("cast", [operands[1]], {"to": ir.Name("f32")}, _f32(act))
                h = step("add", [h, r], {}, _f32(act))
                self._add(node, "cast", [h], {"to": ir.Name(act.dtype)}, [results[1]])
            return self._unit_weight_norm(node, step, h, float(args["epsilon"]), results[0])
        rounding = (["norm_input_f32"] if fused else []) + \
            (["weight_after_round"] if weight.dtype == act.dtype else [])
        attrs = {"eps": float(args["epsilon"]), "rounding": rounding}
        self._add(node, "fused_add_rms_norm" if fused else "rms_norm", operands, attrs, results)

    def _vllm_ir_quant(self, node: fx.Node, target: str) -> None:
        """vLLM's IR FP8 quant ops (what its QuantFP8 calls), e4m3fn, no token padding:
        static_quant_fp8(x, scale, ...) with a one-element scale, y * (1 / scale) (the tensor
        mode's default); dynamic_quant_fp8(x, per_token=True, ...) -> (q, s), read through
        getitems, whose native body floors the scale after the division and multiplies by its
        reciprocal (as the torch forms of QuantFP8 do); dynamic_group_quant_fp8 -> (q, s) with
        row-major scales (_vllm_ir_group_attrs)."""
        args = _named_args(node)
        op = target.rsplit(".", 1)[0]
        if args.get("num_token_padding") is not None:
            return self._opaque_why(node, "its output is padded to a token count", op)
        if args.get("fp8_dtype", torch.float8_e4m3fn) != torch.float8_e4m3fn:
            return self._opaque_why(node, f"fp8_dtype {args['fp8_dtype']}: the fused op "
                                          "writes float8_e4m3fn", op)
        xv = self._value(args.get("x"))
        if xv is None:
            return self._opaque_why(node, "an operand has no IR type", op)
        if target == "vllm_ir.static_quant_fp8.default":
            sv = self._value(args.get("scale"))
            if sv is None or _node_type(node) is None:
                return self._opaque_why(node, "an operand or its result has no IR type", op)
            return self._add(node, "quant_fp8", [xv, sv], {"mode": "tensor"}, [(node.name, node)])
        if target == "vllm_ir.dynamic_group_quant_fp8.default":
            attrs = _vllm_ir_group_attrs(args, self.types[xv].shape[-1])
        elif not args.get("per_token") or args.get("scale_ub") is not None:
            attrs = ("a per-tensor dynamic scale, or a bound on the amax: the fused quant's "
                     "dynamic scales are per token or group, from the amax itself")
        else:
            attrs = {"mode": "token", "rounding": ["scale_floor_after_div", "scale_op_swapped"]}
        if isinstance(attrs, str):
            return self._opaque_why(node, attrs, op)
        getitems = {u.args[1]: u for u in node.users if u.target is operator.getitem}
        if sorted(getitems) != [0, 1] or len(node.users) != 2 or \
                any(_node_type(g) is None for g in getitems.values()):
            return self._opaque_why(node, "a result is not read through getitem", op)
        if not getitems[1].meta["val"].is_contiguous():
            return self._opaque_why(node, "its scales are laid out column-major, and the fused "
                                          "op writes its results contiguously", op)
        self._add(node, "quant_fp8", [xv], attrs, [(getitems[i].name, getitems[i]) for i in (0, 1)])

    def _vllm_ir_inplace_norm(self, node: fx.Node, target: str, op: Any,
                              kwargs: Dict[str, Any]) -> None:
        """auto_functionalized(vllm_ir.<norm>.maybe_inplace, ...): getitems 0 [and 1] are the
        op's results, the ones after them the arguments it may have overwritten. Read as the
        functional op where nothing reads those (their contents are the kernel's choice)."""
        returns = len(op._schema.returns)
        overwritten = [u for u in node.users if u.target is operator.getitem and
                       u.args[1] >= returns and u.users]
        if overwritten:
            written = " and ".join(a.name for a in op._schema.arguments
                                   if a.alias_info is not None and a.alias_info.is_write)
            first = overwritten[0]
            reader = next(iter(first.users))
            reads = "the graph returns" if reader.op == "output" else f"%{reader.name} reads"
            return self._opaque_why(node, f"it may write its results into {written}, and {reads} "
                                          f"one of them as it left it (%{first.name})",
                                    _op_name(op))
        self._vllm_ir_norm(node, target, inplace_args=kwargs)

    def _opaque_why(self, node: fx.Node, why: str, prefix: str = "") -> None:
        """An op kept opaque with its reason recorded on the IR node too (`why`), so that the
        compiler's words about it (the all_reduce before a norm, a fusion's note on a quant)
        can say why. `prefix` ("<op>: ") goes before the reason in the translation's record."""
        n = len(self.nodes)
        self._opaque(node, f"{prefix}: {why}" if prefix else why)
        if len(self.nodes) > n:
            self.nodes[-1].attrs["why"] = why

    def _auto_functionalized(self, node: fx.Node, v2: bool = False) -> None:
        """auto_functionalized(op, **kwargs): getitem k is the k-th mutated argument (in schema
        order) after the op. The v2 form (torch's default since 2.6; vLLM turns it off) passes
        the mutated arguments as bases: kwargs `_<arg>_base_index` into `_all_bases`, getitem
        1 + that index; an argument that is a view of its base (`_<arg>_size`, ...) stays
        opaque."""
        op = node.args[0]
        name = _op_name(op)
        entry = KERNEL_TABLE.get(name)
        # vLLM's IR norms' maybe_inplace overloads (a kernel may write its results into x
        # [and x_residual]): read as the functional op.
        inplace = name.replace(".maybe_inplace", ".default") \
            if name.endswith(".maybe_inplace") else None
        if inplace not in _VLLM_IR_NORMS:
            inplace = None
        if entry is None and inplace is None:
            return self._opaque(node, f"auto_functionalized {name} has no IR op")
        read = _unfunctionalized(node, v2)
        if isinstance(read, str):
            return self._opaque(node, read)
        kwargs, mutated, items = read
        if inplace is not None:
            return self._vllm_ir_inplace_norm(node, inplace, op, kwargs)
        if not isinstance(entry, KernelOp):
            entry = entry(kwargs)  # an entry by the kwargs given (a residual or none)
        result_index = {i: items[mutated[i - 1]] for i in entry.results if mutated[i - 1] in items}
        operands = [self._value(kwargs.get(k)) for k in entry.operands]
        getitems = {u.args[1]: u for u in node.users if u.target is operator.getitem}
        if any(v is None for v in operands):
            return self._opaque(node, f"{name}: an operand has no IR type")
        try:
            attrs = entry.attrs(kwargs)
        except (KeyError, TypeError, ValueError) as e:
            return self._opaque(node, f"{name}: cannot read attributes ({e})")
        unwritable = _unwritable_attrs(attrs)
        if unwritable:
            return self._opaque(node, f"{name}: {unwritable}")
        quant_results = entry.quant_results()
        q_item = getitems.get(result_index.get(entry.results[0], -1)) if quant_results else None
        q_val = q_item.meta.get("val") if q_item is not None else None
        if isinstance(q_val, torch.Tensor) and q_val.dtype != torch.float8_e4m3fn:
            return self._opaque_why(node, f"its result is {q_val.dtype}, and the fused op "
                                          "quantizes to torch.float8_e4m3fn", name)
        results: List[Tuple[str, Union[fx.Node, ir.TensorType]]] = []
        for i in entry.results:
            g = getitems.get(result_index.get(i, -1))
            if g is None:
                # A result the graph does not read (the last layer's residual sum): a name of
                # its own, typed as the argument the kernel writes it into.
                arg = kwargs.get(mutated[i - 1])
                written = _node_type(arg) if isinstance(arg, fx.Node) else None
                if written is None:
                    return self._opaque(node, f"{name}: result {i} is not read and its "
                                              f"argument {mutated[i - 1]} has no IR type")
                results.append((f"{node.name}.{i}", written))
                continue
            if _node_type(g) is None:
                return self._opaque(node, f"{name}: result {i} has no IR type")
            val = g.meta["val"]
            if not val.is_contiguous():
                # vLLM's column-major group scales: torch.empty((G, T)).permute(-1, -2).
                return self._opaque_why(node, f"{mutated[i - 1]} is laid out with strides "
                                              f"{list(val.stride())}, and the fused op writes its "
                                              "results contiguously", name)
            results.append((g.name, g))
        if not quant_results:
            return self._add(node, entry.ir_op, operands, attrs, results)
        if entry.static_quant is not None:
            scale = self._value(kwargs.get(entry.static_quant))
            if scale is None:
                return self._opaque(node, f"{name}: its scale has no IR type")
            quant_operands, quant_attrs = [scale], {"mode": "tensor"}
        else:
            try:
                quant_operands, quant_attrs = [], entry.dynamic_quant(kwargs)
            except ValueError as e:
                return self._opaque_why(node, str(e), name)
        # The norm's own result lives in the IR alone (the kernel writes only q [and s]).
        norm = f"{node.name}.norm"
        self._add(node, entry.ir_op, operands, attrs, results[quant_results:],
                  ir_only=(norm, self.types[operands[0]]))
        self._add(node, "quant_fp8", [norm, *quant_operands], quant_attrs,
                  results[:quant_results])


def _unwritable_attrs(attrs: Dict[str, ir.AttrValue]) -> Optional[str]:
    """Why an attribute has no IR text (an infinite bound, say), or None: such a node is
    written as opaque, and the rest of the graph still translates."""
    for key, value in attrs.items():
        try:
            ir.format_attr(value)
        except (TypeError, ValueError) as e:
            return f"attribute {key}: {e}"
    return None


def _unfunctionalized(node: fx.Node, v2: bool
                      ) -> Union[str, Tuple[Dict[str, Any], List[str], Dict[str, int]]]:
    """auto_functionalized[_v2](op, **kwargs) read back as the op's call: its arguments (each
    argument it writes as the tensor it writes into), the names of the written arguments in
    schema order, and for each the getitem index that holds it after the op: 1 + its place among
    them; in v2, where the written arguments come as bases (`_<arg>_base_index` into
    `_all_bases`), 1 + that index, and none for an argument without a base. A reason string
    where a written argument is a view of its base (`_<arg>_size`, ...)."""
    op = node.args[0]
    kwargs = dict(node.kwargs)
    mutated = [a.name for a in op._schema.arguments
               if a.alias_info is not None and a.alias_info.is_write]
    if not v2:
        return kwargs, mutated, {arg: 1 + i for i, arg in enumerate(mutated)}
    bases = kwargs.pop("_all_bases", [])
    items: Dict[str, int] = {}
    for arg in mutated:
        index = kwargs.pop(f"_{arg}_base_index", None)
        if any(kwargs.get(f"_{arg}_{k}") is not None
               for k in ("size", "stride", "storage_offset", "slice_dim")):
            return f"{_op_name(op)}: {arg} is a view of its base"
        kwargs[arg] = bases[index] if index is not None else None
        if index is not None:
            items[arg] = 1 + index
    return {k: v for k, v in kwargs.items() if not k.startswith("_")}, mutated, items


def _op_name(op: Any) -> str:
    return str(op)  # OpOverload: "aten.add.Tensor"


def _c10d_group_name(name: str) -> str:
    """The process group (c10d) name behind vLLM's or SGLang's group name
    (GroupCoordinator.unique_name, "tp:0"), which the fused op resolves; the name itself where
    neither is loaded or has such a group (the fused op then says it names no process group, if
    it ever runs)."""
    import sys

    for module in ("vllm.distributed.parallel_state", "sglang.srt.distributed.parallel_state"):
        state = sys.modules.get(module)
        ref = getattr(state, "_groups", {}).get(name) if state is not None else None
        coordinator = ref() if callable(ref) else None
        device_group = getattr(coordinator, "device_group", None)
        if device_group is not None:
            return getattr(device_group, "group_name", name)
    return name


def _default_group_name() -> str:
    """The default (world) process group's name: "0" until torch.distributed says otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD.group_name
    return "0"


def is_all_reduce(node: fx.Node) -> bool:
    """An all_reduce collective: the functional form, the in-place one, vLLM's, AutoDeploy's or
    SGLang's op."""
    return node.op == "call_function" and (_target_name(node) in (
        _ALL_REDUCE, _ALL_REDUCE_INPLACE, _VLLM_ALL_REDUCE, _SGLANG_ALL_REDUCE,
        *_WORLD_ALL_REDUCES) or _functionalized_all_reduce(node))


def _functionalized_all_reduce(node: fx.Node) -> bool:
    """auto_functionalized[_v2] of SGLang's inplace_all_reduce."""
    return (_target_name(node) in _AUTO_FUNCTIONALIZED + _AUTO_FUNCTIONALIZED_V2 and
            bool(node.args) and _op_name(node.args[0]) == _SGLANG_ALL_REDUCE_INPLACE)


def _target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return _op_name(t)
    if isinstance(t, torch._ops.OpOverloadPacket):
        return str(t) + ".default"  # a call through the packet resolves to the default overload
    if isinstance(t, torch._ops.HigherOrderOperator):
        return t.name()
    return getattr(t, "__name__", str(t))


def _vllm_ir_group_attrs(args: Dict[str, Any], hidden: Any) -> Union[str, Dict[str, Any]]:
    """quant_fp8's attributes for vLLM's IR dynamic_group_quant_fp8, or why it has none. Two
    signatures exist: (x, group_shape, column_major, use_ue8m0, fp8_dtype, scale_alignment),
    whose native body floors the scale after the division (and rounds it up to a power of two
    first with use_ue8m0), and (x, group_size, eps, dtype, column_major_scales,
    tma_aligned_scales, use_ue8m0, out), vLLM's group kernel: max(amax, eps) / 448."""
    if "group_shape" in args:
        shape = list(args["group_shape"])
        group, ue8m0 = shape[-1], args.get("use_ue8m0")
        if len(shape) != 2 or shape[0] != 1 or args.get("column_major") or \
                args.get("scale_alignment", 1) != 1:
            return "groups over several rows, column-major or aligned scales"
        rounding = ["scale_floor_after_div"]
    else:
        group, ue8m0 = args.get("group_size"), args.get("use_ue8m0")
        if args.get("out") is not None or args.get("column_major_scales") or \
                args.get("tma_aligned_scales") or \
                args.get("dtype") not in (None, torch.float8_e4m3fn):
            return "an output buffer, column-major or aligned scales, or another FP8 type"
        if float(args.get("eps", 1e-10)) != 1e-10:
            return f"eps {args['eps']}: the fused quant's is 1e-10"
        rounding = ["ue8m0_floor"] if ue8m0 else []
    if not isinstance(ue8m0, bool):
        return "use_ue8m0 left to vLLM's setting at run time"
    if not isinstance(group, int) or not isinstance(hidden, int) or group <= 0 or hidden % group:
        return f"groups of {group} do not divide the row ({hidden})"
    attrs: Dict[str, Any] = {"mode": "group", "group_size": group}
    if ue8m0:
        attrs["scale_fmt"] = "ue8m0"
    if rounding:
        attrs["rounding"] = rounding
    return attrs


def _named_args(node: fx.Node) -> Dict[str, Any]:
    """A call's arguments by their schema's names (positional and keyword alike)."""
    schema = getattr(node.target, "_schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    return {**dict(zip(names, node.args)), **node.kwargs}


_INPLACE = re.compile(r"aten\.(\w+)_\.(\w+)")


def _functional_handler(node: fx.Node, target: str) -> Optional[Handler]:
    """The handler of an in-place op's functional form (aten.add_.Scalar as aten.add.Scalar:
    F.rms_norm traced by make_fx adds its eps so) when nothing but this op reads the tensor it
    writes, so that no reader sees the value before the write, and nothing shares its storage;
    else None."""
    m = _INPLACE.fullmatch(target)
    handler = ATEN_TABLE.get(f"aten.{m.group(1)}.{m.group(2)}") if m else None
    written = node.args[0] if node.args else None
    if handler is None or not isinstance(written, fx.Node) or list(written.users) != [node]:
        return None
    # The written tensor must be an op's own result: not a graph input (the caller sees the
    # write) nor a view (its base sees it).
    maker = written.target if written.op == "call_function" else None
    if not isinstance(maker, torch._ops.OpOverload) or \
            any(r.alias_info is not None for r in maker._schema.returns):
        return None
    if _node_type(written) != _node_type(node):
        return None
    return handler


def _opaque_name(node: fx.Node) -> str:
    """The name an opaque node carries in the IR: its target's, with the op that
    auto_functionalized wraps ("auto_functionalized _C.rotary_embedding.default"),
    which the compiler's reasons quote."""
    if node.op != "call_function":
        return node.op
    name = _target_name(node)
    if name.startswith("auto_functionalized") and node.args:
        name += " " + _op_name(node.args[0])
    return name


def _describe(val: Any) -> str:
    """"a torch.float64 tensor", "a sparse_coo torch.bfloat16 tensor", or the value's type."""
    if not isinstance(val, torch.Tensor):
        return f"a {type(val).__name__}"
    layout = "" if val.layout == torch.strided else str(val.layout).replace("torch.", "") + " "
    return f"a {layout}{val.dtype} tensor"


def _flat_nodes(args: Any) -> List[fx.Node]:
    out: List[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n))
    return out


def translate(graph: fx.Graph, name: str = "graph", tp_groups: Optional[Sequence[str]] = None,
              force_opaque: Optional[Dict[str, str]] = None,
              cut: Optional[Sequence[str]] = None) -> Translation:
    """tp_groups: the FX group names of the tensor-parallel group (None: every group is).
    force_opaque: FX node name -> reason, for nodes to write as opaque whatever their op.
    cut: FX node names to cut out of the func rather than write as opaque ops."""
    return Translator(graph, name, tp_groups, force_opaque, cut).run()
