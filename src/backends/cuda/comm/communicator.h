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

// NCCL's device communicator (nccl_device.h); only communicator.cc needs its definition.
struct ncclDevComm;

namespace tpfuse::cuda {

struct CommOptions {
  int64_t max_tokens = 8192;           // two-shot workspace rows; larger T takes the nccl path
  int64_t max_hidden = 8192;
  int64_t oneshot_max_tokens = 1024;   // one-shot (Lamport) workspace rows
  double timeout_seconds = 5.0;        // every spin-wait gives up after this (0: wait forever)
  bool peer_memory = true;             // false: never use symmetric windows (nccl path only)
  // Bound on each collective step of creation (waiting for the other ranks to reach it; they
  // may call FromNccl at different times). 0: wait forever.
  double init_timeout_seconds = 300.0;

  bool operator==(const CommOptions&) const = default;
};

// Creation is collective: every rank of the NCCL communicator calls FromNccl (or FromUniqueId)
// with the same workspace options, and every rank gets the same outcome: all succeed with the
// same has_peer_memory(), or all fail (a rank whose own setup failed returns its error; the
// others say which rank failed). Each collective step waits at most init_timeout_seconds.
class Communicator {
 public:
  // Borrows an existing NCCL communicator (the caller keeps ownership and destroys it after
  // this object). Works on the communicator's device whatever the current device is, and
  // leaves the current device as it was.
  // NOTE: when creation times out (a rank never came) or the communicator is poisoned, an
  // NCCL kernel of this rank may wait forever on a dead peer. Destroying this object then
  // frees nothing (freeing would wait on that kernel); the caller ncclCommAbort's its NCCL
  // communicator afterwards, which releases the window and device communicator.
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

  // The symmetric window over the workspace and NCCL's device communicator, for kernels that
  // use the NCCL device API directly. Null without peer memory.
  ncclWindow_t window() const { return window_; }
  const ncclDevComm* dev_comm() const { return dev_comm_; }

  // Synchronizes `stream` and reads the protocol state: a timeout in any earlier kernel becomes
  // a kTimeout error naming the peer and the phase, and poisons the communicator (its buffers
  // are in an unknown state; every later fused call fails fast with kFailedPrecondition).
  // An asynchronous NCCL error poisons it too. Once poisoned, returns the poisoning error.
  // Not during CUDA graph capture of `stream` (it synchronizes).
  Status CheckHealth(cudaStream_t stream);

  // Refills every Lamport area with the sentinel, then a barrier across ranks. Collective: every
  // rank calls it, with no fused op in flight. For code that wrote into the workspace directly
  // (the benchmark's peer-copy measurement).
  Status ResetWorkspace(cudaStream_t stream);
  bool poisoned() const { return poisoned_; }
  // The error that poisoned the communicator (ok while not poisoned).
  const Status& poison_status() const { return poison_; }
  // Poisons the communicator from the host (e.g. a host-side wait on a peer expired). The
  // first poisoning error is kept. Destruction then aborts the NCCL communicator it owns
  // (ncclCommAbort) instead of waiting on a peer that may be gone, or, when borrowed, leaks
  // its buffers (see FromNccl).
  void Poison(Status status);

 private:
  // One collective step of creation: each rank's code and layout fingerprint, as every rank
  // sees them after the exchange.
  struct StepResult {
    std::array<int32_t, kMaxRanks> code{};
    std::array<int32_t, kMaxRanks> fingerprint{};
  };

  Communicator() = default;
  Status Init(ncclComm_t comm, bool owns, const CommOptions& options);
  // What can fail on this rank alone: options, layout, scratch, protocol state.
  Status SetUpLocal(cudaStream_t stream);
  // Steps 2 and 3 of creation; each returns a step code and says why not in `reason`.
  int32_t RegisterWindow(std::string* reason);
  int32_t CreateDevCommAndPeerBases(cudaStream_t stream, std::string* reason);
  Status InitializeWorkspace(cudaStream_t stream);
  // Exchanges `code` with every rank (a 16-element ncclAllReduce) and waits, bounded by
  // init_timeout_seconds. Every rank calls it the same number of times, in the same order.
  StatusOr<StepResult> ShareStep(int32_t code, cudaStream_t stream, const char* step);
  Status WaitForStep(cudaStream_t stream, const char* step);
  // Error on every rank when any rank failed the step or the ranks' layouts differ.
  Status CheckStep(const StepResult& result, const Status& local, const char* step) const;
  // Frees the device communicator, the window and the symmetric memory (local operations).
  void ReleasePeerMemory();

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
  Status poison_;
  ncclDevComm* dev_comm_ = nullptr;  // owned (host struct; NCCL resources freed by destroy)
  int32_t* step_buffer_ = nullptr;   // device [2][kMaxRanks] int32: codes, fingerprints
  int32_t fingerprint_ = 0;          // hash of the options that fix the workspace layout
  // A collective step of creation never completed: an NCCL kernel may still wait on a peer.
  bool nccl_stuck_ = false;
};

// "one-shot gather", "two-shot reduce-scatter", "two-shot all-gather" (CommDeviceState phases).
std::string ProtocolPhaseName(uint32_t phase);

// Bootstrap of the unique id for one process per GPU: rank 0 creates the id and publishes it,
// the others wait for it (bounded by timeout_seconds). See comm/bootstrap.h.
//   file: a path all ranks can see ("/tmp/tpfuse.id"); rank 0 writes it atomically.
//   tcp:  "127.0.0.1:PORT"; rank 0 listens, the others connect (loopback only).
// Rank 0 returns once every rank has the id; then every rank calls FromUniqueId.
StatusOr<ncclUniqueId> ExchangeUniqueId(const std::string& method, const std::string& address,
                                        int rank, int world_size, double timeout_seconds);

}  // namespace tpfuse::cuda
