// The one selector of the fused kernels (see allreduce_rmsnorm_kernels.h). Included only by
// the per-family .cu files, each of which instantiates it for its family.
#pragma once

#include "backends/cuda/launch/allreduce_rmsnorm_kernels.h"

namespace tpfuse::cuda {

template <class Family>
FusedKernelFn SelectKernel(DType act, int vecs_per_thread, QuantMode quant) {
  using BF16 = __nv_bfloat16;
  using F16 = __half;
  using Q = QuantMode;
  switch (KernelKey(act, vecs_per_thread, quant)) {
    case KernelKey(DType::kBF16, 1, Q::kNone): return Family::template Kernel<BF16, 1, Q::kNone>();
    case KernelKey(DType::kBF16, 1, Q::kFp8Tensor): return Family::template Kernel<BF16, 1, Q::kFp8Tensor>();
    case KernelKey(DType::kBF16, 1, Q::kFp8Token): return Family::template Kernel<BF16, 1, Q::kFp8Token>();
    case KernelKey(DType::kBF16, 1, Q::kFp8Group): return Family::template Kernel<BF16, 1, Q::kFp8Group>();
    case KernelKey(DType::kBF16, 2, Q::kNone): return Family::template Kernel<BF16, 2, Q::kNone>();
    case KernelKey(DType::kBF16, 2, Q::kFp8Tensor): return Family::template Kernel<BF16, 2, Q::kFp8Tensor>();
    case KernelKey(DType::kBF16, 2, Q::kFp8Token): return Family::template Kernel<BF16, 2, Q::kFp8Token>();
    case KernelKey(DType::kBF16, 2, Q::kFp8Group): return Family::template Kernel<BF16, 2, Q::kFp8Group>();
    case KernelKey(DType::kBF16, 4, Q::kNone): return Family::template Kernel<BF16, 4, Q::kNone>();
    case KernelKey(DType::kBF16, 4, Q::kFp8Tensor): return Family::template Kernel<BF16, 4, Q::kFp8Tensor>();
    case KernelKey(DType::kBF16, 4, Q::kFp8Token): return Family::template Kernel<BF16, 4, Q::kFp8Token>();
    case KernelKey(DType::kBF16, 4, Q::kFp8Group): return Family::template Kernel<BF16, 4, Q::kFp8Group>();
    case KernelKey(DType::kF16, 1, Q::kNone): return Family::template Kernel<F16, 1, Q::kNone>();
    case KernelKey(DType::kF16, 1, Q::kFp8Tensor): return Family::template Kernel<F16, 1, Q::kFp8Tensor>();
    case KernelKey(DType::kF16, 1, Q::kFp8Token): return Family::template Kernel<F16, 1, Q::kFp8Token>();
    case KernelKey(DType::kF16, 1, Q::kFp8Group): return Family::template Kernel<F16, 1, Q::kFp8Group>();
    case KernelKey(DType::kF16, 2, Q::kNone): return Family::template Kernel<F16, 2, Q::kNone>();
    case KernelKey(DType::kF16, 2, Q::kFp8Tensor): return Family::template Kernel<F16, 2, Q::kFp8Tensor>();
    case KernelKey(DType::kF16, 2, Q::kFp8Token): return Family::template Kernel<F16, 2, Q::kFp8Token>();
    case KernelKey(DType::kF16, 2, Q::kFp8Group): return Family::template Kernel<F16, 2, Q::kFp8Group>();
    case KernelKey(DType::kF16, 4, Q::kNone): return Family::template Kernel<F16, 4, Q::kNone>();
    case KernelKey(DType::kF16, 4, Q::kFp8Tensor): return Family::template Kernel<F16, 4, Q::kFp8Tensor>();
    case KernelKey(DType::kF16, 4, Q::kFp8Token): return Family::template Kernel<F16, 4, Q::kFp8Token>();
    case KernelKey(DType::kF16, 4, Q::kFp8Group): return Family::template Kernel<F16, 4, Q::kFp8Group>();
    default: return nullptr;
  }
}

}  // namespace tpfuse::cuda
