// The epilogue kernels' instantiations for two summed all_reduces with an f32 residual stream or
// norm output, one block per row (allreduce_rmsnorm_select.cuh; F32SecondSumRecipe).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimeF32SecondSum>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
