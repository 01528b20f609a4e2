// The epilogue kernels' instantiations, fixed recipe with the weight after the rounding
// (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<NormAloneEpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<SoleBlockEpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
