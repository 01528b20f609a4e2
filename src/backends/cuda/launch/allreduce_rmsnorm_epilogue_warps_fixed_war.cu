// The epilogue kernels' instantiations with rows packed into warps, fixed recipe with the
// weight after the rounding (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 8>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 16>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<WarpRowsEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 32>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
