// The epilogue kernels' instantiations, recipe read at run time (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntime>>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
