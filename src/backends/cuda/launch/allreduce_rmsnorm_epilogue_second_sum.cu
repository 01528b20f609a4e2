// The epilogue kernels' instantiations for two summed all_reduces, one block per row
// with a 16-bit residual stream and norm output (allreduce_rmsnorm_select.cuh; SecondSumRecipe).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimeSecondSum>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
