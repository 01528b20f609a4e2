// Small device helpers of the communicator: workspace fill, LSA pointer lookup, and a
// diagnostic read of every rank's workspace through the peer mappings (tests, self-checks).
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "backends/cuda/comm/workspace.h"
#include "tpfuse/status.h"

namespace tpfuse::cuda {

class Communicator;

// Fills `bytes` bytes at `dst` with the 16-bit `value`. `dst` 16-byte aligned, `bytes` a
// multiple of 16. Asynchronous on `stream`.
Status LaunchFill16(void* dst, size_t bytes, uint16_t value, cudaStream_t stream);

// For every comm rank r < world_size: (*bases)[r] = ncclGetLsaPointer(window, 0, lsa_rank[r]),
// rank r's window base as mapped on this GPU; entries from world_size on are null. `window` is
// a symmetric window whose LSA team covers the communicator. Synchronizes `stream`.
Status QueryLsaBases(ncclWindow_t window, const std::array<int, kMaxRanks>& lsa_rank,
                     int world_size, cudaStream_t stream, std::array<char*, kMaxRanks>* bases);

// Reads `words` 32-bit words at byte `offset` of every rank's workspace through
// comm.peer_bases() into out[r * words + i] (device memory, world_size * words words).
// Needs peer memory; `offset` 4-byte aligned and offset + 4 * words within the workspace.
// Asynchronous on `stream`.
Status LaunchReadPeerWorkspaces(const Communicator& comm, size_t offset, size_t words,
                                uint32_t* out, cudaStream_t stream);

}  // namespace tpfuse::cuda
