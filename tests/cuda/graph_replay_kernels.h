// Small device helpers for CUDA-graph replay tests: pick an input bank by a device counter,
// compare an output with the expected bytes of that bank, advance the counter.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tpfuse::testing {

// x = banks[counter % banks_count] (`words` 16-byte words per bank).
void LaunchCopyBank(const void* banks, void* x, size_t words, int banks_count, const uint32_t* counter,
                    cudaStream_t stream);
// Adds to *mismatches the 16-byte words of `out` that differ from expected[counter % banks_count].
void LaunchCheckBank(const void* out, const void* expected, size_t words, int banks_count,
                     const uint32_t* counter, unsigned long long* mismatches, cudaStream_t stream);
// *counter += 1.
void LaunchAdvance(uint32_t* counter, cudaStream_t stream);

}  // namespace tpfuse::testing
