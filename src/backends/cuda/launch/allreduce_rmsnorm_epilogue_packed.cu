// The epilogue kernels' instantiations with rows packed into blocks, recipe read at run time
// (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 4>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 8>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 16>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 32>>(DType, int, QuantMode);
template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 64>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
