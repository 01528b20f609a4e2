"""tpfuse: the fused all_reduce + residual + RMSNorm + FP8 quantization of tensor-parallel
layers, from PyTorch.

    import tpfuse                                   # registers torch.ops.tpfuse.*
    outs = torch.ops.tpfuse.allreduce_rmsnorm(x, residual, weight, None,
                                              group_name=group.group_name,
                                              emit=["norm", "residual"])

- `tpfuse.ops`: the custom op (CPU over gloo with the reference epilogue, CUDA on a tpfuse
  communicator), `configure` and `init_comm`;
- `tpfuse.compile_module`: the C++ compiler on .tpg text (compiled text, JSON report);
- `tpfuse.tolerance`: the distances of Contract 3's tolerance (16-bit ulps, FP8 steps);
- `tpfuse._capi`: the ctypes bindings of libtpfuse.so (include/tpfuse/tpfuse_c.h).
"""

from tpfuse._capi import TpfuseError, compile_module, has_cuda  # noqa: F401

__version__ = "0.1.0"

try:
    import torch as _torch  # noqa: F401
except ImportError:  # the compiler bindings work without torch
    pass
else:
    from tpfuse import ops  # noqa: F401  (registers torch.ops.tpfuse.allreduce_rmsnorm)
