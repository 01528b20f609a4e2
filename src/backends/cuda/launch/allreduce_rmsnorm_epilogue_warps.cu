// The epilogue kernels' instantiations with rows packed into warps, recipe read at run time
// (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kRuntime, 8>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kRuntime, 16>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kRuntime, 32>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
