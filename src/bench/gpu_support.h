// What the measuring code of `tpfuse bench` and `tpfuse tune` shares, at every world size: CUDA
// graphs of back-to-back ops, the random inputs, and the description of the machine. Only in a
// CUDA build (the runner's paths without CUDA need none of it).
#pragma once

#if TPFUSE_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "bench/report.h"
#include "tpfuse/status.h"

namespace tpfuse::bench {

// An executable CUDA graph, destroyed with its owner.
class GraphExec {
 public:
  GraphExec() = default;
  explicit GraphExec(cudaGraphExec_t exec) : exec_(exec) {}
  ~GraphExec() {
    if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
  }
  GraphExec(GraphExec&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}
  GraphExec& operator=(GraphExec&& other) noexcept {
    if (this != &other) {
      if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
      exec_ = std::exchange(other.exec_, nullptr);
    }
    return *this;
  }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  cudaGraphExec_t get() const { return exec_; }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Captures `ops` calls of `enqueue(j)` on `stream` into an executable graph.
// NOTE: relaxed capture mode: ncclAllReduce does not capture under the thread-local mode on
// the machines this runs on.
StatusOr<GraphExec> CaptureGraph(cudaStream_t stream, int ops,
                                 const std::function<Status(int)>& enqueue);

// The SplitMix64 generator: advances `state`, returns the next value.
uint64_t SplitMix64(uint64_t& state);

// n bf16 values uniform in [lo, hi), never +-0.
std::vector<uint16_t> RandomBf16(size_t n, uint64_t seed, float lo, float hi);

// The GPU `device`, its driver, CUDA and NCCL versions, L2 and SMs, and the host name.
StatusOr<MachineInfo> QueryMachine(int device);

}  // namespace tpfuse::bench

#endif  // TPFUSE_HAVE_CUDA
