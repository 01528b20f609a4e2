// The cluster epilogue kernels' instantiations (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<ClusterEpilogueFamily>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
