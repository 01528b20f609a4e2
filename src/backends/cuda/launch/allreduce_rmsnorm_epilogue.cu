// Explicit instantiations of the epilogue kernel: 8 = 2 activation dtypes x 4 quant modes.
#include "backends/cuda/launch/allreduce_rmsnorm_kernels.h"

namespace tpfuse::cuda {

FusedKernelFn SelectEpilogueKernel(DType act, QuantMode quant) {
  using BF16 = __nv_bfloat16;
  using F16 = __half;
  using Q = QuantMode;
  switch (KernelKey(act, 0, quant)) {
    case KernelKey(DType::kBF16, 0, Q::kNone): return AllreduceEpilogueKernel<BF16, Q::kNone>;
    case KernelKey(DType::kBF16, 0, Q::kFp8Tensor): return AllreduceEpilogueKernel<BF16, Q::kFp8Tensor>;
    case KernelKey(DType::kBF16, 0, Q::kFp8Token): return AllreduceEpilogueKernel<BF16, Q::kFp8Token>;
    case KernelKey(DType::kBF16, 0, Q::kFp8Group): return AllreduceEpilogueKernel<BF16, Q::kFp8Group>;
    case KernelKey(DType::kF16, 0, Q::kNone): return AllreduceEpilogueKernel<F16, Q::kNone>;
    case KernelKey(DType::kF16, 0, Q::kFp8Tensor): return AllreduceEpilogueKernel<F16, Q::kFp8Tensor>;
    case KernelKey(DType::kF16, 0, Q::kFp8Token): return AllreduceEpilogueKernel<F16, Q::kFp8Token>;
    case KernelKey(DType::kF16, 0, Q::kFp8Group): return AllreduceEpilogueKernel<F16, Q::kFp8Group>;
    default: return nullptr;
  }
}

}  // namespace tpfuse::cuda
