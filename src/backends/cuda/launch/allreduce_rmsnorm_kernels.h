// Kernel selection for the fused op: one flat switch from runtime values (activation dtype,
// vectors per thread, quant mode) to a template instantiation, written once
// (allreduce_rmsnorm_select.cuh) and instantiated per kernel family in its own .cu file so the
// families compile in parallel. 24 instantiations per family: 2 activation dtypes x 3 vector
// counts per thread (1, 2, 4) x 4 quant modes. The epilogue has a family per row owner and
// recipe (kernel_recipe.h: the run-time ones, and two fixed); the packed rows' families instantiate the
// 8 kernels of one vector per thread (groups of 8-64 lanes) and of two (4-32 lanes), the norm
// alone's the 4 of two vectors per thread in quant none and fp8_tensor.
#pragma once

#include "backends/cuda/kernels/allreduce_rmsnorm.cuh"

namespace tpfuse::cuda {

using FusedKernelFn = void (*)(FusedKernelParams);

// The kernel families; Kernel<T, kVec, kQuant> names one instantiation.
struct OneShotFamily {
  template <typename T, int kVec, QuantMode kQuant>
  static constexpr FusedKernelFn Kernel() { return OneShotAllreduceRmsnormKernel<T, kVec, kQuant>; }
};
struct TwoShotFamily {
  template <typename T, int kVec, QuantMode kQuant>
  static constexpr FusedKernelFn Kernel() { return TwoShotAllreduceRmsnormKernel<T, kVec, kQuant>; }
};
// The epilogue kernel, with the recipe read at run time or fixed (kernels/allreduce_rmsnorm.cuh,
// "recipes"); with a norm before the residual add and a 16-bit stream, PreNormEpilogueKernel
// (its own register bound).
template <KernelRecipe kRecipe>
struct EpilogueFamily {
  template <typename T, int kVec, QuantMode kQuant>
  static constexpr FusedKernelFn Kernel() {
    using Recipe = RecipeOf<T, kRecipe>;
    if constexpr (std::is_same_v<Recipe, PreNormRecipe>) return PreNormEpilogueKernel<T, kVec, kQuant>;
    else return AllreduceEpilogueKernel<T, kVec, kQuant, BlockRow, Recipe>;
  }
};
// The same for the norm alone (no residual) with a fixed recipe, quant none and fp8_tensor at two
// vectors per thread (NormAloneRecipe: three blocks per SM); none for other kVec and modes.
template <KernelRecipe kRecipe>
struct NormAloneEpilogueFamily {
  template <typename T, int kVec, QuantMode kQuant>
  static constexpr FusedKernelFn Kernel() {
    if constexpr (kRecipe != KernelRecipe::kRuntime && kVec == 2 &&
                  (kQuant == QuantMode::kNone || kQuant == QuantMode::kFp8Tensor))
      return AllreduceEpilogueKernel<T, kVec, kQuant, BlockRow, NormAloneRecipe<RecipeOf<T, kRecipe>>>;
    else return nullptr;
  }
};
// A fixed recipe's fp8_group kernel of one block per row at two vectors per thread for grids of
// at most one block per SM (SoleBlockRecipe); none for other recipes, kVec and modes.
template <KernelRecipe kRecipe>
struct SoleBlockEpilogueFamily {
  template <typename T, int kVec, QuantMode kQuant>
  static constexpr FusedKernelFn Kernel() {
    if constexpr (kRecipe != KernelRecipe::kRuntime && kVec == 2 && kQuant == QuantMode::kFp8Group)
      return AllreduceEpilogueKernel<T, kVec, kQuant, BlockRow, SoleBlockRecipe<RecipeOf<T, kRecipe>>>;
    else return nullptr;
  }
};
// The epilogue kernel with each row spread over a thread block cluster (launched with a
// cluster dimension: small T), a thread per row thread.
template <KernelRecipe kRecipe>
struct ClusterEpilogueFamily {
  template <typename T, int kVec, QuantMode kQuant>
  static constexpr FusedKernelFn Kernel() {
    return AllreduceEpilogueKernel<T, kVec, kQuant, ClusterRow, RecipeOf<T, kRecipe>>;
  }
};
// The same with two threads per row thread, each holding one of its two vectors: rows of two
// vectors per row thread only (none for other kVec); blocks of at most two row warps
// (ClusterPairRow), or, kWide, of up to half the row (WideClusterPairRow).
template <KernelRecipe kRecipe, bool kWide = false>
struct ClusterPairEpilogueFamily {
  template <typename T, int kVec, QuantMode kQuant>
  static constexpr FusedKernelFn Kernel() {
    using Span = std::conditional_t<kWide, WideClusterPairRow, ClusterPairRow>;
    if constexpr (kVec == 2) return AllreduceEpilogueKernel<T, 1, kQuant, Span, RecipeOf<T, kRecipe>>;
    else return nullptr;
  }
};

// The epilogue kernel with rows packed into blocks, a group of kRowLanes threads per row: rows of
// one or two warps' layout at one vector per thread (kRowLanes 8-64), and at two (kRowLanes
// 4-32) rows of one warp's layout in half the lanes or, a warp per row, of two warps' layout
// (PackedRows; none for other kVec).
template <KernelRecipe kRecipe, int kRowLanes>
struct PackedEpilogueFamily {
  template <typename T, int kVec, QuantMode kQuant>
  static constexpr FusedKernelFn Kernel() {
    if constexpr ((kVec == 1 && kRowLanes >= 8) || (kVec == 2 && kRowLanes <= 32))
      return AllreduceEpilogueKernel<T, kVec, kQuant, PackedRows<kRowLanes>, RecipeOf<T, kRecipe>>;
    else return nullptr;
  }
};

// Null when the combination has no instantiation (the launcher validates first).
template <class Family>
FusedKernelFn SelectKernel(DType act, int vecs_per_thread, QuantMode quant);

extern template FusedKernelFn SelectKernel<OneShotFamily>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<TwoShotFamily>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntime>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimeF32Residual>>(DType, int,
                                                                                             QuantMode);
extern template FusedKernelFn SelectKernel<ClusterEpilogueFamily<KernelRecipe::kRuntimeF32Residual>>(DType, int,
                                                                                                    QuantMode);
extern template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimeSecondSum>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimeF32SecondSum>>(DType, int,
                                                                                              QuantMode);
extern template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimePreNorm>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kRuntimeF32PreNorm>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<ClusterEpilogueFamily<KernelRecipe::kRuntime>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<ClusterEpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<EpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<NormAloneEpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<NormAloneEpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(DType, int,
                                                                                                       QuantMode);
extern template FusedKernelFn SelectKernel<SoleBlockEpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<SoleBlockEpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(DType, int,
                                                                                                        QuantMode);
extern template FusedKernelFn SelectKernel<ClusterEpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(DType, int,
                                                                                                    QuantMode);
extern template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kRuntime>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kFixed>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(
    DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kRuntime, true>>(DType, int,
                                                                                                  QuantMode);
extern template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kFixed, true>>(DType, int,
                                                                                                QuantMode);
extern template FusedKernelFn SelectKernel<ClusterPairEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, true>>(
    DType, int, QuantMode);

extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 4>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 8>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 16>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 32>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kRuntime, 64>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 4>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 8>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 16>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 32>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixed, 64>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 4>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 8>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 16>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 32>>(DType, int, QuantMode);
extern template FusedKernelFn SelectKernel<PackedEpilogueFamily<KernelRecipe::kFixedWeightAfterRound, 64>>(DType, int, QuantMode);

constexpr int KernelKey(DType act, int vecs_per_thread, QuantMode quant) {
  return (int(act) * 16 + vecs_per_thread) * 8 + int(quant);
}

}  // namespace tpfuse::cuda
