// Kernel selection for the fused op: one flat switch per strategy from runtime values
// (activation dtype, vectors per thread, quant mode) to a template instantiation. Each selector lives
// in its own .cu file so the instantiations compile in parallel.
#pragma once

#include "backends/cuda/kernels/allreduce_rmsnorm.cuh"

namespace tpfuse::cuda {

using FusedKernelFn = void (*)(FusedKernelParams);

// Null when the combination has no instantiation (the launcher validates first).
FusedKernelFn SelectOneShotKernel(DType act, int vecs_per_thread, QuantMode quant);
FusedKernelFn SelectTwoShotKernel(DType act, int vecs_per_thread, QuantMode quant);
FusedKernelFn SelectEpilogueKernel(DType act, int vecs_per_thread, QuantMode quant);

constexpr int KernelKey(DType act, int vecs_per_thread, QuantMode quant) {
  return (int(act) * 16 + vecs_per_thread) * 8 + int(quant);
}

}  // namespace tpfuse::cuda
