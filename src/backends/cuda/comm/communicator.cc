#include "backends/cuda/comm/communicator.h"

#include <nccl_device.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <span>
#include <thread>
#include <utility>

#include "backends/cuda/comm/comm_kernels.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "backends/cuda/comm/bootstrap.h"

namespace tpfuse::cuda {
namespace {

// What each rank contributes at a collective step of creation.
enum StepCode : int32_t {
  kStepOk = 0,
  // This rank cannot go on: every rank returns an error.
  kStepFailed = 1,
  // This rank can go on, but without peer memory; so does every rank.
  kNoPeerDisabled = 2,
  kNoPeerMemAlloc = 3,
  kNoPeerWindow = 4,
  kNoPeerDevComm = 5,
  kNoPeerLsaTeam = 6,
  kNoPeerLsaPointers = 7,
};

// A peer's reason in words (its own message, with details, is in its why_no_peer_memory()).
const char* StepCodeReason(int32_t code) {
  switch (code) {
    case kNoPeerDisabled: return "peer memory disabled by CommOptions::peer_memory = false";
    case kNoPeerMemAlloc: return "ncclMemAlloc of the workspace failed";
    case kNoPeerWindow: return "ncclCommWindowRegister of the workspace failed";
    case kNoPeerDevComm: return "ncclDevCommCreate failed";
    case kNoPeerLsaTeam: return "its LSA team does not cover the communicator";
    case kNoPeerLsaPointers: return "reading the LSA pointers failed";
    default: return "unknown reason";
  }
}

// Used when init_timeout_seconds itself is invalid (that rank then fails the first step).
constexpr double kFallbackInitTimeoutSeconds = 300.0;
// Upper bounds that keep every workspace size computation inside 64 bits.
constexpr int64_t kMaxOptionTokens = int64_t(1) << 24;
constexpr int64_t kMaxOptionHidden = int64_t(1) << 20;

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", s);
  return buf;
}

bool IsValidSeconds(double s) { return std::isfinite(s) && s >= 0; }

// A hash of the options that fix the workspace layout: ranks must agree on it, or a window
// registration of different sizes would follow.
int32_t LayoutFingerprint(const CommOptions& o) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (int64_t v : {o.max_tokens, o.max_hidden, o.oneshot_max_tokens}) {
    for (int i = 0; i < 8; ++i) {
      h ^= uint64_t(v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  }
  return int32_t(uint32_t(h ^ (h >> 32)));
}

// "unhandled cuda error: ... (last NCCL warning)".
std::string NcclDetail(ncclComm_t comm, ncclResult_t result) {
  std::string text = ncclGetErrorString(result);
  const char* last = comm != nullptr ? ncclGetLastError(comm) : nullptr;
  if (last != nullptr && last[0] != '\0') text += StrCat(" (", last, ")");
  return text;
}

}  // namespace

std::string ProtocolPhaseName(uint32_t phase) {
  switch (phase) {
    case kPhaseOneShotGather: return "one-shot gather";
    case kPhaseTwoShotReduceScatter: return "two-shot reduce-scatter";
    case kPhaseTwoShotAllGather: return "two-shot all-gather";
  }
  return StrCat("protocol phase ", phase);
}

// ================================================================================ creation

StatusOr<std::unique_ptr<Communicator>> Communicator::FromNccl(ncclComm_t comm,
                                                               const CommOptions& options) {
  if (comm == nullptr) return InvalidArgument("Communicator::FromNccl: the NCCL communicator is null");
  std::unique_ptr<Communicator> c(new Communicator());
  TPFUSE_RETURN_IF_ERROR(c->Init(comm, /*owns=*/false, options));
  return StatusOr<std::unique_ptr<Communicator>>(std::move(c));
}

StatusOr<std::unique_ptr<Communicator>> Communicator::FromUniqueId(const ncclUniqueId& id,
                                                                   int rank, int world_size,
                                                                   int device,
                                                                   const CommOptions& options) {
  // The same checks on every rank, before anything collective: every rank returns here alike.
  if (world_size < 1 || world_size > kMaxRanks) {
    return OutOfRange("Communicator::FromUniqueId: world size ", world_size, " is outside 1..",
                      kMaxRanks, " (the GPUs of one node)");
  }
  if (rank < 0 || rank >= world_size) {
    return InvalidArgument("Communicator::FromUniqueId: rank ", rank, " is outside world size ",
                           world_size);
  }
  int device_count = 0;
  TPFUSE_CUDA_CHECK(cudaGetDeviceCount(&device_count));
  if (device < 0 || device >= device_count) {
    return InvalidArgument("Communicator::FromUniqueId: rank ", rank, " asks for device ", device,
                           " but ", device_count, " device(s) are visible");
  }
  ScopedDevice guard;
  TPFUSE_RETURN_IF_ERROR(guard.Set(device));
  ncclComm_t comm = nullptr;
  TPFUSE_NCCL_CHECK(ncclCommInitRank(&comm, world_size, id, rank));
  std::unique_ptr<Communicator> c(new Communicator());
  // From here the destructor destroys `comm`, whatever Init does.
  c->nccl_ = comm;
  c->owns_nccl_ = true;
  TPFUSE_RETURN_IF_ERROR(c->Init(comm, /*owns=*/true, options));
  return StatusOr<std::unique_ptr<Communicator>>(std::move(c));
}

// Creation in four collective steps. Every rank takes every step, in order, whatever happened
// on it before, and shares one code per step; so every rank knows every other rank's outcome
// and all take the same path. A rank that skipped a collective call would leave the others
// waiting in NCCL with no bound.
//   1. setup:     options, layout, scratch, protocol state, ncclMemAlloc (local).
//   2. window:    ncclCommWindowRegister (collective), if every rank has memory.
//   3. devcomm:   ncclDevCommCreate (collective), LSA team check, LSA pointers.
//   4. barrier:   workspace zeroed and Lamport-filled, then a barrier, so that no peer writes
//                 into this rank's workspace before it is initialized.
Status Communicator::Init(ncclComm_t comm, bool owns, const CommOptions& options) {
  nccl_ = comm;
  owns_nccl_ = owns;
  options_ = options;
  TPFUSE_NCCL_CHECK(ncclCommUserRank(comm, &rank_));
  TPFUSE_NCCL_CHECK(ncclCommCount(comm, &world_size_));
  TPFUSE_NCCL_CHECK(ncclCommCuDevice(comm, &device_));
  // Every rank sees the same count, so every rank returns here alike.
  if (world_size_ > kMaxRanks) {
    return OutOfRange("the NCCL communicator has ", world_size_, " ranks; tpfuse supports at most ",
                      kMaxRanks, " (the GPUs of one node)");
  }
  ScopedDevice guard;
  TPFUSE_RETURN_IF_ERROR(guard.Set(device_));
  fingerprint_ = LayoutFingerprint(options_);
  TPFUSE_CUDA_CHECK(cudaMalloc(&step_buffer_, sizeof(int32_t) * 2 * kMaxRanks));
  TPFUSE_ASSIGN_OR_RETURN(Stream stream, Stream::Create());

  // ---------------------------------------------------------------- 1. setup
  std::string local_reason;  // why this rank has no peer memory, in detail
  Status local = SetUpLocal(stream.get());
  int32_t code = kStepOk;
  if (!local.ok()) {
    code = kStepFailed;
  } else if (!options_.peer_memory) {
    code = kNoPeerDisabled;
    local_reason = StepCodeReason(kNoPeerDisabled);
  } else {
    const ncclResult_t r = ncclMemAlloc(&symmetric_, layout_.total_bytes);
    if (r != ncclSuccess) {
      symmetric_ = nullptr;
      code = kNoPeerMemAlloc;
      local_reason = StrCat("ncclMemAlloc(", layout_.total_bytes, " bytes) failed: ",
                            NcclDetail(nccl_, r));
    }
  }
  TPFUSE_ASSIGN_OR_RETURN(StepResult step, ShareStep(code, stream.get(), "setup"));
  TPFUSE_RETURN_IF_ERROR(CheckStep(step, local, "setup"));

  auto all_ok = [&](const StepResult& s) {
    for (int r = 0; r < world_size_; ++r) {
      if (s.code[size_t(r)] != kStepOk) return false;
    }
    return true;
  };

  // ---------------------------------------------------------------- 2. window
  if (all_ok(step)) {
    code = RegisterWindow(&local_reason);
    TPFUSE_ASSIGN_OR_RETURN(step, ShareStep(code, stream.get(), "window registration"));
    TPFUSE_RETURN_IF_ERROR(CheckStep(step, Status::Ok(), "window registration"));

    // -------------------------------------------------------------- 3. devcomm
    if (all_ok(step)) {
      code = CreateDevCommAndPeerBases(stream.get(), &local_reason);
      TPFUSE_ASSIGN_OR_RETURN(step, ShareStep(code, stream.get(), "device communicator"));
      TPFUSE_RETURN_IF_ERROR(CheckStep(step, Status::Ok(), "device communicator"));
      has_peer_memory_ = all_ok(step);
    }
  }
  if (!has_peer_memory_) {
    // `step` holds the codes of the step that ended the peer-memory path.
    if (step.code[size_t(rank_)] != kStepOk) {
      why_no_peer_memory_ = local_reason;
    } else {
      for (int r = 0; r < world_size_; ++r) {
        if (step.code[size_t(r)] != kStepOk) {
          why_no_peer_memory_ = StrCat("rank ", r, ": ", StepCodeReason(step.code[size_t(r)]));
          break;
        }
      }
    }
    ReleasePeerMemory();
  }

  // ---------------------------------------------------------------- 4. barrier
  local = has_peer_memory_ ? InitializeWorkspace(stream.get()) : Status::Ok();
  TPFUSE_ASSIGN_OR_RETURN(step, ShareStep(local.ok() ? kStepOk : kStepFailed, stream.get(),
                                          "workspace initialization barrier"));
  TPFUSE_RETURN_IF_ERROR(CheckStep(step, local, "workspace initialization barrier"));
  return Status::Ok();
}

Status Communicator::SetUpLocal(cudaStream_t stream) {
  const CommOptions& o = options_;
  if (o.max_tokens < 1 || o.max_tokens > kMaxOptionTokens || o.oneshot_max_tokens < 0 ||
      o.oneshot_max_tokens > kMaxOptionTokens) {
    return InvalidArgument("CommOptions: max_tokens (", o.max_tokens, ") must be in 1..",
                           kMaxOptionTokens, " and oneshot_max_tokens (", o.oneshot_max_tokens,
                           ") in 0..", kMaxOptionTokens);
  }
  if (o.max_hidden < 1 || o.max_hidden > kMaxOptionHidden) {
    return InvalidArgument("CommOptions: max_hidden (", o.max_hidden, ") must be in 1..",
                           kMaxOptionHidden);
  }
  if (!IsValidSeconds(o.timeout_seconds) || !IsValidSeconds(o.init_timeout_seconds)) {
    return InvalidArgument("CommOptions: timeout_seconds (", o.timeout_seconds,
                           ") and init_timeout_seconds (", o.init_timeout_seconds,
                           ") must be >= 0 (0: no bound)");
  }
  // Bounds far beyond any real wait keep the product inside 64 bits.
  timeout_ns_ = o.timeout_seconds == 0
                    ? 0
                    : std::max<uint64_t>(1, uint64_t(std::min(o.timeout_seconds, 1e9) * 1e9));

  WorkspaceConfig config;
  config.world_size = world_size_;
  config.max_tokens = o.max_tokens;
  config.max_hidden = o.max_hidden;
  config.oneshot_max_tokens = o.oneshot_max_tokens;
  layout_ = WorkspaceLayout::Make(config);

  nccl_scratch_bytes_ = size_t(o.max_tokens) * size_t(o.max_hidden) * 2;
  TPFUSE_CUDA_CHECK(cudaMalloc(&nccl_scratch_, nccl_scratch_bytes_));
  TPFUSE_CUDA_CHECK(cudaMalloc(&device_state_, sizeof(CommDeviceState)));
  TPFUSE_CUDA_CHECK(cudaMemsetAsync(device_state_, 0, sizeof(CommDeviceState), stream));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return Status::Ok();
}

int32_t Communicator::RegisterWindow(std::string* reason) {
  const ncclResult_t r = ncclCommWindowRegister(nccl_, symmetric_, layout_.total_bytes, &window_,
                                                NCCL_WIN_COLL_SYMMETRIC);
  if (r != ncclSuccess) {
    window_ = nullptr;
    *reason = StrCat("ncclCommWindowRegister failed: ", NcclDetail(nccl_, r));
    return kNoPeerWindow;
  }
  if (window_ == nullptr) {
    // NCCL returns success and no window when symmetric memory is off for this communicator.
    *reason =
        "ncclCommWindowRegister returned no window: NCCL has symmetric memory off for this "
        "communicator (it needs CUDA P2P between all ranks, cuMem allocations, and "
        "NCCL_WIN_ENABLE not 0)";
    return kNoPeerWindow;
  }
  return kStepOk;
}

int32_t Communicator::CreateDevCommAndPeerBases(cudaStream_t stream, std::string* reason) {
  auto dev_comm = std::make_unique<ncclDevComm>();
  std::memset(dev_comm.get(), 0, sizeof(ncclDevComm));
  // Nothing beyond load/store access: no multimem (NVLink multicast stays off), no barriers,
  // no GIN.
  ncclDevCommRequirements requirements;
  std::memset(&requirements, 0, sizeof(requirements));
  const ncclResult_t r = ncclDevCommCreate(nccl_, &requirements, dev_comm.get());
  if (r != ncclSuccess) {
    *reason = StrCat("ncclDevCommCreate failed: ", NcclDetail(nccl_, r));
    return kNoPeerDevComm;
  }
  dev_comm_ = dev_comm.release();

  const ncclTeam_t lsa = ncclTeamLsa(nccl_);
  if (lsa.nRanks != world_size_) {
    *reason = StrCat("the LSA team (ranks with load/store access to each other's memory) has ",
                     lsa.nRanks, " of the communicator's ", world_size_,
                     " ranks: the ranks span nodes or some GPU pair lacks P2P");
    return kNoPeerLsaTeam;
  }
  const ncclTeam_t world = ncclTeamWorld(nccl_);
  std::array<int, kMaxRanks> lsa_rank{};
  for (int r = 0; r < world_size_; ++r) {
    lsa_rank[size_t(r)] = ncclTeamRankToLsa(nccl_, world, r);
    if (lsa_rank[size_t(r)] < 0 || lsa_rank[size_t(r)] >= lsa.nRanks) {
      *reason = StrCat("comm rank ", r, " maps to LSA rank ", lsa_rank[size_t(r)],
                       ", outside the LSA team of ", lsa.nRanks);
      return kNoPeerLsaTeam;
    }
  }
  const Status queried = QueryLsaBases(window_, lsa_rank, world_size_, stream, &peer_bases_);
  if (!queried.ok()) {
    peer_bases_ = {};
    *reason = StrCat("reading the LSA pointers failed: ", queried.message());
    return kNoPeerLsaPointers;
  }
  for (int r = 0; r < world_size_; ++r) {
    if (peer_bases_[size_t(r)] == nullptr) {
      peer_bases_ = {};
      *reason = StrCat("ncclGetLsaPointer gave a null base for rank ", r);
      return kNoPeerLsaPointers;
    }
  }
  return kStepOk;
}

Status Communicator::InitializeWorkspace(cudaStream_t stream) {
  // NOTE: every Lamport slot must hold the sentinel before any peer's first push; the barrier
  // step after this guarantees that no peer starts before this rank is done.
  if (layout_.sentinel_offset > 0)
    TPFUSE_CUDA_CHECK(cudaMemsetAsync(symmetric_, 0, layout_.sentinel_offset, stream));
  TPFUSE_RETURN_IF_ERROR(LaunchFill16(static_cast<char*>(symmetric_) + layout_.sentinel_offset,
                                      layout_.total_bytes - layout_.sentinel_offset,
                                      kLamportSentinel, stream));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return Status::Ok();
}

Status Communicator::ResetWorkspace(cudaStream_t stream) {
  if (!has_peer_memory_) return Status::Ok();
  if (poisoned_) return FailedPrecondition("the communicator is poisoned; recreate it");
  TPFUSE_RETURN_IF_ERROR(InitializeWorkspace(stream));
  TPFUSE_ASSIGN_OR_RETURN(StepResult step, ShareStep(kStepOk, stream, "workspace reset barrier"));
  return CheckStep(step, Status::Ok(), "workspace reset barrier");
}

StatusOr<Communicator::StepResult> Communicator::ShareStep(int32_t code, cudaStream_t stream,
                                                           const char* step) {
  // [codes | fingerprints], each rank writing only its own slots: the sum is every rank's value.
  std::array<int32_t, 2 * kMaxRanks> host{};
  host[size_t(rank_)] = code;
  host[size_t(kMaxRanks + rank_)] = fingerprint_;
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(step_buffer_, host.data(), sizeof(host),
                                    cudaMemcpyHostToDevice, stream));
  TPFUSE_NCCL_CHECK(ncclAllReduce(step_buffer_, step_buffer_, host.size(), ncclInt32, ncclSum,
                                  nccl_, stream));
  TPFUSE_RETURN_IF_ERROR(WaitForStep(stream, step));
  // The stream is idle now: this copy does not wait on a peer.
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(host.data(), step_buffer_, sizeof(host),
                                    cudaMemcpyDeviceToHost, stream));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  StepResult result;
  for (int r = 0; r < kMaxRanks; ++r) {
    result.code[size_t(r)] = host[size_t(r)];
    result.fingerprint[size_t(r)] = host[size_t(kMaxRanks + r)];
  }
  return result;
}

Status Communicator::WaitForStep(cudaStream_t stream, const char* step) {
  const double limit = IsValidSeconds(options_.init_timeout_seconds)
                           ? options_.init_timeout_seconds
                           : kFallbackInitTimeoutSeconds;
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    const cudaError_t e = cudaStreamQuery(stream);
    if (e == cudaSuccess) return Status::Ok();
    if (e != cudaErrorNotReady) {
      nccl_stuck_ = true;
      return Status(StatusCode::kCudaError,
                    StrCat("rank ", rank_, ": the communicator's ", step, " step failed: ",
                           cudaGetErrorString(e)));
    }
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(nccl_, &async) == ncclSuccess && async != ncclSuccess &&
        async != ncclInProgress) {
      nccl_stuck_ = true;
      return Status(StatusCode::kNcclError,
                    StrCat("rank ", rank_, ": NCCL failed during the communicator's ", step,
                           " step: ", NcclDetail(nccl_, async)));
    }
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (limit > 0 && waited > limit) {
      nccl_stuck_ = true;
      return Status(StatusCode::kTimeout,
                    StrCat("rank ", rank_, " timed out after ", Seconds(limit),
                           " waiting for the other ranks in the communicator's ", step,
                           " step (a rank died or never created its communicator; "
                           "CommOptions::init_timeout_seconds sets the bound)"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

Status Communicator::CheckStep(const StepResult& result, const Status& local,
                               const char* step) const {
  if (!local.ok()) return local;
  for (int r = 0; r < world_size_; ++r) {
    if (result.code[size_t(r)] == kStepFailed) {
      return FailedPrecondition("rank ", r, " failed in the communicator's ", step,
                                " step (its own error says why); rank ", rank_,
                                " gives up with it");
    }
  }
  for (int r = 1; r < world_size_; ++r) {
    if (result.fingerprint[size_t(r)] != result.fingerprint[0]) {
      return InvalidArgument("ranks 0 and ", r, " were created with different workspace "
                             "options (CommOptions max_tokens, max_hidden, oneshot_max_tokens "
                             "must match on every rank)");
    }
  }
  return Status::Ok();
}

void Communicator::ReleasePeerMemory() {
  // Reverse order of creation; each is a local operation in NCCL (no peer involved).
  if (dev_comm_ != nullptr) {
    (void)ncclDevCommDestroy(nccl_, dev_comm_);
    delete dev_comm_;
    dev_comm_ = nullptr;
  }
  if (window_ != nullptr) {
    (void)ncclCommWindowDeregister(nccl_, window_);
    window_ = nullptr;
  }
  if (symmetric_ != nullptr) {
    (void)ncclMemFree(symmetric_);
    symmetric_ = nullptr;
  }
  peer_bases_ = {};
  has_peer_memory_ = false;
}

// ================================================================================ destruction

Communicator::~Communicator() {
  ScopedDevice guard;
  (void)guard.Set(device_);
  if (nccl_stuck_ || poisoned_) {
    if (!owns_nccl_) {
      // An NCCL kernel of this rank may wait forever on a dead peer; only the owner of the
      // NCCL communicator can abort it, and cudaFree would wait for it. Leak instead: the
      // owner's ncclCommAbort frees the window and the device communicator; the memory goes
      // with the process (documented on FromNccl and Poison).
      return;
    }
    // Abort first, which also frees the window and the device communicator with the NCCL
    // communicator; then the memory NCCL does not own.
    (void)ncclCommAbort(nccl_);
    nccl_ = nullptr;
    window_ = nullptr;
    delete dev_comm_;
    dev_comm_ = nullptr;
  }
  // Reverse order of creation.
  if (nccl_ != nullptr) ReleasePeerMemory();  // device communicator, window
  if (symmetric_ != nullptr) (void)ncclMemFree(symmetric_);
  if (device_state_ != nullptr) (void)cudaFree(device_state_);
  if (nccl_scratch_ != nullptr) (void)cudaFree(nccl_scratch_);
  if (step_buffer_ != nullptr) (void)cudaFree(step_buffer_);
  if (owns_nccl_ && nccl_ != nullptr) (void)ncclCommDestroy(nccl_);
}

// ================================================================================ health

void Communicator::Poison(Status status) {
  if (poisoned_ || status.ok()) return;
  poisoned_ = true;
  poison_ = std::move(status);
}

Status Communicator::CheckHealth(cudaStream_t stream) {
  if (poisoned_) return poison_;
  ScopedDevice guard;
  TPFUSE_RETURN_IF_ERROR(guard.Set(device_));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  CommDeviceState state;
  std::memset(&state, 0, sizeof(state));
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(&state, device_state_, sizeof(state), cudaMemcpyDeviceToHost,
                                    stream));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));

  ncclResult_t async = ncclSuccess;
  TPFUSE_NCCL_CHECK(ncclCommGetAsyncError(nccl_, &async));
  if (async != ncclSuccess && async != ncclInProgress) {
    Poison(Status(StatusCode::kNcclError,
                  StrCat("rank ", rank_, ": NCCL reports an asynchronous error: ",
                         NcclDetail(nccl_, async))));
    return poison_;
  }
  switch (state.error_code) {
    case kErrorNone:
      return Status::Ok();
    case kErrorTimeout:
      Poison(Status(StatusCode::kTimeout,
                    StrCat("rank ", rank_, " timed out after ", Seconds(options_.timeout_seconds),
                           " waiting for rank ", state.error_peer, " in the ",
                           ProtocolPhaseName(state.error_phase),
                           " (peer dead, or the ranks called different ops)")));
      return poison_;
    default:
      Poison(Internal("rank ", rank_, ": the protocol state holds unknown error code ",
                      state.error_code, " (peer ", state.error_peer, ", ",
                      ProtocolPhaseName(state.error_phase), ")"));
      return poison_;
  }
}

// ================================================================================ bootstrap

StatusOr<ncclUniqueId> ExchangeUniqueId(const std::string& method, const std::string& address,
                                        int rank, int world_size, double timeout_seconds) {
  TPFUSE_ASSIGN_OR_RETURN(BootstrapMethod parsed, ParseBootstrapMethod(method));
  BootstrapOptions options;
  options.method = parsed;
  options.address = address;
  options.rank = rank;
  options.world_size = world_size;
  options.timeout_seconds = timeout_seconds;
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (rank == 0 && world_size >= 1) {
    TPFUSE_NCCL_CHECK(ncclGetUniqueId(&id));
  }
  std::span<uint8_t> blob(reinterpret_cast<uint8_t*>(id.internal), sizeof(id.internal));
  TPFUSE_RETURN_IF_ERROR(BroadcastBlob(options, blob).WithContext("ExchangeUniqueId"));
  return id;
}

}  // namespace tpfuse::cuda
