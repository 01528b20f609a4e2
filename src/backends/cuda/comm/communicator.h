// The communicator: an NCCL communicator plus what the fused kernels need on top of it (peer
// memory through NCCL symmetric windows, a workspace sized once, protocol state, timeouts).
//
// Lifecycle: create outside CUDA graph capture (it allocates and registers memory, which
// capture forbids); destroy after every stream using it is idle. Calls on one communicator are
// issued from one host thread at a time, in the same order on every rank.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "backends/cuda/comm/workspace.h"
#include "tpfuse/status.h"

namespace tpfuse::cuda {

struct CommOptions {
  int64_t max_tokens = 8192;           // two-shot workspace rows; larger T takes the nccl path
  int64_t max_hidden = 8192;
  int64_t oneshot_max_tokens = 1024;   // one-shot (Lamport) workspace rows
  double timeout_seconds = 5.0;        // every spin-wait gives up after this (0: wait forever)
  bool peer_memory = true;             // false: never use symmetric windows (nccl path only)
};

class Communicator {
 public:
  // Borrows an existing NCCL communicator (the caller keeps ownership and destroys it after
  // this object). The current CUDA device must be the communicator's device.
  static StatusOr<std::unique_ptr<Communicator>> FromNccl(ncclComm_t comm,
                                                          const CommOptions& options);
  // Creates and owns an NCCL communicator from a unique id (ncclCommInitRank on `device`).
  static StatusOr<std::unique_ptr<Communicator>> FromUniqueId(const ncclUniqueId& id, int rank,
                                                              int world_size, int device,
                                                              const CommOptions& options);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int device() const { return device_; }
  ncclComm_t nccl() const { return nccl_; }
  const CommOptions& options() const { return options_; }

  // True when every rank's workspace is reachable from this GPU (symmetric window + LSA team
  // covering the whole communicator). False: only the nccl strategy runs; why_no_peer_memory()
  // says why in words.
  bool has_peer_memory() const { return has_peer_memory_; }
  const std::string& why_no_peer_memory() const { return why_no_peer_memory_; }

  const WorkspaceLayout& layout() const { return layout_; }
  // Base address of rank r's workspace as mapped on this GPU (r == rank(): the local one).
  // Valid only with peer memory.
  const std::array<char*, kMaxRanks>& peer_bases() const { return peer_bases_; }

  // This rank's protocol state (device memory).
  CommDeviceState* device_state() const { return device_state_; }
  // Spin-wait bound in globaltimer nanoseconds (0: unbounded).
  uint64_t timeout_ns() const { return timeout_ns_; }

  // Scratch for the nccl strategy: room for [max_tokens, max_hidden] 16-bit elements.
  void* nccl_scratch() const { return nccl_scratch_; }
  size_t nccl_scratch_bytes() const { return nccl_scratch_bytes_; }

  // Synchronizes `stream` and reads the protocol state: a timeout in any earlier kernel becomes
  // a kTimeout error naming the peer and the phase, and poisons the communicator (its buffers
  // are in an unknown state; every later fused call fails fast with kFailedPrecondition).
  Status CheckHealth(cudaStream_t stream);
  bool poisoned() const { return poisoned_; }

 private:
  Communicator() = default;
  Status Init(ncclComm_t comm, bool owns, const CommOptions& options);

  ncclComm_t nccl_ = nullptr;
  bool owns_nccl_ = false;
  int rank_ = 0, world_size_ = 0, device_ = 0;
  CommOptions options_;
  WorkspaceLayout layout_;
  bool has_peer_memory_ = false;
  std::string why_no_peer_memory_;
  void* symmetric_ = nullptr;        // ncclMemAlloc'd workspace
  ncclWindow_t window_ = nullptr;
  std::array<char*, kMaxRanks> peer_bases_{};
  CommDeviceState* device_state_ = nullptr;
  uint64_t timeout_ns_ = 0;
  void* nccl_scratch_ = nullptr;
  size_t nccl_scratch_bytes_ = 0;
  bool poisoned_ = false;
};

// Bootstrap of the unique id for one process per GPU: rank 0 creates the id and publishes it,
// the others wait for it (bounded by timeout_seconds).
//   file: a path all ranks can see ("/tmp/tpfuse.id"); rank 0 writes it atomically.
//   tcp:  "127.0.0.1:PORT"; rank 0 listens, the others connect (loopback only).
StatusOr<ncclUniqueId> ExchangeUniqueId(const std::string& method, const std::string& address,
                                        int rank, int world_size, double timeout_seconds);

}  // namespace tpfuse::cuda
