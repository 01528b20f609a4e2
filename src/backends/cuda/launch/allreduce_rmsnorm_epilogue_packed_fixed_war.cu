// The epilogue kernels' instantiations with rows packed into blocks, fixed recipe with the
// weight after the rounding (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 4>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 8>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 16>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 32>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 64>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
