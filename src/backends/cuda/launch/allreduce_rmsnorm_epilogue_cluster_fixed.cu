// The cluster epilogue kernels' instantiations, fixed recipe (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<ClusterEpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kFixed, true>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
