"""ctypes bindings of tpfuse's C ABI (include/tpfuse/tpfuse_c.h, libtpfuse.so).

No compiled Python extension: the shared library is loaded with ctypes, so one build serves
every Python and torch version. The library is found, in this order, at:
  1. $TPFUSE_LIBRARY (a path to libtpfuse.so);
  2. inside this package (a wheel built by pip carries it there);
  3. the repository's build trees (build/, build-*/), newest first, when the package is used
     from a checkout;
  4. the system's library path.

Errors raise TpfuseError with the library's message (it names the argument or the problem).
"""

from __future__ import annotations

import ctypes
import glob
import numbers
import os
import threading
from typing import Dict, Optional, Sequence, Tuple

ABI_VERSION = 8
UNIQUE_ID_BYTES = 128

# Codes of the C enums (tpfuse_c.h).
DTYPE_CODES: Dict[str, int] = {"bf16": 0, "f16": 1, "f32": 2, "f8e4m3": 3}
QUANT_CODES: Dict[str, int] = {"none": 0, "fp8_tensor": 1, "fp8_token": 2, "fp8_group": 3}
SCALE_LAYOUT_CODES: Dict[str, int] = {"row": 0, "col": 1}
SCALE_FMT_CODES: Dict[str, int] = {"f32": 0, "ue8m0": 1}
EMIT_BITS: Dict[str, int] = {"allreduce": 1, "norm": 2, "residual": 4, "quant": 8}
EMIT_ORDER = ("allreduce", "norm", "residual", "quant")
ROUNDING_BITS: Dict[str, int] = {
    "norm_input_f32": 1,
    "weight_after_round": 2,
    "weight_bias_in_weight_dtype": 4,
    "scale_op_swapped": 8,
    "scale_floor_after_div": 16,
    "ue8m0_floor": 32,
    "residual_out_f32": 64,
    "norm_out_f32": 128,
}
# tpfuse_spec_t.second_sum: none, two sums added, the second into the residual.
SECOND_SUM_NONE, SECOND_SUM_ADDED, SECOND_SUM_INTO_RESIDUAL = 0, 1, 2
# tpfuse_spec_t.has_bias: none, a bias [H] of every row, a bias [T, H] (each row its own).
BIAS_NONE, BIAS_ROW, BIAS_PER_TOKEN = 0, 1, 2
# tpfuse_spec_t.has_residual: none, a residual of the activation dtype, an f32 residual.
RESIDUAL_NONE, RESIDUAL_ACT, RESIDUAL_F32 = 0, 1, 2
BACKEND_CODES: Dict[str, int] = {"cpu": 0, "cuda": 1}
FUSE_LOCAL_CODES: Dict[str, int] = {"auto": 0, "on": 1, "off": 2, "inductor": 3}
STRATEGY_CODES: Dict[str, int] = {"auto": 0, "oneshot": 1, "twoshot": 2, "nccl": 3}


class TpfuseError(RuntimeError):
    """A tpfuse C ABI call failed. `status` is the C status name ("invalid argument", ...)."""

    def __init__(self, function: str, status: str, message: str):
        super().__init__(f"{function}: {status}: {message}")
        self.function = function
        self.status = status
        self.message = message


class Spec(ctypes.Structure):
    """tpfuse_spec_t."""

    _fields_ = [
        ("act_dtype", ctypes.c_int32),
        ("weight_dtype", ctypes.c_int32),
        ("hidden", ctypes.c_int64),
        ("local", ctypes.c_int32),
        ("has_residual", ctypes.c_int32),
        ("eps", ctypes.c_float),
        ("weight_bias", ctypes.c_float),
        ("quant", ctypes.c_int32),
        ("group_size", ctypes.c_int32),
        ("scale_layout", ctypes.c_int32),
        ("scale_fmt", ctypes.c_int32),
        ("emit", ctypes.c_uint32),
        ("rounding", ctypes.c_uint32),
        ("sum_scale", ctypes.c_float),
        ("second_sum", ctypes.c_int32),
        ("first_scale", ctypes.c_float),
        ("second_scale", ctypes.c_float),
        ("pre_residual_norm", ctypes.c_int32),
        ("pre_eps", ctypes.c_float),
        ("has_bias", ctypes.c_int32),
    ]


class Buffers(ctypes.Structure):
    """tpfuse_buffers_t (host or device addresses as integers; 0 for null)."""

    _fields_ = [
        ("x", ctypes.c_void_p),
        ("residual", ctypes.c_void_p),
        ("weight", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("allreduce_out", ctypes.c_void_p),
        ("norm_out", ctypes.c_void_p),
        ("residual_out", ctypes.c_void_p),
        ("quant_out", ctypes.c_void_p),
        ("scale_out", ctypes.c_void_p),
        ("x2", ctypes.c_void_p),
        ("pre_weight", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
    ]


class CompileOptions(ctypes.Structure):
    """tpfuse_compile_options_t."""

    _fields_ = [
        ("world_size", ctypes.c_int32),
        ("backend", ctypes.c_int32),
        ("max_tokens", ctypes.c_int64),
        ("fuse_local", ctypes.c_int32),
        ("source_name", ctypes.c_char_p),
    ]


class CommConfig(ctypes.Structure):
    """tpfuse_comm_config_t."""

    _fields_ = [
        ("max_tokens", ctypes.c_int64),
        ("max_hidden", ctypes.c_int64),
        ("oneshot_max_tokens", ctypes.c_int64),
        ("timeout_seconds", ctypes.c_double),
        ("peer_memory", ctypes.c_int32),
        ("programmatic_dependent_launch", ctypes.c_int32),
        ("strategy_table", ctypes.c_char_p),
    ]


_P = ctypes.POINTER
_STATUS = ctypes.c_int32
# name -> (restype, argtypes)
_SIGNATURES = {
    "tpfuse_abi_version": (ctypes.c_int32, []),
    "tpfuse_version": (ctypes.c_char_p, []),
    "tpfuse_last_error": (ctypes.c_char_p, []),
    "tpfuse_status_name": (ctypes.c_char_p, [_STATUS]),
    "tpfuse_free": (None, [ctypes.c_void_p]),
    "tpfuse_spec_init": (None, [_P(Spec)]),
    "tpfuse_spec_validate": (_STATUS, [_P(Spec)]),
    "tpfuse_spec_scale_elements": (_STATUS, [_P(Spec), ctypes.c_int64, _P(ctypes.c_int64)]),
    "tpfuse_reference_allreduce_rmsnorm": (
        _STATUS, [_P(Spec), ctypes.c_int64, ctypes.c_int32, _P(ctypes.c_void_p), _P(Buffers)]),
    "tpfuse_compile_options_init": (None, [_P(CompileOptions)]),
    "tpfuse_compile": (
        _STATUS, [ctypes.c_char_p, _P(CompileOptions), _P(ctypes.c_void_p), _P(ctypes.c_void_p)]),
    "tpfuse_has_cuda": (ctypes.c_int32, []),
    "tpfuse_comm_config_init": (None, [_P(CommConfig)]),
    "tpfuse_get_unique_id": (_STATUS, [ctypes.c_char_p]),
    "tpfuse_comm_create": (
        _STATUS, [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _P(CommConfig),
                  _P(ctypes.c_void_p)]),
    "tpfuse_comm_from_nccl": (_STATUS, [ctypes.c_void_p, _P(CommConfig), _P(ctypes.c_void_p)]),
    "tpfuse_comm_destroy": (None, [ctypes.c_void_p]),
    "tpfuse_comm_rank": (_STATUS, [ctypes.c_void_p, _P(ctypes.c_int32)]),
    "tpfuse_comm_world_size": (_STATUS, [ctypes.c_void_p, _P(ctypes.c_int32)]),
    "tpfuse_allreduce_rmsnorm": (
        _STATUS, [ctypes.c_void_p, _P(Spec), ctypes.c_int64, _P(Buffers), ctypes.c_void_p,
                  ctypes.c_int32]),
    "tpfuse_allreduce_rmsnorm_local": (
        _STATUS, [_P(Spec), ctypes.c_int64, _P(Buffers), ctypes.c_void_p]),
    "tpfuse_comm_check_health": (_STATUS, [ctypes.c_void_p, ctypes.c_void_p]),
}

_lib: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def _repo_root() -> str:
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def library_candidates() -> Sequence[str]:
    """Where libtpfuse.so is looked for, in order (see the module doc)."""
    env = os.environ.get("TPFUSE_LIBRARY")
    if env:
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "libtpfuse.so*")))
    tree = glob.glob(os.path.join(_repo_root(), "build*", "libtpfuse.so"))
    found += sorted(tree, key=os.path.getmtime, reverse=True)
    return found + ["libtpfuse.so"]


def library_path() -> str:
    """The path of the loaded libtpfuse.so."""
    return load()._name  # type: ignore[attr-defined]


def load() -> ctypes.CDLL:
    """Loads libtpfuse.so once and checks its ABI version."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        errors = []
        for path in library_candidates():
            try:
                lib = ctypes.CDLL(path)
                break
            except OSError as e:
                errors.append(f"{path}: {e}")
        else:
            raise ImportError(
                "tpfuse: libtpfuse.so not found; build it (bash scripts/build.sh), install the "
                "package with pip, or set TPFUSE_LIBRARY. Tried:\n  " + "\n  ".join(errors))
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        version = lib.tpfuse_abi_version()
        if version != ABI_VERSION:
            raise ImportError(f"tpfuse: {path} has C ABI version {version}, these bindings "
                              f"expect {ABI_VERSION}: rebuild the library or reinstall the package")
        _lib = lib
        return lib


def _check(function: str, status: int) -> None:
    if status != 0:
        lib = load()
        raise TpfuseError(function, lib.tpfuse_status_name(status).decode(),
                          lib.tpfuse_last_error().decode(errors="replace"))


def version() -> str:
    return load().tpfuse_version().decode()


def has_cuda() -> bool:
    """Whether the loaded library was built with the CUDA backend."""
    return bool(load().tpfuse_has_cuda())


def _c_int(value: int, what: str, bits: int = 32, minimum: Optional[int] = None) -> int:
    """`value` as an integer that fits the C field it goes to, or ValueError naming it (ctypes
    would keep the low bits of a larger one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"tpfuse: {what} must be an integer, got {value!r}")
    v = int(value)
    lo = -(1 << (bits - 1)) if minimum is None else minimum
    hi = (1 << (bits - 1)) - 1
    if not lo <= v <= hi:
        raise ValueError(f"tpfuse: {what} must be in [{lo}, {hi}], got {v}")
    return v


# ---------------------------------------------------------------- spec

def make_spec(*, hidden: int, act_dtype: str = "bf16", weight_dtype: str = "bf16",
              local: bool = False, has_residual: bool = False, residual_f32: bool = False,
              eps: float = 1e-6,
              weight_bias: float = 0.0, quant: str = "none", group_size: int = 128,
              scale_layout: str = "row", scale_fmt: str = "f32",
              emit: Sequence[str] = ("norm",), rounding: Sequence[str] = (),
              sum_scale: float = 1.0, second_sum: bool = False, first_scale: float = 1.0,
              second_scale: float = 1.0, second_sum_into_residual: bool = False,
              pre_residual_norm: bool = False, pre_eps: Optional[float] = None,
              has_bias: bool = False, bias_per_token: bool = False) -> Spec:
    """A validated tpfuse_spec_t from Contract 3's attribute names. Unknown names raise
    ValueError naming the attribute; inconsistencies raise TpfuseError from the library.
    residual_f32: the residual operand is f32 (a residual stream kept in f32); needs
    has_residual. second_sum: two all_reduces summed (x2, first_scale, second_scale), the
    second into the residual first with second_sum_into_residual. pre_residual_norm: the sum
    normed before the residual add (the weight buffers.pre_weight, eps pre_eps: default eps).
    has_bias: a bias (buffers.bias [H], or [T, H] with bias_per_token) added to the sum first."""
    def code(table: Dict[str, int], value: str, what: str) -> int:
        if value not in table:
            raise ValueError(f"tpfuse: unknown {what} {value!r} (expected one of "
                             f"{', '.join(table)})")
        return table[value]

    spec = Spec()
    load().tpfuse_spec_init(ctypes.byref(spec))
    spec.act_dtype = code(DTYPE_CODES, act_dtype, "act_dtype")
    spec.weight_dtype = code(DTYPE_CODES, weight_dtype, "weight_dtype")
    spec.hidden = _c_int(hidden, "hidden", 64)
    spec.local = int(bool(local))
    if residual_f32 and not has_residual:
        raise ValueError("tpfuse: residual_f32 needs has_residual")
    spec.has_residual = (RESIDUAL_NONE if not has_residual
                         else RESIDUAL_F32 if residual_f32 else RESIDUAL_ACT)
    spec.eps = float(eps)
    spec.weight_bias = float(weight_bias)
    spec.sum_scale = float(sum_scale)
    if second_sum_into_residual and not second_sum:
        raise ValueError("tpfuse: second_sum_into_residual needs second_sum")
    spec.second_sum = (SECOND_SUM_NONE if not second_sum else
                       SECOND_SUM_INTO_RESIDUAL if second_sum_into_residual else SECOND_SUM_ADDED)
    spec.first_scale = float(first_scale)
    spec.second_scale = float(second_scale)
    if pre_eps is not None and not pre_residual_norm:
        raise ValueError("tpfuse: pre_eps needs pre_residual_norm")
    spec.pre_residual_norm = int(bool(pre_residual_norm))
    if pre_residual_norm:
        spec.pre_eps = float(eps if pre_eps is None else pre_eps)
    if bias_per_token and not has_bias:
        raise ValueError("tpfuse: bias_per_token needs has_bias")
    spec.has_bias = (BIAS_NONE if not has_bias else BIAS_PER_TOKEN if bias_per_token else BIAS_ROW)
    spec.quant = code(QUANT_CODES, quant, "quant")
    spec.group_size = _c_int(group_size, "group_size")
    spec.scale_layout = code(SCALE_LAYOUT_CODES, scale_layout, "scale_layout")
    spec.scale_fmt = code(SCALE_FMT_CODES, scale_fmt, "scale_fmt")
    emit_bits = 0
    for name in emit:
        emit_bits |= code(EMIT_BITS, name, "emit entry")
    spec.emit = emit_bits
    rounding_bits = 0
    for name in rounding:
        rounding_bits |= code(ROUNDING_BITS, name, "rounding flag")
    spec.rounding = rounding_bits
    _check("tpfuse_spec_validate", load().tpfuse_spec_validate(ctypes.byref(spec)))
    return spec


def scale_elements(spec: Spec, tokens: int) -> int:
    """f32 elements of the scale output s for T tokens (0 unless dynamic quant)."""
    out = ctypes.c_int64()
    _check("tpfuse_spec_scale_elements",
           load().tpfuse_spec_scale_elements(ctypes.byref(spec), _c_int(tokens, "tokens", 64),
                                             ctypes.byref(out)))
    return out.value


# ---------------------------------------------------------------- the CPU reference

def reference_allreduce_rmsnorm(spec: Spec, tokens: int, partials: Sequence[int],
                                buffers: Buffers, partials2: Sequence[int] = ()) -> None:
    """Contract 3 on host buffers (addresses): partials[r] is rank r's x [T, H], partials2[r]
    rank r's x2 (spec.second_sum; one per rank, like partials)."""
    if bool(spec.second_sum) != bool(partials2) or (partials2 and len(partials2) != len(partials)):
        raise ValueError(f"tpfuse: second_sum {bool(spec.second_sum)} takes one x2 partial per x "
                         f"partial, got {len(partials2)} for {len(partials)}")
    if spec.local:  # a local op reads rank 0's x (and x2) alone
        partials, partials2 = list(partials)[:1], list(partials2)[:1]
    everything = list(partials) + list(partials2)
    array = (ctypes.c_void_p * max(1, len(everything)))(*everything)
    _check("tpfuse_reference_allreduce_rmsnorm",
           load().tpfuse_reference_allreduce_rmsnorm(ctypes.byref(spec),
                                                     _c_int(tokens, "tokens", 64), len(partials),
                                                     array, ctypes.byref(buffers)))


# ---------------------------------------------------------------- the compiler

def compile_module(text: str, *, world_size: int = 2, backend: str = "cpu", max_tokens: int = 0,
                   fuse_local: str = "auto", source_name: str = "<input>") -> Tuple[str, str]:
    """Module text (.tpg) in; (compiled module text, JSON report text) out."""
    if backend not in BACKEND_CODES:
        raise ValueError(f"tpfuse: unknown backend {backend!r} (expected cpu or cuda)")
    if fuse_local not in FUSE_LOCAL_CODES:
        raise ValueError(f"tpfuse: unknown fuse_local {fuse_local!r} "
                         f"(expected one of {', '.join(FUSE_LOCAL_CODES)})")
    lib = load()
    options = CompileOptions()
    lib.tpfuse_compile_options_init(ctypes.byref(options))
    options.world_size = _c_int(world_size, "world_size")
    options.backend = BACKEND_CODES[backend]
    options.max_tokens = _c_int(max_tokens, "max_tokens", 64, minimum=0)
    options.fuse_local = FUSE_LOCAL_CODES[fuse_local]
    options.source_name = source_name.encode()
    text_ptr, report_ptr = ctypes.c_void_p(), ctypes.c_void_p()
    _check("tpfuse_compile", lib.tpfuse_compile(text.encode(), ctypes.byref(options),
                                                ctypes.byref(text_ptr), ctypes.byref(report_ptr)))
    try:
        return (ctypes.string_at(text_ptr.value).decode(),
                ctypes.string_at(report_ptr.value).decode())
    finally:
        lib.tpfuse_free(text_ptr)
        lib.tpfuse_free(report_ptr)


# ---------------------------------------------------------------- the CUDA runtime

def comm_config(*, max_tokens: int = 8192, max_hidden: int = 8192, oneshot_max_tokens: int = 1024,
                timeout_seconds: float = 5.0, peer_memory: bool = True,
                programmatic_dependent_launch: bool = True,
                strategy_table: Optional[str] = None) -> CommConfig:
    config = CommConfig()
    load().tpfuse_comm_config_init(ctypes.byref(config))
    config.max_tokens = _c_int(max_tokens, "max_tokens", 64)
    config.max_hidden = _c_int(max_hidden, "max_hidden", 64)
    config.oneshot_max_tokens = _c_int(oneshot_max_tokens, "oneshot_max_tokens", 64)
    config.timeout_seconds = float(timeout_seconds)
    config.peer_memory = int(bool(peer_memory))
    config.programmatic_dependent_launch = int(bool(programmatic_dependent_launch))
    config.strategy_table = strategy_table.encode() if strategy_table else None
    return config


def get_unique_id() -> bytes:
    buf = ctypes.create_string_buffer(UNIQUE_ID_BYTES)
    _check("tpfuse_get_unique_id", load().tpfuse_get_unique_id(buf))
    return buf.raw


class Comm:
    """A tpfuse communicator (tpfuse_comm_t*). Destroyed with close() or when collected."""

    def __init__(self, handle: int):
        self._handle = ctypes.c_void_p(handle)

    @classmethod
    def from_unique_id(cls, unique_id: bytes, rank: int, world_size: int, device: int,
                       config: Optional[CommConfig] = None) -> "Comm":
        if len(unique_id) != UNIQUE_ID_BYTES:
            raise ValueError(f"tpfuse: unique_id must be {UNIQUE_ID_BYTES} bytes, "
                             f"got {len(unique_id)}")
        out = ctypes.c_void_p()
        _check("tpfuse_comm_create",
               load().tpfuse_comm_create(unique_id, _c_int(rank, "rank"),
                                         _c_int(world_size, "world_size"), _c_int(device, "device"),
                                         ctypes.byref(config) if config else None,
                                         ctypes.byref(out)))
        return cls(out.value)

    @classmethod
    def from_nccl(cls, nccl_comm: int, config: Optional[CommConfig] = None) -> "Comm":
        out = ctypes.c_void_p()
        _check("tpfuse_comm_from_nccl",
               load().tpfuse_comm_from_nccl(ctypes.c_void_p(nccl_comm),
                                            ctypes.byref(config) if config else None,
                                            ctypes.byref(out)))
        return cls(out.value)

    @property
    def handle(self) -> ctypes.c_void_p:
        if not self._handle:
            raise ValueError("tpfuse: the communicator is closed")
        return self._handle

    def rank(self) -> int:
        out = ctypes.c_int32()
        _check("tpfuse_comm_rank", load().tpfuse_comm_rank(self.handle, ctypes.byref(out)))
        return out.value

    def world_size(self) -> int:
        out = ctypes.c_int32()
        _check("tpfuse_comm_world_size",
               load().tpfuse_comm_world_size(self.handle, ctypes.byref(out)))
        return out.value

    def allreduce_rmsnorm(self, spec: Spec, tokens: int, buffers: Buffers, stream: int,
                          strategy: str = "auto") -> None:
        _check("tpfuse_allreduce_rmsnorm",
               load().tpfuse_allreduce_rmsnorm(self.handle, ctypes.byref(spec),
                                               _c_int(tokens, "tokens", 64),
                                               ctypes.byref(buffers), ctypes.c_void_p(stream),
                                               STRATEGY_CODES[strategy]))

    def check_health(self, stream: int) -> None:
        _check("tpfuse_comm_check_health",
               load().tpfuse_comm_check_health(self.handle, ctypes.c_void_p(stream)))

    def close(self) -> None:
        if self._handle:
            load().tpfuse_comm_destroy(self._handle)
            self._handle = ctypes.c_void_p()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass


def allreduce_rmsnorm_local(spec: Spec, tokens: int, buffers: Buffers, stream: int) -> None:
    """The fused op without communication on the current device (world size 1 or spec.local)."""
    _check("tpfuse_allreduce_rmsnorm_local",
           load().tpfuse_allreduce_rmsnorm_local(ctypes.byref(spec), _c_int(tokens, "tokens", 64),
                                                 ctypes.byref(buffers), ctypes.c_void_p(stream)))
