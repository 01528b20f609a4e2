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

// Host-generated random bf16 values; input sets are copied out of it at varying offsets.
inline constexpr size_t kRandomSourceBytes = size_t(64) << 20;
// fp8_tensor's static scale: |y| stays below about 5 with the bench's inputs, so y / scale stays
// inside +-448 (no saturation).
inline constexpr float kStaticScale = 1.0f / 64;

// The fused op's buffers in a set: its inputs, the weight, the static scale (fp8_tensor only)
// and the outputs the spec emits.
FusedBuffers FusedBuffersOfSet(const AllreduceRmsnormSpec& spec, char* set, const SetLayout& layout,
                               const void* weight, const float* scale);

// The unfused epilogue the bench times (baseline A after its ncclAllReduce; the unfused path
// at world size 1): the fused_add_rms_norm kernel of (a, the set's residual) into the set's norm
// and residual_out, then the quant_fp8 kernel of the norm into q [and s]. bf16 activations and
// weight, as the bench's plan makes them; `scale` is the static scale (fp8_tensor only).
Status EnqueueUnfusedEpilogue(const AllreduceRmsnormSpec& spec, int64_t tokens, const void* a,
                              char* set, const SetLayout& layout, const void* weight,
                              const float* scale, cudaStream_t stream);

// The SplitMix64 generator: advances `state`, returns the next value.
uint64_t SplitMix64(uint64_t& state);

// n bf16 values uniform in [lo, hi), never +-0.
std::vector<uint16_t> RandomBf16(size_t n, uint64_t seed, float lo, float hi);

// The GPU `device`, its driver, CUDA and NCCL versions, L2 and SMs, and the host name.
StatusOr<MachineInfo> QueryMachine(int device);

}  // namespace tpfuse::bench

#endif  // TPFUSE_HAVE_CUDA
