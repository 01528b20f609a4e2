// The epilogue kernels' instantiations for a norm before the residual add with an f32 residual
// stream or norm output, one block per row (allreduce_rmsnorm_select.cuh; F32PreNormRecipe).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimeF32PreNorm>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
