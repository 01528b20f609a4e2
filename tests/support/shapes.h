// The one shared list of test shapes (STYLE.md habit 8): odd token counts and real hidden sizes.
#pragma once

#include <cstdint>
#include <vector>

namespace tpfuse::testing {

// Token counts every fused-op test sweeps (plus the workspace maximum where it applies).
inline const std::vector<int64_t> kTokenCounts = {1, 3, 19, 128, 1000};
// Hidden sizes every fused-op test sweeps.
inline const std::vector<int64_t> kHiddenSizes = {128, 2880, 4096, 7168};
// Quick subsets for the CPU suite, which runs on 2 cores without a GPU.
inline const std::vector<int64_t> kQuickTokenCounts = {1, 3, 19};
inline const std::vector<int64_t> kQuickHiddenSizes = {128, 2880};

}  // namespace tpfuse::testing
