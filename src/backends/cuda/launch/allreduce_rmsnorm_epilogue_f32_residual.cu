// The epilogue kernels' instantiations for an f32 residual stream, one block or one cluster
// (a thread per row thread) per row (allreduce_rmsnorm_select.cuh; F32ResidualRecipe).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimeF32Residual>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<ClusterEpilogueFamily<KernelRecipe::kRuntimeF32Residual>>(DType, int,
                                                                                            QuantMode);

}  // namespace tpfuse::cuda
