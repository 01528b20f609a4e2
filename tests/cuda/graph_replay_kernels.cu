#include "cuda/graph_replay_kernels.h"

namespace tpfuse::testing {
namespace {

// Grid-stride copy of the selected bank; one block per 256 threads, any grid.
__global__ void CopyBankKernel(const uint4* banks, uint4* x, size_t words, int banks_count,
                               const uint32_t* counter) {
  const uint32_t bank = *counter % uint32_t(banks_count);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < words; i += size_t(gridDim.x) * blockDim.x)
    x[i] = banks[bank * words + i];
}

// Grid-stride comparison; counts mismatching words with one atomic each.
__global__ void CheckBankKernel(const uint4* out, const uint4* expected, size_t words, int banks_count,
                                const uint32_t* counter, unsigned long long* mismatches) {
  const uint32_t bank = *counter % uint32_t(banks_count);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < words; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 a = out[i], b = expected[bank * words + i];
    if (a.x != b.x || a.y != b.y || a.z != b.z || a.w != b.w) atomicAdd(mismatches, 1ull);
  }
}

__global__ void AdvanceKernel(uint32_t* counter) { *counter += 1; }

}  // namespace

void LaunchCopyBank(const void* banks, void* x, size_t words, int banks_count, const uint32_t* counter,
                    cudaStream_t stream) {
  CopyBankKernel<<<64, 256, 0, stream>>>(static_cast<const uint4*>(banks), static_cast<uint4*>(x), words,
                                         banks_count, counter);
}

void LaunchCheckBank(const void* out, const void* expected, size_t words, int banks_count,
                     const uint32_t* counter, unsigned long long* mismatches, cudaStream_t stream) {
  CheckBankKernel<<<64, 256, 0, stream>>>(static_cast<const uint4*>(out), static_cast<const uint4*>(expected),
                                          words, banks_count, counter, mismatches);
}

void LaunchAdvance(uint32_t* counter, cudaStream_t stream) { AdvanceKernel<<<1, 1, 0, stream>>>(counter); }

}  // namespace tpfuse::testing
