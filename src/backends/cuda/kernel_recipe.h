// Which epilogue kernel reads the rounding recipe at run time and which have it fixed at compile
// time (kernels/allreduce_rmsnorm.cuh, "recipes"). Host and device code both name it.
#pragma once

#include <cstdint>

namespace tpfuse::cuda {

enum class KernelRecipe : uint8_t {
  kRuntime,                // every spec: the recipe read from the kernel's parameters
  kFixed,                  // the local op's default form: y = round(n * w)
  kFixedWeightAfterRound,  // the local op with weight_after_round: y = round(round(n) * w)
  // every spec with an f32 residual stream (an f32 residual or residual_out) or norm output: the
  // run-time recipe with f32 residual vectors, one block or one cluster (ClusterRow) per row (the
  // local op and the nccl path)
  kRuntimeF32Residual,
  // every spec with two summed all_reduces (second_sum): the run-time recipe that also reads the
  // second sum's rows, one block per row (the local op and the nccl path), for a 16-bit residual
  // stream and norm output (kRuntimeSecondSum) or with kRuntimeF32Residual's f32 residual vectors
  // (kRuntimeF32SecondSum)
  kRuntimeSecondSum,
  kRuntimeF32SecondSum,
  // every spec with a norm of the sum before the residual add (pre_residual_norm): the
  // run-time recipe with that norm, one block per row (the local op), for a 16-bit residual
  // stream and norm output (kRuntimePreNorm) or with kRuntimeF32Residual's f32 residual vectors
  // (kRuntimeF32PreNorm)
  kRuntimePreNorm,
  kRuntimeF32PreNorm,
};

// Whether the recipe's kernels exist with one block per row only (the second-sum and pre-norm
// recipes): the launcher runs no other row owner for them.
constexpr bool OneBlockPerRowOnly(KernelRecipe recipe) {
  return recipe == KernelRecipe::kRuntimeSecondSum || recipe == KernelRecipe::kRuntimeF32SecondSum ||
         recipe == KernelRecipe::kRuntimePreNorm || recipe == KernelRecipe::kRuntimeF32PreNorm;
}

}  // namespace tpfuse::cuda
