// What the CUDA fused kernels accept, in one place: the launcher validates every call with
// ValidateForCudaKernels, and the CUDA backend's fusion capabilities (CudaFusionCapabilities in
// include/tpfuse/fused_op.h) are derived from the same constants. Plain data, no CUDA: the
// compiler asks it on machines without a GPU (`tpfuse compile --backend cuda`).
// cuda_limits_test.cc checks that the two agree over a sweep of specs.
#pragma once

#include <vector>

#include "common/row_layout.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::cuda_limits {

inline constexpr int kMaxWorldSize = 8;          // peer pointers in the kernel parameters
inline constexpr int kHiddenMultiple = kRowVecElems;  // one 16-byte vector of activations
inline constexpr int64_t kMaxHidden = kMaxRowHidden;
// fp8_group: a group is 1..32 consecutive vectors (aligned lane groups of one warp), a power of
// two: group sizes 8, 16, ..., 256.
inline constexpr int kMinGroupSize = kRowVecElems;
inline constexpr int kMaxGroupSize = 32 * kRowVecElems;

// The group sizes above, ascending.
std::vector<int> GroupSizes();

// The kernels' limits beyond spec.Validate(): dtypes, H, group size, world size. The message
// names the limit ("hidden 16392 is over the fused kernel's limit of 16384").
Status ValidateForCudaKernels(const AllreduceRmsnormSpec& spec, int world_size);

}  // namespace tpfuse::cuda_limits
