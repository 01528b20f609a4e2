// The rank processes of `tpfuse bench` and `tpfuse tune`: one per GPU (rank r on device r),
// each measuring every shape of the plan inside CUDA graphs, in lockstep with the others
// through NCCL. Rank 0 reports: progress on stderr, the tables on stdout, and the files.
// Without the CUDA backend in the build, both functions return an error saying so.
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

}  // namespace tpfuse::bench
