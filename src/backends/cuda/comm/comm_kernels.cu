#include "backends/cuda/comm/comm_kernels.h"

#include <nccl_device.h>

#include <algorithm>

#include "backends/cuda/comm/communicator.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"

namespace tpfuse::cuda {
namespace {

constexpr int kFillThreads = 256;
constexpr int kMaxFillBlocks = 2048;
constexpr int kReadThreads = 256;

// Arrays passed to kernels by value.
struct LsaRanks {
  int rank[kMaxRanks];
};
struct PeerBases {
  const char* base[kMaxRanks];
};

// ============================================================================ Fill16Kernel
// Writes `value` (16 bytes: the 16-bit pattern eight times) to dst[0, n_vec).
//
// Grid: 1-D, at most kMaxFillBlocks blocks, grid-stride over 16-byte words; block:
// kFillThreads threads. No shared memory, no synchronization.
// Preconditions: dst 16-byte aligned.
__global__ void Fill16Kernel(uint4* dst, size_t n_vec, uint4 value) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_vec; i += stride) {
    dst[i] = value;
  }
}

// ============================================================================ QueryLsaBasesKernel
// bases[r] = rank r's window base in this GPU's flat LSA mapping (ncclGetLsaPointer reads the
// window's device-side descriptor, which only device code can do).
//
// Grid: 1 block of kMaxRanks threads; thread r handles comm rank r. No synchronization.
// Preconditions: `window` is a symmetric window of this rank's communicator; lsa.rank[r] is
// comm rank r's index in the LSA team, for r < world_size.
__global__ void QueryLsaBasesKernel(ncclWindow_t window, LsaRanks lsa, int world_size,
                                    char** bases) {
  const int r = threadIdx.x;
  if (r >= kMaxRanks) return;
  bases[r] = r < world_size ? static_cast<char*>(ncclGetLsaPointer(window, 0, lsa.rank[r]))
                            : nullptr;
}

// ============================================================================ ReadPeerWorkspacesKernel
// out[r * words + i] = 32-bit word i at byte `offset` of rank r's workspace, loaded through
// this GPU's mapping of rank r's memory.
//
// Grid: (ceil(words / kReadThreads), world_size); blockIdx.y is the rank read. Block:
// kReadThreads threads, one word each. Volatile loads: the value comes from the owner's
// memory, not from a cache line read earlier. No synchronization: the caller orders the
// owners' writes before this kernel (e.g. with an ncclAllReduce barrier).
// Preconditions: bases valid for every rank < gridDim.y; offset 4-byte aligned; offset +
// 4 * words within every workspace.
__global__ void ReadPeerWorkspacesKernel(PeerBases bases, size_t offset, size_t words,
                                         uint32_t* out) {
  const int r = blockIdx.y;
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= words) return;
  const volatile uint32_t* src = reinterpret_cast<const volatile uint32_t*>(bases.base[r] + offset);
  out[size_t(r) * words + i] = src[i];
}

}  // namespace

Status LaunchFill16(void* dst, size_t bytes, uint16_t value, cudaStream_t stream) {
  if (bytes == 0) return Status::Ok();
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || bytes % 16 != 0) {
    return InvalidArgument("LaunchFill16: dst must be 16-byte aligned and bytes a multiple of 16 ",
                           "(got ", dst, ", ", bytes, " bytes)");
  }
  const size_t n_vec = bytes / 16;
  const uint32_t pair = uint32_t(value) | (uint32_t(value) << 16);
  const uint4 pattern = make_uint4(pair, pair, pair, pair);
  const size_t wanted = (n_vec + kFillThreads - 1) / kFillThreads;
  const int blocks = int(std::min<size_t>(wanted, kMaxFillBlocks));
  Fill16Kernel<<<blocks, kFillThreads, 0, stream>>>(static_cast<uint4*>(dst), n_vec, pattern);
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

Status QueryLsaBases(ncclWindow_t window, const std::array<int, kMaxRanks>& lsa_rank,
                     int world_size, cudaStream_t stream, std::array<char*, kMaxRanks>* bases) {
  if (window == nullptr || world_size < 1 || world_size > kMaxRanks) {
    return InvalidArgument("QueryLsaBases: needs a window and 1..", kMaxRanks, " ranks (got ",
                           world_size, ")");
  }
  LsaRanks lsa{};
  for (int r = 0; r < kMaxRanks; ++r) lsa.rank[r] = lsa_rank[size_t(r)];
  TPFUSE_ASSIGN_OR_RETURN(DeviceBuffer device_bases,
                          DeviceBuffer::Allocate(sizeof(char*) * kMaxRanks));
  QueryLsaBasesKernel<<<1, kMaxRanks, 0, stream>>>(window, lsa, world_size,
                                                   device_bases.get<char*>());
  TPFUSE_CUDA_CHECK_LAUNCH();
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(bases->data(), device_bases.get(), sizeof(char*) * kMaxRanks,
                                    cudaMemcpyDeviceToHost, stream));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return Status::Ok();
}

Status LaunchReadPeerWorkspaces(const Communicator& comm, size_t offset, size_t words,
                                uint32_t* out, cudaStream_t stream) {
  if (!comm.has_peer_memory()) {
    return FailedPrecondition("LaunchReadPeerWorkspaces: rank ", comm.rank(),
                              " has no peer memory: ", comm.why_no_peer_memory());
  }
  if (offset % 4 != 0 || offset > comm.layout().total_bytes ||
      words > (comm.layout().total_bytes - offset) / 4) {
    return OutOfRange("LaunchReadPeerWorkspaces: ", words, " words at byte ", offset,
                      " do not fit the ", comm.layout().total_bytes,
                      "-byte workspace (or the offset is not 4-byte aligned)");
  }
  if (words == 0) return Status::Ok();
  PeerBases bases{};
  for (int r = 0; r < kMaxRanks; ++r) bases.base[r] = comm.peer_bases()[size_t(r)];
  const dim3 grid(unsigned((words + kReadThreads - 1) / kReadThreads), unsigned(comm.world_size()));
  ReadPeerWorkspacesKernel<<<grid, kReadThreads, 0, stream>>>(bases, offset, words, out);
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace tpfuse::cuda
