// Bootstrap: hands an opaque byte blob (the NCCL unique id) from rank 0 to every other rank of
// a job that runs one process per GPU, before any communicator exists. Plain C++ (POSIX), no
// CUDA: the CPU suite tests it.
//
//   file  a path every rank can see. Rank 0 writes it atomically (temp file + rename); the
//         others poll until it appears, read it, and acknowledge with PATH.ack.RANK; rank 0
//         waits for every acknowledgement, then removes the file and the acknowledgements.
//   tcp   "HOST:PORT" with HOST an IPv4 literal or "localhost" (loopback on one node). Rank 0
//         listens and serves world_size - 1 connections; the others connect, retrying until
//         rank 0 listens.
//
// Every wait is bounded by timeout_seconds, measured from the call. On success rank 0 returns
// once every other rank has the blob, the others once they have it.
//
// NOTE: use a path or port unique to the job. A file left by a job that crashed can be read by
// a fast rank of the next job before the new rank 0 replaces it; that rank then joins a dead
// communicator.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "tpfuse/status.h"

namespace tpfuse {

enum class BootstrapMethod : uint8_t { kFile, kTcp };

std::string_view BootstrapMethodName(BootstrapMethod method);  // "file", "tcp"
StatusOr<BootstrapMethod> ParseBootstrapMethod(std::string_view name);

struct BootstrapOptions {
  BootstrapMethod method = BootstrapMethod::kFile;
  std::string address;           // file: a path; tcp: "HOST:PORT"
  int rank = 0;
  int world_size = 1;
  double timeout_seconds = 60.0;  // > 0
};

// Rank 0 publishes `blob`; on every other rank `blob` (sized to the expected length) receives
// rank 0's bytes. Ranks that disagree on the length get an error naming both lengths. Errors
// name the method, the address and what failed; a wait that expires returns kTimeout.
Status BroadcastBlob(const BootstrapOptions& options, std::span<uint8_t> blob);

// A loopback TCP port that was free when asked (another process may take it before use).
StatusOr<int> PickFreeLoopbackPort();

}  // namespace tpfuse
