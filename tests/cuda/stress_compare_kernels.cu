#include "cuda/stress_compare_kernels.h"

namespace tpfuse::testing {
namespace {

// Grid: (blocks per job, jobs); each thread strides over its job's words and publishes its
// count and first index once (a region that differs everywhere costs one atomic per thread).
__global__ void CompareJobsKernel(const CompareJob* jobs, unsigned long long* mismatches,
                                  unsigned long long* first_mismatch) {
  const CompareJob job = jobs[blockIdx.y];
  const uint4* got = static_cast<const uint4*>(job.got);
  const uint4* expected = static_cast<const uint4*>(job.expected);
  unsigned long long count = 0, first = ~0ull;
  for (unsigned long long i = blockIdx.x * 256ull + threadIdx.x; i < job.words; i += gridDim.x * 256ull) {
    const uint4 a = got[i], b = expected[i];
    if (a.x != b.x || a.y != b.y || a.z != b.z || a.w != b.w) {
      if (count == 0) first = i;
      ++count;
    }
  }
  if (count != 0) {
    atomicAdd(&mismatches[blockIdx.y], count);
    atomicMin(&first_mismatch[blockIdx.y], first);
  }
}

}  // namespace

void LaunchCompareJobs(const CompareJob* jobs, int count, unsigned long long* mismatches,
                       unsigned long long* first_mismatch, cudaStream_t stream) {
  if (count <= 0) return;
  CompareJobsKernel<<<dim3(64, unsigned(count)), 256, 0, stream>>>(jobs, mismatches, first_mismatch);
}

}  // namespace tpfuse::testing
