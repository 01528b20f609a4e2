"""torch.ops.tpfuse.allreduce_rmsnorm: the fused op of DESIGN.md Contract 3 as a functional
custom op.

    tpfuse::allreduce_rmsnorm(Tensor x, Tensor? residual, Tensor weight, Tensor? scale,
        Tensor? x2=None, Tensor? pre_weight=None, Tensor? bias=None, *, str[] emit,
        str group_name="", float eps=1e-6, float weight_bias=0., str quant="none",
        int group_size=128, str scale_layout="row", str scale_fmt="f32", str[]? rounding=None,
        bool local=False, float sum_scale=1., float first_scale=1., float second_scale=1.,
        bool second_sum_into_residual=False, float? pre_eps=None) -> Tensor[]

x [..., H] is this rank's partial sum (bf16 or f16); residual as x, or float32 of x's shape (a
residual stream kept in f32), or None; weight [H] (bf16, f16 or f32); scale an f32 tensor of one
element for quant = "fp8_tensor", else None.
sum_scale scales the all-reduced sum before the residual add, rounded to x's dtype (Granite's
`residual + out * multiplier`); the emitted allreduce is the sum before it.
bias ([H] of x's dtype, or None) is added to the all-reduced sum first, round(a + bias) (a
row-parallel layer's bias added after its all_reduce, as transformers' row-wise plan adds it);
sum_scale and the residual add read the biased sum, the emitted allreduce is the sum without it.
A bias of x's shape adds each row its own (a tensor computed beside the all_reduce, as
transformers' MoE plans add the shared experts' output to the routed experts' sum).
Not with x2 or pre_weight. On CUDA above world size 1 it runs on the nccl strategy.
pre_weight ([H] like weight, or None) is the weight of a norm of the sum before the residual add
(sandwich norms), with eps pre_eps (None: eps).
x2 (x's shape and dtype, or None) is this rank's partial of a second all_reduce summed with the
first before the residual add (Granite-MoE's `moe_out + shared_mlp_out`, Falcon-H1's mixers):
the sum is round(round(a * first_scale) + round(a2 * second_scale)) (a scale of 1 is no step),
then scaled by sum_scale; no "allreduce" in emit. With second_sum_into_residual the second sum
goes into the residual first, round(residual + round(a2 * second_scale)), and a * sum_scale is
added to that (`residual + attention + mlp`, each block reduced apart). A local op reads x2 as
a2. On CUDA above world size 1 it runs on the nccl strategy (two collectives, one kernel).
`group_name` names the process group (`ProcessGroup.group_name`, as the functional collectives
take it); "" or a group of one rank is world size 1, where the op runs without communication, as
it does with local=True (no all_reduce feeds the chain). The results are the emitted ones, in
Contract 3's order: allreduce, norm, residual (x's shape and dtype; the residual float32 under
rounding "residual_out_f32", the norm under "norm_out_f32", quant none), then q (float8_e4m3fn,
x's shape) and, for fp8_token / fp8_group, s (f32: x.shape[:-1] + [H / group_size] row-major, or
[H / group_size, pad4(T)] column-major, T the rows of x).

Backends:
- CPU (gloo): the partials (of x, and of x2) are gathered from every rank and the CPU reference
  of the C ABI computes the result (rank order, one rounding: Contract 3); every rank gets the
  same bits.
- CUDA: a tpfuse communicator made once per (process group, device) on first use, its
  workspace sized by `configure` (or $TPFUSE_MAX_TOKENS, $TPFUSE_MAX_HIDDEN) at that moment; the
  op runs on the current stream and is safe under CUDA graph capture once the communicator
  exists (a first eager call, or `init_comm`, makes it; torch.compile(mode="reduce-overhead")
  warms up eagerly before it captures). World size 1 uses the local op: no communicator.

Wrong shapes, dtypes or devices raise ValueError / TypeError naming the argument.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from tpfuse import _capi

OP_NAME = "tpfuse::allreduce_rmsnorm"
_PREFIX = "tpfuse.allreduce_rmsnorm"

_ACT_DTYPES = {torch.bfloat16: "bf16", torch.float16: "f16"}
_WEIGHT_DTYPES = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
FP8_DTYPE = torch.float8_e4m3fn


# ---------------------------------------------------------------- arguments -> spec and results

class _Plan:
    """The validated call: the C spec, T, H, and the (shape, dtype) of every result."""

    def __init__(self, spec: _capi.Spec, tokens, hidden: int,
                 results: List[Tuple[Tuple[int, ...], torch.dtype]], names: List[str]):
        self.spec = spec
        self.tokens = tokens
        self.hidden = hidden
        self.results = results
        self.names = names


def _fail(kind, message: str):
    raise kind(f"{_PREFIX}: {message}")


def _plan(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
          scale: Optional[torch.Tensor], eps: float, weight_bias: float, quant: str,
          group_size: int, scale_layout: str, scale_fmt: str, emit: Sequence[str],
          rounding: Optional[Sequence[str]], local: bool, sum_scale: float = 1.0,
          x2: Optional[torch.Tensor] = None, first_scale: float = 1.0,
          second_scale: float = 1.0, second_sum_into_residual: bool = False,
          pre_weight: Optional[torch.Tensor] = None, pre_eps: Optional[float] = None,
          bias: Optional[torch.Tensor] = None) -> _Plan:
    if not isinstance(x, torch.Tensor):
        _fail(TypeError, f"x must be a tensor, got {type(x).__name__}")
    if residual is not None and not isinstance(residual, torch.Tensor):
        _fail(TypeError, f"residual must be a tensor or None, got {type(residual).__name__}")
    if not isinstance(weight, torch.Tensor):
        _fail(TypeError, f"weight must be a tensor, got {type(weight).__name__}")
    if scale is not None and not isinstance(scale, torch.Tensor):
        _fail(TypeError, f"scale must be a tensor or None, got {type(scale).__name__}")
    if x2 is not None and not isinstance(x2, torch.Tensor):
        _fail(TypeError, f"x2 must be a tensor or None, got {type(x2).__name__}")
    if pre_weight is not None and not isinstance(pre_weight, torch.Tensor):
        _fail(TypeError, f"pre_weight must be a tensor or None, got {type(pre_weight).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        _fail(TypeError, f"bias must be a tensor or None, got {type(bias).__name__}")
    if pre_eps is not None and pre_weight is None:
        _fail(ValueError, "pre_eps is the eps of the norm before the residual add: it needs "
                          "pre_weight")
    if x.dim() < 1 or x.shape[-1] == 0:
        _fail(ValueError, f"x must be [..., H] with H > 0, got shape {list(x.shape)}")
    if x.dtype not in _ACT_DTYPES:
        _fail(TypeError, f"x must be bfloat16 or float16, got {x.dtype}")
    hidden = int(x.shape[-1])
    # Symbolic under tracing with dynamic shapes: T stays a SymInt (no specialization on it).
    tokens = x.numel() // hidden
    if residual is not None:
        if residual.shape != x.shape:
            _fail(ValueError, f"residual must have x's shape {list(x.shape)}, "
                              f"got {list(residual.shape)}")
        if residual.dtype not in (x.dtype, torch.float32):
            _fail(TypeError, f"residual must have x's dtype {x.dtype} or be float32 (a residual "
                             f"stream kept in f32), got {residual.dtype}")
        if residual.device != x.device:
            _fail(ValueError, f"residual must be on x's device {x.device}, got {residual.device}")
    if x2 is not None and (x2.shape != x.shape or x2.dtype != x.dtype or x2.device != x.device):
        _fail(ValueError, f"x2 must have x's shape, dtype and device ({x.dtype}{list(x.shape)} on "
                          f"{x.device}), got {x2.dtype}{list(x2.shape)} on {x2.device}")
    if weight.dim() != 1 or weight.shape[0] != hidden:
        _fail(ValueError, f"weight must be [H] = [{hidden}], got {list(weight.shape)}")
    if weight.dtype not in _WEIGHT_DTYPES:
        _fail(TypeError, f"weight must be bfloat16, float16 or float32, got {weight.dtype}")
    if weight.device != x.device:
        _fail(ValueError, f"weight must be on x's device {x.device}, got {weight.device}")
    if pre_weight is not None and (pre_weight.shape != weight.shape or
                                   pre_weight.dtype != weight.dtype or
                                   pre_weight.device != weight.device):
        _fail(ValueError, f"pre_weight must have weight's shape, dtype and device "
                          f"({weight.dtype}{list(weight.shape)} on {weight.device}), got "
                          f"{pre_weight.dtype}{list(pre_weight.shape)} on {pre_weight.device}")
    if bias is not None and (bias.shape not in ((hidden,), x.shape) or bias.dtype != x.dtype or
                             bias.device != x.device):
        _fail(ValueError, f"bias must be [H] = [{hidden}] or x's shape {list(x.shape)}, of x's "
                          f"dtype and device ({x.dtype} on {x.device}), got "
                          f"{bias.dtype}{list(bias.shape)} on {bias.device}")
    if (quant == "fp8_tensor") != (scale is not None):
        _fail(ValueError, "scale is required for quant 'fp8_tensor' and only for it "
                          f"(quant {quant!r}, scale {'given' if scale is not None else 'None'})")
    if scale is not None:
        if scale.dtype != torch.float32 or scale.numel() != 1:
            _fail(TypeError, f"scale must be a float32 tensor of one element, got {scale.dtype} "
                             f"with shape {list(scale.shape)}")
        if scale.device != x.device:
            _fail(ValueError, f"scale must be on x's device {x.device}, got {scale.device}")
    for name in emit:
        if name not in _capi.EMIT_BITS:
            _fail(ValueError, f"emit: unknown result {name!r} (expected allreduce, norm, "
                              "residual or quant)")
    if len(set(emit)) != len(emit):
        _fail(ValueError, f"emit: repeated result in {list(emit)}")
    residual_f32 = residual is not None and residual.dtype == torch.float32
    try:
        spec = _capi.make_spec(hidden=hidden, act_dtype=_ACT_DTYPES[x.dtype],
                               weight_dtype=_WEIGHT_DTYPES[weight.dtype], local=local,
                               has_residual=residual is not None, residual_f32=residual_f32,
                               eps=eps, weight_bias=weight_bias, quant=quant, group_size=group_size,
                               scale_layout=scale_layout, scale_fmt=scale_fmt, emit=emit,
                               rounding=rounding or (), sum_scale=sum_scale,
                               second_sum=x2 is not None, first_scale=first_scale,
                               second_scale=second_scale,
                               second_sum_into_residual=second_sum_into_residual,
                               pre_residual_norm=pre_weight is not None, pre_eps=pre_eps,
                               has_bias=bias is not None,
                               bias_per_token=bias is not None and bias.shape == x.shape
                               and x.dim() > 1)
    except (ValueError, _capi.TpfuseError) as e:
        _fail(ValueError, str(e.message if isinstance(e, _capi.TpfuseError) else e))

    results: List[Tuple[Tuple[int, ...], torch.dtype]] = []
    names: List[str] = []
    for name in _capi.EMIT_ORDER:
        if name not in emit:
            continue
        if name == "quant":
            results.append((tuple(x.shape), FP8_DTYPE))
            names.append("q")
            if quant in ("fp8_token", "fp8_group"):
                groups = 1 if quant == "fp8_token" else hidden // group_size
                if scale_layout == "col":
                    results.append(((groups, (tokens + 3) // 4 * 4), torch.float32))
                else:
                    results.append((tuple(x.shape[:-1]) + (groups,), torch.float32))
                names.append("s")
        else:
            f32 = (name == "residual" and "residual_out_f32" in (rounding or ())) or \
                  (name == "norm" and "norm_out_f32" in (rounding or ()))
            results.append((tuple(x.shape), torch.float32 if f32 else x.dtype))
            names.append(name)
    return _Plan(spec, tokens, hidden, results, names)


def _empty_results(plan: _Plan, device: torch.device) -> List[torch.Tensor]:
    return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in plan.results]


def _buffers(plan: _Plan, x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
             scale: Optional[torch.Tensor], outs: List[torch.Tensor],
             pre_weight: Optional[torch.Tensor] = None,
             bias: Optional[torch.Tensor] = None) -> _capi.Buffers:
    b = _capi.Buffers()
    b.x = x.data_ptr()
    b.residual = residual.data_ptr() if residual is not None else None
    b.weight = weight.data_ptr()
    b.pre_weight = pre_weight.data_ptr() if pre_weight is not None else None
    b.bias = bias.data_ptr() if bias is not None else None
    b.scale = scale.data_ptr() if scale is not None else None
    for name, out in zip(plan.names, outs):
        setattr(b, {"allreduce": "allreduce_out", "norm": "norm_out", "residual": "residual_out",
                    "q": "quant_out", "s": "scale_out"}[name], out.data_ptr())
    return b


# ---------------------------------------------------------------- process groups

def _resolve_group(group_name: str):
    """(group or None, rank, world size) for a group name; "" is world size 1."""
    if not group_name:
        return None, 0, 1
    if not dist.is_available() or not dist.is_initialized():
        _fail(ValueError, f"group_name {group_name!r} given but torch.distributed is not "
                          "initialized")
    try:
        group = dist.distributed_c10d._resolve_process_group(group_name)
    except Exception as e:  # noqa: BLE001  (the message names the unknown group)
        _fail(ValueError, f"group_name {group_name!r} names no process group ({e})")
    return group, group.rank(), group.size()


# ---------------------------------------------------------------- CUDA communicators

_config_lock = threading.Lock()
_comm_config: Dict[str, object] = {
    "max_tokens": int(os.environ.get("TPFUSE_MAX_TOKENS", "8192")),
    "max_hidden": int(os.environ.get("TPFUSE_MAX_HIDDEN", "8192")),
}
_comms: Dict[Tuple[str, int], _capi.Comm] = {}


def configure(*, max_tokens: Optional[int] = None, max_hidden: Optional[int] = None,
              oneshot_max_tokens: Optional[int] = None, timeout_seconds: Optional[float] = None,
              strategy_table: Optional[str] = None) -> None:
    """Sizes the workspace of communicators made after this call (not the existing ones)."""
    with _config_lock:
        for key, value in (("max_tokens", max_tokens), ("max_hidden", max_hidden),
                           ("oneshot_max_tokens", oneshot_max_tokens),
                           ("timeout_seconds", timeout_seconds),
                           ("strategy_table", strategy_table)):
            if value is not None:
                _comm_config[key] = value


def init_comm(group: Optional["dist.ProcessGroup"] = None,
              device: Optional[torch.device] = None) -> Optional[_capi.Comm]:
    """Makes (once) the tpfuse communicator of `group` (default: the world group) on `device`
    (default: the current CUDA device). Collective over the group; not during graph capture.
    Returns None at world size 1, where no communicator is needed."""
    group = group if group is not None else dist.group.WORLD
    if group.size() == 1:
        return None
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else device
    return _comm_for(group, group.group_name, device)


def _comm_for(group, group_name: str, device: torch.device) -> _capi.Comm:
    key = (group_name, device.index)
    comm = _comms.get(key)
    if comm is not None:
        return comm
    if torch.cuda.is_current_stream_capturing():
        _fail(RuntimeError, f"no tpfuse communicator yet for group {group_name!r} on {device} and "
                            "one cannot be made during CUDA graph capture: call "
                            "tpfuse.ops.init_comm(group) or run the op once before capturing")
    if not _capi.has_cuda():
        _fail(RuntimeError, f"x is on {device} but libtpfuse ({_capi.library_path()}) was built "
                            "without CUDA")
    with torch.cuda.device(device):
        obj = [_capi.get_unique_id() if group.rank() == 0 else None]
        dist.broadcast_object_list(obj, src=dist.get_global_rank(group, 0), group=group)
        with _config_lock:
            config = _capi.comm_config(**_comm_config)
        comm = _capi.Comm.from_unique_id(obj[0], group.rank(), group.size(), device.index, config)
    _comms[key] = comm
    return comm


# ---------------------------------------------------------------- the op

# str[] is not among the types custom_op infers, so the schema is written out.
# x2, pre_weight and bias are positional: custom_op takes no keyword-only tensors. pre_eps None:
# eps.
SCHEMA = ("(Tensor x, Tensor? residual, Tensor weight, Tensor? scale, Tensor? x2=None, "
          "Tensor? pre_weight=None, Tensor? bias=None, *, "
          "str[] emit, str group_name=\"\", float eps=1e-06, float weight_bias=0., "
          "str quant=\"none\", int group_size=128, str scale_layout=\"row\", "
          "str scale_fmt=\"f32\", str[]? rounding=None, bool local=False, float sum_scale=1., "
          "float first_scale=1., float second_scale=1., bool second_sum_into_residual=False, "
          "float? pre_eps=None) -> Tensor[]")


@torch.library.custom_op(OP_NAME, mutates_args=(), schema=SCHEMA)
def allreduce_rmsnorm(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
                      scale: Optional[torch.Tensor], x2: Optional[torch.Tensor] = None,
                      pre_weight: Optional[torch.Tensor] = None,
                      bias: Optional[torch.Tensor] = None, *,
                      emit: List[str], group_name: str = "",
                      eps: float = 1e-6, weight_bias: float = 0.0, quant: str = "none",
                      group_size: int = 128, scale_layout: str = "row", scale_fmt: str = "f32",
                      rounding: Optional[List[str]] = None,
                      local: bool = False, sum_scale: float = 1.0, first_scale: float = 1.0,
                      second_scale: float = 1.0, second_sum_into_residual: bool = False,
                      pre_eps: Optional[float] = None) -> List[torch.Tensor]:
    plan = _plan(x, residual, weight, scale, eps, weight_bias, quant, group_size, scale_layout,
                 scale_fmt, emit, rounding, local, sum_scale, x2, first_scale, second_scale,
                 second_sum_into_residual, pre_weight, pre_eps, bias)
    # A local op (no all_reduce feeds it, or world size 1) needs no group: its name is not read.
    group, _, world_size = (None, 0, 1) if local else _resolve_group(group_name)
    outs = _empty_results(plan, x.device)
    if plan.tokens == 0:
        # No rows: the results are empty, as the replaced ops' are; every rank of the group has
        # none (an all_reduce's shapes agree), so none communicates.
        return outs
    x = x.contiguous()
    x2 = x2.contiguous() if x2 is not None else None
    residual = residual.contiguous() if residual is not None else None
    weight = weight.contiguous()
    pre_weight = pre_weight.contiguous() if pre_weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    scale = scale.contiguous() if scale is not None else None
    if x.device.type == "cpu":
        _run_cpu(plan, x, residual, weight, scale, outs, group, world_size, x2, pre_weight, bias)
    elif x.device.type == "cuda":
        _run_cuda(plan, x, residual, weight, scale, outs, group, group_name, world_size, x2,
                  pre_weight, bias)
    else:
        _fail(ValueError, f"x is on {x.device}: only cpu and cuda are supported")
    return outs


def _gather_rows(plan, x, group, world_size: int) -> List[torch.Tensor]:
    """Every rank's x [T, H], in rank order."""
    rows = x.view(plan.tokens, plan.hidden)
    if world_size == 1:
        return [rows]
    # The raw bytes travel (exact, and every backend moves uint8); the sum happens in the
    # reference op, in rank order.
    bits = rows.view(torch.uint8)
    gathered = [torch.empty_like(bits) for _ in range(world_size)]
    dist.all_gather(gathered, bits, group=group)
    return [g.view(x.dtype) for g in gathered]


def _run_cpu(plan, x, residual, weight, scale, outs, group, world_size: int, x2=None,
             pre_weight=None, bias=None) -> None:
    partials = _gather_rows(plan, x, group, world_size)
    partials2 = _gather_rows(plan, x2, group, world_size) if x2 is not None else []
    buffers = _buffers(plan, x, residual, weight, scale, outs, pre_weight, bias)
    _capi.reference_allreduce_rmsnorm(plan.spec, plan.tokens, [p.data_ptr() for p in partials],
                                      buffers, [p.data_ptr() for p in partials2])


def _run_cuda(plan, x, residual, weight, scale, outs, group, group_name: str,
              world_size: int, x2=None, pre_weight=None, bias=None) -> None:
    buffers = _buffers(plan, x, residual, weight, scale, outs, pre_weight, bias)
    buffers.x2 = x2.data_ptr() if x2 is not None else None
    stream = torch.cuda.current_stream(x.device).cuda_stream
    with torch.cuda.device(x.device):
        if world_size == 1:
            _capi.allreduce_rmsnorm_local(plan.spec, plan.tokens, buffers, stream)
        else:
            comm = _comm_for(group, group_name, x.device)
            comm.allreduce_rmsnorm(plan.spec, plan.tokens, buffers, stream)


@allreduce_rmsnorm.register_fake
def _(x, residual, weight, scale, x2=None, pre_weight=None, bias=None, *, emit, group_name="",
      eps=1e-6, weight_bias=0.0, quant="none", group_size=128, scale_layout="row",
      scale_fmt="f32", rounding=None, local=False, sum_scale=1.0, first_scale=1.0,
      second_scale=1.0, second_sum_into_residual=False, pre_eps=None):
    plan = _plan(x, residual, weight, scale, eps, weight_bias, quant, group_size, scale_layout,
                 scale_fmt, emit, rounding, local, sum_scale, x2, first_scale, second_scale,
                 second_sum_into_residual, pre_weight, pre_eps, bias)
    return _empty_results(plan, x.device)


def reference(partials: Sequence[torch.Tensor], residual: Optional[torch.Tensor],
              weight: torch.Tensor, scale: Optional[torch.Tensor] = None, *,
              emit: Sequence[str], partials2: Optional[Sequence[torch.Tensor]] = None,
              pre_weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
              **attrs) -> List[torch.Tensor]:
    """The CPU reference of Contract 3 (the C ABI's) for the partial sums of every rank, in rank
    order, on CPU tensors: what every rank's op returns. partials2: every rank's x2 (two
    all_reduces summed), or None. pre_weight: the weight of the norm before the residual add,
    or None. bias: the bias added to the sum, or None. Attributes as the op's."""
    if len(partials) == 0:
        _fail(ValueError, "partials must hold one tensor per rank, got none")
    if partials2 is not None and len(partials2) != len(partials):
        _fail(ValueError, f"partials2 must hold one tensor per rank like partials "
                          f"({len(partials)}), got {len(partials2)}")
    x = partials[0]
    plan = _plan(x, residual, weight, scale, attrs.get("eps", 1e-6),
                 attrs.get("weight_bias", 0.0), attrs.get("quant", "none"),
                 attrs.get("group_size", 128), attrs.get("scale_layout", "row"),
                 attrs.get("scale_fmt", "f32"), list(emit), attrs.get("rounding"),
                 attrs.get("local", False), attrs.get("sum_scale", 1.0),
                 partials2[0] if partials2 else None, attrs.get("first_scale", 1.0),
                 attrs.get("second_scale", 1.0), attrs.get("second_sum_into_residual", False),
                 pre_weight, attrs.get("pre_eps"), bias)
    for name, tensors in (("partials", partials), ("partials2", partials2 or [])):
        for i, p in enumerate(tensors):
            if p.device.type != "cpu" or p.shape != x.shape or p.dtype != x.dtype:
                _fail(ValueError, f"{name}[{i}] must be a CPU tensor like partials[0] "
                                  f"({x.dtype}{list(x.shape)}), got {p.dtype}{list(p.shape)} on "
                                  f"{p.device}")
    rows = [p.contiguous() for p in partials]
    rows2 = [p.contiguous() for p in partials2 or []]
    residual = residual.contiguous() if residual is not None else None
    weight = weight.contiguous()
    pre_weight = pre_weight.contiguous() if pre_weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    scale = scale.contiguous() if scale is not None else None
    outs = _empty_results(plan, x.device)
    _capi.reference_allreduce_rmsnorm(plan.spec, plan.tokens, [p.data_ptr() for p in rows],
                                      _buffers(plan, rows[0], residual, weight, scale, outs,
                                               pre_weight, bias),
                                      [p.data_ptr() for p in rows2])
    return outs


def fused(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
          scale: Optional[torch.Tensor] = None, *, group: Optional["dist.ProcessGroup"] = None,
          emit: Sequence[str] = ("norm",), **attrs) -> List[torch.Tensor]:
    """torch.ops.tpfuse.allreduce_rmsnorm with a ProcessGroup instead of its name (None: world
    size 1). Other keyword arguments are the op's attributes."""
    group_name = group.group_name if group is not None and group.size() > 1 else ""
    return torch.ops.tpfuse.allreduce_rmsnorm(x, residual, weight, scale, group_name=group_name,
                                              emit=list(emit), **attrs)
