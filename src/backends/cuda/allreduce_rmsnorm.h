// Host entry point of the fused all-reduce + residual + RMSNorm + FP8 quant op on GPUs.
// Kernels live in kernels/allreduce_rmsnorm.cuh, launches in launch/allreduce_rmsnorm.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string_view>

#include "backends/cuda/comm/communicator.h"
#include "backends/cuda/kernel_recipe.h"
#include "tpfuse/fused_op.h"

namespace tpfuse::cuda {

// Device pointers of one call (include/tpfuse/fused_op.h). Unused outputs (not in spec.emit)
// must be null; used ones non-null and 16-byte aligned.
using FusedBuffers = tpfuse::FusedBuffers;

// How the nccl strategy combines the ranks' partials.
enum class NcclReduction : uint8_t {
  // Contract 3's sum (f32, rank order 0..N-1, one rounding): ncclAllReduce at N = 2, where its
  // sum is that one rounding; above N = 2 ncclAllGather of the partials and the sum in the
  // epilogue kernel (ncclAllReduce rounds partial sums in ring order there).
  kExact,
  // ncclAllReduce at every N: NCCL's own summation order and roundings. The benchmark's
  // baseline B; not Contract 3's sum above N = 2.
  kAllReduce,
};

// Who owns a row in the local epilogue (LaunchLocalAllreduceRmsnorm): one block, or a thread
// block cluster that splits the block's threads over several SMs, with a thread per row thread
// or two, or, for rows of one or two warps, a group of a block's threads (docs/kernels.md). All
// give the same bits.
enum class RowOwner : uint8_t {
  kAuto,     // the measured rule: packed rows for rows of one or two warps where they are
             // faster, a cluster at small T where it is faster, else a block
  kBlock,    // one block per row (fp8_group in the fixed recipes at two vectors per thread runs
             // kernels of its own while the grid has at most one block per SM: SoleBlockRecipe)
  kCluster,  // one cluster per row, a thread per row thread (ClusterRow); kUnimplemented where the
             // row has no split or the device no clusters
  kClusterPair,  // one cluster per row, two threads per row thread (ClusterPairRow); as kCluster,
                 // and kUnimplemented for rows of other than two vectors per row thread
  kPacked,  // rows of one or two warps packed into blocks of 1-8 warps: 4, 2 or 1 rows per warp
            // (8, 4 or 2 at two vectors per lane for the norm alone from 16384 rows), and rows of
            // two warps' layout two warps per row, or a warp per row from 4096 rows (PackedRows);
            // kUnimplemented for larger rows (H > 512)
};

struct LaunchOptions {
  // Programmatic dependent launch: the kernel may start while the previous kernel on the stream
  // finishes; it waits (griddepcontrol.wait) before touching anything that kernel may write.
  bool pdl = true;
  NcclReduction nccl_reduction = NcclReduction::kExact;
  // The local epilogue's row owner, and the most owners (blocks or clusters; with kPacked,
  // blocks) it launches: 0 for as many as the rows take; fewer make each stride over several
  // rows. For tests and measurements.
  RowOwner row_owner = RowOwner::kAuto;
  int64_t max_row_owners = 0;
  // With row_owner kClusterPair: the blocks of each row's cluster, 2-8 dividing the row's warps
  // (0: the split into blocks of two row warps, as kCluster's). For tests and measurements.
  int cluster_blocks = 0;
  // With row_owner kPacked: the threads of each row's group, 4, 8, 16, 32 or 64, at most those that
  // hold the row at one vector per thread and at least half of them (two vectors per thread, where
  // fp8_group's groups lie within half; 4 lanes only at two); 0: the launcher's rule. Others are
  // refused with the reason. For tests and measurements.
  int packed_row_lanes = 0;
  // The local epilogue's kernels with the recipe fixed at compile time where the spec is one of
  // their forms (kernels/allreduce_rmsnorm.cuh, "recipes"); false: the kernels that read it at
  // run time, for every spec (the same bits). For tests and measurements.
  bool fixed_recipes = true;
};

// Validates everything (spec, pointers, alignment, T against the workspace, strategy against
// the communicator) and launches. Returns kOutOfRange when T is over the strategy's workspace
// and kUnimplemented when the strategy needs peer memory the communicator lacks; the caller
// (the dispatcher) then picks another strategy. Asynchronous: a peer timeout surfaces through
// Communicator::CheckHealth.
Status LaunchAllreduceRmsnorm(Communicator& comm, const AllreduceRmsnormSpec& spec,
                              int64_t tokens, const FusedBuffers& buffers, Strategy strategy,
                              cudaStream_t stream, const LaunchOptions& options = {});

// The fused op without communication, on one GPU: a = x (world size 1, or spec.local), then
// the epilogue, in one kernel. Needs no communicator and no NCCL. Validates like
// LaunchAllreduceRmsnorm; asynchronous.
Status LaunchLocalAllreduceRmsnorm(const AllreduceRmsnormSpec& spec, int64_t tokens,
                                   const FusedBuffers& buffers, cudaStream_t stream,
                                   const LaunchOptions& options = {});

// The epilogue kernel LaunchLocalAllreduceRmsnorm runs for `spec`: one with the recipe fixed at
// compile time where the spec is one of their forms (the weight in the activation dtype, no
// bias, the norm reading round(h), the mode's default scale step, f32 scales, no allreduce
// output) and options.fixed_recipes is set, else the one that reads it at run time.
KernelRecipe LocalKernelRecipe(const AllreduceRmsnormSpec& spec, const LaunchOptions& options = {});

// A row owner (row_owner) and the blocks of its cluster (1 for one block per row).
struct LocalRowOwner {
  RowOwner owner = RowOwner::kBlock;
  int cluster_blocks = 1;
};

// How many row owners of `owner`'s kind and size (blocks, or clusters of owner.cluster_blocks
// blocks; with kPacked, blocks of 8 warps of the kernel many rows take) the local epilogue's
// kernel for `spec` runs at once on the current device; 0 where the device or the build runs no
// clusters. kInvalidArgument for an owner the row has no split for.
StatusOr<int64_t> LocalRowOwnerCapacity(const AllreduceRmsnormSpec& spec, const LocalRowOwner& owner,
                                        const LaunchOptions& options = {});

// Blocks the local epilogue launches for T rows packed `rows_per_block` to a block
// (RowOwner::kPacked): one per rows_per_block rows, each block's groups taking one row, so the
// GPU starts blocks in waves; except for the norm alone writing q alone (no residual, an FP8
// mode emitting nothing else: 3 bytes per element), whose blocks are at most `resident` (those
// that run at once), each striding over the rows; and at most max_row_owners where that is > 0.
// Measured on one H100 at H 64-512 and 16384-262144 rows against the blocks that run at once
// (docs/perf/h100x1/NOTES.md, run 83): with the residual 0.89-0.98 x their time from 65536
// rows in every mode (at 16384 rows, measured in the dynamic modes: 0.91-1.06 x), and for the
// norm alone where it writes y too (quant none 0.90-0.98 x, fp8_group + norm 0.91-1.01 x);
// 1.00-1.21 x for fp8_tensor and fp8_token of the norm alone. Pure arithmetic: no GPU needed.
int64_t PackedRowsBlocks(const AllreduceRmsnormSpec& spec, int64_t tokens, int64_t rows_per_block,
                         int64_t resident, int64_t max_row_owners);

// Threads of a packed row's group for T rows of `spec` (H <= 512), the launcher's rule: for rows
// of one warp's layout the fewest of 8, 16 and 32 that hold its vectors at one per lane, or half
// of them at two per lane for the norm alone (no residual) from 16384 rows where fp8_group's
// groups lie within half (docs/kernels.md); for rows of two warps' layout 64 below 4096 rows
// (a group of two warps), 32 from there (a warp, two vectors per lane). Pure arithmetic: no GPU
// needed.
int PackedRowLanes(const AllreduceRmsnormSpec& spec, int64_t tokens);

// The row owner the local epilogue's measured rule takes for T rows of `spec` (row_owner kAuto)
// on a GPU of `sms` SMs, given how many of each cluster kind and size run at once (`capacity`,
// 0 for none; asked only of owners the row has a split for). Pure arithmetic: no GPU needed.
using RowOwnerCapacity = std::function<int64_t(const LocalRowOwner&)>;
LocalRowOwner LocalRowOwnerRule(const AllreduceRmsnormSpec& spec, int64_t tokens, int sms,
                                const RowOwnerCapacity& capacity);
// The same on the current device (capacities from LocalRowOwnerCapacity): what
// LaunchLocalAllreduceRmsnorm runs. Where this fails, or the cluster launch then does, the
// launcher runs one block per row (the same bits).
StatusOr<LocalRowOwner> LocalRowOwnerOnDevice(const AllreduceRmsnormSpec& spec, int64_t tokens,
                                              const LaunchOptions& options = {});

// Whether `strategy` can run this shape on this communicator (same checks, no launch).
Status CanRun(const Communicator& comm, const AllreduceRmsnormSpec& spec, int64_t tokens,
              Strategy strategy);

}  // namespace tpfuse::cuda
