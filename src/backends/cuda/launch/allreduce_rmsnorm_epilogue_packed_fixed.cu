// The epilogue kernels' instantiations with rows packed into blocks, fixed recipe
// (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 4>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 8>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 16>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 32>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 64>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
