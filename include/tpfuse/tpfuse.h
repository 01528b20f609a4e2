// tpfuse's public runtime API: the fused all-reduce + residual + RMSNorm + FP8 quantization op
// (DESIGN.md Contract 3) across the GPUs of a node, on top of NCCL.
//
//   tpfuse::CommConfig config;                 // workspace sized once, before graph capture
//   auto comm = tpfuse::Comm::FromNccl(nccl_comm, config);
//   tpfuse::AllreduceRmsnormSpec spec;         // hidden, dtypes, eps, quant, emit...
//   tpfuse::FusedBuffers buffers{...};         // device pointers, null where not emitted
//   TPFUSE_RETURN_IF_ERROR((*comm)->AllreduceRmsnorm(spec, tokens, buffers, stream));
//
// Every rank calls the same ops in the same order. Calls are asynchronous and may be captured
// in CUDA graphs (capture mode Relaxed); a peer timeout surfaces through CheckHealth.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>

#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

typedef struct ncclComm* ncclComm_t;

namespace tpfuse {

struct CommConfig {
  int64_t max_tokens = 8192;          // largest T served by the peer-memory strategies
  int64_t max_hidden = 8192;
  int64_t oneshot_max_tokens = 1024;
  double timeout_seconds = 5.0;       // bound of every wait on a peer (0: unbounded)
  bool peer_memory = true;            // false: nccl strategy only
  bool programmatic_dependent_launch = true;
  // A strategy table written by `tpfuse tune`; empty: $TPFUSE_STRATEGY_TABLE if set, else the
  // built-in defaults.
  std::string strategy_table;
};

class Comm {
 public:
  // Borrows the caller's NCCL communicator (destroy it after this object). The current CUDA
  // device must be the communicator's. Not during graph capture: this allocates.
  static StatusOr<std::unique_ptr<Comm>> FromNccl(ncclComm_t comm, const CommConfig& config = {});
  // Creates and owns an NCCL communicator from a 128-byte unique id (see MakeUniqueId).
  static StatusOr<std::unique_ptr<Comm>> FromUniqueId(const std::string& unique_id, int rank,
                                                      int world_size, int device,
                                                      const CommConfig& config = {});
  // A fresh NCCL unique id (rank 0 makes it and shares it with the others).
  static StatusOr<std::string> MakeUniqueId();
  ~Comm();

  int rank() const;
  int world_size() const;
  // Why the peer-memory strategies are unavailable ("" when they are available).
  std::string why_no_peer_memory() const;

  // The fused op. Validates everything and returns an error naming the problem.
  Status AllreduceRmsnorm(const AllreduceRmsnormSpec& spec, int64_t tokens,
                          const FusedBuffers& buffers, cudaStream_t stream,
                          StrategyRequest strategy = std::nullopt);
  // The strategy the dispatcher runs for this shape when none is requested.
  Strategy Choose(const AllreduceRmsnormSpec& spec, int64_t tokens) const;
  // Synchronizes the stream; a timeout in an earlier call becomes an error naming the peer.
  Status CheckHealth(cudaStream_t stream);

  struct Impl;

 private:
  explicit Comm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The fused op without communication, on the current device: world size 1 (TP 1), or a chain no
// all_reduce feeds (spec.local). Needs no communicator and no NCCL; validates like
// Comm::AllreduceRmsnorm and is asynchronous on `stream` (capturable in CUDA graphs).
Status AllreduceRmsnormLocal(const AllreduceRmsnormSpec& spec, int64_t tokens,
                             const FusedBuffers& buffers, cudaStream_t stream);

}  // namespace tpfuse
