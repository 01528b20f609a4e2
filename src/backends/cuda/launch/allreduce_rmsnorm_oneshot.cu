// The one-shot kernels' instantiations (allreduce_rmsnorm_select.cuh).
#include "backends/cuda/launch/allreduce_rmsnorm_select.cuh"

namespace tpfuse::cuda {

template FusedKernelFn SelectKernel<OneShotFamily>(DType, int, QuantMode);

}  // namespace tpfuse::cuda
