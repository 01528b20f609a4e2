// The epilogue kernels' instantiations, fixed recipe (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<NormAloneEpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<SoleBlockEpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
