// GPU test harness: GPU counting and skipping, communicators for N GPUs in one process (one
// thread per GPU, cached across tests), and child processes for one-process-per-GPU tests.
//
// Built into tpfuse_test_support for both suites: everything CUDA is under TPFUSE_HAVE_CUDA.
// Without it CudaDeviceCount() is 0 and GPU tests skip.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "tpfuse/status.h"

#if TPFUSE_HAVE_CUDA
#include <cuda_runtime.h>

#include <memory>

#include "backends/cuda/comm/communicator.h"
#endif

namespace tpfuse::testing {

// Visible CUDA devices; 0 without CUDA or on any error.
int CudaDeviceCount();

// Empty when at least `n` GPUs are visible; otherwise the reason, e.g.
// "needs 2 GPUs, found 0" (with "built without CUDA" where that is why).
std::string WhyFewerGpusThan(int n);

// Skips the current test (from the test body or a fixture's SetUp) unless `n` GPUs are visible.
#define TPFUSE_REQUIRE_GPUS(n)                                              \
  do {                                                                      \
    const std::string tpfuse_why_ = ::tpfuse::testing::WhyFewerGpusThan(n); \
    if (!tpfuse_why_.empty()) GTEST_SKIP() << tpfuse_why_;                  \
  } while (0)

// Marks the current test skipped when fewer than `n` GPUs are visible and returns true then.
// GTEST_SKIP only leaves the function it is in, so callers write
//   if (RequireGpus(2)) return;
// (or use TPFUSE_REQUIRE_GPUS, which returns from the test itself).
bool RequireGpus(int n);

// "ok", or every failed rank's status, one per line, prefixed with its rank.
Status CombineRankStatuses(const std::vector<Status>& statuses);

// Keeps the first failure of several checks, so that a rank whose check failed still takes
// every later collective step of a test (returning early would leave its peers waiting).
class FirstError {
 public:
  void Note(Status status) {
    if (status_.ok() && !status.ok()) status_ = std::move(status);
  }
  const Status& status() const { return status_; }

 private:
  Status status_;
};

// ------------------------------------------------------------------------ child processes
// A one-process-per-GPU test re-executes this binary once per rank with
//   --tpfuse-child=NAME,RANK,WORLD,METHOD,ADDRESS
// which the suite's main() hands to RunChildIfRequested before gtest starts.

struct ChildSpec {
  std::string name;     // the registered child entry point
  int rank = 0;
  int world_size = 1;
  std::string method;   // bootstrap method: "file" or "tcp"
  std::string address;  // bootstrap address (may contain commas: it comes last)
};
// Exit code of the child; 0 is success.
using ChildMain = std::function<int(const ChildSpec&)>;

// Registers a child entry point; call from a static initializer in a test file:
//   static const bool kRegistered = RegisterChildMain("name", &Fn);
bool RegisterChildMain(const std::string& name, ChildMain main);

// In main(), before gtest: when argv holds --tpfuse-child=..., runs that child and returns its
// exit code; otherwise returns -1.
int RunChildIfRequested(int argc, char** argv);

struct ChildResult {
  int rank = 0;
  int exit_code = -1;      // -1 when killed or when the child died from a signal
  int term_signal = 0;     // the signal that ended the child (SIGKILL when killed here); 0 if it exited
  bool timed_out = false;  // killed after the timeout
  std::string output;      // the child's stdout and stderr
};

// Starts world_size children of this binary (posix_spawn of /proc/self/exe: nothing of this
// process's CUDA or NCCL state is inherited), waits for all of them at most timeout_seconds,
// kills the ones still running (SIGKILL) and returns every child's outcome, by rank.
StatusOr<std::vector<ChildResult>> RunChildren(const std::string& name, int world_size,
                                               const std::string& method,
                                               const std::string& address,
                                               double timeout_seconds);

#if TPFUSE_HAVE_CUDA
// ------------------------------------------------------------------------ in-process ranks

// The function each rank's thread runs: its rank, its communicator, a stream on its GPU.
using RankFn = std::function<Status(int rank, cuda::Communicator& comm, cudaStream_t stream)>;

// One communicator per GPU 0..N-1 in this process, created together (one thread per GPU,
// ncclCommInitRank from a shared unique id), with one stream per rank.
class MultiGpu {
 public:
  // Creates fresh communicators (not cached): for tests of creation and destruction.
  static StatusOr<std::unique_ptr<MultiGpu>> Create(int world_size,
                                                    const cuda::CommOptions& options = {});
  // Cached communicators for (world_size, options): created on first use, kept until
  // ReleaseCached(), so tests do not each pay NCCL initialization. Tests that use them must
  // leave them healthy (not poisoned) and must not clobber protocol state.
  static StatusOr<MultiGpu*> Cached(int world_size, const cuda::CommOptions& options = {});
  // Destroys every cached communicator (main() calls it before exit).
  static void ReleaseCached();

  // Destroys the communicators, each on its own thread (NCCL teardown of ranks in one process
  // may wait on each other).
  ~MultiGpu();
  MultiGpu(const MultiGpu&) = delete;
  MultiGpu& operator=(const MultiGpu&) = delete;

  int world_size() const { return int(comms_.size()); }
  cuda::Communicator& comm(int rank) { return *comms_[size_t(rank)]; }
  cudaStream_t stream(int rank) const { return streams_[size_t(rank)]; }

  // Runs fn on one thread per rank, with the current device set to that rank's GPU; joins and
  // returns every rank's status (by rank). An exception in fn becomes an error status.
  std::vector<Status> Run(const RankFn& fn);
  // Run, then CombineRankStatuses.
  Status RunAll(const RankFn& fn) { return CombineRankStatuses(Run(fn)); }

 private:
  MultiGpu() = default;

  std::vector<std::unique_ptr<cuda::Communicator>> comms_;
  std::vector<cudaStream_t> streams_;
};

// Runs fn(rank) on one thread per rank, with device `rank` current; returns statuses by rank.
std::vector<Status> RunOnRankThreads(int world_size, const std::function<Status(int rank)>& fn);

// How long a test waits for its peers at a collective step before giving up.
inline constexpr double kCollectiveWaitSeconds = 120.0;

// Waits until `stream` is idle, at most `seconds`. On timeout poisons `comm` (so that its
// destruction aborts the NCCL communicator rather than wait on it) and returns kTimeout
// naming `what`; the caller must then not free memory the stream's work may still use.
Status WaitBounded(cuda::Communicator& comm, cudaStream_t stream, double seconds,
                   const std::string& what);

// A barrier across the communicator's ranks: a 1-element ncclAllReduce on `stream`, then a
// bounded wait (kCollectiveWaitSeconds). Every rank calls it.
Status HostBarrier(cuda::Communicator& comm, cudaStream_t stream);
#endif  // TPFUSE_HAVE_CUDA

}  // namespace tpfuse::testing
