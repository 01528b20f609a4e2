// The rank processes of `tpfuse bench` and `tpfuse tune`: one per GPU (rank r on device r),
// each measuring every shape of the plan inside CUDA graphs, in lockstep with the others
// through NCCL. Rank 0 reports: progress on stderr, the tables on stdout, and the files. At
// world size 1, `tpfuse bench` measures in its own process instead (RunLocalBench).
// Without the CUDA backend in the build, every function here returns an error saying so.
#pragma once

#include "bench/plan.h"
#include "tpfuse/status.h"

namespace tpfuse::bench {

// Whether this build has the CUDA backend.
bool HaveCuda();

// GPUs visible to this process (cudaGetDeviceCount). Creates no CUDA context.
StatusOr<int> CountGpus();

// Runs `plan` as rank `rank` and returns the process's exit status: 0, or 1 after printing the
// error. NOTE: after an error that follows the communicator's creation the process ends at
// once (std::_Exit), without tearing the communicator down: a peer may be dead, and NCCL's
// teardown would wait for it forever.
int RunRank(const Plan& plan, int rank);

// Runs `plan` at world size 1 in this process, on the current device (CUDA_VISIBLE_DEVICES
// picks it): bench/local.h says what is measured. Checks every cell with T <=
// kLocalCheckMaxTokens against the CPU oracle first, then times the fused op, the unfused
// kernels and the copy per cell; progress on stderr, tables and the summary on stdout, the files
// in plan.out. Returns the exit status: 0, or 1 after printing the error.
int RunLocalBench(const Plan& plan);

}  // namespace tpfuse::bench
