// The cluster epilogue kernels' instantiations, recipe read at run time
// (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<ClusterEpilogueFamily<KernelRecipe::kRuntime>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kRuntime>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kRuntime, true>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
