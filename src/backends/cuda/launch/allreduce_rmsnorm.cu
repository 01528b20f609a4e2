// Launchers of the fused op: validation, row layout, kernel selection, launch, error check.
#include "backends/cuda/allreduce_rmsnorm.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "backends/cuda/cuda_check.h"
#include "backends/cuda/launch/allreduce_rmsnorm_kernels.h"
#include "common/cuda_limits.h"

namespace tpfuse::cuda {

namespace {

// What the launchers ask of the current device, read once per device and thread.
struct DeviceFacts {
  int device = 0;
  int sms = 0;
  bool cluster_launch = false;  // thread block clusters (compute capability 9.0 and later)
};

StatusOr<DeviceFacts> CurrentDeviceFacts() {
  // Per thread, without a lock: launchers run every few microseconds, and a device's facts
  // never change.
  thread_local std::map<int, DeviceFacts> cache;
  int device = 0;
  TPFUSE_CUDA_CHECK(cudaGetDevice(&device));
  if (auto it = cache.find(device); it != cache.end()) return it->second;
  DeviceFacts facts;
  facts.device = device;
  int cluster_launch = 0;
  TPFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&facts.sms, cudaDevAttrMultiProcessorCount, device));
  TPFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device));
  facts.cluster_launch = cluster_launch != 0;
  cache[device] = facts;
  return facts;
}

// Whether `kernel`, a cluster kernel, was compiled for clusters on `device`: a build whose
// code for this GPU comes from PTX below compute_90 (compiled when loaded) has the trap instead.
StatusOr<bool> ClusterKernelRuns(const DeviceFacts& device, FusedKernelFn kernel) {
  if (!device.cluster_launch) return false;
  thread_local std::map<std::pair<int, const void*>, bool> cache;
  const auto key = std::make_pair(device.device, reinterpret_cast<const void*>(kernel));
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  cudaFuncAttributes attributes{};
  TPFUSE_CUDA_CHECK(cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(kernel)));
  const bool runs = attributes.ptxVersion >= 90 && attributes.binaryVersion >= 90;
  cache[key] = runs;
  return runs;
}

// Co-resident blocks of `kernel` on this device: one-shot and two-shot blocks wait on their
// peers' blocks of the same index, so a grid must never exceed what runs at once.
StatusOr<int> MaxResidentBlocks(FusedKernelFn kernel, int threads) {
  static std::mutex mutex;
  static std::map<std::pair<int, std::pair<const void*, int>>, int> cache;
  TPFUSE_ASSIGN_OR_RETURN(const DeviceFacts facts, CurrentDeviceFacts());
  const auto key = std::make_pair(facts.device, std::make_pair(reinterpret_cast<const void*>(kernel), threads));
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int per_sm = 0;
  TPFUSE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, reinterpret_cast<const void*>(kernel), threads, 0));
  if (per_sm < 1) return Internal("fused kernel cannot run ", threads, " threads per block");
  cache[key] = per_sm * facts.sms;
  return per_sm * facts.sms;
}

// Clusters of `cluster` blocks of `config`'s size of `kernel` that run at once on `device`: a grid
// of more runs in waves. Per thread, without a lock, as CurrentDeviceFacts: the launcher's rule
// asks on every launch.
StatusOr<int> MaxActiveClusters(const DeviceFacts& device, FusedKernelFn kernel, int cluster,
                                const cudaLaunchConfig_t& config) {
  thread_local std::map<std::tuple<int, const void*, int, unsigned>, int> cache;
  const auto key = std::make_tuple(device.device, reinterpret_cast<const void*>(kernel), cluster, config.blockDim.x);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int clusters = 0;
  const cudaError_t asked = cudaOccupancyMaxActiveClusters(&clusters, reinterpret_cast<const void*>(kernel), &config);
  // A cluster this device or context cannot place (as the launcher's fallback below): none at once.
  if (asked == cudaErrorInvalidClusterSize || asked == cudaErrorLaunchOutOfResources) {
    (void)cudaGetLastError();
    clusters = 0;
  } else {
    TPFUSE_CUDA_CHECK(asked);
  }
  cache[key] = clusters;
  return clusters;
}

Status CheckPointer(const char* name, const void* p, bool required, size_t alignment) {
  if (required && p == nullptr) return InvalidArgument(name, " is required by the spec but null");
  if (!required && p != nullptr)
    return InvalidArgument(name, " is not emitted by the spec but non-null (pass null)");
  if (p && (reinterpret_cast<uintptr_t>(p) % alignment) != 0)
    return InvalidArgument(name, " must be ", alignment, "-byte aligned");
  return Status::Ok();
}

Status CheckBuffers(const AllreduceRmsnormSpec& spec, const FusedBuffers& b) {
  TPFUSE_RETURN_IF_ERROR(CheckPointer("x", b.x, true, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("x2", b.x2, spec.second_sum, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("bias", b.bias, spec.has_bias, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("residual", b.residual, spec.has_residual, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("weight", b.weight, true, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("pre_weight", b.pre_weight, spec.pre_residual_norm, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("scale", b.scale, spec.quant == QuantMode::kFp8Tensor, 4));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("allreduce_out", b.allreduce_out, spec.emit.allreduce, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("norm_out", b.norm_out, spec.emit.norm, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("residual_out", b.residual_out, spec.emit.residual, 16));
  TPFUSE_RETURN_IF_ERROR(CheckPointer("quant_out", b.quant_out, spec.emit.quant, 8));
  return CheckPointer("scale_out", b.scale_out, spec.emit.quant && IsDynamicQuant(spec.quant), 4);
}

// The run-time recipe `spec` needs: SecondSumRecipe's for two summed all_reduces or a bias added to
// the sum (a second addend of a, reduced or not), PreNormRecipe's
// for a norm before the residual add (each one block per row), F32ResidualRecipe's for an f32
// residual stream or norm output (one block or one ClusterRow per row), else the plain one; with
// an f32 stream or norm output, the first two as F32SecondSumRecipe and F32PreNormRecipe. Each
// runs on the local op and the nccl path (the pre-norm recipes on the local op only). The other
// kernels keep their code for the common forms.
KernelRecipe RuntimeRecipeOf(const AllreduceRmsnormSpec& spec) {
  const bool f32 = spec.has_f32_values();
  if (spec.second_sum || spec.has_bias)
    return f32 ? KernelRecipe::kRuntimeF32SecondSum : KernelRecipe::kRuntimeSecondSum;
  if (spec.pre_residual_norm) return f32 ? KernelRecipe::kRuntimeF32PreNorm : KernelRecipe::kRuntimePreNorm;
  return f32 ? KernelRecipe::kRuntimeF32Residual : KernelRecipe::kRuntime;
}

// Rows of H 16-bit elements that fit `bytes`.
int64_t RowsThatFit(size_t bytes, int64_t hidden) { return int64_t(bytes / (size_t(hidden) * 2)); }

// The kernel parameters every strategy shares: buffers, shape, numerics, the rounding recipe.
// The F32ResidualRecipe kernels store f32 words by lane pairs, whole sectors per store, from this
// many rows of a call (StoreF32Vector): on one H100 that took 0.89-0.98 x the time of
// half-sector stores at T 128-8192 (run 106 in docs/perf/h100x1/NOTES.md, one session). At T = 1
// a row's path sets the time and the swap is on it: paired at every T, T = 1 took 1.00-1.14 x
// the half-sector stores' time of another session (runs 105 and 107), and unpaired 0.93-1.00 x
// the paired time of a third (run 108). T 2-127 not measured.
constexpr int64_t kF32PairedStoresMinRows = 128;

FusedKernelParams MakeParams(const AllreduceRmsnormSpec& spec, int64_t tokens, const FusedBuffers& b) {
  FusedKernelParams p{};
  p.x = b.x;
  p.residual = b.residual;
  p.weight = b.weight;
  p.scale = b.scale;
  p.source = RowSource::kLocal;
  p.allreduce_out = b.allreduce_out;
  p.norm_out = b.norm_out;
  p.residual_out = b.residual_out;
  p.quant_out = static_cast<uint8_t*>(b.quant_out);
  p.scale_out = b.scale_out;
  p.tokens = tokens;
  p.hidden = int(spec.hidden);
  p.vecs_per_row = int(spec.hidden / kVecElems);
  p.weight_dtype = spec.weight_dtype;
  p.eps = spec.eps;
  p.weight_bias = spec.weight_bias;
  p.sum_scale = spec.sum_scale;
  p.group_vecs = spec.quant == QuantMode::kFp8Group ? spec.group_size / kVecElems : 1;
  p.groups_per_row = int(spec.ScaleGroupsPerRow());
  p.scale_col_major = spec.scale_layout == ScaleLayout::kCol;
  p.scale_ue8m0 = spec.scale_fmt == ScaleFormat::kUe8m0;
  p.scale_tokens_padded = PaddedScaleTokens(tokens);
  p.scale_pad_rows = p.scale_col_major ? int(p.scale_tokens_padded - tokens) : 0;
  p.norm_input_f32 = spec.rounding.norm_input_f32;
  p.weight_after_round = spec.rounding.weight_after_round;
  p.bias_in_weight_dtype = spec.rounding.weight_bias_in_weight_dtype;
  p.quant_divides = spec.QuantDivides();
  p.scale_floor_after_div = spec.rounding.scale_floor_after_div;
  p.ue8m0_floor = spec.rounding.ue8m0_floor;
  // Read only by the f32 recipes' kernels (RuntimeRecipeOf; the local op's block or cluster, the
  // nccl path's block); Validate ties the first two to a residual, the third to quant none.
  p.residual_f32_in = spec.residual_f32_in;
  p.residual_out_f32 = spec.rounding.residual_out_f32;
  p.norm_out_f32 = spec.rounding.norm_out_f32;
  p.f32_paired_stores = tokens >= kF32PairedStoresMinRows;
  // Read only by the second-sum recipes' kernels (a bias too), and the three after by the
  // pre-norm recipes'.
  p.second_sum = spec.second_sum;
  p.second_sum_into_residual = spec.second_sum_into_residual;
  p.x2 = b.x2;
  p.bias = b.bias;  // null unless spec.has_bias (CheckBuffers)
  p.bias_per_token = spec.bias_per_token;
  p.first_scale = spec.first_scale;
  p.second_scale = spec.second_scale;
  p.pre_residual_norm = spec.pre_residual_norm;
  p.pre_weight = b.pre_weight;
  p.pre_eps = spec.pre_eps;
  p.world_size = 1;
  return p;
}

// The attributes of one launch (they must outlive it).
struct LaunchAttributes {
  cudaLaunchAttribute items[2];
};

// Launch configuration for `owners` blocks, or clusters of `cluster` blocks, each owning rows of
// `layout` (a cluster's blocks split the row's threads, with `threads_per_row_thread` threads
// each: 2 for ClusterPairRow); programmatic dependent launch when asked for.
cudaLaunchConfig_t MakeConfig(const RowLayout& layout, int64_t owners, cudaStream_t stream,
                              const LaunchOptions& options, LaunchAttributes& attributes, int cluster = 1,
                              int threads_per_row_thread = 1) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(unsigned(owners * cluster));
  config.blockDim = dim3(unsigned(layout.threads / cluster * threads_per_row_thread));
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  config.attrs = attributes.items;
  config.numAttrs = 0;
  if (options.pdl) {
    cudaLaunchAttribute& a = attributes.items[config.numAttrs++];
    a.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    a.val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 1) {
    cudaLaunchAttribute& a = attributes.items[config.numAttrs++];
    a.id = cudaLaunchAttributeClusterDimension;
    a.val.clusterDim.x = unsigned(cluster);
    a.val.clusterDim.y = 1;
    a.val.clusterDim.z = 1;
  }
  return config;
}

// One block per row; the kernel loops over rows beyond the largest grid.
int64_t EpilogueGrid(int64_t rows) { return std::min<int64_t>(rows, int64_t{1} << 30); }

// The portable cluster size.
constexpr int kMaxClusterBlocks = 8;

// Blocks of a row's cluster (common/row_layout.h), within the cluster kernel's launch bounds.
int ClusterBlocks(const RowLayout& layout) {
  return RowClusterBlocks(layout, kMaxClusterBlocks, kMaxClusterBlockThreads);
}

// Whether a cluster's threads can hold each row thread's vectors in two threads (ClusterPairRow):
// rows of two vectors per row thread.
bool HasPairRows(const RowLayout& layout) { return layout.vecs_per_thread == 2; }

// Whether a pair cluster of `blocks` blocks splits the row (2-kMaxClusterBlocks, dividing its warps).
bool IsPairClusterSize(const RowLayout& layout, int blocks) {
  return HasPairRows(layout) && blocks >= 2 && blocks <= kMaxClusterBlocks && (layout.threads / 32) % blocks == 0;
}

// Rows of one warp's layout (H <= 256) are packed into blocks (PackedRows) from these row counts
// on, and take one block per row below. Measured on one H200 at H 64, 128 and 256, against one
// block per row (docs/perf/h200x1/NOTES.md, run 51): from 1024 rows packed rows are faster in
// every mode (1.07-1.46 x at 1024 rows, 2.3-10.4 x at 262144, where one block per row spends its
// time starting blocks); at 256 rows they are 2-4 % faster for quant none and fp8_tensor and up
// to 11 % slower for fp8_token (fp8_group between); at 1-64 rows within 3 % for the static
// modes, 3-14 % slower for the dynamic ones.
constexpr int64_t kPackedMinRowsStatic = 256;
constexpr int64_t kPackedMinRowsDynamic = 1024;
// Rows of two warps (H 264-512) are packed at every row count. Measured at H 384 and 512 (run
// 52, groups of two warps, against one block per row): packed rows 1-8 % faster at 1-256 rows in
// every mode, 1.03-1.50 x faster from 1024 rows on, except fp8_group at H 512 from 16384 rows,
// 1-4 % slower (at H 384 there 1.08-1.14 x faster); from 4096 rows they now take a warp per row
// (below): for fp8_group 0.90-1.01 x the groups' time, at H 512 and 65536 rows still 2 % slower
// than one block per row (run 60).

// Whether rows can be packed (PackedRows): rows of one or two warps at one vector per thread.
bool HasPackedRows(const RowLayout& layout) { return layout.threads <= 64 && layout.vecs_per_thread == 1; }

// Rows of two warps' layout take a warp per row, at two vectors per thread, from this row count
// on, and groups of two warps below (PackedRows). Measured on one H200 at H 384 and 512 against
// groups of two warps (docs/perf/h200x1/NOTES.md, runs 60-61): from 4096 rows the norm alone
// 0.70-0.87 x their time, with the residual 0.81-0.97 x at H 384 and 0.95-1.04 x at H 512
// (1.02-1.04 x only for quant none from 65536 rows); at 512-2048 rows with the residual
// 0.97-1.07 x (fp8_group 1.02-1.07 x), at 1-256 rows 0.99-1.16 x (a row's chain twice as long on
// one warp).
constexpr int64_t kPackedWarpRowsMinRows = 4096;

// The fewest of 8, 16, 32 and 64 threads that hold a packed row's vectors at one per thread.
int OneVectorPackedLanes(const RowLayout& layout) {
  return layout.vecs <= 8 ? 8 : layout.vecs <= 16 ? 16 : layout.vecs <= 32 ? 32 : 64;
}

// Vectors per thread of a packed row in groups of `lanes` (PackedRows): two where a warp holds a
// row of two warps' layout or half the lanes of one vector each a row of one warp's layout, one
// where the lanes hold a vector each (more: refused, PackedLanesRefusal).
int PackedVecsPerThread(const RowLayout& layout, int lanes) { return (layout.vecs + lanes - 1) / lanes; }

// Why a group of `lanes` threads cannot own a packed row of `spec` (empty: it can): lanes 4, 8,
// 16, 32 or 64, at most those of one vector per thread, at most two vectors per thread (4 lanes:
// exactly two), and at two every fp8_group group within one of a thread's two vectors' lanes.
std::string PackedLanesRefusal(const AllreduceRmsnormSpec& spec, const RowLayout& layout, int lanes) {
  if (lanes != 4 && lanes != 8 && lanes != 16 && lanes != 32 && lanes != 64)
    return StrCat("a packed row's group has 4, 8, 16, 32 or 64 lanes, not ", lanes);
  if (lanes > OneVectorPackedLanes(layout))
    return StrCat("a row of hidden ", spec.hidden, " takes at most ", OneVectorPackedLanes(layout),
                  " lanes (one vector each), not ", lanes);
  if (PackedVecsPerThread(layout, lanes) > 2)
    return StrCat("a row of hidden ", spec.hidden, " in ", lanes, " lanes is ",
                  PackedVecsPerThread(layout, lanes), " vectors per lane; packed rows take at most 2");
  if (lanes == 4 && PackedVecsPerThread(layout, lanes) == 1)
    return StrCat("a row of hidden ", spec.hidden, " takes 8 lanes at one vector each; 4 lanes hold",
                  " two vectors each (hidden 40-64)");
  if (PackedVecsPerThread(layout, lanes) == 2 && spec.quant == QuantMode::kFp8Group &&
      spec.group_size / kVecElems > lanes)
    return StrCat("fp8_group's groups of ", spec.group_size, " span more than ", lanes,
                  " lanes' vectors: not two vectors per lane");
  return "";
}

// Rows of one warp's layout of the norm alone (no residual) take two vectors per lane in half
// the lanes from this row count on. Measured on one H100 at H 96, 128, 200 and 256 against one
// vector per lane (docs/perf/h100x1/NOTES.md, run 85): the norm alone 0.80-0.97 x its time at
// 16384 rows, 0.88-0.99 x at 65536-262144, in every quant mode; at 4096 rows 0.92-1.10 x. At
// H 64 (run 86) one vector per lane took 0.98-1.21 x the time of two. With the residual
// 0.89-1.03 x from 16384 rows (0.89-0.99 at H 96, level at the others): not taken.
constexpr int64_t kPackedTwoVectorMinRows = 16384;
// Rows enough for every packed row to take the width of many rows (LocalRowOwnerCapacity).
constexpr int64_t kPackedManyRows = std::max(kPackedWarpRowsMinRows, kPackedTwoVectorMinRows);

// Warps of a packed rows' block for T rows in groups of `lanes`: one per SM (or one group of two
// warps) until every SM has one, then up to kMaxPackedBlockThreads / 32, in whole groups, so
// small T spreads over the SMs and large T starts few blocks.
int PackedBlockWarps(int lanes, int64_t tokens, int64_t sms) {
  const int group_warps = std::max(1, lanes / 32);
  const int64_t warps = (tokens * lanes + 31) / 32;
  const int64_t per_sm = std::clamp<int64_t>((warps + sms - 1) / sms, 1, kMaxPackedBlockThreads / 32);
  return int((per_sm + group_warps - 1) / group_warps * group_warps);
}

// Quant none and fp8_tensor take a cluster for rows of at least kClusterMinWarpsStatic warps,
// and, at fewer blocks, for rows of at least kClusterMinWarpsStaticFewRows (pairs:
// kClusterPairMinWarpsStatic) (below).
constexpr int kClusterMinWarpsStatic = 10;
constexpr int kClusterMinWarpsStaticFewRows = 8;
constexpr int kClusterPairMinWarpsStatic = 6;

// The local epilogue's measured rule: the owner of each row, packed rows (rows of one or two
// warps, from the row counts above), one block or a cluster (of a thread or two per row thread),
// and the cluster's blocks. At small T one block per row leaves most SMs
// idle while each row's block issues the whole row's arithmetic on one SM; a cluster issues it
// on C SMs, at a fixed cost (the cluster's launch, and each reduction's exchange through
// distributed shared memory) that does not grow with H. C is the split into blocks of two row
// warps (ClusterBlocks), except for the pair of fewer blocks below. Measured on one H200 at H
// 2880, 4096, 5120, 7168 and 8192 (docs/perf/h200x1/NOTES.md, runs 16, 21, 30-32 and 34-35):
// - A thread per row thread (ClusterRow) is faster than a block while its blocks fill at most two
//   per SM (T x C <= 2 x SMs) for fp8_token and fp8_group, and for quant none and fp8_tensor from
//   rows of 10 warps (H 5120 on). With fewer warps a row is short enough on one SM that the fixed
//   cost weighs more: at 8 warps (H 4096) it is up to 2.6 % faster at T <= 4, level at T 8-16
//   and 2-8 % slower at T 32-64, so it is taken while T x C <= SMs / 4; at 6 warps (H 2880) not.
// - Two threads per row thread (ClusterPairRow, rows of two vectors per row thread): every SM
//   issues from four warps, not two, and each thread's chain is half as long. Against ClusterRow
//   it is 4-7 % faster at T = 1 for the dynamic modes, and level to 5 % faster up to 224 blocks;
//   at 256 (H 8192 T 32, H 4096 T 64) its two blocks of four warps per SM are 2-6 % slower. So
//   it serves while T x C <= 7/4 x SMs, and ClusterRow above where no pair of fewer blocks
//   serves (below). For quant none and fp8_tensor at 6
//   and 8 warps it is 2-7 % faster than one block per row at H 2880 T <= 16 and H 4096 T 16,
//   level at H 4096 T <= 8, and slower from T x C = 96: taken while T x C <= SMs / 2.
// - Past 2 x SMs (run 32) the dynamic modes' rows (two vectors per row thread) take the pair
//   cluster of fewer, larger blocks (WideClusterPairRow): the most blocks c, dividing the row's
//   warps, with T x c <= 7/4 x SMs (H 4096-8192 T 64: c = 2), where one block per row leaves
//   about half the SMs idle: fp8_group 0.89-0.92 x, fp8_token 0.89-1.01 x one block's time.
//   Quant none took 1.06-1.07 x there, fp8_tensor 1.00-1.02 x: the static modes keep one block.
//   The dynamic modes take that pair before ClusterRow from T x C > 7/4 x SMs on: 0.94-1.00 x
//   ClusterRow's time at H 2880 T 80, 4096 T 64, 5120 T 48, 6144 T 40, 8192 T 32 (runs 34, 35).
// - Past 7/4 x SMs, fp8_group takes one block per row instead of the pair of fewer blocks from
//   T > SMs / 2 on, where one block leaves fewer than half the SMs idle: at T 80-128 one block
//   was 0.90-0.99 x that pair's time at H 2880-8192, at T 64 the pair 0.93-0.98 x one block's
//   (run 34); on an H100 the launcher's time at H 4096-5120 T 72-112 went to 0.93-0.98 x, H
//   2880 T 78-112 to 0.96-1.01 x (docs/perf/h100x1/NOTES.md, run 78). Its full split below
//   7/4 x SMs stays (H 2880 T 67-77: 3 % faster than one block). fp8_token keeps the pair (at
//   H 2880-4096 T 80-96 1-3 % faster than one block).
// - Every cluster so chosen must be at most half of the clusters of its kind and size that the
//   device runs at once (`capacity`, LocalRowOwnerCapacity); a pair cluster that is not gives way
//   to ClusterRow in the dynamic modes where that one is (past 2 x SMs too: H 8192 fp8_token
//   T 48-56, 0.94-0.96 x the pair's time in run 34), else to one block. A grid past them runs
//   in waves: fp8_token's pair of two 512-thread blocks at H 8192 (66 at once) took 1.6 x one
//   block's time at T 80-112 (run 34); past half of them, pair clusters and ClusterRow lost 3-12 %
//   to one block at H 4096-7168 T 80-112.
// - Rows of four vectors per thread (H 8200-16384), which weigh most on one SM, take ClusterRow
//   in the fp8 modes while T is at most half of what runs at once (H 12288 T <= 81, H 16384
//   T <= 62 on an H200): 0.70-0.94 x one block's time at T 40-80; quant none, 0.95-1.09 x there,
//   keeps T x C <= 2 x SMs.
// (Measured with the fixed-recipe kernels, and in run 34 at H 2048-16384, T 1-256, every quant
// mode and owner: over those 836 shapes nowhere more than 1 % slower than run 33's rule, 44 of
// them 3-38 % faster. 8-warp rows of one vector, H 1800-2040, rows of 4-5 warps at two vectors
// (H 2048-2560, static modes: one block) and specs that run the run-time kernels follow the same
// rule unmeasured.) Rows with no split (C = 1: 9, 11, 13 or 15 warps, among others) keep one
// block per row.
// Blocks of a pair cluster for T rows: the most, below the split into blocks of two row warps
// (ClusterBlocks) and down to 2, that divide the row's warps and keep T x c <= 7/4 x SMs; 1
// where none does.
int FewerPairClusterBlocks(const RowLayout& layout, int64_t tokens, int64_t sms) {
  const int warps = layout.threads / 32;
  for (int c = ClusterBlocks(layout) - 1; c >= 2; --c)
    if (warps % c == 0 && 4 * tokens * c <= 7 * sms) return c;
  return 1;
}

LocalRowOwner RowOwnerRule(const AllreduceRmsnormSpec& spec, const RowLayout& layout, int64_t tokens, int64_t sms,
                          const RowOwnerCapacity& capacity) {
  if (HasPackedRows(layout)) {
    const bool packed = layout.threads > 32 ||
                        tokens >= (IsDynamicQuant(spec.quant) ? kPackedMinRowsDynamic : kPackedMinRowsStatic);
    return packed ? LocalRowOwner{RowOwner::kPacked, 1} : LocalRowOwner{};
  }
  const int cluster = ClusterBlocks(layout);
  if (cluster <= 1) return {};
  const LocalRowOwner row{RowOwner::kCluster, cluster};
  // Whether T clusters of `owner` are at most half of those the device runs at once.
  auto fits = [&](const LocalRowOwner& owner) {
    const int64_t at_once = capacity(owner);
    return at_once > 0 && 2 * tokens <= at_once;
  };
  const int64_t blocks = tokens * cluster;
  const int warps = layout.threads / 32;
  const bool dynamic = IsDynamicQuant(spec.quant);
  const bool every_t = dynamic || warps >= kClusterMinWarpsStatic;
  if (HasPairRows(layout)) {
    LocalRowOwner pair{RowOwner::kClusterPair, cluster};
    if (!every_t) {
      if (warps < kClusterPairMinWarpsStatic || 2 * blocks > sms) return {};
    } else if (4 * blocks > 7 * sms) {
      if (spec.quant == QuantMode::kFp8Group && 2 * tokens > sms) return {};
      pair.cluster_blocks = dynamic ? FewerPairClusterBlocks(layout, tokens, sms) : 1;
      if (pair.cluster_blocks <= 1) return blocks <= 2 * sms && fits(row) ? row : LocalRowOwner{};
    }
    if (fits(pair)) return pair;
    return dynamic && fits(row) ? row : LocalRowOwner{};
  }
  if (spec.quant != QuantMode::kNone && layout.vecs_per_thread >= 4) return fits(row) ? row : LocalRowOwner{};
  if (every_t) return blocks <= 2 * sms && fits(row) ? row : LocalRowOwner{};
  return warps >= kClusterMinWarpsStaticFewRows && blocks <= sms / 4 && fits(row) ? row : LocalRowOwner{};
}

// The epilogue kernel of one recipe, by row owner (kBlock, kCluster, kClusterPair or kPacked) and, for
// the pair, the blocks of its cluster (wider blocks than ClusterPairRow's run WideClusterPairRow),
// for packed rows the threads of a row's group (PackedRowLanes).
template <KernelRecipe kRecipe>
FusedKernelFn SelectEpilogue(const AllreduceRmsnormSpec& spec, const RowLayout& layout, RowOwner owner,
                             int cluster_blocks, int packed_lanes) {
  const int v = layout.vecs_per_thread;
  switch (owner) {
    case RowOwner::kPacked: {
      const int packed_v = PackedVecsPerThread(layout, packed_lanes);
      switch (packed_lanes) {
        case 4: return SelectKernel<PackedEpilogueFamily<kRecipe, 4>>(spec.act_dtype, packed_v, spec.quant);
        case 8: return SelectKernel<PackedEpilogueFamily<kRecipe, 8>>(spec.act_dtype, packed_v, spec.quant);
        case 16: return SelectKernel<PackedEpilogueFamily<kRecipe, 16>>(spec.act_dtype, packed_v, spec.quant);
        case 32: return SelectKernel<PackedEpilogueFamily<kRecipe, 32>>(spec.act_dtype, packed_v, spec.quant);
        case 64: return SelectKernel<PackedEpilogueFamily<kRecipe, 64>>(spec.act_dtype, packed_v, spec.quant);
        default: return nullptr;
      }
    }
    case RowOwner::kCluster: return SelectKernel<ClusterEpilogueFamily<kRecipe>>(spec.act_dtype, v, spec.quant);
    case RowOwner::kClusterPair:
      return 2 * layout.threads / cluster_blocks > ClusterPairRow::kMaxThreads
                 ? SelectKernel<ClusterPairEpilogueFamily<kRecipe, true>>(spec.act_dtype, v, spec.quant)
                 : SelectKernel<ClusterPairEpilogueFamily<kRecipe>>(spec.act_dtype, v, spec.quant);
    default:
      if constexpr (kRecipe != KernelRecipe::kRuntime) {
        if (!spec.has_residual)
          if (FusedKernelFn k = SelectKernel<NormAloneEpilogueFamily<kRecipe>>(spec.act_dtype, v, spec.quant)) return k;
      }
      return SelectKernel<EpilogueFamily<kRecipe>>(spec.act_dtype, v, spec.quant);
  }
}

// The epilogue kernel of one recipe with one block per row.
template <KernelRecipe kRecipe>
FusedKernelFn BlockEpilogue(const AllreduceRmsnormSpec& spec, const RowLayout& layout) {
  return SelectKernel<EpilogueFamily<kRecipe>>(spec.act_dtype, layout.vecs_per_thread, spec.quant);
}

// The fixed recipes' fp8_group kernel of one block per row for grids of at most one block per SM
// (SoleBlockRecipe): null for other recipes, modes and vectors per thread. On one H100 it took
// 0.977-0.996 x the shared kernel's time at T 96-128, H 2880-8192, and with fewer instructions
// after the row's sum 0.90-0.97 x that again (docs/perf/h100x1/NOTES.md, runs 128, 131-132); on
// one H200 at T 128, 0.90 x the kernels before both (docs/perf/h200x1/NOTES.md, run 133).
FusedKernelFn SoleBlockEpilogue(const AllreduceRmsnormSpec& spec, const RowLayout& layout, KernelRecipe recipe) {
  const int v = layout.vecs_per_thread;
  switch (recipe) {
    case KernelRecipe::kFixed:
      return SelectKernel<SoleBlockEpilogueFamily<KernelRecipe::kFixed>>(spec.act_dtype, v, spec.quant);
    case KernelRecipe::kFixedWeightAfterRound:
      return SelectKernel<SoleBlockEpilogueFamily<KernelRecipe::kFixedWeightAfterRound>>(spec.act_dtype, v, spec.quant);
    default: return nullptr;
  }
}

// NOTE: a fixed recipe only for the local op (LocalKernelRecipe): its kernels read a = x.
StatusOr<FusedKernelFn> EpilogueKernel(const AllreduceRmsnormSpec& spec, const RowLayout& layout, RowOwner owner,
                                       KernelRecipe recipe, int cluster_blocks = 1, int packed_lanes = 0) {
  if (OneBlockPerRowOnly(recipe) && owner != RowOwner::kBlock)
    return Unimplemented(spec.second_sum  ? "two summed all_reduces run"
                         : spec.has_bias ? "a bias added to the sum runs"
                                         : "a norm before the residual add runs",
                         " with one block per row (row owner kBlock or kAuto)");
  FusedKernelFn kernel = nullptr;
  switch (recipe) {
    case KernelRecipe::kRuntimeSecondSum:
      kernel = BlockEpilogue<KernelRecipe::kRuntimeSecondSum>(spec, layout);
      break;
    case KernelRecipe::kRuntimeF32SecondSum:
      kernel = BlockEpilogue<KernelRecipe::kRuntimeF32SecondSum>(spec, layout);
      break;
    case KernelRecipe::kRuntimePreNorm:
      kernel = BlockEpilogue<KernelRecipe::kRuntimePreNorm>(spec, layout);
      break;
    case KernelRecipe::kRuntimeF32PreNorm:
      kernel = BlockEpilogue<KernelRecipe::kRuntimeF32PreNorm>(spec, layout);
      break;
    case KernelRecipe::kRuntimeF32Residual:
      if (owner == RowOwner::kBlock) {
        kernel = BlockEpilogue<KernelRecipe::kRuntimeF32Residual>(spec, layout);
      } else if (owner == RowOwner::kCluster) {
        kernel = SelectKernel<ClusterEpilogueFamily<KernelRecipe::kRuntimeF32Residual>>(
            spec.act_dtype, layout.vecs_per_thread, spec.quant);
      } else {
        return Unimplemented("an f32 residual or norm output runs with one block or one cluster of a thread ",
                             "per row thread per row (row owner kBlock, kCluster or kAuto)");
      }
      break;
    case KernelRecipe::kRuntime:
      kernel = SelectEpilogue<KernelRecipe::kRuntime>(spec, layout, owner, cluster_blocks, packed_lanes);
      break;
    case KernelRecipe::kFixed:
      kernel = SelectEpilogue<KernelRecipe::kFixed>(spec, layout, owner, cluster_blocks, packed_lanes);
      break;
    case KernelRecipe::kFixedWeightAfterRound:
      kernel = SelectEpilogue<KernelRecipe::kFixedWeightAfterRound>(spec, layout, owner, cluster_blocks, packed_lanes);
      break;
  }
  if (!kernel) return Internal("no epilogue kernel for ", spec.ToString());
  return kernel;
}

// LocalRowOwnerCapacity for a validated spec and an owner its row has (packed rows: the kernel
// of many rows, whose blocks stride over them).
StatusOr<int64_t> CapacityOnDevice(const DeviceFacts& device, const AllreduceRmsnormSpec& spec,
                                   const RowLayout& layout, KernelRecipe recipe, const LocalRowOwner& choice,
                                   const LaunchOptions& options) {
  const int packed_lanes = choice.owner == RowOwner::kPacked ? PackedRowLanes(spec, kPackedManyRows) : 0;
  TPFUSE_ASSIGN_OR_RETURN(const FusedKernelFn kernel,
                          EpilogueKernel(spec, layout, choice.owner, recipe, choice.cluster_blocks, packed_lanes));
  if (choice.owner == RowOwner::kBlock || choice.owner == RowOwner::kPacked) {
    const int threads = choice.owner == RowOwner::kPacked ? kMaxPackedBlockThreads : layout.threads;
    TPFUSE_ASSIGN_OR_RETURN(const int blocks, MaxResidentBlocks(kernel, threads));
    return int64_t{blocks};
  }
  TPFUSE_ASSIGN_OR_RETURN(const bool runs, ClusterKernelRuns(device, kernel));
  if (!runs) return 0;
  LaunchAttributes attributes;
  const cudaLaunchConfig_t config = MakeConfig(layout, 1, nullptr, options, attributes, choice.cluster_blocks,
                                               choice.owner == RowOwner::kClusterPair ? 2 : 1);
  TPFUSE_ASSIGN_OR_RETURN(const int clusters, MaxActiveClusters(device, kernel, choice.cluster_blocks, config));
  return int64_t{clusters};
}

// The owner of an f32 residual stream's rows, whose kernels are one block or ClusterRow per row:
// ClusterRow for the rows the 16-bit rule spreads over ClusterRow (the dynamic modes, and the
// static ones from rows of 10 warps) while T x C <= SMs and T is at most half of the clusters
// the device runs at once, else one block. Measured on one H100 (docs/perf/h100x1/NOTES.md,
// run 102): ClusterRow took 0.66-0.95 x one block's time at T 1-8 (H 4096 dynamic, 7168, 8192);
// at H 4096 T 64 (T x C = 2 x SMs) fp8_group took 1.04 x, fp8_token 1.00.
StatusOr<LocalRowOwner> F32ResidualRowOwner(const DeviceFacts& device, const AllreduceRmsnormSpec& spec,
                                            const RowLayout& layout, int64_t tokens, const LaunchOptions& options) {
  const int cluster = ClusterBlocks(layout);
  if (HasPackedRows(layout) || cluster <= 1) return LocalRowOwner{};
  const bool every_t = IsDynamicQuant(spec.quant) || layout.threads / 32 >= kClusterMinWarpsStatic;
  if (!every_t || tokens * cluster > int64_t{device.sms}) return LocalRowOwner{};
  const LocalRowOwner row{RowOwner::kCluster, cluster};
  TPFUSE_ASSIGN_OR_RETURN(const int64_t at_once,
                          CapacityOnDevice(device, spec, layout, KernelRecipe::kRuntimeF32Residual, row, options));
  return at_once > 0 && 2 * tokens <= at_once ? row : LocalRowOwner{};
}

// The measured rule (RowOwnerRule) for a validated spec, with the capacities of `device`.
StatusOr<LocalRowOwner> RuleOnDevice(const DeviceFacts& device, const AllreduceRmsnormSpec& spec,
                                     const RowLayout& layout, KernelRecipe recipe, int64_t tokens,
                                     const LaunchOptions& options) {
  if (recipe == KernelRecipe::kRuntimeF32Residual) return F32ResidualRowOwner(device, spec, layout, tokens, options);
  if (OneBlockPerRowOnly(recipe)) return LocalRowOwner{};  // one block per row
  Status failed;
  const LocalRowOwner choice = RowOwnerRule(spec, layout, tokens, device.sms, [&](const LocalRowOwner& owner) -> int64_t {
    StatusOr<int64_t> at_once = CapacityOnDevice(device, spec, layout, recipe, owner, options);
    if (at_once.ok()) return *at_once;
    if (failed.ok()) failed = at_once.status();
    return 0;
  });
  TPFUSE_RETURN_IF_ERROR(failed);
  return choice;
}

// Rows packed into blocks (RowOwner::kPacked): blocks of PackedBlockWarps warps, as many as
// PackedRowsBlocks says.
Status LaunchPackedRows(const AllreduceRmsnormSpec& spec, const RowLayout& layout, KernelRecipe recipe,
                      int64_t tokens, const FusedBuffers& b, cudaStream_t stream, const LaunchOptions& options,
                      const DeviceFacts& device) {
  // The rule's widths are ones a row can take; a forced one is checked.
  const int lanes = options.packed_row_lanes != 0 ? options.packed_row_lanes : PackedRowLanes(spec, tokens);
  if (options.packed_row_lanes != 0)
    if (const std::string refusal = PackedLanesRefusal(spec, layout, lanes); !refusal.empty())
      return InvalidArgument(refusal);
  TPFUSE_ASSIGN_OR_RETURN(const FusedKernelFn kernel, EpilogueKernel(spec, layout, RowOwner::kPacked, recipe, 1, lanes));
  const int warps = PackedBlockWarps(lanes, tokens, device.sms);
  const int64_t rows_per_block = int64_t{warps} * 32 / lanes;
  TPFUSE_ASSIGN_OR_RETURN(const int resident, MaxResidentBlocks(kernel, 32 * warps));
  const int64_t blocks =
      PackedRowsBlocks(spec, tokens, rows_per_block, resident, options.max_row_owners);
  RowLayout block = layout;  // MakeConfig sizes the block from a layout's threads
  block.threads = 32 * warps;
  LaunchAttributes attributes;
  cudaLaunchConfig_t config = MakeConfig(block, blocks, stream, options, attributes);
  TPFUSE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, MakeParams(spec, tokens, b)));
  return Status::Ok();
}

}  // namespace

int PackedRowLanes(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  const RowLayout layout = MakeRowLayout(spec.hidden);
  if (layout.vecs > 32) return tokens >= kPackedWarpRowsMinRows ? 32 : 64;
  const int one = OneVectorPackedLanes(layout);
  // Half the lanes hold two vectors each (one each only where 4 lanes would, which is refused).
  const bool two = !spec.has_residual && tokens >= kPackedTwoVectorMinRows &&
                   PackedLanesRefusal(spec, layout, one / 2).empty();
  return two ? one / 2 : one;
}

int64_t PackedRowsBlocks(const AllreduceRmsnormSpec& spec, int64_t tokens, int64_t rows_per_block,
                         int64_t resident, int64_t max_row_owners) {
  int64_t blocks = (tokens + rows_per_block - 1) / rows_per_block;
  // The norm alone writing q alone: 3 bytes per element of 16-bit x.
  const bool q_of_x_alone = !spec.has_residual && spec.emit == EmitSet{.quant = true};
  if (q_of_x_alone) blocks = std::min(blocks, resident);
  if (max_row_owners > 0) blocks = std::min(blocks, max_row_owners);
  return blocks;
}

LocalRowOwner LocalRowOwnerRule(const AllreduceRmsnormSpec& spec, int64_t tokens, int sms,
                                const RowOwnerCapacity& capacity) {
  return RowOwnerRule(spec, MakeRowLayout(spec.hidden), tokens, sms, capacity);
}

StatusOr<LocalRowOwner> LocalRowOwnerOnDevice(const AllreduceRmsnormSpec& spec, int64_t tokens,
                                              const LaunchOptions& options) {
  TPFUSE_RETURN_IF_ERROR(cuda_limits::ValidateForCudaKernels(spec, 1));
  TPFUSE_ASSIGN_OR_RETURN(const DeviceFacts device, CurrentDeviceFacts());
  return RuleOnDevice(device, spec, MakeRowLayout(spec.hidden), LocalKernelRecipe(spec, options), tokens, options);
}

StatusOr<int64_t> LocalRowOwnerCapacity(const AllreduceRmsnormSpec& spec, const LocalRowOwner& choice,
                                        const LaunchOptions& options) {
  TPFUSE_RETURN_IF_ERROR(cuda_limits::ValidateForCudaKernels(spec, 1));
  const RowLayout layout = MakeRowLayout(spec.hidden);
  const int c = choice.cluster_blocks;
  switch (choice.owner) {
    case RowOwner::kBlock:
      if (c != 1) return InvalidArgument("one block per row has cluster_blocks 1, not ", c);
      break;
    case RowOwner::kCluster:
      if (c <= 1 || c != ClusterBlocks(layout))
        return InvalidArgument("a cluster per row for hidden ", spec.hidden, " has ", ClusterBlocks(layout),
                               " blocks, not ", c);
      break;
    case RowOwner::kClusterPair:
      if (!IsPairClusterSize(layout, c)) return InvalidArgument("no pair cluster of ", c, " blocks for hidden ", spec.hidden);
      break;
    case RowOwner::kPacked:
      if (!HasPackedRows(layout)) return InvalidArgument("no packed rows for hidden ", spec.hidden);
      if (c != 1) return InvalidArgument("packed rows have cluster_blocks 1, not ", c);
      break;
    case RowOwner::kAuto: return InvalidArgument("the capacity of a row owner, not of kAuto");
  }
  TPFUSE_ASSIGN_OR_RETURN(const DeviceFacts device, CurrentDeviceFacts());
  return CapacityOnDevice(device, spec, layout, LocalKernelRecipe(spec, options), choice, options);
}

KernelRecipe LocalKernelRecipe(const AllreduceRmsnormSpec& spec, const LaunchOptions& options) {
  const KernelRecipe runtime = RuntimeRecipeOf(spec);
  if (runtime != KernelRecipe::kRuntime || !options.fixed_recipes) return runtime;
  // The scale step and format matter only where the kernel quantizes (ue8m0: dynamic scales).
  const bool dynamic_f32 = IsDynamicQuant(spec.quant) && spec.scale_fmt == ScaleFormat::kF32;
  const bool default_scale_step = spec.quant == QuantMode::kNone ||
                                  (!spec.rounding.scale_op_swapped &&
                                   (spec.quant == QuantMode::kFp8Tensor || dynamic_f32));
  const bool fixed = spec.weight_dtype == spec.act_dtype && spec.weight_bias == 0.0f && spec.sum_scale == 1.0f &&
                     !spec.rounding.norm_input_f32 && !spec.emit.allreduce && default_scale_step &&
                     !spec.rounding.scale_floor_after_div && !spec.rounding.ue8m0_floor;
  if (!fixed) return KernelRecipe::kRuntime;
  return spec.rounding.weight_after_round ? KernelRecipe::kFixedWeightAfterRound : KernelRecipe::kFixed;
}

Status CanRun(const Communicator& comm, const AllreduceRmsnormSpec& spec, int64_t tokens,
              Strategy strategy) {
  const int n = comm.world_size();
  TPFUSE_RETURN_IF_ERROR(cuda_limits::ValidateForCudaKernels(spec, n));
  if (tokens < 0) return InvalidArgument("token count must be >= 0, got ", tokens);
  if (comm.poisoned())
    return FailedPrecondition("the communicator is poisoned by an earlier timeout; recreate it");
  // No communication: every strategy is the local epilogue.
  if (n == 1 || spec.local) return Status::Ok();
  if (spec.pre_residual_norm)
    return Unimplemented("strategy ", StrategyName(strategy), ": a norm before the residual add runs at world size 1 ",
                         "and in local ops only (at N >= 2 the all_reduce fuses with that norm, and the residual add ",
                         "with the next one)");
  if (strategy == Strategy::kNccl) {
    // Above N = 2 the exact path gathers every rank's partial row into the scratch buffer; two
    // summed all_reduces hold the second's rows beside the first's.
    const size_t copies = (n > 2 ? size_t(n) : 1) * (spec.second_sum ? 2 : 1);
    if (RowsThatFit(comm.nccl_scratch_bytes() / copies, spec.hidden) < 1)
      return OutOfRange("hidden ", spec.hidden, " does not fit the nccl scratch buffer");
    return Status::Ok();
  }
  if (spec.has_f32_values())
    return Unimplemented("strategy ", StrategyName(strategy), " gives the residual and the norm in the ",
                         "activation dtype: an f32 residual or norm output runs on nccl");
  if (spec.second_sum)
    return Unimplemented("strategy ", StrategyName(strategy), " reduces one all_reduce: two summed all_reduces ",
                         "run on nccl");
  if (spec.has_bias)
    return Unimplemented("strategy ", StrategyName(strategy), " adds no bias to the sum: a bias runs on nccl");
  if (!comm.has_peer_memory())
    return Unimplemented("strategy ", StrategyName(strategy), " needs peer memory: ",
                         comm.why_no_peer_memory());
  const WorkspaceLayout& l = comm.layout();
  if (strategy == Strategy::kOneShot) {
    const int64_t fit = RowsThatFit(l.lamport_slot_bytes, spec.hidden);
    if (tokens > fit)
      return OutOfRange(tokens, " tokens of hidden ", spec.hidden, " are over the one-shot workspace (",
                        fit, " rows)");
  } else {
    const int64_t rows = (tokens + n - 1) / n;
    const int64_t fit = std::min(RowsThatFit(l.rs_slot_bytes, spec.hidden),
                                 RowsThatFit(l.ag_buffer_bytes, spec.hidden) / n);
    if (rows > fit)
      return OutOfRange(tokens, " tokens of hidden ", spec.hidden, " are over the two-shot workspace (",
                        fit * n, " rows)");
  }
  return Status::Ok();
}

Status LaunchLocalAllreduceRmsnorm(const AllreduceRmsnormSpec& spec, int64_t tokens,
                                   const FusedBuffers& b, cudaStream_t stream,
                                   const LaunchOptions& options) {
  TPFUSE_RETURN_IF_ERROR(cuda_limits::ValidateForCudaKernels(spec, 1));
  if (tokens < 0) return InvalidArgument("token count must be >= 0, got ", tokens);
  TPFUSE_RETURN_IF_ERROR(CheckBuffers(spec, b));
  if (options.max_row_owners < 0)
    return InvalidArgument("max_row_owners must be >= 0, got ", options.max_row_owners);
  if (tokens == 0) return Status::Ok();
  if (options.cluster_blocks != 0 && options.row_owner != RowOwner::kClusterPair)
    return InvalidArgument("cluster_blocks is for row_owner kClusterPair only");
  if (options.packed_row_lanes != 0 && options.row_owner != RowOwner::kPacked)
    return InvalidArgument("packed_row_lanes is for row_owner kPacked only");
  const RowLayout layout = MakeRowLayout(spec.hidden);
  const KernelRecipe recipe = LocalKernelRecipe(spec, options);
  TPFUSE_ASSIGN_OR_RETURN(const DeviceFacts device, CurrentDeviceFacts());
  // A cluster per row where forced or where the rule says so, and the device and the build run it.
  const bool forced = options.row_owner != RowOwner::kAuto;
  LocalRowOwner choice{options.row_owner, ClusterBlocks(layout)};
  if (!forced) {
    // NOTE: where the device cannot say how many clusters run at once, one block per row: the
    // same bits (the occupancy query's errors do not stick).
    StatusOr<LocalRowOwner> rule = RuleOnDevice(device, spec, layout, recipe, tokens, options);
    if (!rule.ok()) (void)cudaGetLastError();
    choice = rule.ok() ? *rule : LocalRowOwner{};
  }
  RowOwner& owner = choice.owner;
  if (owner == RowOwner::kPacked) {
    if (!HasPackedRows(layout))
      return Unimplemented("no packed rows for hidden ", spec.hidden, ": its row has ", layout.threads / 32,
                           " warps");
    return LaunchPackedRows(spec, layout, recipe, tokens, b, stream, options, device);
  }
  if (forced && owner != RowOwner::kBlock && choice.cluster_blocks <= 1)
    return Unimplemented("no cluster per row for hidden ", spec.hidden,
                         ": its row has no split into blocks of two warps or fewer");
  if (forced && owner == RowOwner::kClusterPair && !HasPairRows(layout))
    return Unimplemented("no cluster of two threads per row thread for hidden ", spec.hidden, ": its rows have ",
                         layout.vecs_per_thread, " vectors per row thread, not 2");
  if (options.cluster_blocks != 0) {
    if (!IsPairClusterSize(layout, options.cluster_blocks))
      return InvalidArgument("cluster_blocks ", options.cluster_blocks, " must be 2-", kMaxClusterBlocks,
                             " and divide the row's ", layout.threads / 32, " warps (hidden ", spec.hidden, ")");
    choice.cluster_blocks = options.cluster_blocks;
  }
  FusedKernelFn cluster_kernel = nullptr;
  if (owner != RowOwner::kBlock) {
    TPFUSE_ASSIGN_OR_RETURN(cluster_kernel, EpilogueKernel(spec, layout, owner, recipe, choice.cluster_blocks));
    TPFUSE_ASSIGN_OR_RETURN(const bool runs, ClusterKernelRuns(device, cluster_kernel));
    if (forced && !runs)
      return Unimplemented("no cluster per row for hidden ", spec.hidden, ": this device or build has no thread block clusters");
    if (!runs) owner = RowOwner::kBlock;
  }
  int64_t owners = EpilogueGrid(tokens);
  if (options.max_row_owners > 0) owners = std::min(owners, options.max_row_owners);
  const FusedKernelParams p = MakeParams(spec, tokens, b);
  LaunchAttributes attributes;
  if (owner != RowOwner::kBlock) {
    cudaLaunchConfig_t config = MakeConfig(layout, owners, stream, options, attributes, choice.cluster_blocks,
                                           owner == RowOwner::kClusterPair ? 2 : 1);
    const cudaError_t launched = cudaLaunchKernelEx(&config, cluster_kernel, p);
    if (launched == cudaSuccess) return Status::Ok();
    // A cluster the device cannot place (a context limited to fewer SMs): the rule falls back to
    // one block per row, the same bits; a forced cluster, or any other error, is reported.
    const bool unplaceable = launched == cudaErrorInvalidClusterSize || launched == cudaErrorLaunchOutOfResources;
    if (forced || !unplaceable) TPFUSE_CUDA_CHECK(launched);
    (void)cudaGetLastError();
  }
  FusedKernelFn kernel = owners <= device.sms ? SoleBlockEpilogue(spec, layout, recipe) : nullptr;
  if (!kernel) {
    TPFUSE_ASSIGN_OR_RETURN(kernel, EpilogueKernel(spec, layout, RowOwner::kBlock, recipe));
  }
  cudaLaunchConfig_t config = MakeConfig(layout, owners, stream, options, attributes);
  TPFUSE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
  return Status::Ok();
}

Status LaunchAllreduceRmsnorm(Communicator& comm, const AllreduceRmsnormSpec& spec, int64_t tokens,
                              const FusedBuffers& b, Strategy strategy, cudaStream_t stream,
                              const LaunchOptions& options) {
  TPFUSE_RETURN_IF_ERROR(CanRun(comm, spec, tokens, strategy));
  int device = -1;
  TPFUSE_CUDA_CHECK(cudaGetDevice(&device));
  if (device != comm.device())
    return InvalidArgument("current device ", device, " is not the communicator's device ", comm.device());
  TPFUSE_RETURN_IF_ERROR(CheckBuffers(spec, b));
  const int n = comm.world_size();
  // NOTE: at N = 1 the sum is x itself (Contract 3 step 1), whatever strategy was asked for.
  if (n == 1 || spec.local) return LaunchLocalAllreduceRmsnorm(spec, tokens, b, stream, options);
  if (tokens == 0) return Status::Ok();

  const RowLayout layout = MakeRowLayout(spec.hidden);
  const WorkspaceLayout& ws = comm.layout();
  FusedKernelParams p = MakeParams(spec, tokens, b);
  p.rank = comm.rank();
  p.world_size = n;
  for (int r = 0; r < kMaxRanks; ++r) p.peer_bases[r] = comm.peer_bases()[r];
  p.lamport_offset = ws.lamport_offset;
  p.lamport_buffer_bytes = ws.lamport_buffer_bytes;
  p.lamport_slot_bytes = ws.lamport_slot_bytes;
  p.rs_offset = ws.rs_offset;
  p.rs_buffer_bytes = ws.rs_buffer_bytes;
  p.rs_slot_bytes = ws.rs_slot_bytes;
  p.ag_offset = ws.ag_offset;
  p.ag_buffer_bytes = ws.ag_buffer_bytes;
  p.rows_per_rank = (tokens + n - 1) / n;
  p.state = comm.device_state();
  p.timeout_ns = comm.timeout_ns();
  LaunchAttributes attributes;

  if (strategy == Strategy::kNccl) {
    // The run-time recipe: the rows are NCCL's (reduced or gathered), not x.
    TPFUSE_ASSIGN_OR_RETURN(
        FusedKernelFn kernel,
        EpilogueKernel(spec, layout, RowOwner::kBlock, RuntimeRecipeOf(spec)));
    const ncclDataType_t type = spec.act_dtype == DType::kBF16 ? ncclBfloat16 : ncclFloat16;
    // At N = 2 ncclAllReduce's sum is Contract 3's (one f32 add, one rounding); above it NCCL
    // rounds partial sums, so the exact path gathers the partials and sums them in the kernel.
    const bool gather = options.nccl_reduction == NcclReduction::kExact && n > 2;
    const int64_t copies = gather ? n : 1;
    const int64_t inputs = spec.second_sum ? 2 : 1;  // x, and x2 (second_sum)
    // NOTE: rows are processed in chunks that fit the scratch buffer; a row's result does not
    // depend on the chunking.
    const int64_t chunk = RowsThatFit(comm.nccl_scratch_bytes() / size_t(copies * inputs), spec.hidden);
    if (chunk < 1)
      return OutOfRange("hidden ", spec.hidden, " x ", copies * inputs, " rows does not fit the nccl scratch buffer");
    for (int64_t first = 0; first < tokens; first += chunk) {
      const int64_t rows = std::min(chunk, tokens - first);
      const size_t offset = size_t(first) * spec.hidden;
      // x's rows, then x2's (second_sum), each [copies][rows][H] (the gathered layout's rank
      // stride is the chunk's rows).
      uint16_t* const scratch = static_cast<uint16_t*>(comm.nccl_scratch());
      const void* const sources[2] = {b.x, b.x2};
      // The group is closed whatever a collective returned, so a failure leaves no group open.
      if (inputs > 1) TPFUSE_NCCL_CHECK(ncclGroupStart());
      ncclResult_t issued = ncclSuccess;
      for (int64_t i = 0; i < inputs && issued == ncclSuccess; ++i) {
        const uint16_t* send = static_cast<const uint16_t*>(sources[i]) + offset;
        uint16_t* recv = scratch + size_t(i * copies * rows) * spec.hidden;
        issued = gather ? ncclAllGather(send, recv, size_t(rows) * spec.hidden, type, comm.nccl(), stream)
                        : ncclAllReduce(send, recv, size_t(rows) * spec.hidden, type, ncclSum, comm.nccl(), stream);
      }
      if (inputs > 1) {
        const ncclResult_t ended = ncclGroupEnd();
        if (issued == ncclSuccess) issued = ended;
      }
      if (issued != ncclSuccess)
        return Status(StatusCode::kNcclError, StrCat("the nccl strategy's ", gather ? "ncclAllGather" : "ncclAllReduce",
                                                     inputs > 1 ? "s (one group)" : "", " failed: ",
                                                     ncclGetErrorString(issued)));
      FusedKernelParams q = p;
      q.source = gather ? RowSource::kGathered : RowSource::kReduced;
      q.reduced = scratch;
      q.reduced2 = spec.second_sum ? scratch + size_t(copies * rows) * spec.hidden : nullptr;
      q.gathered_ranks = gather ? n : 0;
      q.tokens = rows;
      // Chunk-relative pointers; scale indices stay absolute through the row offset.
      auto shift = [&](const void* base, size_t elem_bytes) -> const char* {
        return base ? static_cast<const char*>(base) + offset * elem_bytes : nullptr;
      };
      q.x = shift(b.x, 2);
      q.x2 = shift(b.x2, 2);
      q.residual = shift(b.residual, DTypeSize(spec.residual_in_dtype()));
      q.allreduce_out = const_cast<char*>(shift(b.allreduce_out, 2));
      q.norm_out = const_cast<char*>(shift(b.norm_out, DTypeSize(spec.norm_out_dtype())));
      q.residual_out = const_cast<char*>(shift(b.residual_out, DTypeSize(spec.residual_out_dtype())));
      q.quant_out = b.quant_out ? static_cast<uint8_t*>(b.quant_out) + offset : nullptr;
      q.scale_pad_rows = first + rows == tokens ? p.scale_pad_rows : 0;
      if (first > 0 && b.scale_out) {
        // Row-major scales move with the rows; column-major ones index rows inside each group
        // row, so the chunk keeps the full padded length and shifts by `first` rows.
        q.scale_out = p.scale_col_major ? b.scale_out + first : b.scale_out + first * p.groups_per_row;
      }
      cudaLaunchConfig_t config = MakeConfig(layout, EpilogueGrid(rows), stream, options, attributes);
      TPFUSE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, q));
    }
    return Status::Ok();
  }

  FusedKernelFn kernel =
      strategy == Strategy::kOneShot
          ? SelectKernel<OneShotFamily>(spec.act_dtype, layout.vecs_per_thread, spec.quant)
          : SelectKernel<TwoShotFamily>(spec.act_dtype, layout.vecs_per_thread, spec.quant);
  if (!kernel) return Internal("no ", StrategyName(strategy), " kernel for ", spec.ToString(), " at world size ", n);
  TPFUSE_ASSIGN_OR_RETURN(const int resident, MaxResidentBlocks(kernel, layout.threads));
  const int64_t work_rows = strategy == Strategy::kOneShot ? tokens : p.rows_per_rank;
  // Blocks wait on their peers' blocks of the same index: the grid stays co-resident (so a
  // waiting block never keeps a peer's block from being scheduled) and within the call
  // counters (kMaxFusedBlocks).
  const int64_t grid = std::min<int64_t>({work_rows, int64_t(resident), int64_t(kMaxFusedBlocks)});
  cudaLaunchConfig_t config = MakeConfig(layout, grid, stream, options, attributes);
  TPFUSE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
  return Status::Ok();
}

}  // namespace tpfuse::cuda
