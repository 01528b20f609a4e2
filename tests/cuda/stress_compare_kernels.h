// Device-side bitwise comparison of many output regions with their expected bytes, one count
// per region: the stress tests keep every call's outputs and check them all after the calls.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpfuse::testing {

// One region: `words` 16-byte words at `got` compared with those at `expected`.
struct CompareJob {
  const void* got;
  const void* expected;
  unsigned long long words;
};

// For every job j of `jobs` (device memory, `count` entries): adds the number of differing
// words to mismatches[j] and lowers first_mismatch[j] to the smallest differing word's index.
// Initialize mismatches to 0 and first_mismatch to ~0 (all bytes 0xFF). count <= 65535.
void LaunchCompareJobs(const CompareJob* jobs, int count, unsigned long long* mismatches,
                       unsigned long long* first_mismatch, cudaStream_t stream);

}  // namespace tpfuse::testing
