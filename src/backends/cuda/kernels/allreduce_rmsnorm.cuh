// The fused all-reduce + residual add + RMSNorm + FP8 quantization kernels (DESIGN.md
// Contract 3): one-shot and two-shot (both Lamport: data words carry readiness, no barrier),
// and the epilogue of the nccl path.
//
// Every strategy ends in the same per-row epilogue (RowEpilogue) with the same thread layout,
// which depends on H only: so a row's result does not depend on T, on the other rows, or on the
// strategy, and all ranks compute bitwise-identical results.
#pragma once

#include <cstdint>
#include <type_traits>

#include "backends/cuda/comm/workspace.h"
#include "backends/cuda/kernel_recipe.h"
#include "backends/cuda/kernels/common.cuh"
#include "common/amax_bound.h"
#include "common/quotient.h"
#include "common/row_layout.h"
#include "tpfuse/fused_op.h"

namespace tpfuse::cuda {

// The row layout (threads per row, vectors per thread) is a function of H alone, shared with
// the CPU oracle: common/row_layout.h. The kernels are instantiated for 1, 2 and 4 vectors
// per thread so registers match the row.
inline constexpr int kMaxVecPerThread = kMaxRowVecsPerThread;
// Blocks per SM the compiler must allow (it caps registers to fit): two 512-thread blocks (64
// registers) with one or two vectors per thread, one with four. Tighter caps spill (measured:
// docs/perf/h200x1/NOTES.md); blocks with fewer threads get more blocks per SM by themselves.
template <int kVec>
inline constexpr int kMinBlocksPerSm = kVec <= 2 ? 2 : 1;
// The persistent (Lamport) kernels hold more per thread (the partials being summed, the row's
// own x) and launch only co-resident blocks.
template <int kVec>
inline constexpr int kPersistentMinBlocksPerSm = kVec == 1 ? 2 : 1;

// Where the epilogue kernel reads a row's a (Contract 3 step 1).
enum class RowSource : uint8_t {
  kLocal,     // world size 1 or a local op: a = x, bit for bit (-0.0 stays -0.0)
  kReduced,   // nccl path at N = 2: the ncclAllReduce result; -0.0 becomes +0.0
  kGathered,  // nccl path above N = 2: the partials gathered [N][T][H], summed in rank order
};

// ================================================================ parameters

struct FusedKernelParams {
  // ---- inputs (device pointers; x, residual [T, H]; weight [H]; scale f32[])
  const void* x;
  const void* residual;     // null: no residual
  const void* weight;
  const float* scale;       // fp8_tensor only
  RowSource source;         // epilogue kernel only
  const void* reduced;      // kReduced: [T, H]; kGathered: [gathered_ranks][T][H]
  int gathered_ranks;
  // ---- outputs (null when not emitted)
  void* allreduce_out;
  void* norm_out;
  void* residual_out;
  uint8_t* quant_out;
  float* scale_out;
  // ---- shape and numerics
  int64_t tokens;           // T
  int hidden;               // H
  int vecs_per_row;         // H / 8
  DType weight_dtype;
  float eps;
  float weight_bias;
  int group_vecs;           // fp8_group: group_size / 8 (a power of two <= 32)
  int groups_per_row;       // H / group_size (group), 1 (token)
  bool scale_col_major;
  bool scale_ue8m0;
  int64_t scale_tokens_padded;  // column-major scale row length: pad4(T)
  int scale_pad_rows;           // column-major: padding entries after the last row, set to 0
  // ---- the rounding recipe (Contract 3; uniform runtime branches)
  bool norm_input_f32;          // the norm reads f32 h instead of round(h)
  bool weight_after_round;      // y = round(round(n) * w')
  bool bias_in_weight_dtype;    // w' = round_wdtype(w + weight_bias)
  bool quant_divides;           // q = fp8(y / scale) rather than fp8(y * (1 / scale))
  // ---- communication
  int rank;
  int world_size;
  char* peer_bases[kMaxRanks];    // every rank's workspace as mapped here
  size_t lamport_offset;
  size_t lamport_buffer_bytes;
  size_t lamport_slot_bytes;      // one rank's rows inside a Lamport buffer (16-byte multiple)
  size_t rs_offset;
  size_t rs_buffer_bytes;
  size_t rs_slot_bytes;           // one rank's rows inside a reduce-scatter buffer
  size_t ag_offset;
  size_t ag_buffer_bytes;
  int64_t rows_per_rank;          // two-shot: ceil(T / world size)
  CommDeviceState* state;
  uint64_t timeout_ns;            // 0: wait forever
  // ---- (last: the other fields keep their offsets, and the kernels their code)
  float sum_scale;                // a' = round(a * sum_scale) before the add; 1: a' = a
  bool scale_floor_after_div;     // dynamic s = max(amax / 448, 1 / (448 * 512))
  bool ue8m0_floor;               // ue8m0 of max(s, 1e-10)
  // An f32 residual stream (F32ResidualRecipe's kernels only): the residual is f32, and
  // residual_out is the unrounded f32 h; and the norm output is the unrounded f32 y.
  bool residual_f32_in;
  bool residual_out_f32;
  bool norm_out_f32;
  bool f32_paired_stores;  // f32 words stored by lane pairs, whole sectors (StoreF32Vector)
  // Two all_reduces summed (the second-sum recipes' kernels only): the second's rows as the first's
  // (x2 where the source is kLocal, reduced2 on the nccl path, laid out as `reduced`), and the
  // scale of each sum before the add (1: none).
  bool second_sum;
  bool second_sum_into_residual;  // round(residual + round(a2 * second_scale)) is the residual
  const void* x2;
  const void* reduced2;
  float first_scale;
  float second_scale;
  // A bias [H] added to a (the second-sum recipes' kernels only; null: none): round(a + bias),
  // the same for every row, or each row's own where bias_per_token ([T, H], x's layout).
  const void* bias;
  bool bias_per_token;
  // The norm of the sum before the residual add (PreNormRecipe's kernels only): its weight [H]
  // (weight_dtype, weight_bias as the weight's) and eps.
  bool pre_residual_norm;
  const void* pre_weight;
  float pre_eps;
};

// ================================================================ recipes

// How a kernel reads the rounding recipe and the parameters that choose its arithmetic path
// (where a comes from, the weight's dtype and bias, the scale step and format, whether a is
// emitted).
// - RuntimeRecipe reads them from FusedKernelParams: uniform branches, every spec runs.
// - FixedRecipe fixes them at compile time for the local op (a = x) in the forms models trace
//   to most often: the weight in the activation dtype T, no weight bias, no sum scale, the norm reading
//   round(h), the mode's default scale step and floors, f32 scales, no allreduce_out; and
//   y = round(round(n) * w) when kWeightAfterRound (LlamaRMSNorm's `weight * x.to(dtype)`,
//   vLLM's norm kernels), y = round(n * w) otherwise (Contract 3's default). Without the branches the compiler schedules a
//   thread's vectors as one stretch of code, with fewer registers (docs/kernels.md).
// Both compute the same bits: the same operations, some of them decided at compile time.
// NOTE: a FixedRecipe kernel is correct only for parameters of its form, and only with a = x
// (p.source == kLocal): the local launcher checks the spec (LocalKernelRecipe) and is the only
// caller that asks for one.

struct RuntimeRecipe {
  __device__ __forceinline__ static DType WeightDType(const FusedKernelParams& p) { return p.weight_dtype; }
  __device__ __forceinline__ static float WeightBias(const FusedKernelParams& p) { return p.weight_bias; }
  __device__ __forceinline__ static float SumScale(const FusedKernelParams& p) { return p.sum_scale; }
  __device__ __forceinline__ static bool BiasInWeightDType(const FusedKernelParams& p) {
    return p.bias_in_weight_dtype;
  }
  __device__ __forceinline__ static bool NormInputF32(const FusedKernelParams& p) { return p.norm_input_f32; }
  __device__ __forceinline__ static bool WeightAfterRound(const FusedKernelParams& p) { return p.weight_after_round; }
  __device__ __forceinline__ static bool QuantDivides(const FusedKernelParams& p, QuantMode) { return p.quant_divides; }
  __device__ __forceinline__ static bool ScaleUe8m0(const FusedKernelParams& p) { return p.scale_ue8m0; }
  __device__ __forceinline__ static bool ScaleFloorAfterDiv(const FusedKernelParams& p) {
    return p.scale_floor_after_div;
  }
  __device__ __forceinline__ static bool Ue8m0Floor(const FusedKernelParams& p) { return p.ue8m0_floor; }
  __device__ __forceinline__ static void* AllreduceOut(const FusedKernelParams& p) { return p.allreduce_out; }
  __device__ __forceinline__ static RowSource Source(const FusedKernelParams& p) { return p.source; }
};

// The run-time recipe for a residual stream kept in f32 (an f32 residual, residual_out f32: the
// kernel reads p.residual_f32_in and p.residual_out_f32) and for a norm output in f32
// (p.norm_out_f32). Its residual vectors are eight f32 (two 16-byte words, F32ResidualVector);
// the other recipes' are eight 16-bit values in one word, as before it existed, so their kernels
// keep their code. Only the epilogue kernel with one block or
// one cluster (ClusterRow) per row is instantiated with it (the local op and the nccl path).
struct F32ResidualRecipe : RuntimeRecipe {};
// The rows of a second sum (two summed all_reduces: p.second_sum) or of a bias added to the sum
// (p.bias: a second addend of a, not reduced), instantiated apart (one block per row) so that the
// other kernels keep their code: SecondSumRecipe for a 16-bit residual
// stream (RuntimeRecipe's 16-bit residual vectors), F32SecondSumRecipe for an f32 one or an f32
// norm output (F32ResidualRecipe's).
// The kernel stores a before the second addend (a bias: the emitted allreduce is the sum without
// it; two sums emit none), not RowEpilogue: RowEpilogue's a is the sum with it.
struct SecondSumRecipe : RuntimeRecipe {
  __device__ __forceinline__ static void* AllreduceOut(const FusedKernelParams&) { return nullptr; }
};
struct F32SecondSumRecipe : F32ResidualRecipe {
  __device__ __forceinline__ static void* AllreduceOut(const FusedKernelParams&) { return nullptr; }
};
// The norm of the sum before the residual add (p.pre_residual_norm: sandwich norms), instantiated
// apart (one block per row) so that the other kernels keep their code and registers:
// PreNormRecipe for a 16-bit residual stream (RuntimeRecipe's 16-bit residual vectors, under a
// register bound of its own: PreNormEpilogueKernel), F32PreNormRecipe for an f32 one or an f32
// norm output (F32ResidualRecipe's). The kernel stores a (NormBeforeResidual), not RowEpilogue:
// RowEpilogue's a is the norm's output.
struct PreNormRecipe : RuntimeRecipe {
  __device__ __forceinline__ static void* AllreduceOut(const FusedKernelParams&) { return nullptr; }
};
struct F32PreNormRecipe : F32ResidualRecipe {
  __device__ __forceinline__ static void* AllreduceOut(const FusedKernelParams&) { return nullptr; }
};
template <typename Recipe>
inline constexpr bool kF32ResidualRecipe = false;
template <>
inline constexpr bool kF32ResidualRecipe<F32ResidualRecipe> = true;
template <>
inline constexpr bool kF32ResidualRecipe<F32SecondSumRecipe> = true;
template <>
inline constexpr bool kF32ResidualRecipe<F32PreNormRecipe> = true;
template <typename Recipe>
inline constexpr bool kSecondSumRecipe =
    std::is_same_v<Recipe, SecondSumRecipe> || std::is_same_v<Recipe, F32SecondSumRecipe>;
template <typename Recipe>
inline constexpr bool kPreNormRecipe =
    std::is_same_v<Recipe, PreNormRecipe> || std::is_same_v<Recipe, F32PreNormRecipe>;

// A thread's residual vector: eight 16-bit values, or eight f32 (F32ResidualRecipe), of which
// `lo` holds the 16-bit values where the residual is 16-bit.
struct F32ResidualVector {
  uint4 lo, hi;
};
template <typename Recipe>
using ResidualVector = std::conditional_t<kF32ResidualRecipe<Recipe>, F32ResidualVector, uint4>;

// Eight f32 values as the two words of an F32ResidualVector, and back (bit casts).
__device__ __forceinline__ F32ResidualVector F32Words(const float (&f)[kVecElems]) {
  return {make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3])),
          make_uint4(__float_as_uint(f[4]), __float_as_uint(f[5]), __float_as_uint(f[6]), __float_as_uint(f[7]))};
}
__device__ __forceinline__ void F32Values(const F32ResidualVector& w, float (&f)[kVecElems]) {
  const unsigned bits[kVecElems] = {w.lo.x, w.lo.y, w.lo.z, w.lo.w, w.hi.x, w.hi.y, w.hi.z, w.hi.w};
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) f[i] = __uint_as_float(bits[i]);
}

// The 16-bit values of a residual vector: all of it, or an f32 recipe's `lo`.
template <typename Recipe>
__device__ __forceinline__ uint4& Residual16(ResidualVector<Recipe>& r) {
  if constexpr (kF32ResidualRecipe<Recipe>) return r.lo;
  else return r;
}

template <typename T, bool kWeightAfterRound>
struct FixedRecipe {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "16-bit activations only");
  __device__ __forceinline__ static DType WeightDType(const FusedKernelParams&) {
    return std::is_same_v<T, __half> ? DType::kF16 : DType::kBF16;
  }
  __device__ __forceinline__ static float WeightBias(const FusedKernelParams&) { return 0.0f; }
  __device__ __forceinline__ static float SumScale(const FusedKernelParams&) { return 1.0f; }
  __device__ __forceinline__ static bool BiasInWeightDType(const FusedKernelParams&) { return false; }
  __device__ __forceinline__ static bool NormInputF32(const FusedKernelParams&) { return false; }
  __device__ __forceinline__ static bool WeightAfterRound(const FusedKernelParams&) { return kWeightAfterRound; }
  __device__ __forceinline__ static bool QuantDivides(const FusedKernelParams&, QuantMode mode) {
    return mode != QuantMode::kFp8Tensor;
  }
  __device__ __forceinline__ static bool ScaleUe8m0(const FusedKernelParams&) { return false; }
  __device__ __forceinline__ static bool ScaleFloorAfterDiv(const FusedKernelParams&) { return false; }
  __device__ __forceinline__ static bool Ue8m0Floor(const FusedKernelParams&) { return false; }
  __device__ __forceinline__ static void* AllreduceOut(const FusedKernelParams&) { return nullptr; }
  __device__ __forceinline__ static RowSource Source(const FusedKernelParams&) { return RowSource::kLocal; }
};

// The recipe type of a KernelRecipe (the fixed ones for activations of type T).
template <typename T, KernelRecipe kRecipe>
struct RecipeFor {
  using type = FixedRecipe<T, kRecipe == KernelRecipe::kFixedWeightAfterRound>;
};
template <typename T>
struct RecipeFor<T, KernelRecipe::kRuntime> {
  using type = RuntimeRecipe;
};
template <typename T>
struct RecipeFor<T, KernelRecipe::kRuntimeF32Residual> {
  using type = F32ResidualRecipe;
};
template <typename T>
struct RecipeFor<T, KernelRecipe::kRuntimeSecondSum> {
  using type = SecondSumRecipe;
};
template <typename T>
struct RecipeFor<T, KernelRecipe::kRuntimeF32SecondSum> {
  using type = F32SecondSumRecipe;
};
template <typename T>
struct RecipeFor<T, KernelRecipe::kRuntimePreNorm> {
  using type = PreNormRecipe;
};
template <typename T>
struct RecipeFor<T, KernelRecipe::kRuntimeF32PreNorm> {
  using type = F32PreNormRecipe;
};
template <typename T, KernelRecipe kRecipe>
using RecipeOf = typename RecipeFor<T, kRecipe>::type;
// Whether Recipe is Wrapper<F> for a recipe F: the wrappers below give a fixed recipe's form
// kernels of their own.
template <typename Recipe, template <typename> class Wrapper>
inline constexpr bool kWrappedRecipe = false;
template <typename Fixed, template <typename> class Wrapper>
inline constexpr bool kWrappedRecipe<Wrapper<Fixed>, Wrapper> = true;
// A fixed recipe's kernel for the norm alone (no residual: the launcher picks it by the spec),
// the same code under a tighter register bound (SpanMinBlocks).
template <typename Fixed>
struct NormAloneRecipe : Fixed {};
template <typename Recipe>
inline constexpr bool kNormAloneRecipe = kWrappedRecipe<Recipe, NormAloneRecipe>;
// A fixed recipe's fp8_group kernel of one block per row for grids of at most one block per SM
// (the launcher picks it there: LaunchLocalAllreduceRmsnorm). Each row's block then issues alone
// on its SM, and what its warps issue after the row's sum is the row's time: the groups' maxima
// take whole-warp reductions (LaneGroupMax), the block's sum reads its warps' sums four at a time
// (SoleBlockSum), and the addresses of the stores and the weights' words are taken before the
// sum (RowEpilogue's kSoleGroup): the same bits as the shared kernel. Kernels of their own
// because the same code in the shared kernels ran up to 1.12 x slower where two rows' blocks
// share an SM, and both paths in one kernel changed the compiled code of each
// (docs/perf/h100x1/NOTES.md, runs 126-132).
template <typename Fixed>
struct SoleBlockRecipe : Fixed {};
template <typename Recipe>
inline constexpr bool kSoleBlockRecipe = kWrappedRecipe<Recipe, SoleBlockRecipe>;

// ================================================================ row owners and reductions

// Who owns a row, and the reductions over it. Every reduction follows common/row_layout.h:
// xor butterfly in each warp, then the row's warps 0..n-1 in order, so its result depends on the
// row's threads only, not on which blocks hold them. Every thread gets the value.
// NOTE: `slot` alternates between calls (row parity) so a fast thread writing the next row's
// partials cannot overwrite values a slow thread is still reading.
// The max of the lanes' values in `mask` (every lane of the mask calls it with the same mask),
// for values that are >= +0, +inf or a NaN of sign bit 0 (the maxima of |y|, MaxOfMagnitudes'
// results): one integer reduction of the bit patterns, whose order is the floats' from +0 to
// +inf and then the NaNs, so a NaN wins, as in MaxOfMagnitudes (torch's amax).
__device__ __forceinline__ float LaneMaxOfMagnitudes(float v, unsigned mask) {
  return __uint_as_float(__reduce_max_sync(mask, __float_as_uint(v)));
}
template <typename Op>
__device__ __forceinline__ float CombineWarps(const float* warp_values, int warps, Op op) {
  float total = warp_values[0];
  for (int w = 1; w < warps; ++w) total = op(total, warp_values[w]);
  return total;
}
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};
// The max of magnitudes (values >= +0, +inf or NaN; a NaN wins: LaneMaxOfMagnitudes).
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return MaxOfMagnitudes(a, b); }
};
// A warp's sum in the row layout's order (xor butterfly); a warp's max in one reduction.
template <typename Op>
__device__ __forceinline__ float WarpReduce(float v, Op op) {
  if constexpr (std::is_same_v<Op, MaxOp>) {
    return LaneMaxOfMagnitudes(v, 0xffffffffu);
  } else {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
  }
}

// A row owned by one block: row thread t is thread t of the block; block b runs rows b,
// b + gridDim, ...
struct BlockRow {
  __device__ __forceinline__ static int Thread() { return threadIdx.x; }
  __device__ __forceinline__ static int Threads() { return blockDim.x; }
  __device__ __forceinline__ static int64_t FirstRow() { return blockIdx.x; }
  __device__ __forceinline__ static int64_t RowStride() { return gridDim.x; }
  __device__ __forceinline__ static void Arrive() {}
  __device__ __forceinline__ static void Wait() {}
};

// Threads of a PackedRows block at most (the launcher's PackedBlockWarps chooses fewer at small
// T).
inline constexpr int kMaxPackedBlockThreads = 256;

// Rows packed into blocks, for rows of one or two warps' layout (H <= 512: common/row_layout.h):
// each aligned group of kRowLanes threads (4, 8, 16, 32 or 64) owns a row, so a block holds
// blockDim / kRowLanes rows at once where one block per row would start a block of one or two
// warps per row (measured: at 4096 rows and more the blocks' start, not the bytes, set one block
// per row's time; docs/kernels.md). Group g of block b runs rows b x (groups per block) + g, then
// on by the grid's groups. A thread's vector k is the row's vector Thread() + k x Threads().
// - Groups of a warp or less (H <= 256, one vector per thread): the layout's row threads past
//   kRowLanes own no vector of the row (vecs <= kRowLanes), and a row's values never leave its
//   group: a reduction is a butterfly (or an integer reduction) over the group's lanes, under the
//   group's lane mask, as cooperative groups' tiles reduce; a group whose rows have ended exits
//   without the others. The sum keeps the layout's order: the butterfly's levels at offsets >=
//   kRowLanes would add the sums of lanes that own no vector, +0, and s + (+0) = s for every sum
//   of squares (>= +0 or NaN).
// - Groups below a warp at two vectors per thread (H <= 256, vecs <= 2 x kRowLanes): lane l
//   holds the layout's row threads l (vector 0) and kRowLanes + l (vector 1). The layout's
//   butterfly adds +0 at the levels past 2 x kRowLanes, then at level kRowLanes row threads l
//   and kRowLanes + l: that is the lane's two sums added (RowSumOfParts; a + b = b + a in IEEE
//   arithmetic), and the group's butterfly of those is the rest of the layout's levels. Half the
//   lanes per row, so each thread's per-row work (the reductions, r, the addresses) covers
//   twice the vectors.
// - Rows of two warps' layout (H 264-512), two ways:
//   - a warp per row at two vectors per thread (kRowLanes 32, kVec 2): lane l holds the layout's
//     row threads l (vector 0) and 32 + l (vector 1), one of each of its warps. Their sums of
//     squares stay apart, each reduced by the warp's butterfly as its layout warp reduces it, then
//     added in warp order (RowSumOfParts): the layout's order, in registers;
//   - groups of two warps (kRowLanes 64, one vector per thread): the layout's two warps, each
//     reducing as a warp does, then the row's warp values through shared memory in warp order
//     (CombineWarps, as one block per row), behind a named barrier of the group's 64 threads
//     (barrier 1 + the group's index). Each row's chain is half as long: faster at small T, where
//     a row's latency sets the time (the launcher's PackedRowLanes).
// NOTE: a reduction row of shared memory is used again two rows later (slot parity): a warp that
// stores row i + 2's value has passed row i + 1's barrier, which its partner reaches only after
// reading row i's values (as BlockSum's __syncthreads).
template <int kRowLanes>
struct PackedRows {
  static_assert(kRowLanes == 4 || kRowLanes == 8 || kRowLanes == 16 || kRowLanes == 32 || kRowLanes == 64,
                "a group is an aligned power of two lanes, or two warps");
  static constexpr int kLanes = kRowLanes;
  static constexpr int kRowWarps = kRowLanes > 32 ? kRowLanes / 32 : 1;
  __device__ __forceinline__ static int Thread() { return threadIdx.x & (kRowLanes - 1); }
  __device__ __forceinline__ static int Threads() { return kRowLanes; }
  __device__ __forceinline__ static int64_t FirstRow() {
    return int64_t(blockIdx.x) * (blockDim.x / kRowLanes) + threadIdx.x / kRowLanes;
  }
  __device__ __forceinline__ static int64_t RowStride() { return int64_t(gridDim.x) * (blockDim.x / kRowLanes); }
  __device__ __forceinline__ static void Arrive() {}
  __device__ __forceinline__ static void Wait() {}
  // The lanes of this thread's warp that reduce together: its group's, or the whole warp.
  __device__ __forceinline__ static unsigned LaneMask() {
    if constexpr (kRowLanes >= 32) return 0xffffffffu;
    else return ((1u << kRowLanes) - 1u) << (threadIdx.x & 31 & ~(kRowLanes - 1));
  }
  template <typename Op>
  __device__ __forceinline__ static float Reduce(float v, Op op, float (*smem)[32], int reduction_row) {
    if constexpr (kRowWarps > 1) {
      static_assert(kMaxPackedBlockThreads / kRowLanes <= 15, "a named barrier per group (0 is __syncthreads')");
      v = WarpReduce(v, op);
      const int warp = threadIdx.x >> 5;
      if ((threadIdx.x & 31) == 0) smem[reduction_row][warp] = v;
      asm volatile("bar.sync %0, %1;" ::"r"(1 + threadIdx.x / kRowLanes), "r"(kRowLanes) : "memory");
      return CombineWarps(&smem[reduction_row][warp & ~(kRowWarps - 1)], kRowWarps, op);
    } else if constexpr (std::is_same_v<Op, MaxOp>) {
      return LaneMaxOfMagnitudes(v, LaneMask());
    } else {
#pragma unroll
      for (int offset = kRowLanes / 2; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(LaneMask(), v, offset));
      return v;
    }
  }
};

// The blocks of a thread block cluster that owns rows (launched with cluster dimension C): its
// rank and size, its rows, and the exchange of per-warp values between its blocks, which the
// row owners ClusterRow and ClusterPairRow (below) reduce with. Cluster c runs rows c,
// c + clusters, ... (the launcher's rule gives each cluster one row; a cap on the owners,
// LaunchOptions::max_row_owners, makes clusters stride over several).
// Exchange: lane j of each sending warp stores the warp's values into block j's shared memory
// with st.async, which completes bytes on block j's mbarrier for that reduction row (release at
// cluster scope); each block waits on its own mbarrier for the senders' bytes (acquire at
// cluster scope). Every thread of the block arrives on the mbarrier (the expected count:
// blockDim) and waits on the phase its arrival returned. One one-way trip per reduction: a
// cluster barrier per reduction instead took 0.1-0.5 us more per row at T = 1
// (docs/perf/h200x1/NOTES.md, runs 15 and 16).
// NOTE: a reduction row (smem row and its mbarrier) is used again two rows later at the earliest
// (slot parity; later where fp8_token's bound skips the row's second exchange): a block that
// sends row i + 2's value into block j has completed row i + 1, which needed j's value of row
// i + 1, which j's warps send after their threads read row i's values (__syncwarp orders the
// warp's reads before its lanes' stores; for ClusterPairRow's part 0 warps, which send no sums,
// see its NOTE). Arrive() (the kernel's start) initializes the
// mbarriers and arrives on a cluster barrier that publishes them; Wait() (before the first
// reduction) waits on it, so no block stores into a block that has not started. A block may exit
// after its last reduction: every store into it completed its mbarrier before.
// NOTE: cluster instructions exist from compute capability 9.0. Code built below it traps; the
// launcher never picks a cluster owner there (no cluster launch on the device, or a kernel
// compiled from PTX below compute_90: ClusterKernelRuns).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
struct RowCluster {
  __device__ __forceinline__ static int Rank() { __trap(); return 0; }
  __device__ __forceinline__ static int Size() { __trap(); return 1; }
  __device__ __forceinline__ static int64_t FirstRow() { __trap(); return 0; }
  __device__ __forceinline__ static int64_t RowStride() { __trap(); return 1; }
  __device__ __forceinline__ static void Arrive() { __trap(); }
  __device__ __forceinline__ static void Wait() {}
  template <int kValues>
  __device__ __forceinline__ static void Exchange(const float (&)[kValues], float (*)[32], int, int, int, bool) {
    __trap();
  }
};
#else
struct RowCluster {
  __device__ __forceinline__ static int Rank() {
    uint32_t r;
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return int(r);
  }
  __device__ __forceinline__ static int Size() {
    uint32_t n;
    asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    return int(n);
  }
  __device__ __forceinline__ static int64_t FirstRow() {
    uint32_t c;
    asm("mov.u32 %0, %%clusterid.x;" : "=r"(c));
    return c;
  }
  __device__ __forceinline__ static int64_t RowStride() {
    uint32_t n;
    asm("mov.u32 %0, %%nclusterid.x;" : "=r"(n));
    return n;
  }
  // One mbarrier per reduction row of smem.
  __device__ __forceinline__ static uint64_t* Barriers() {
    __shared__ uint64_t barriers[4];
    return barriers;
  }
  __device__ __forceinline__ static void Arrive() {
    if (threadIdx.x < 4) {
      const uint32_t bar = static_cast<uint32_t>(__cvta_generic_to_shared(Barriers() + threadIdx.x));
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(blockDim.x) : "memory");
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
  }
  __device__ __forceinline__ static void Wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
  // Where `sends` (the same in a whole warp), lane j of the warp stores its kValues values
  // (already reduced over the warp) into block j, at smem[reduction_row][index * kValues ...];
  // every thread of the block then waits until the values of `senders` warps have landed
  // (senders x kValues <= 32; 8-byte aligned for two).
  template <int kValues>
  __device__ __forceinline__ static void Exchange(const float (&v)[kValues], float (*smem)[32], int reduction_row,
                                                  int index, int senders, bool sends) {
    static_assert(kValues == 1 || kValues == 2, "one or two values per warp");
    static_assert(kMaxRowThreads / 32 * 2 <= 32, "a row's warps' pairs (or a pair row's warps' values) fit one smem row");
    const uint32_t bar = static_cast<uint32_t>(__cvta_generic_to_shared(Barriers() + reduction_row));
    const int lane = threadIdx.x & 31;
    __syncwarp();  // the warp's reads of this row's last use come before its stores (NOTE above)
    if (sends && lane < Size()) {
      const uint32_t value = static_cast<uint32_t>(__cvta_generic_to_shared(&smem[reduction_row][index * kValues]));
      uint32_t remote_value, remote_bar;
      asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote_value) : "r"(value), "r"(lane));
      asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote_bar) : "r"(bar), "r"(lane));
      if constexpr (kValues == 1) {
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(remote_value),
                     "r"(__float_as_uint(v[0])), "r"(remote_bar)
                     : "memory");
      } else {
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.b32 [%0], {%1, %2}, [%3];" ::"r"(
                         remote_value),
                     "r"(__float_as_uint(v[0])), "r"(__float_as_uint(v[1])), "r"(remote_bar)
                     : "memory");
      }
    }
    uint64_t state;
    if (threadIdx.x == 0) {
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;"
                   : "=l"(state)
                   : "r"(bar), "r"(uint32_t(senders) * 4u * kValues)
                   : "memory");
    } else {
      asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];" : "=l"(state) : "r"(bar) : "memory");
    }
    asm volatile(
        "{\n\t.reg .pred done;\n"
        "WAIT_%=:\n\t"
        "mbarrier.try_wait.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra WAIT_%=;\n}" ::"r"(bar),
        "l"(state)
        : "memory");
  }
};
#endif

// The row's sum and max over the exchanged values of the row's warps (CombineWarps' order), in
// one pass: the sum is bitwise CombineWarps(sums, SumOp{}).
__device__ __forceinline__ float2 CombineWarpPairs(const float* smem_row, int warps) {
  const float2* values = reinterpret_cast<const float2*>(smem_row);
  float2 total = values[0];
  for (int w = 1; w < warps; ++w) {
    const float2 v = values[w];
    total.x = SumOp{}(total.x, v.x);
    total.y = MaxOp{}(total.y, v.y);
  }
  return total;
}

// A row owned by a cluster of C blocks: the block layout of the row split into C blocks of
// blockDim threads on C SMs, row thread t = rank * blockDim + threadIdx.x (so every row thread
// owns the vectors it owns in BlockRow). Every warp sends its value in each reduction.
struct ClusterRow : RowCluster {
  __device__ __forceinline__ static int Thread() { return Rank() * blockDim.x + threadIdx.x; }
  __device__ __forceinline__ static int Threads() { return Size() * blockDim.x; }
  template <typename Op>
  __device__ __forceinline__ static float Reduce(float v, Op op, float (*smem)[32], int reduction_row) {
    const float warp_value[1] = {WarpReduce(v, op)};
    Exchange(warp_value, smem, reduction_row, Thread() >> 5, Threads() >> 5, true);
    return CombineWarps(smem[reduction_row], Threads() >> 5, op);
  }
  // The row's sum of `sum` and max of `max` (magnitudes) through one exchange: the sum is
  // bitwise Reduce(sum, SumOp{}) (the same order).
  __device__ __forceinline__ static float2 ReduceSumAndMax(float sum, float max, float (*smem)[32], int reduction_row) {
    const float warp_values[2] = {WarpReduce(sum, SumOp{}), WarpReduce(max, MaxOp{})};
    Exchange(warp_values, smem, reduction_row, Thread() >> 5, Threads() >> 5, true);
    return CombineWarpPairs(smem[reduction_row], Threads() >> 5);
  }
};

// Threads of a ClusterRow block at most: two warps (the launcher's ClusterBlocks splits rows
// so; see kSpanMaxThreads).
inline constexpr int kMaxClusterBlockThreads = 64;

// A row owned by a cluster, for rows of two vectors per row thread: each row thread's two
// vectors are held by two threads, its parts, so a thread computes one vector and a block's
// warps are twice the row threads' (at T = 1 four per SM where ClusterRow has two: every
// scheduler of the SM issues, and each thread's chain is half as long; docs/kernels.md). Warp
// 2i + part of a block holds part `part` of the block's row warp i: row thread
// t = rank * blockDim / 2 + 32 i + lane owns vectors t (part 0) and t + n (part 1), n the row
// threads, as in the block layout. Thread() is the vector this thread holds (so RowVectors<1,
// ClusterPairRowOf> indexes it), Threads() = 2n. kMaxBlockThreads: the blocks' threads at most
// (two instantiations: ClusterPairRow for the split of rows into blocks of two row warps, and
// WideClusterPairRow for clusters of fewer, larger blocks at larger T; the small one keeps its
// launch bounds, under which it measured 2 % faster at T = 1, docs/perf/h200x1/NOTES.md, run 32).
// The sum of squares keeps the layout's order: part 0 sums its vector's squares from +0 and
// hands its sum to part 1 through shared memory (a named barrier of the warp pair), which goes
// on with its own vector's (ChainSum); the row's reductions of sums then read part 1's warps
// only. Maxima (a set: any order) read every warp.
// NOTE: the hand-off's shared memory and named barrier are used again for the next row (the
// shared memory by slot parity, with room to spare): part 0 reaches row i + 1's hand-off and
// bar.arrive only after row i's sum exchange completed, which needs every part 1 warp's value of
// row i, sent after that warp passed row i's barrier and read row i's hand-off. The same chain
// orders part 0 warps' reads of a reduction row before its reuse two rows later (they send no
// sums into it).
template <int kMaxBlockThreads>
struct ClusterPairRowOf : RowCluster {
  static constexpr int kMaxThreads = kMaxBlockThreads;
  __device__ __forceinline__ static int Part() { return (threadIdx.x >> 5) & 1; }
  // This thread's row thread: its index in the row's threads, and the index among the block's.
  __device__ __forceinline__ static int BlockRowThread() { return ((threadIdx.x >> 6) << 5) | (threadIdx.x & 31); }
  __device__ __forceinline__ static int RowThreads() { return Size() * (blockDim.x >> 1); }
  __device__ __forceinline__ static int RowThread() { return Rank() * (blockDim.x >> 1) + BlockRowThread(); }
  __device__ __forceinline__ static int Thread() { return RowThread() + Part() * RowThreads(); }
  __device__ __forceinline__ static int Threads() { return 2 * RowThreads(); }
  // The row thread's sum of squares in the layout's order, given this thread's vector's squares,
  // and the max of both parts' `max`: in part 1 (part 0 gets its own vector's).
  __device__ __forceinline__ static float2 ChainSum(const float (&squares)[kVecElems], float max, int slot) {
    static_assert(kMaxBlockThreads / 64 <= 15, "a named barrier per warp pair (0 is __syncthreads')");
    __shared__ float2 handoff[2][kMaxBlockThreads / 2];
    const int pair_barrier = 1 + (threadIdx.x >> 6);
    float2 own = make_float2(0.0f, max);
    if (Part() == 1) {
      asm volatile("bar.sync %0, 64;" ::"r"(pair_barrier) : "memory");
      const float2 first = handoff[slot][BlockRowThread()];
      own = make_float2(first.x, MaxOfMagnitudes(first.y, max));
    }
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) own.x = __fadd_rn(own.x, squares[i]);
    if (Part() == 0) {
      handoff[slot][BlockRowThread()] = own;
      asm volatile("bar.arrive %0, 64;" ::"r"(pair_barrier) : "memory");
    }
    return own;
  }
  // Sums: of the row threads' sums (ChainSum's, held by part 1); maxima: of every thread's value.
  template <typename Op>
  __device__ __forceinline__ static float Reduce(float v, Op op, float (*smem)[32], int reduction_row) {
    const float warp_value[1] = {WarpReduce(v, op)};
    if constexpr (std::is_same_v<Op, SumOp>) {
      Exchange(warp_value, smem, reduction_row, RowThread() >> 5, RowThreads() >> 5, Part() == 1);
      return CombineWarps(smem[reduction_row], RowThreads() >> 5, op);
    } else {
      Exchange(warp_value, smem, reduction_row, Thread() >> 5, Threads() >> 5, true);
      return CombineWarps(smem[reduction_row], Threads() >> 5, op);
    }
  }
  // ClusterRow's, for ChainSum's sums and maxima (part 1 holds both parts' max).
  __device__ __forceinline__ static float2 ReduceSumAndMax(float sum, float max, float (*smem)[32], int reduction_row) {
    const float warp_values[2] = {WarpReduce(sum, SumOp{}), WarpReduce(max, MaxOp{})};
    Exchange(warp_values, smem, reduction_row, RowThread() >> 5, RowThreads() >> 5, Part() == 1);
    return CombineWarpPairs(smem[reduction_row], RowThreads() >> 5);
  }
};

using ClusterPairRow = ClusterPairRowOf<2 * kMaxClusterBlockThreads>;
using WideClusterPairRow = ClusterPairRowOf<kMaxRowThreads>;  // clusters of 2 blocks or more

// Whether a row owner is a cluster, and whether its threads hold a row thread's vectors in parts.
template <typename Span>
inline constexpr bool kClusterSpan = std::is_base_of_v<RowCluster, Span>;
template <typename Span>
inline constexpr bool kPairSpan = std::is_same_v<Span, ClusterPairRow> || std::is_same_v<Span, WideClusterPairRow>;
template <typename Span>
inline constexpr bool kPackedSpan = std::is_same_v<Span, PackedRows<4>> || std::is_same_v<Span, PackedRows<8>> ||
                                    std::is_same_v<Span, PackedRows<16>> ||
                                    std::is_same_v<Span, PackedRows<32>> || std::is_same_v<Span, PackedRows<64>>;
// The lanes that reduce a row's values together in a warp: all 32, or a PackedRows group's.
template <typename Span>
__device__ __forceinline__ unsigned RowLaneMask() {
  if constexpr (kPackedSpan<Span>) return Span::LaneMask();
  else return 0xffffffffu;
}

// __launch_bounds__ of the epilogue kernel by row owner: one block per row as kMinBlocksPerSm
// says; a cluster's blocks have at most two row warps (the launcher's ClusterBlocks), a pair
// cluster's at most kMaxThreads; they run a few per SM at the small T the clusters serve, so
// their registers are not capped for occupancy. Packed rows (PackedRows) have at most
// kMaxPackedBlockThreads and the register cap of one block per row at one vector per thread (64),
// except the run-time recipe at two vectors per thread, which spills there: three blocks (85).
// The norm alone's one block per row at two vectors per thread (NormAloneRecipe, quant none and
// fp8_tensor) is held to three blocks (40 registers): at 42, fp8_tensor's took two 448-thread
// rows per SM where quant none's 39 took three (an SM hands each warp its registers from one of
// four quarters), and ran 1.19 x Inductor's kernel at H 7168; at 40, 1.01 x
// (docs/perf/h100x1/NOTES.md, runs 94-95). With the residual the bound stays two.
template <typename Span>
constexpr int SpanMaxThreads() {
  if constexpr (kPairSpan<Span>) return Span::kMaxThreads;
  else if constexpr (kPackedSpan<Span>) return kMaxPackedBlockThreads;
  else return kClusterSpan<Span> ? kMaxClusterBlockThreads : kMaxRowThreads;
}
template <typename Span>
inline constexpr int kSpanMaxThreads = SpanMaxThreads<Span>();
template <typename Span, int kVec, typename Recipe>
constexpr int SpanMinBlocks() {
  if constexpr (kClusterSpan<Span>) return 1;
  else if constexpr (kPackedSpan<Span>)
    return kVec > 1 && std::is_same_v<Recipe, RuntimeRecipe> ? 3 : kMinBlocksPerSm<1> * kMaxRowThreads / kMaxPackedBlockThreads;
  else if constexpr (kVec == 2 && kNormAloneRecipe<Recipe>) return 3;
  else return kMinBlocksPerSm<kVec>;
}
template <typename Span, int kVec, typename Recipe>
inline constexpr int kSpanMinBlocks = SpanMinBlocks<Span, kVec, Recipe>();

// BlockRow's reductions, one function per operation: a version generic over the operation
// changed ptxas's register allocation and measured 3-5 % slower for fp8_group at T >= 256
// (docs/perf/h200x1/NOTES.md, run 17).
__device__ __forceinline__ float BlockSum(float v, float (*smem)[32], int slot) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) smem[slot][warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float total = smem[slot][0];
  for (int w = 1; w < warps; ++w) total = __fadd_rn(total, smem[slot][w]);
  return total;
}

// (Of magnitudes: LaneMaxOfMagnitudes.)
__device__ __forceinline__ float BlockMax(float v, float (*smem)[32], int slot) {
  v = LaneMaxOfMagnitudes(v, 0xffffffffu);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) smem[slot][warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float total = smem[slot][0];
  for (int w = 1; w < warps; ++w) total = MaxOfMagnitudes(total, smem[slot][w]);
  return total;
}

// SoleBlockRecipe's BlockSum: the same sum in the same order (+0, then warp 0's sum, warp 1's,
// ...: +0 + s = s for every sum of squares, >= +0 or NaN), the warps' sums read four at a time,
// +0 past the last warp up to the end of its four (adding +0 changes no sum): at most four
// 16-byte shared loads per thread, not one per warp in a loop. After the row's barrier every
// warp's instructions are the row's time where its block is alone on its SM (docs/kernels.md,
// "Instructions after the row's sum"). Threads past the last warp's index write the +0 before
// the barrier; no warp's sum lands there.
__device__ __forceinline__ float SoleBlockSum(float v, int slot) {
  static_assert(kMaxRowThreads / 32 <= 16, "four chunks of four warps' sums");
  __shared__ float4 sums[2][4];
  v = WarpReduce(v, SumOp{});
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  float* const row_sums = reinterpret_cast<float*>(sums[slot]);
  if (lane == 0) row_sums[warp] = v;
  if (threadIdx.x >= warps && threadIdx.x < 16) row_sums[threadIdx.x] = 0.0f;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    if (4 * c >= warps) break;
    const float4 q = sums[slot][c];
    total = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(total, q.x), q.y), q.z), q.w);
  }
  return total;
}

// Sum, and max of magnitudes, over the row of the owner Span (rows 0-1 and 2-3 of smem by slot).
template <typename Span>
__device__ __forceinline__ float RowSum(float v, float (*smem)[32], int slot) {
  if constexpr (std::is_same_v<Span, BlockRow>) return BlockSum(v, smem, slot);
  else return Span::Reduce(v, SumOp{}, smem, slot);
}
template <typename Span>
__device__ __forceinline__ float RowMax(float v, float (*smem)[32], int slot) {
  if constexpr (std::is_same_v<Span, BlockRow>) return BlockMax(v, smem + 2, slot);
  else return Span::Reduce(v, MaxOp{}, smem, 2 + slot);
}

// The row's sum of a thread's sums of squares kept in kParts parts: one part (RowSum), or, for
// packed rows at two vectors per thread (kSumParts), part k the layout's row thread
// k x Threads() + lane: for a warp per row of two warps' layout, each part reduced over the warp
// as layout warp k reduces it, the warps' sums then added in order; for a group below a warp
// (one warp's layout), the two parts added, as the layout's butterfly level Threads() adds
// them, then the group's butterfly (PackedRows).
template <typename Span, int kVec>
inline constexpr int kSumParts = kPackedSpan<Span> ? kVec : 1;
template <typename Span, int kParts>
__device__ __forceinline__ float RowSumOfParts(const float (&parts)[kParts], float (*smem)[32], int slot) {
  if constexpr (kParts == 1) {
    return RowSum<Span>(parts[0], smem, slot);
  } else if constexpr (kPackedSpan<Span> && Span::kLanes < 32) {
    static_assert(kParts == 2, "a group below a warp holds two of the layout's row threads");
    return Span::Reduce(__fadd_rn(parts[0], parts[1]), SumOp{}, smem, slot);
  } else {
    static_assert(std::is_same_v<Span, PackedRows<32>>, "parts of a sum: a warp per row of two warps' layout");
    float warp_sums[kParts];
#pragma unroll
    for (int k = 0; k < kParts; ++k) warp_sums[k] = WarpReduce(parts[k], SumOp{});
    return CombineWarps(warp_sums, kParts, SumOp{});
  }
}

// Max over aligned groups of `lanes` consecutive lanes (lanes a power of two <= 32, the same in
// every lane), for each of a thread's kVec values (magnitudes: LaneMaxOfMagnitudes) at once:
// one xor butterfly level per step, only the levels inside a group, the kVec chains side by
// side. With kWholeWarp (where it was measured: the pair clusters' kernels, one vector per
// thread, and SoleBlockRecipe's, two) and groups of 16 or 32 lanes, one integer reduction of the
// whole warp per group of each of the kVec values instead (two per value at 16 lanes), on the
// group's values and zeros elsewhere: independent reductions, not four dependent levels
// (fp8_group 128 2-4 % faster at T <= 32 in the pair clusters, docs/perf/h200x1/NOTES.md, run
// 31; an integer reduction over the group's lanes alone, each half warp with its own mask,
// measured 2-34 % slower: run 25). Either way a NaN wins, as in MaxOfMagnitudes. `mask`: the
// lanes that shuffle together (RowLaneMask: a PackedRows group's, which holds whole groups).
template <int kVec, bool kWholeWarp = false>
__device__ __forceinline__ void LaneGroupMax(float (&v)[kVec], int lanes, unsigned mask = 0xffffffffu) {
  if (kWholeWarp && lanes >= 16) {
    const bool low = (threadIdx.x & 31) < 16;  // the lower group, where a warp holds two
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if (lanes == 32) {
        v[k] = LaneMaxOfMagnitudes(v[k], 0xffffffffu);
      } else {
        const float lower = LaneMaxOfMagnitudes(low ? v[k] : 0.0f, 0xffffffffu);
        const float upper = LaneMaxOfMagnitudes(low ? 0.0f : v[k], 0xffffffffu);
        v[k] = low ? lower : upper;
      }
    }
    return;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    if (offset >= lanes) continue;
#pragma unroll
    for (int k = 0; k < kVec; ++k) v[k] = MaxOfMagnitudes(v[k], __shfl_xor_sync(mask, v[k], offset));
  }
}

// ================================================================ the per-row epilogue

// Thread layout of a row (common/row_layout.h): row thread i of n (Span::Thread, Span::Threads)
// owns vectors i, i + n, ..., i + (kVec - 1) n (those < H/8). n is a multiple of 32 fixed by H
// (packed rows: the group's lanes, 4-64, holding the layout's row threads as PackedRows says),
// so the sum of squares has one fixed order and groups of group_size/8 consecutive vectors are
// owned by aligned lane groups.
template <int kVec, typename Span = BlockRow>
struct RowVectors {
  __device__ __forceinline__ static int Index(int k) { return Span::Thread() + k * Span::Threads(); }
};

// w' = w + weight_bias for one decoded weight vector (see LoadWeightVector).
template <class Recipe>
__device__ __forceinline__ void ApplyWeightBias(const FusedKernelParams& p, float (&wb)[kVecElems]) {
  if (Recipe::WeightBias(p) == 0.0f) return;
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) wb[i] = __fadd_rn(wb[i], Recipe::WeightBias(p));
  if (Recipe::BiasInWeightDType(p)) {
    if (Recipe::WeightDType(p) == DType::kBF16) RoundVector<__nv_bfloat16>(wb);
    else if (Recipe::WeightDType(p) == DType::kF16) RoundVector<__half>(wb);
  }
}

// Weight vector v as w' = w + weight_bias (Contract 3 step 3: an f32 add, or rounded to the
// weight's dtype when the replaced graph adds the bias there; no add when the bias is 0, so a
// -0.0 weight stays -0.0 as in the graph that multiplies by w itself).
// NOTE: PreNormRecipe's pre_weight takes the same steps split in two (PreWeightWords, then
// DecodePreWeight); through one function for both, ptxas gave six of the F32ResidualRecipe
// kernels 1-3 registers fewer (cuobjdump), code whose times were not measured.
template <class Recipe>
__device__ __forceinline__ void LoadWeightVector(const FusedKernelParams& p, int v, float (&wb)[kVecElems]) {
  if (Recipe::WeightDType(p) == DType::kF32) {
    const float4* w = reinterpret_cast<const float4*>(p.weight) + 2 * v;
    const float4 lo = __ldg(w), hi = __ldg(w + 1);
    wb[0] = lo.x; wb[1] = lo.y; wb[2] = lo.z; wb[3] = lo.w;
    wb[4] = hi.x; wb[5] = hi.y; wb[6] = hi.z; wb[7] = hi.w;
  } else {
    const uint4 w = __ldg(reinterpret_cast<const uint4*>(p.weight) + v);
    if (Recipe::WeightDType(p) == DType::kBF16) Unpack<__nv_bfloat16>(w, wb);
    else Unpack<__half>(w, wb);
  }
  ApplyWeightBias<Recipe>(p, wb);
}

// This thread's weights, fetched before waiting for the previous kernel (weights are parameters,
// nobody writes them) so their latency overlaps it:
// - kHeld: as f32 in registers (8 registers per vector);
// - otherwise 16-bit weights are copied to shared memory with cp.async (no registers; each
//   thread copies and later reads only its own vectors, so no barrier is needed), and f32
//   weights are read per row (L1/L2 hits).
template <int kVec, bool kHeld, typename Span = BlockRow, typename Recipe = RuntimeRecipe>
struct RowWeights {
  float wb[kHeld ? kVec : 1][kVecElems];
  uint4* staged = nullptr;  // !kHeld: shared memory indexed by the row's vector (this thread's kVec)

  __device__ __forceinline__ void Preload(const FusedKernelParams& p, uint4* smem_vectors) {
    if constexpr (kHeld) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec, Span>::Index(k);
#pragma unroll
        for (int i = 0; i < kVecElems; ++i) wb[k][i] = 0.0f;
        if (v < p.vecs_per_row) LoadWeightVector<Recipe>(p, v, wb[k]);
      }
    } else {
      if (Recipe::WeightDType(p) == DType::kF32) return;
      staged = smem_vectors;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec, Span>::Index(k);
        if (v < p.vecs_per_row) CopyAsync16(staged + v, static_cast<const uint4*>(p.weight) + v);
      }
      CopyAsyncCommit();
    }
  }
  // Called once before the first Get (after the wait for the previous kernel).
  __device__ __forceinline__ void Ready() const {
    if constexpr (!kHeld) CopyAsyncWaitAll();
  }
  // Vector k's staged 16-bit words (!kHeld, a 16-bit weight), to be read early and turned into
  // Get's weights later by FromStagedWords.
  __device__ __forceinline__ uint4 StagedWords(int k) const { return staged[RowVectors<kVec, Span>::Index(k)]; }
  // Get's weights of staged words: the recipe's dtype and bias, each element unpacked by its
  // bits (UnpackRounded: the same floats as Unpack).
  __device__ __forceinline__ void FromStagedWords(const FusedKernelParams& p, const uint4& w,
                                                  float (&out)[kVecElems]) const {
    if (Recipe::WeightDType(p) == DType::kBF16) UnpackRounded<__nv_bfloat16>(w, out);
    else UnpackRounded<__half>(w, out);
    ApplyWeightBias<Recipe>(p, out);
  }
  // Vector k's weights. For a vector past the row (whose results nobody stores) the values are
  // zeros (held), whatever the staging holds there (staged), or the row's last vector's (f32):
  // never a read outside the weight or the staging.
  __device__ __forceinline__ void Get(const FusedKernelParams& p, int k, float (&out)[kVecElems]) const {
    if constexpr (kHeld) {
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) out[i] = wb[k][i];
    } else if (staged != nullptr) {  // (a test of the recipe's weight dtype instead, constant
                                     // for the fixed recipes, cost registers: docs/kernels.md)
      const uint4 w = staged[RowVectors<kVec, Span>::Index(k)];
      if (Recipe::WeightDType(p) == DType::kBF16) Unpack<__nv_bfloat16>(w, out);
      else Unpack<__half>(w, out);
      ApplyWeightBias<Recipe>(p, out);
    } else {
      LoadWeightVector<Recipe>(p, min(RowVectors<kVec, Span>::Index(k), p.vecs_per_row - 1), out);
    }
  }
};

// This thread's residual vectors of `row` (zeros without a residual): issued before the
// caller waits on peers so the load overlaps the wait.
template <int kVec, typename Span = BlockRow, typename Recipe = RuntimeRecipe>
__device__ __forceinline__ void LoadResidual(const FusedKernelParams& p, int64_t row,
                                             ResidualVector<Recipe> (&res)[kVec]) {
  if constexpr (kF32ResidualRecipe<Recipe>) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec, Span>::Index(k);
      const size_t index = size_t(row) * p.vecs_per_row + v;
      res[k].lo = res[k].hi = make_uint4(0, 0, 0, 0);
      if (p.residual && v < p.vecs_per_row) {
        const uint4* words = static_cast<const uint4*>(p.residual);
        if (p.residual_f32_in) {
          res[k].lo = LoadGlobal(words + 2 * index);
          res[k].hi = LoadGlobal(words + 2 * index + 1);
        } else {
          res[k].lo = LoadGlobal(words + index);
        }
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec, Span>::Index(k);
      res[k] = make_uint4(0, 0, 0, 0);
      if (p.residual && v < p.vecs_per_row)
        res[k] = LoadGlobal(static_cast<const uint4*>(p.residual) + size_t(row) * p.vecs_per_row + v);
    }
  }
}

// Eight f32 values as two 16-byte words at `out` (an f32 residual_out or norm output; null: this
// thread stores none), streaming. Stored as they are, each 16-byte store of a warp writes half of
// every 32-byte sector it touches. `paired` (uniform): whole sectors per store instead. A
// thread's 32 bytes are vector v's; its lane's partner (lane ^ 1) holds vector v ^ 1, the 32
// bytes beside them (v = row thread + k x row threads, both even counts); the pair swaps halves
// (the even lane sends its high word, the odd lane its low one), so the pair's first store writes
// the even vector's 32 bytes and its second the odd one's. A lane whose partner stores nothing (a
// row's last vector where the row has an odd count) stores its own halves. Measured on one H100
// (run 106, docs/perf/h100x1/NOTES.md, both in one session): the f32 chains took 0.89-0.98 x the
// half-sector stores' time at T 128-8192. At T = 1, where the swap is on a row's path, the
// launcher keeps the halves (kF32PairedStoresMinRows).
// NOTE: with `paired`, every lane of the warp must call it (the swap is a warp shuffle); the
// F32ResidualRecipe kernels' row loops run every lane of every warp.
__device__ __forceinline__ void StoreF32Vector(bool paired, uint4* out, const float (&f)[kVecElems]) {
  const F32ResidualVector words = F32Words(f);
  const uint4 &lo = words.lo, &hi = words.hi;
  if (!paired) {
    if (out) {
      StoreStreaming(out, lo);
      StoreStreaming(out + 1, hi);
    }
    return;
  }
  const unsigned lane = threadIdx.x & 31u;
  const bool odd = lane & 1u;
  const unsigned storing = __ballot_sync(0xffffffffu, out != nullptr);
  const uint4 send = odd ? lo : hi;
  uint4 got;
  got.x = __shfl_xor_sync(0xffffffffu, send.x, 1);
  got.y = __shfl_xor_sync(0xffffffffu, send.y, 1);
  got.z = __shfl_xor_sync(0xffffffffu, send.z, 1);
  got.w = __shfl_xor_sync(0xffffffffu, send.w, 1);
  if (out == nullptr) return;
  if ((storing >> (lane ^ 1u)) & 1u) {
    // Even lane: its lo and the odd lane's lo; odd lane: the even lane's hi and its hi.
    StoreStreaming(odd ? out - 1 : out, odd ? got : lo);
    StoreStreaming(odd ? out + 1 : out + 2, odd ? hi : got);
  } else {
    StoreStreaming(out, lo);
    StoreStreaming(out + 1, hi);
  }
}

// Where vector v of `row_vec`'s row (row * vecs_per_row) of residual_out goes: an f32 one takes
// two words (F32ResidualRecipe).
template <typename Recipe>
__device__ __forceinline__ uint4* ResidualOutVector(const FusedKernelParams& p, size_t row_vec, int v) {
  if constexpr (kF32ResidualRecipe<Recipe>) {
    if (p.residual_out_f32) return static_cast<uint4*>(p.residual_out) + 2 * (row_vec + v);
  }
  return static_cast<uint4*>(p.residual_out) + row_vec + v;
}

// The static scale (fp8_tensor), loaded with the row's inputs so it costs no round trip of its own.
template <QuantMode kQuant>
__device__ __forceinline__ float LoadStaticScale(const FusedKernelParams& p) {
  if constexpr (kQuant == QuantMode::kFp8Tensor) return LoadGlobalF32(p.scale);
  return 1.0f;
}

// u = round(u * s), the f32 product rounded to T; a scale of 1 is no step.
template <typename T>
__device__ __forceinline__ void ScaleVector(float (&u)[kVecElems], float s) {
  if (s == 1.0f) return;
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) u[i] = __fmul_rn(u[i], s);
  RoundVector<T>(u);
}

// Contract 3 step 2 for one vector: a' = round(a * sum_scale) where the graph scaled a, then
// h = a' + residual in f32; returns the norm's input u (f32 h, or round(h) by default) and, when
// `residual_out` is set, stores round(h) there (F32ResidualRecipe: h itself where
// residual_out_f32, two words from `residual_out`).
template <typename T, class Recipe>
__device__ __forceinline__ void NormInput(const FusedKernelParams& p, const uint4& a,
                                          const ResidualVector<Recipe>& res, float (&u)[kVecElems],
                                          uint4* residual_out) {
  Unpack<T>(a, u);
  const bool scaled = Recipe::SumScale(p) != 1.0f;
  // NOTE: ScaleVector's step, written out: through the call the compiler schedules 64 of the
  // kernels differently (cuobjdump -sass), the run-time recipe's among them, whose times are
  // measured.
  if (scaled) {
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) u[i] = __fmul_rn(u[i], Recipe::SumScale(p));
    RoundVector<T>(u);
  }
  if constexpr (kF32ResidualRecipe<Recipe>) {
    if (p.residual) {
      float rf[kVecElems];
      if (p.residual_f32_in) {
        F32Values(res, rf);
      } else {
        Unpack<T>(res.lo, rf);
      }
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) u[i] = __fadd_rn(u[i], rf[i]);
      if (p.residual_out_f32) {
        // Every lane calls it (the store may pair lanes): p.residual_out is the same in all of
        // them, `residual_out` null where the vector is past the row.
        if (p.residual_out) StoreF32Vector(p.f32_paired_stores, residual_out, u);
        if (!Recipe::NormInputF32(p)) RoundVector<T>(u);
      } else {
        const uint4 h = Pack<T>(u);
        if (residual_out) StoreStreaming(residual_out, h);
        if (!Recipe::NormInputF32(p)) Unpack<T>(h, u);
      }
    } else if (residual_out) {
      StoreStreaming(residual_out, scaled ? Pack<T>(u) : a);
    }
  } else {
    if (p.residual) {
      float rf[kVecElems];
      Unpack<T>(res, rf);
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) u[i] = __fadd_rn(u[i], rf[i]);
      const uint4 h = Pack<T>(u);
      if (residual_out) StoreStreaming(residual_out, h);
      if (!Recipe::NormInputF32(p)) Unpack<T>(h, u);
    } else if (residual_out) {
      StoreStreaming(residual_out, scaled ? Pack<T>(u) : a);
    }
  }
}

// How the quantization applies its scale to y (Contract 3 step 4).
enum class ScaleStep : uint8_t {
  kMultiply,         // y * inv, inv = 1 / s taken once (also y / s when s is a power of two)
  kDivideBounded,    // y / s with |y / s| <= 448 (dynamic scales): QuotientByReciprocal
  kDivide,           // y / s for any s (a static scale): IEEE division
};

// q = fp8(y (step) s) for one vector of rounded y. The step is chosen once per vector, outside
// the element loop. A dynamic scale comes as its QuotientDivisor.
__device__ __forceinline__ uint2 QuantizeVector(float (&yf)[kVecElems], ScaleStep step, float s, float inv) {
  if (step == ScaleStep::kMultiply) {
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) yf[i] = __fmul_rn(yf[i], inv);
  } else if (step == ScaleStep::kDivideBounded) {
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) yf[i] = QuotientByReciprocal(yf[i], s, inv);
  } else {
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) yf[i] = __fdiv_rn(yf[i], s);
  }
  return ToFp8x8(yf);
}

// The dynamic scale s = max(amax, 1e-10) / 448, or max(amax / 448, 1 / (448 * 512)) under
// scale_floor_after_div (DynamicScaleOfAmax, common/quotient.h; ue8m0: rounded up to a power of
// two, from max(s, 1e-10) under ue8m0_floor, and then floored under scale_floor_after_div), and
// how y is divided by it.
template <class Recipe, QuantMode kQuant>
__device__ __forceinline__ float DynamicScale(const FusedKernelParams& p, float amax, ScaleStep& step) {
  // DynamicScaleOf (common/quotient.h) written out, the same operations in the same order:
  // through the call ptxas allocates the run-time recipe's kernels differently (checked again
  // with the floor after the rounding: -8..+5 registers there, and the one-shot fp8_group kernel
  // at two vectors per thread 90 -> 100). Keep the two in step.
  float s = DynamicScaleOfAmax(amax, Recipe::ScaleFloorAfterDiv(p) && !Recipe::ScaleUe8m0(p));
  if (Recipe::ScaleUe8m0(p)) {
    s = RoundUpToPowerOfTwo(Recipe::Ue8m0Floor(p) ? Ue8m0Floored(s) : s);
    if (Recipe::ScaleFloorAfterDiv(p)) s = FlooredAfterDiv(s);
  }
  // Dividing by a power of two (ue8m0) is multiplying by its exact reciprocal; floored after the
  // rounding, a ue8m0 scale may be the floor, no power of two.
  step = Recipe::QuantDivides(p, kQuant) && (!Recipe::ScaleUe8m0(p) || Recipe::ScaleFloorAfterDiv(p))
             ? ScaleStep::kDivideBounded
             : ScaleStep::kMultiply;
  return s;
}

// 1 / s, correctly rounded, for an f32 dynamic scale s: __frcp_rn's own fast path (the
// approximate reciprocal and one Newton step, the same instructions) without its branch to the
// slow path, which only s of exponent field 0, 253, 254 or 255 take (zero, subnormal, >= 2^126,
// inf, NaN). An f32 dynamic scale lies in [1e-10 / 448, 3.5e38 / 448], or is inf or NaN (an inf
// or NaN amax): the approximate reciprocal of inf is +0, taken as it is (the Newton step would
// make it NaN); a NaN stays NaN. The GPU test ScaleReciprocalIsFrcpRn checks every scale a 16-bit
// amax gives and inf, bit for bit (a NaN's payload aside).
// NOTE: not for ue8m0 scales, which may lie below the fast path's range.
__device__ __forceinline__ float DynamicScaleReciprocal(float s) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
  return r == 0.0f ? r : __fmaf_rn(r, -__fmaf_rn(r, s, -1.0f), r);
}

// 1 / s for a scale from DynamicScale: DynamicScaleReciprocal for f32 scales, __frcp_rn for
// ue8m0 ones (see the NOTE above).
template <class Recipe>
__device__ __forceinline__ float DynamicScaleInverse(const FusedKernelParams& p, float s) {
  return Recipe::ScaleUe8m0(p) ? __frcp_rn(s) : DynamicScaleReciprocal(s);
}

// max |y_i| over one vector, as a tree (the max of a set: any order gives the same value; a NaN
// wins, MaxOfMagnitudes).
__device__ __forceinline__ float VectorAbsMax(const float (&y)[kVecElems]) {
  float m[kVecElems / 2];
#pragma unroll
  for (int i = 0; i < kVecElems / 2; ++i) m[i] = MaxOfMagnitudes(fabsf(y[2 * i]), fabsf(y[2 * i + 1]));
#pragma unroll
  for (int w = kVecElems / 4; w > 0; w >>= 1) {
#pragma unroll
    for (int i = 0; i < w; ++i) m[i] = MaxOfMagnitudes(m[i], m[i + w]);
  }
  return m[0];
}

// A dynamic scale s as the bounded quotient takes it, with inv = DynamicScaleInverse(s): s, or
// +0 for s = inf (an inf amax), whose inv is +0 too: QuotientByReciprocal(y, +0, +0) is y * 0
// exactly, which is y / inf (+-0, and NaN for y = inf), where by inf itself the remainder would
// be NaN. Taken once per scale, not per vector: a select in the vectors' loop kept one more
// register live through it, which cost the two-vector one-block kernels their third block per SM
// at H 7168 (fp8_token 1.14 x slower at T >= 1024, run 64). (Registers decided where the row's
// scale is stored: fp8_token stores it first, fp8_group with its group's first q.)
__device__ __forceinline__ float QuotientDivisor(float s) { return s == INFINITY ? 0.0f : s; }
// The scale back from its divisor and reciprocal (inv is +0 for an inf scale only).
__device__ __forceinline__ float StoredScale(float divisor, float inv) { return inv == 0.0f ? INFINITY : divisor; }

// Where the scale of group `group` of `row` goes in the scales' layout (fp8_group).
__device__ __forceinline__ int64_t GroupScaleIndex(const FusedKernelParams& p, int64_t row, int group) {
  return p.scale_col_major ? int64_t(group) * p.scale_tokens_padded + row : row * p.groups_per_row + group;
}
// log2 of a group's vectors (group_vecs is a power of two): a group index is a shift, not an
// integer division.
__device__ __forceinline__ int GroupVecsShift(const FusedKernelParams& p) { return __ffs(p.group_vecs) - 1; }
// The step from a row's scale of one group to the next's: GroupScaleIndex(p, row, g + 1) -
// GroupScaleIndex(p, row, g).
__device__ __forceinline__ int64_t GroupScaleStep(const FusedKernelParams& p) {
  return p.scale_col_major ? p.scale_tokens_padded : 1;
}

// The points of a row's epilogue a probe sees (dev/epilogue_bench --phases times them).
enum class RowPhase : int { kOwnSum, kBlockSum, kRstd, kVectors, kDone };

// The probe of the kernels: nothing (a probe is a dev tool; an empty one changes no instruction).
struct NoRowProbe {
  __device__ __forceinline__ void operator()(RowPhase, float) const {}
};

// Contract 3 steps 2-4 for one row, given a = round(sum of partials) for this thread's vectors
// (zeros for vectors past the row), the residual vectors (likewise), and the static scale
// (fp8_tensor). Row-uniform: every thread of the row's block, or cluster (Span), calls it for
// the same row (it synchronizes). `probe(phase, value)` runs at each RowPhase once `value` is
// computed.
// Straight-line vectors: a thread computes all its vectors, those past the row included (on
// zeros), and only the stores ask whether a vector is in the row, so each step of the thread's
// vectors is one stretch of code the compiler interleaves, not one branch per vector whose
// chains run one after the other (docs/kernels.md). Nothing computed for a vector past the row
// reaches a store or a reduction: its squares are +0 (adding +0 changes no sum), and the maxima
// skip it.
template <typename T, int kVec, QuantMode kQuant, bool kHeld, typename Span, typename Recipe,
          typename Probe = NoRowProbe>
__device__ __forceinline__ void RowEpilogue(const FusedKernelParams& p, int64_t row, const uint4 (&a)[kVec],
                                            const ResidualVector<Recipe> (&res)[kVec],
                                            const RowWeights<kVec, kHeld, Span, Recipe>& weights,
                                            float static_scale, float (*smem)[32], int slot,
                                            Probe probe = {}) {
  const size_t row_vec = size_t(row) * p.vecs_per_row;
  bool in_row[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) in_row[k] = RowVectors<kVec, Span>::Index(k) < p.vecs_per_row;
  // SoleBlockRecipe's fp8_group: where the thread's q and group scales go, and which scales it
  // stores, taken here while the row's loads are in flight (PinInRegister), not after the row's
  // sum, where its warps' instructions are the row's time (SoleBlockSum's note).
  constexpr bool kSoleGroup = kQuant == QuantMode::kFp8Group && kSoleBlockRecipe<Recipe>;
  uint8_t* q_at[kSoleGroup ? kVec : 1];
  float* scale_at[kSoleGroup ? kVec : 1];
  int owns_scale[kSoleGroup ? kVec : 1];
  if constexpr (kSoleGroup) {
    const int group_shift = GroupVecsShift(p);
    float* const row_scales = p.scale_out + GroupScaleIndex(p, row, 0);
    const int64_t group_step = GroupScaleStep(p);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec, Span>::Index(k);
      q_at[k] = p.quant_out + size_t(row) * p.hidden + size_t(v) * kVecElems;
      scale_at[k] = row_scales + int64_t(v >> group_shift) * group_step;
      owns_scale[k] = in_row[k] && (v & (p.group_vecs - 1)) == 0;
      PinInRegister(q_at[k]);
      PinInRegister(scale_at[k]);
      PinInRegister(owns_scale[k]);
    }
  }
  // Its weights' words too (the fixed recipes' are staged: kHeld is false at two vectors per
  // thread), unpacked where they are used.
  uint4 weight_words[kSoleGroup ? kVec : 1];
  if constexpr (kSoleGroup) {
    static_assert(!kHeld && kVec == 2, "SoleBlockRecipe's kernels stage their weights");
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      weight_words[k] = weights.StagedWords(k);
      PinInRegister(weight_words[k]);
    }
  }

  // fp8_token over a cluster, with one rounding in y: the row's amax from a bound taken with the
  // sum of squares (common/amax_bound.h), so where the bound decides, the row crosses the
  // cluster once, not twice. (Not for one block per row: measured slower; nor per group for
  // fp8_group: measured level. docs/kernels.md.)
  constexpr bool kAmaxBound = kQuant == QuantMode::kFp8Token && kClusterSpan<Span>;
  static_assert(!kAmaxBound || kHeld, "the bound reads the weights before the sum: held ones");
  const bool amax_bound = kAmaxBound && !Recipe::WeightAfterRound(p);
  float bound_m = 0.0f;  // max |u_i w'_i| over the thread's vectors (AmaxBoundOf)

  // ---- step 2: h = a + residual; emit a and round(h); the sum of squares of the norm's input
  // u (in parts where a thread holds several of the layout's row threads: RowSumOfParts), u
  // held in registers for step 3 (at most four vectors per thread).
  constexpr int kParts = kSumParts<Span, kVec>;
  float sum_sq[kParts];
#pragma unroll
  for (int k = 0; k < kParts; ++k) sum_sq[k] = 0.0f;
  float u[kVec][kVecElems];
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec, Span>::Index(k);
    if (Recipe::AllreduceOut(p) && in_row[k])
      StoreStreaming(static_cast<uint4*>(Recipe::AllreduceOut(p)) + row_vec + v, a[k]);
    NormInput<T, Recipe>(p, a[k], res[k], u[k],
                         p.residual_out && in_row[k] ? ResidualOutVector<Recipe>(p, row_vec, v) : nullptr);
    if constexpr (!kPairSpan<Span>) {
      float& part = sum_sq[kParts == 1 ? 0 : k];
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) part = __fadd_rn(part, __fmul_rn(u[k][i], u[k][i]));
    }
    if (kAmaxBound && amax_bound) {
      float wv[kVecElems];
      weights.Get(p, k, wv);  // zeros past the row (a cluster holds its weights)
      bound_m = AmaxBoundOf(u[k], wv, kVecElems, bound_m);
    }
  }
  if constexpr (kPairSpan<Span>) {
    // The row thread's sum over both its parts' vectors, in the layout's order (and the bound's
    // max over both).
    static_assert(kVec == 1, "a pair row's thread holds one vector");
    float squares[kVecElems];
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) squares[i] = __fmul_rn(u[0][i], u[0][i]);
    const float2 chained = Span::ChainSum(squares, bound_m, slot);
    sum_sq[0] = chained.x;
    bound_m = chained.y;
  }
  // fp8_tensor's reciprocal scale does not wait for the row's sum.
  const float static_inv = kQuant == QuantMode::kFp8Tensor ? __frcp_rn(static_scale) : 1.0f;

  // ---- step 3: y = round(u * r * w'), r = 1 / sqrt(mean(u^2) + eps); step 4 (FP8) follows
  // each vector at once where its scale is known by then (tensor: static), and otherwise after
  // the thread's y are all computed (group: the groups' lanes; token: the row).
  probe(RowPhase::kOwnSum, sum_sq[0]);
  float total;
  if constexpr (kAmaxBound) {
    if (amax_bound) {
      const float2 sum_and_bound = Span::ReduceSumAndMax(sum_sq[0], bound_m, smem, slot);
      total = sum_and_bound.x;
      bound_m = sum_and_bound.y;
    } else {
      total = RowSum<Span>(sum_sq[0], smem, slot);
    }
  } else if constexpr (kSoleBlockRecipe<Recipe>) {
    total = SoleBlockSum(sum_sq[0], slot);
  } else {
    total = RowSumOfParts<Span>(sum_sq, smem, slot);
  }
  probe(RowPhase::kBlockSum, total);
  const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(total, float(p.hidden)), p.eps)));
  probe(RowPhase::kRstd, r);
  // Whether the bound decides the row's amax (the same in every thread of the row), and its
  // scale, ahead of the vectors so they overlap.
  // (Left unset where the bound does not decide: nothing reads them then, and the compiler may
  // compute them ahead of the branch.)
  float bound_s, bound_inv;
  ScaleStep bound_step;
  bool bound_decides = false;
  if (kAmaxBound && amax_bound) {
    const float bound_amax = AmaxFromBound(bound_m, r, RoundTo16<T>{});
    bound_decides = bound_amax >= 0.0f;
    if (bound_decides) {
      bound_s = DynamicScale<Recipe, kQuant>(p, bound_amax, bound_step);
      bound_inv = DynamicScaleInverse<Recipe>(p, bound_s);
    }
  }
  uint8_t* const q_row = kQuant == QuantMode::kNone ? nullptr : p.quant_out + size_t(row) * p.hidden;
  const ScaleStep static_step = Recipe::QuantDivides(p, kQuant) ? ScaleStep::kDivide : ScaleStep::kMultiply;
  constexpr bool kHoldsY = kQuant == QuantMode::kFp8Token || kQuant == QuantMode::kFp8Group;
  uint4 y[kHoldsY ? kVec : 1];  // the rounded y, held until the scales are known
  float amax[kHoldsY ? kVec : 1];  // max |y| of each vector (0 past the row)
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec, Span>::Index(k);
    float wv[kVecElems], n[kVecElems], yf[kVecElems];
    if constexpr (kSoleGroup) weights.FromStagedWords(p, weight_words[k], wv);
    else weights.Get(p, k, wv);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) n[i] = __fmul_rn(u[k][i], r);
    if (Recipe::WeightAfterRound(p)) RoundVector<T>(n);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) yf[i] = __fmul_rn(n[i], wv[i]);
    const uint4 yk = Pack<T>(yf);
    if (kF32ResidualRecipe<Recipe> && kQuant == QuantMode::kNone && p.norm_out_f32) {
      // y unrounded: eight f32, two words (quant none only, Validate: nothing reads yk then).
      // (Every lane calls it: the store may pair lanes.)
      if (p.norm_out)
        StoreF32Vector(p.f32_paired_stores, in_row[k] ? static_cast<uint4*>(p.norm_out) + 2 * (row_vec + v) : nullptr,
                       yf);
    } else if (p.norm_out) {
      StoreStreamingIf(in_row[k], static_cast<uint4*>(p.norm_out) + row_vec + v, yk);
    }
    if constexpr (kQuant == QuantMode::kFp8Tensor) {
      Unpack<T>(yk, yf);  // the rounded y, which the quantization reads
      const uint2 q = QuantizeVector(yf, static_step, static_scale, static_inv);
      if (in_row[k]) StoreStreaming8(q_row + size_t(v) * kVecElems, q);
    } else if constexpr (kHoldsY) {
      if constexpr (kSoleGroup) UnpackRounded<T>(yk, yf);
      else Unpack<T>(yk, yf);
      y[k] = yk;
      amax[k] = in_row[k] ? VectorAbsMax(yf) : 0.0f;
    }
  }

  // ---- step 4 for the dynamic modes: the scales (one per group of the vector's lanes, or one
  // for the row), then every vector's q; the scales' column-major padding last.
  float s[kHoldsY ? kVec : 1], inv[kHoldsY ? kVec : 1];
  ScaleStep step[kHoldsY ? kVec : 1];
  // [T, 1] row-major and [1, pad4(T)] column-major put row t's scale at index t alike: the row's
  // scale is stored as soon as it exists. A group's scale is stored with the group's first
  // vector's q, by the lane that holds it (StoredScale gives it back from its divisor).
  const int group_shift = kQuant == QuantMode::kFp8Group ? GroupVecsShift(p) : 0;
  if constexpr (kQuant == QuantMode::kFp8Group) {
    // Every lane of the row's warps (or of its packed group) joins the shuffles or reductions; a
    // group is all in the row or all past it.
    LaneGroupMax<kVec, kPairSpan<Span> || kSoleBlockRecipe<Recipe>>(amax, p.group_vecs, RowLaneMask<Span>());
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      s[k] = DynamicScale<Recipe, kQuant>(p, amax[k], step[k]);
      inv[k] = DynamicScaleInverse<Recipe>(p, s[k]);
      s[k] = QuotientDivisor(s[k]);
    }
    probe(RowPhase::kVectors, s[0]);
  } else if constexpr (kQuant == QuantMode::kFp8Token) {
    float thread_amax = amax[0];
#pragma unroll
    for (int k = 1; k < kVec; ++k) thread_amax = MaxOfMagnitudes(thread_amax, amax[k]);
    probe(RowPhase::kVectors, thread_amax);
    if (kAmaxBound && bound_decides) {
      s[0] = bound_s;
      inv[0] = bound_inv;
      step[0] = bound_step;
    } else {
      s[0] = DynamicScale<Recipe, kQuant>(p, RowMax<Span>(thread_amax, smem, slot), step[0]);
      inv[0] = DynamicScaleInverse<Recipe>(p, s[0]);
    }
    if constexpr (kHoldsY) {
      if (Span::Thread() == 0) p.scale_out[row] = s[0];
    }
    s[0] = QuotientDivisor(s[0]);
#pragma unroll
    for (int k = 1; k < kVec; ++k) {
      s[k] = s[0];
      inv[k] = inv[0];
      step[k] = step[0];
    }
  } else {
    probe(RowPhase::kVectors, 0.0f);
  }
  if constexpr (kHoldsY) {
    uint2 q[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      float yf[kVecElems];
      if constexpr (kSoleGroup) UnpackRounded<T>(y[k], yf);
      else Unpack<T>(y[k], yf);
      q[k] = QuantizeVector(yf, step[k], s[k], inv[k]);
      if constexpr (kQuant == QuantMode::kFp8Token) {
        if (in_row[k]) StoreStreaming8(q_row + size_t(RowVectors<kVec, Span>::Index(k)) * kVecElems, q[k]);
      }
    }
    // fp8_group: every vector's q before any store, each store predicated, not branched around
    // (with the group's scale store in the same branch, the compiler drew each vector's
    // quotients into it, one vector's chain after the other's). fp8_token keeps its branches:
    // so ptxas gives its two-vector one-block kernels 40 registers, not 54-56.
    if constexpr (kSoleGroup) {
      // The addresses and owners taken before the row's sum (kSoleGroup's note).
#pragma unroll
      for (int k = 0; k < kVec; ++k) StoreStreaming8If(in_row[k], q_at[k], q[k]);
#pragma unroll
      for (int k = 0; k < kVec; ++k) StoreGlobalF32If(owns_scale[k], scale_at[k], StoredScale(s[k], inv[k]));
    } else if constexpr (kQuant == QuantMode::kFp8Group) {
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        StoreStreaming8If(in_row[k], q_row + size_t(RowVectors<kVec, Span>::Index(k)) * kVecElems, q[k]);
      // (The shared kernels keep the whole index per store: their compiled code is the one
      // measured at every T, SoleBlockRecipe's note.)
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec, Span>::Index(k);
        // group_vecs is a power of two: a shift and a mask, not an integer division.
        if (in_row[k] && (v & (p.group_vecs - 1)) == 0)
          p.scale_out[GroupScaleIndex(p, row, v >> group_shift)] = StoredScale(s[k], inv[k]);
      }
    }
    // The column-major layout's padding (rows T..pad4(T)-1) is written as 0 so every element of
    // the output is defined.
    if (p.scale_pad_rows > 0 && row == p.tokens - 1) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec, Span>::Index(k);
        const bool owner = kQuant == QuantMode::kFp8Group ? in_row[k] && (v & (p.group_vecs - 1)) == 0
                                                          : k == 0 && Span::Thread() == 0;
        const int64_t sidx = kQuant == QuantMode::kFp8Group ? GroupScaleIndex(p, row, v >> group_shift) : row;
        if (owner)
          for (int i = 1; i <= p.scale_pad_rows; ++i) p.scale_out[sidx + i] = 0.0f;
      }
    }
  }
  probe(RowPhase::kDone, 0.0f);
}

// ================================================================ bounded waits

// Records the first timeout of the communicator (code, peer, phase).
__device__ __forceinline__ void RecordTimeout(const FusedKernelParams& p, int peer, uint32_t phase) {
  if (atomicCAS(&p.state->error_code, kErrorNone, kErrorTimeout) == kErrorNone) {
    p.state->error_peer = uint32_t(peer);
    p.state->error_phase = phase;
  }
}

// Bounded-wait bookkeeping for one thread: once any wait of the thread times out (or another
// thread reported an error), the thread stops waiting and finishes with garbage; the host sees
// the error through Communicator::CheckHealth and the communicator is poisoned.
struct WaitBudget {
  uint64_t deadline = 0;  // set at the first wait that has to spin
  bool dead = false;

  // Returns false when the wait must stop (timeout or error elsewhere).
  __device__ __forceinline__ bool KeepWaiting(const FusedKernelParams& p, uint32_t spins, int peer,
                                              uint32_t phase) {
    if (dead) return false;
    if ((spins & 63u) != 0) return true;
    const uint64_t now = GlobalTimerNs();
    if (deadline == 0) deadline = now + p.timeout_ns;
    if (*reinterpret_cast<volatile uint32_t*>(&p.state->error_code) != kErrorNone) {
      dead = true;
    } else if (p.timeout_ns != 0 && now > deadline) {
      RecordTimeout(p, peer, phase);
      dead = true;
    }
    return !dead;
  }
};

// One Lamport area of the workspace: the buffer call `call` uses (comm/lamport.h).
__device__ __forceinline__ size_t LamportBuffer(size_t offset, size_t buffer_bytes, uint32_t call) {
  return offset + size_t(LamportBufferIndex(call)) * buffer_bytes;
}

// End of a peer-memory call: every call counter of the strategy moves to call + 1 (the block's
// threads share the stores). Every thread of the block read `call` before the epilogue's
// barriers, and index blockIdx.x is written by this block only.
__device__ __forceinline__ void AdvanceCallCount(uint32_t* counts, uint32_t call) {
  LamportAdvance(counts, blockIdx.x, gridDim.x, call, threadIdx.x, blockDim.x);
}

template <int kVec>
__device__ __forceinline__ void LoadRowX(const FusedKernelParams& p, int64_t row, uint4 (&xv)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v < p.vecs_per_row)
      xv[k] = CanonicalZeros(LoadGlobal(static_cast<const uint4*>(p.x) + size_t(row) * p.vecs_per_row + v));
  }
}

// Stores this thread's vectors of a row at `row_base` (a peer's Lamport slot row).
template <int kVec>
__device__ __forceinline__ void PushRow(const FusedKernelParams& p, char* row_base, const uint4 (&vals)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v < p.vecs_per_row) StoreVolatile(row_base + size_t(v) * sizeof(uint4), vals[k]);
  }
}

// Reads this thread's vectors of a Lamport slot row at `row_base` (this rank's memory), waiting
// until no 16-bit lane holds the sentinel, and resets them to the sentinel. Every first load is
// issued before any wait, so the row costs one memory round trip when the data is there.
template <int kVec>
__device__ __forceinline__ void PollRow(const FusedKernelParams& p, char* row_base, int peer, uint32_t phase,
                                        WaitBudget& budget, uint4 (&out)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    out[k] = v < p.vecs_per_row ? LoadVolatile(row_base + size_t(v) * sizeof(uint4)) : make_uint4(0, 0, 0, 0);
  }
  const uint4 sentinel = make_uint4(kSentinelPair, kSentinelPair, kSentinelPair, kSentinelPair);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v >= p.vecs_per_row) continue;
    char* slot = row_base + size_t(v) * sizeof(uint4);
    for (uint32_t spins = 1; HasSentinel(out[k]); ++spins) {
      if (!budget.KeepWaiting(p, spins, peer, phase)) break;
      out[k] = LoadVolatile(slot);
    }
    StoreGlobal(slot, sentinel);  // consumed: ready for the call after next
  }
}

// a = round(sum over ranks 0..N-1 of the partials, f32, in rank order): this rank's partial is
// `own`, rank r's is polled from `slot_row(r)` (a row of a Lamport area in this rank's memory).
template <typename T, int kVec, typename SlotRow>
__device__ __forceinline__ void GatherAndReduce(const FusedKernelParams& p, const uint4 (&own)[kVec],
                                                SlotRow slot_row, uint32_t phase, WaitBudget& budget,
                                                uint4 (&a)[kVec]) {
  float acc[kVec][kVecElems];
  for (int r = 0; r < p.world_size; ++r) {
    uint4 part[kVec];
    if (r == p.rank) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) part[k] = own[k];
    } else {
      PollRow<kVec>(p, slot_row(r), r, phase, budget, part);
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if (RowVectors<kVec>::Index(k) >= p.vecs_per_row) continue;
      float f[kVecElems];
      Unpack<T>(part[k], f);
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) acc[k][i] = r == 0 ? f[i] : __fadd_rn(acc[k][i], f[i]);
    }
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) a[k] = RowVectors<kVec>::Index(k) < p.vecs_per_row ? Pack<T>(acc[k]) : make_uint4(0, 0, 0, 0);
}

// The persistent kernels hold the weights for all their rows in registers at one vector per
// thread; with more, the 16-bit weights wait in shared memory (RowWeights) to avoid spills.
template <int kVec>
inline constexpr bool kPersistentHoldsWeights = kVec == 1;

// ================================================================ one-shot

// One-shot fused all-reduce + epilogue (Lamport).
//
// Grid: G <= min(T, co-resident blocks, kMaxFusedBlocks); block: blockDim threads fixed by H
// (common/row_layout.h: a multiple of 32, <= 256), kVec vectors each. Block b owns rows b, b + G,
// ... on every rank.
// Shared memory: 4 x 32 floats (block reductions), and the 16-bit weights staged (kVec > 1).
// Protocol (no barrier): buffer = k % 2, k the number of earlier one-shot calls, the same on
// every block and rank (comm/lamport.h: the rule, and why two buffers are safe whatever the
// shapes and grids of consecutive calls). Phase 1: push
// this rank's rows, with -0.0 turned into +0.0, into slot `rank` of the buffer on every peer.
// Phase 2: poll this rank's copy of every other slot until no 16-bit lane holds the sentinel
// -0.0, reset each slot to the sentinel right after reading it, sum the partials in rank order
// 0..N-1 in f32 and run the epilogue. A peer writes this buffer again only in call k + 2, after
// every rank has completed call k (comm/lamport.h), so the resets are in place by then. At the
// end every block moves the call counters to k + 1.
// Every block pushes before it waits, and waits only on the same block index of its peers.
// Preconditions: T rows fit in a slot; H % 8 == 0; pointers 16-byte aligned; the Lamport areas
// hold the sentinel everywhere (creation fills them; every call restores what it consumed).
template <typename T, int kVec, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads, kPersistentMinBlocksPerSm<kVec>) OneShotAllreduceRmsnormKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  __shared__ uint4 weight_vectors[kPersistentHoldsWeights<kVec> ? 1 : kVec * kMaxRowThreads];
  RowWeights<kVec, kPersistentHoldsWeights<kVec>> weights;
  weights.Preload(p, weight_vectors);
  WaitForPreviousKernel();
  AllowNextKernel();
  weights.Ready();

  // ---- phase 1: push this rank's rows into slot `rank` of every peer
  int64_t row = blockIdx.x;
  uint4 xv[kVec];
  LoadRowX<kVec>(p, row, xv);  // issued before the count load: both in flight together
  const uint32_t call = LamportCallOf(p.state->oneshot_count, blockIdx.x);
  const size_t buffer = LamportBuffer(p.lamport_offset, p.lamport_buffer_bytes, call);
  const size_t row_bytes = size_t(p.hidden) * sizeof(T);
  for (; row < p.tokens; row += gridDim.x) {
    if (row != blockIdx.x) LoadRowX<kVec>(p, row, xv);
    const size_t offset = buffer + size_t(p.rank) * p.lamport_slot_bytes + size_t(row) * row_bytes;
    for (int i = 1; i < p.world_size; ++i) PushRow<kVec>(p, p.peer_bases[(p.rank + i) % p.world_size] + offset, xv);
  }

  // ---- phase 2: gather every rank's rows, reduce in rank order, epilogue
  char* const local = p.peer_bases[p.rank];
  WaitBudget budget;
  int slot = 0;
  for (row = blockIdx.x; row < p.tokens; row += gridDim.x, slot ^= 1) {
    uint4 res[kVec], a[kVec];
    LoadResidual<kVec>(p, row, res);
    LoadRowX<kVec>(p, row, xv);
    GatherAndReduce<T, kVec>(
        p, xv, [&](int r) { return local + buffer + size_t(r) * p.lamport_slot_bytes + size_t(row) * row_bytes; },
        kPhaseOneShotGather, budget, a);
    RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, LoadStaticScale<kQuant>(p), smem, slot);
  }
  __syncthreads();  // every thread has read `call`
  AdvanceCallCount(p.state->oneshot_count, call);
}

// ================================================================ two-shot

// Two-shot fused all-reduce + epilogue (Lamport in both halves, no barrier).
//
// Grid: G <= min(R, co-resident blocks, kMaxFusedBlocks), the same G on every rank; block as
// one-shot. Rows are split by owner: rank o owns rows [o R, (o + 1) R), R = ceil(T / N). Block b
// handles row offsets j = b, b + G, ... inside every owner's range. Buffers: k % 2 of the
// reduce-scatter and all-gather areas, k the number of earlier two-shot calls (comm/lamport.h).
// Phase 1 (reduce-scatter): push the partial rows j of every owner o != rank into slot `rank`
//   of o's reduce-scatter buffer.
// Phase 2 (owned rows): poll the other ranks' partials, sum in rank order 0..N-1, round once;
//   push a into every peer's all-gather buffer; run the epilogue here and now.
// Phase 3 (other owners' rows): poll a from this rank's all-gather buffer, run the epilogue (the
//   residual is replicated, so each rank adds its own; gathering a is half the bytes of h + y).
// Every slot read is reset to the sentinel. Buffer reuse is safe for the reasons of one-shot:
// a peer writes a buffer again in call k + 2, after every rank has completed call k. Every
// block pushes before it waits, and waits only on the same block index of its peers.
// NOTE: no fence between a slot's reset and later pushes. The only later writer of a reset
// slot is a peer's push of call k + 2, which causally follows this kernel's completion (the
// peer needs this rank's call k + 1 data, sent after griddepcontrol.wait has seen this grid
// complete with all its stores performed); a fence inside the kernel would order nothing more.
// Preconditions: R rows fit the areas; H % 8 == 0; pointers 16-byte aligned; the areas hold the
// sentinel everywhere.
template <typename T, int kVec, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads, kPersistentMinBlocksPerSm<kVec>) TwoShotAllreduceRmsnormKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  __shared__ uint4 weight_vectors[kPersistentHoldsWeights<kVec> ? 1 : kVec * kMaxRowThreads];
  RowWeights<kVec, kPersistentHoldsWeights<kVec>> weights;
  weights.Preload(p, weight_vectors);
  WaitForPreviousKernel();
  AllowNextKernel();
  weights.Ready();

  const uint32_t call = LamportCallOf(p.state->twoshot_count, blockIdx.x);
  const size_t rs = LamportBuffer(p.rs_offset, p.rs_buffer_bytes, call);
  const size_t ag = LamportBuffer(p.ag_offset, p.ag_buffer_bytes, call);
  const size_t row_bytes = size_t(p.hidden) * sizeof(T);
  char* const local = p.peer_bases[p.rank];
  const int64_t rows = p.rows_per_rank;
  WaitBudget budget;

  // ---- phase 1: scatter partial rows to their owners
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
    for (int i = 1; i < p.world_size; ++i) {
      const int owner = (p.rank + i) % p.world_size;
      const int64_t row = owner * rows + j;
      if (row >= p.tokens) continue;
      uint4 xv[kVec];
      LoadRowX<kVec>(p, row, xv);
      PushRow<kVec>(p, p.peer_bases[owner] + rs + size_t(p.rank) * p.rs_slot_bytes + size_t(j) * row_bytes, xv);
    }
  }

  // ---- phase 2: reduce the owned rows in rank order, all-gather a, epilogue
  int slot = 0;
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x, slot ^= 1) {
    const int64_t row = p.rank * rows + j;
    if (row >= p.tokens) break;
    uint4 xv[kVec], res[kVec], a[kVec];
    LoadResidual<kVec>(p, row, res);
    LoadRowX<kVec>(p, row, xv);
    GatherAndReduce<T, kVec>(
        p, xv, [&](int r) { return local + rs + size_t(r) * p.rs_slot_bytes + size_t(j) * row_bytes; },
        kPhaseTwoShotReduceScatter, budget, a);
    for (int i = 1; i < p.world_size; ++i)
      PushRow<kVec>(p, p.peer_bases[(p.rank + i) % p.world_size] + ag + size_t(row) * row_bytes, a);
    RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, LoadStaticScale<kQuant>(p), smem, slot);
  }

  // ---- phase 3: the other owners' rows, as their a arrives
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
    for (int i = 1; i < p.world_size; ++i) {
      const int owner = (p.rank + i) % p.world_size;
      const int64_t row = owner * rows + j;
      if (row >= p.tokens) continue;
      uint4 res[kVec], a[kVec];
      LoadResidual<kVec>(p, row, res);
      PollRow<kVec>(p, local + ag + size_t(row) * row_bytes, owner, kPhaseTwoShotAllGather, budget, a);
      RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, LoadStaticScale<kQuant>(p), smem, slot);
      slot ^= 1;
    }
  }
  __syncthreads();  // every thread has read `call`
  AdvanceCallCount(p.state->twoshot_count, call);
}

// ================================================================ the epilogue kernel

// Two all_reduces summed with the second into the residual (p.second_sum_into_residual):
// round(residual + round(a2 * second_scale)) for one vector of a 16-bit residual.
template <typename T>
__device__ __forceinline__ uint4 ResidualPlusSecondSum(const FusedKernelParams& p, const uint4& residual,
                                                       const uint4& a2) {
  float r[kVecElems], u2[kVecElems];
  Unpack<T>(residual, r);
  Unpack<T>(a2, u2);
  ScaleVector<T>(u2, p.second_scale);
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) r[i] = __fadd_rn(r[i], u2[i]);
  return Pack<T>(r);
}

// One vector of a reduced row from `rows` at `index` (row * vecs_per_row + v), read as the
// source says: a local row as it is, a reduced one with -0.0 as +0.0, gathered partials summed
// in rank order (as the epilogue kernel reads a).
template <typename T>
__device__ __forceinline__ uint4 ReducedVector(const FusedKernelParams& p, const void* rows, size_t index) {
  const uint4* src = static_cast<const uint4*>(rows);
  if (p.source == RowSource::kLocal) return LoadGlobal(src + index);
  if (p.source == RowSource::kReduced) return CanonicalZeros(LoadGlobal(src + index));
  const size_t rank_stride = size_t(p.tokens) * p.vecs_per_row;
  float acc[kVecElems];
  for (int r = 0; r < p.gathered_ranks; ++r) {
    float f[kVecElems];
    Unpack<T>(CanonicalZeros(LoadGlobal(src + r * rank_stride + index)), f);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) acc[i] = r == 0 ? f[i] : __fadd_rn(acc[i], f[i]);
  }
  return Pack<T>(acc);
}

// Two all_reduces summed (p.second_sum): round(round(a * first_scale) + round(a2 * second_scale))
// for one vector, a scale of 1 no step (Contract 3 step 1 of AllreduceRmsnormSpec::second_sum).
template <typename T>
__device__ __forceinline__ uint4 SumOfTwoSums(const FusedKernelParams& p, const uint4& a, const uint4& a2) {
  float u[kVecElems], u2[kVecElems];
  Unpack<T>(a, u);
  Unpack<T>(a2, u2);
  ScaleVector<T>(u, p.first_scale);
  ScaleVector<T>(u2, p.second_scale);
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) u[i] = __fadd_rn(u[i], u2[i]);
  return Pack<T>(u);
}

// Vector v of the pre_weight in two steps, as LoadWeightVector takes the weight's: the word of a
// 16-bit weight (held from before a reduction, four registers), then w' = w + weight_bias of it;
// an f32 weight's eight values are loaded by the second step (eight registers would spill).
template <class Recipe>
__device__ __forceinline__ uint4 PreWeightWords(const FusedKernelParams& p, int v) {
  if (Recipe::WeightDType(p) == DType::kF32) return make_uint4(0, 0, 0, 0);
  return __ldg(static_cast<const uint4*>(p.pre_weight) + v);
}
template <class Recipe>
__device__ __forceinline__ void DecodePreWeight(const FusedKernelParams& p, const uint4& words, int v,
                                                float (&wb)[kVecElems]) {
  if (Recipe::WeightDType(p) == DType::kF32) {
    const uint4* w = static_cast<const uint4*>(p.pre_weight) + 2 * v;
    F32Values(F32ResidualVector{__ldg(w), __ldg(w + 1)}, wb);
  } else if (Recipe::WeightDType(p) == DType::kBF16) {
    Unpack<__nv_bfloat16>(words, wb);
  } else {
    Unpack<__half>(words, wb);
  }
  ApplyWeightBias<Recipe>(p, wb);
}

// The norm of the sum before the residual add (p.pre_residual_norm) on this thread's vectors of
// a row (zeros past it), as RowEpilogue's step 3 computes y: a = round(a * r0 * w0'), or
// round(round(a * r0) * w0') under weight_after_round, r0 = 1 / sqrt(mean(a^2) + pre_eps) with
// the sum of squares in the layout's order, w0' the pre_weight's vector plus weight_bias. A
// 16-bit pre_weight's words are loaded before the reduction, so their latency overlaps it. a is stored
// to allreduce_out first where it is emitted. `smem`: the reduction's own rows (two, by slot),
// apart from RowEpilogue's.
template <typename T, int kVec, typename Span, typename Recipe>
__device__ __forceinline__ void NormBeforeResidual(const FusedKernelParams& p, int64_t row, uint4 (&a)[kVec],
                                                   float (*smem)[32], int slot) {
  const size_t row_vec = size_t(row) * p.vecs_per_row;
  // The values are unpacked from `a` twice, not held as f32 across the reduction: the kernels'
  // other rows of registers are already live there.
  float sum_sq = 0.0f;
  uint4 w_words[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec, Span>::Index(k);
    w_words[k] = PreWeightWords<Recipe>(p, min(v, p.vecs_per_row - 1));
    if (p.allreduce_out && v < p.vecs_per_row) StoreStreaming(static_cast<uint4*>(p.allreduce_out) + row_vec + v, a[k]);
    float u[kVecElems];
    Unpack<T>(a[k], u);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) sum_sq = __fadd_rn(sum_sq, __fmul_rn(u[i], u[i]));
  }
  const float total = RowSum<Span>(sum_sq, smem, slot);
  const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(total, float(p.hidden)), p.pre_eps)));
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec, Span>::Index(k);
    if (v >= p.vecs_per_row) continue;
    float u[kVecElems], w[kVecElems];
    Unpack<T>(a[k], u);
    DecodePreWeight<Recipe>(p, w_words[k], v, w);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) u[i] = __fmul_rn(u[i], r);
    if (Recipe::WeightAfterRound(p)) RoundVector<T>(u);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) u[i] = __fmul_rn(u[i], w[i]);
    a[k] = Pack<T>(u);
  }
}

// The inputs of `row` that the epilogue kernel reads from memory started into L2 by thread 0: a
// local row's x or a reduced row, and the residual (gathered partials are not prefetched: N
// rows, just written by NCCL).
template <typename Span, typename Recipe>
__device__ __forceinline__ void PrefetchRowInputs(const FusedKernelParams& p, int64_t row) {
  if (Span::Thread() != 0 || row >= p.tokens) return;
  const uint32_t row_bytes = uint32_t(p.vecs_per_row) * sizeof(uint4);
  const size_t offset = size_t(row) * row_bytes;
  if (Recipe::Source(p) != RowSource::kGathered) {
    const void* const row_source = Recipe::Source(p) == RowSource::kLocal ? p.x : p.reduced;
    PrefetchL2(static_cast<const char*>(row_source) + offset, row_bytes);
  }
  if constexpr (kSecondSumRecipe<Recipe>) {
    if (Recipe::Source(p) != RowSource::kGathered)
      PrefetchL2(static_cast<const char*>(Recipe::Source(p) == RowSource::kLocal ? p.x2 : p.reduced2) + offset,
                 row_bytes);
  }
  if constexpr (kPreNormRecipe<Recipe>) {
    // The pre_weight, read by every row after the first reduction (the weight's own words are
    // loaded before the wait: RowWeights).
    PrefetchL2(p.pre_weight, p.weight_dtype == DType::kF32 ? 2 * row_bytes : row_bytes);
  }
  if constexpr (kF32ResidualRecipe<Recipe>) {
    if (p.residual && p.residual_f32_in) {
      PrefetchL2(static_cast<const char*>(p.residual) + 2 * offset, 2 * row_bytes);
      return;
    }
  }
  if (p.residual) PrefetchL2(static_cast<const char*>(p.residual) + offset, row_bytes);
}

// The fused op's epilogue on rows already summed, or summed here: world size 1 and local ops
// (a = x), and the nccl path (the ncclAllReduce result, or the partials ncclAllGather gathered,
// summed in rank order as the other strategies do). -0.0 becomes +0.0 on the nccl path so the
// result matches one-shot and two-shot bit for bit; a local a is x itself. Recipe: RuntimeRecipe,
// or a FixedRecipe for the local op's forms only (see "recipes").
//
// Grid: one block per row (a grid-stride loop covers T beyond the grid); block: blockDim threads
// fixed by H (common/row_layout.h), kVec vectors each. With rows packed (PackedRows, rows of
// one or two warps' layout): blocks of 1-8 warps, each warp holding 1, 2 or 4 rows at once (2, 4
// or 8 at kVec = 2, half the lanes per row), or two warps one, or a warp one of two warps' layout
// at kVec = 2. With a cluster owner (small T):
// one cluster of C blocks per row, each block holding 1/C of the row's threads (ClusterRow), or of
// the row threads' vectors at one per thread (ClusterPairRow, kVec = 1 for rows of two vectors
// per row thread), launched with cluster dimension C (the launcher's ClusterBlocks). Several
// blocks per SM keep rows in flight while others compute (docs/kernels.md). Shared memory:
// 4 x 32 floats (reductions), with BlockRow the 16-bit weights staged (kVec > 1), with a cluster
// 4 mbarriers (and ClusterPairRow's hand-off). Weights in registers: with BlockRow at one vector
// per thread, with a cluster at any (its registers are not capped for occupancy, and a row at
// small T does not wait for shared memory), with packed rows at one or two (a packed block's
// rows would all copy their weights into the one staged row).
// Synchronization: the row reductions only (__syncthreads; with a cluster, st.async into the
// cluster's blocks and an mbarrier per reduction, plus one cluster barrier at the start that
// publishes the mbarriers, and ClusterPairRow's named barrier per warp pair; packed rows: the
// group's shuffles, and a named barrier per row of two warps); nothing between rows' blocks,
// clusters or groups.
// Order of loads: weights before griddepcontrol.wait (parameters nobody writes), and the block's
// first row started into L2 there too; then x (or the reduced rows), the residual and the static
// scale together, so a row costs one round trip (to L2 where the prefetch has landed) before its
// arithmetic starts.
// Preconditions: H % 8 == 0 and HasRowLayout(H); pointers 16-byte aligned (scales 4-byte).
template <typename T, int kVec, QuantMode kQuant, typename Span, typename Recipe>
__device__ __forceinline__ void EpilogueRows(const FusedKernelParams& p) {
  __shared__ __align__(8) float smem[4][32];  // 8: the clusters' ReduceSumAndMax pairs
  __shared__ float pre_smem[kPreNormRecipe<Recipe> ? 2 : 1][32];  // NormBeforeResidual's
  constexpr bool kHeldWeights = kVec == 1 || kClusterSpan<Span> || kPackedSpan<Span>;
  __shared__ uint4 weight_vectors[kHeldWeights ? 1 : kVec * kMaxRowThreads];
  Span::Arrive();
  RowWeights<kVec, kHeldWeights, Span, Recipe> weights;
  weights.Preload(p, weight_vectors);
  // Before the wait, so the memory latency of the block's row overlaps the previous kernel (a
  // prefetch is safe there: see PrefetchL2). Prefetching the row of a block one or two waves
  // later too was measured up to 10 % and 30 % slower at T >= 1024 (docs/perf/h200x1/NOTES.md,
  // run 11).
  PrefetchRowInputs<Span, Recipe>(p, Span::FirstRow());
  WaitForPreviousKernel();
  AllowNextKernel();
  weights.Ready();
  Span::Wait();
  int slot = 0;
  for (int64_t row = Span::FirstRow(); row < p.tokens; row += Span::RowStride(), slot ^= 1) {
    const size_t row_vec = size_t(row) * p.vecs_per_row;
    ResidualVector<Recipe> res[kVec];
    uint4 a[kVec];
    const float static_scale = LoadStaticScale<kQuant>(p);
    LoadResidual<kVec, Span, Recipe>(p, row, res);
    if (Recipe::Source(p) == RowSource::kGathered) {
      const size_t rank_stride = size_t(p.tokens) * p.vecs_per_row;
      const uint4* gathered = static_cast<const uint4*>(p.reduced);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec, Span>::Index(k);
        a[k] = make_uint4(0, 0, 0, 0);
        if (v >= p.vecs_per_row) continue;
        float acc[kVecElems];
        for (int r = 0; r < p.gathered_ranks; ++r) {
          float f[kVecElems];
          Unpack<T>(CanonicalZeros(LoadGlobal(gathered + r * rank_stride + row_vec + v)), f);
#pragma unroll
          for (int i = 0; i < kVecElems; ++i) acc[i] = r == 0 ? f[i] : __fadd_rn(acc[i], f[i]);
        }
        a[k] = Pack<T>(acc);
      }
    } else {
      const bool local = Recipe::Source(p) == RowSource::kLocal;
      const uint4* src = static_cast<const uint4*>(local ? p.x : p.reduced);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec, Span>::Index(k);
        a[k] = make_uint4(0, 0, 0, 0);
        if (v >= p.vecs_per_row) continue;
        const uint4 w = LoadGlobal(src + row_vec + v);
        a[k] = local ? w : CanonicalZeros(w);
      }
    }
    if constexpr (kSecondSumRecipe<Recipe>) {
      const void* const rows2 = p.source == RowSource::kLocal ? p.x2 : p.reduced2;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec, Span>::Index(k);
        if (v >= p.vecs_per_row) continue;
        // The emitted allreduce (a bias's only: Validate) is a without the second addend.
        if (p.allreduce_out) StoreStreaming(static_cast<uint4*>(p.allreduce_out) + row_vec + v, a[k]);
        // A bias is a second addend not reduced, the same for every row or the row's own:
        // round(a + bias) with scales of 1 and not into the residual (Validate: no second_sum).
        const uint4* const bias = static_cast<const uint4*>(p.bias);
        const uint4 a2 = !bias              ? ReducedVector<T>(p, rows2, row_vec + v)
                         : p.bias_per_token ? LoadGlobal(bias + row_vec + v)
                                            : __ldg(bias + v);
        // Into the residual (16-bit there: Validate), or added to a.
        if (p.second_sum_into_residual) {
          uint4& r16 = Residual16<Recipe>(res[k]);
          r16 = ResidualPlusSecondSum<T>(p, r16, a2);
        } else {
          a[k] = SumOfTwoSums<T>(p, a[k], a2);
        }
      }
    }
    if constexpr (kPreNormRecipe<Recipe>) NormBeforeResidual<T, kVec, Span, Recipe>(p, row, a, pre_smem, slot);
    RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, static_scale, smem, slot);
  }
}

// The epilogue kernel: EpilogueRows under its row owner's register bound (kSpanMinBlocks).
template <typename T, int kVec, QuantMode kQuant, typename Span = BlockRow, typename Recipe = RuntimeRecipe>
__global__ void __launch_bounds__(kSpanMaxThreads<Span>, kSpanMinBlocks<Span, kVec, Recipe>)
    AllreduceEpilogueKernel(const FusedKernelParams p) {
  EpilogueRows<T, kVec, kQuant, Span, Recipe>(p);
}

// Registers of PreNormEpilogueKernel at most, by vectors per thread. The kernel holds the row
// across two reductions: unbounded it takes 64-72 at two vectors per thread, and under
// AllreduceEpilogueKernel's bound all 64, so a row of 11 warps (H 5376) kept two blocks per SM and
// one of 5 (H 2304) six. At 56 (no stack) they keep three and seven: on one H100 that took
// 0.78-0.99 x the time at T 1-8192, H 2304-5376 (run 118 in docs/perf/h100x1/NOTES.md); at 48
// (8-24 bytes of stack) 0.88-1.15 x. One vector per thread keeps 64 (55-56 unbounded), four 128.
template <int kVec>
inline constexpr int kPreNormMaxRegisters = kVec == 2 ? 56 : kVec == 1 ? 64 : 128;

// The epilogue kernel of a norm before the residual add with a 16-bit residual stream
// (PreNormRecipe): one block per row, AllreduceEpilogueKernel's code under its own register bound
// (kPreNormMaxRegisters; __maxnreg__ sets it where __launch_bounds__'s blocks of 512 threads give
// 64 or 40). F32PreNormRecipe's kernels are AllreduceEpilogueKernel's, bound as the f32 kernels.
template <typename T, int kVec, QuantMode kQuant>
__global__ void __maxnreg__(kPreNormMaxRegisters<kVec>) PreNormEpilogueKernel(const FusedKernelParams p) {
  EpilogueRows<T, kVec, kQuant, BlockRow, PreNormRecipe>(p);
}

}  // namespace tpfuse::cuda
