// The epilogue kernels' instantiations with rows packed into warps, fixed recipe
// (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kFixed, 8>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kFixed, 16>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kFixed, 32>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
