// Explicit instantiations of the epilogue kernel: 24 = 2 activation dtypes x 3 vector counts
// per thread (1, 2, 4) x 4 quant modes.
#include "backends/cuda/launch/allreduce_rmsnorm_kernels.h"

namespace tpfuse::cuda {

FusedKernelFn SelectEpilogueKernel(DType act, int vecs_per_thread, QuantMode quant) {
  using BF16 = __nv_bfloat16;
  using F16 = __half;
  using Q = QuantMode;
  switch (KernelKey(act, vecs_per_thread, quant)) {
    case KernelKey(DType::kBF16, 1, Q::kNone): return AllreduceEpilogueKernel<BF16, 1, Q::kNone>;
    case KernelKey(DType::kBF16, 1, Q::kFp8Tensor): return AllreduceEpilogueKernel<BF16, 1, Q::kFp8Tensor>;
    case KernelKey(DType::kBF16, 1, Q::kFp8Token): return AllreduceEpilogueKernel<BF16, 1, Q::kFp8Token>;
    case KernelKey(DType::kBF16, 1, Q::kFp8Group): return AllreduceEpilogueKernel<BF16, 1, Q::kFp8Group>;
    case KernelKey(DType::kBF16, 2, Q::kNone): return AllreduceEpilogueKernel<BF16, 2, Q::kNone>;
    case KernelKey(DType::kBF16, 2, Q::kFp8Tensor): return AllreduceEpilogueKernel<BF16, 2, Q::kFp8Tensor>;
    case KernelKey(DType::kBF16, 2, Q::kFp8Token): return AllreduceEpilogueKernel<BF16, 2, Q::kFp8Token>;
    case KernelKey(DType::kBF16, 2, Q::kFp8Group): return AllreduceEpilogueKernel<BF16, 2, Q::kFp8Group>;
    case KernelKey(DType::kBF16, 4, Q::kNone): return AllreduceEpilogueKernel<BF16, 4, Q::kNone>;
    case KernelKey(DType::kBF16, 4, Q::kFp8Tensor): return AllreduceEpilogueKernel<BF16, 4, Q::kFp8Tensor>;
    case KernelKey(DType::kBF16, 4, Q::kFp8Token): return AllreduceEpilogueKernel<BF16, 4, Q::kFp8Token>;
    case KernelKey(DType::kBF16, 4, Q::kFp8Group): return AllreduceEpilogueKernel<BF16, 4, Q::kFp8Group>;
    case KernelKey(DType::kF16, 1, Q::kNone): return AllreduceEpilogueKernel<F16, 1, Q::kNone>;
    case KernelKey(DType::kF16, 1, Q::kFp8Tensor): return AllreduceEpilogueKernel<F16, 1, Q::kFp8Tensor>;
    case KernelKey(DType::kF16, 1, Q::kFp8Token): return AllreduceEpilogueKernel<F16, 1, Q::kFp8Token>;
    case KernelKey(DType::kF16, 1, Q::kFp8Group): return AllreduceEpilogueKernel<F16, 1, Q::kFp8Group>;
    case KernelKey(DType::kF16, 2, Q::kNone): return AllreduceEpilogueKernel<F16, 2, Q::kNone>;
    case KernelKey(DType::kF16, 2, Q::kFp8Tensor): return AllreduceEpilogueKernel<F16, 2, Q::kFp8Tensor>;
    case KernelKey(DType::kF16, 2, Q::kFp8Token): return AllreduceEpilogueKernel<F16, 2, Q::kFp8Token>;
    case KernelKey(DType::kF16, 2, Q::kFp8Group): return AllreduceEpilogueKernel<F16, 2, Q::kFp8Group>;
    case KernelKey(DType::kF16, 4, Q::kNone): return AllreduceEpilogueKernel<F16, 4, Q::kNone>;
    case KernelKey(DType::kF16, 4, Q::kFp8Tensor): return AllreduceEpilogueKernel<F16, 4, Q::kFp8Tensor>;
    case KernelKey(DType::kF16, 4, Q::kFp8Token): return AllreduceEpilogueKernel<F16, 4, Q::kFp8Token>;
    case KernelKey(DType::kF16, 4, Q::kFp8Group): return AllreduceEpilogueKernel<F16, 4, Q::kFp8Group>;
    default: return nullptr;
  }
}

}  // namespace tpfuse::cuda
