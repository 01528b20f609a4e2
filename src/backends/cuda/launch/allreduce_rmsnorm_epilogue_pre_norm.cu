// The epilogue kernels' instantiations for a norm before the residual add, one block per row
// with a 16-bit residual stream and norm output (allreduce_rmsnorm_select.cuh; PreNormRecipe).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimePreNorm>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
