// Which epilogue kernel reads the rounding recipe at run time and which have it fixed at compile
// time (kernels/allreduce_rmsnorm.cuh, "recipes"). Host and device code both name it.
#pragma once

#include <cstdint>

namespace tpfuse::cuda {

enum class KernelRecipe : uint8_t {
  kRuntime,                // every spec: the recipe read from the kernel's parameters
  kFixed,                  // the local op's default form: y = round(n * w)
  kFixedWeightAfterRound,  // the local op with weight_after_round: y = round(round(n) * w)
};

}  // namespace tpfuse::cuda
