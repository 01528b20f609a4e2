// The communicator on GPUs: creation (unique id, borrowed NCCL communicator, one process per
// GPU), peer memory through symmetric windows, workspace initialization, health and poisoning,
// destruction and re-creation, and the no-peer-memory path. Values are rank-tagged so that a
// routing error is an exact mismatch.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backends/cuda/comm/comm_kernels.h"
#include "backends/cuda/comm/communicator.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "backends/cuda/comm/bootstrap.h"
#include "support/cuda_harness.h"

namespace tpfuse::testing {
namespace {

using cuda::CommDeviceState;
using cuda::CommOptions;
using cuda::Communicator;
using cuda::DeviceBuffer;
using cuda::WorkspaceLayout;

// A small workspace: creation is quick and every byte can be checked.
CommOptions SmallOptions() {
  CommOptions o;
  o.max_tokens = 64;
  o.max_hidden = 256;
  o.oneshot_max_tokens = 16;
  // A bound on a hang, not on speed: a rank thread the host is slow to schedule must not turn
  // into a peer timeout.
  o.timeout_seconds = 60.0;
  o.init_timeout_seconds = 120.0;
  return o;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Words of the rank-tagged pattern each rank writes into its own workspace.
constexpr size_t kPatternWords = 1024;

uint32_t Pattern(int rank, int region, size_t i) {
  return (uint32_t(rank + 1) << 28) | (uint32_t(region) << 24) | uint32_t(i);
}

// A 1-element ncclAllReduce of rank-tagged integers; the sum must be exact.
Status CheckAllReduce(Communicator& comm, cudaStream_t stream) {
  TPFUSE_ASSIGN_OR_RETURN(DeviceBuffer word, DeviceBuffer::Allocate(sizeof(int32_t)));
  const int32_t mine = 1000 * (comm.rank() + 1) + comm.rank();
  int32_t expected = 0;
  for (int r = 0; r < comm.world_size(); ++r) expected += 1000 * (r + 1) + r;
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(word.get(), &mine, sizeof(mine), cudaMemcpyHostToDevice, stream));
  TPFUSE_NCCL_CHECK(ncclAllReduce(word.get(), word.get(), 1, ncclInt32, ncclSum, comm.nccl(), stream));
  const Status waited = WaitBounded(comm, stream, kCollectiveWaitSeconds, "the all-reduce check");
  if (waited.code() == StatusCode::kTimeout) (void)word.Release();  // may still be written
  TPFUSE_RETURN_IF_ERROR(waited);
  int32_t got = 0;
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(&got, word.get(), sizeof(got), cudaMemcpyDeviceToHost, stream));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (got != expected) {
    return Internal("rank ", comm.rank(), ": all-reduce gave ", got, ", expected ", expected);
  }
  return Status::Ok();
}

// Reads `words` words at `offset` of every rank's workspace through the peer mappings.
StatusOr<std::vector<uint32_t>> ReadEveryRank(Communicator& comm, cudaStream_t stream,
                                              size_t offset, size_t words) {
  const size_t count = size_t(comm.world_size()) * words;
  TPFUSE_ASSIGN_OR_RETURN(DeviceBuffer out, DeviceBuffer::Allocate(count * sizeof(uint32_t)));
  TPFUSE_CUDA_CHECK(cudaMemsetAsync(out.get(), 0xff, count * sizeof(uint32_t), stream));
  TPFUSE_RETURN_IF_ERROR(
      cuda::LaunchReadPeerWorkspaces(comm, offset, words, out.get<uint32_t>(), stream));
  std::vector<uint32_t> host(count);
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(host.data(), out.get(), count * sizeof(uint32_t),
                                    cudaMemcpyDeviceToHost, stream));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

// NOTE: the checks below run on every rank and contain barriers. A rank that finds a mismatch
// still takes every barrier (it records the first failure and returns it at the end), so a
// failure on one rank never leaves the others waiting in a barrier forever.

// Checks `words` words of every rank read at `offset`: expected(rank, i).
template <class Expected>
Status CheckEveryRank(Communicator& comm, cudaStream_t stream, size_t offset, size_t words,
                      const char* what, const Expected& expected) {
  TPFUSE_ASSIGN_OR_RETURN(std::vector<uint32_t> got, ReadEveryRank(comm, stream, offset, words));
  for (int r = 0; r < comm.world_size(); ++r) {
    for (size_t i = 0; i < words; ++i) {
      const uint32_t value = got[size_t(r) * words + i];
      if (value != expected(r, i)) {
        return Internal("rank ", comm.rank(), " reads rank ", r, "'s workspace byte ",
                        offset + 4 * i, " (", what, ") as 0x", std::hex, value, ", expected 0x",
                        expected(r, i));
      }
    }
  }
  return Status::Ok();
}

// Every byte of every rank's workspace after creation, read from this rank through the peer
// mappings: the Lamport areas hold the sentinel in every 16-bit slot, everything else is zero. Every rank calls it; it ends with a barrier, so that no rank writes into its
// workspace while a peer still checks it.
Status CheckWorkspaceInitialized(Communicator& comm, cudaStream_t stream) {
  const WorkspaceLayout& l = comm.layout();
  const size_t lamport_begin = l.sentinel_offset / 4;
  const size_t lamport_end = l.total_bytes / 4;
  const uint32_t sentinel_pair = uint32_t(cuda::kLamportSentinel) * 0x10001u;
  const Status checked = CheckEveryRank(
      comm, stream, 0, l.total_bytes / 4, "sentinel in the Lamport buffers, zero elsewhere",
      [&](int, size_t i) { return i >= lamport_begin && i < lamport_end ? sentinel_pair : 0u; });
  TPFUSE_RETURN_IF_ERROR(HostBarrier(comm, stream));
  return checked;
}

// Every rank writes a rank-tagged pattern into its own workspace (at the start of the
// all-gather region and at the very end of the workspace), a barrier, then a kernel on every
// rank reads every rank's pattern through peer_bases(); the host checks every word. Every rank
// calls it. NOTE: the patterns overwrite Lamport sentinels, so it ends with ResetWorkspace.
Status CheckPeerReads(Communicator& comm, cudaStream_t stream) {
  if (!comm.has_peer_memory()) {  // the same on every rank: no barrier is skipped alone
    return FailedPrecondition("rank ", comm.rank(), " has no peer memory: ",
                              comm.why_no_peer_memory());
  }
  const WorkspaceLayout& l = comm.layout();
  const size_t offsets[2] = {l.ag_offset, l.total_bytes - kPatternWords * sizeof(uint32_t)};
  Status first;
  auto note = [&first](Status s) {
    if (first.ok() && !s.ok()) first = std::move(s);
  };

  std::vector<uint32_t> mine(kPatternWords);
  for (int region = 0; region < 2; ++region) {
    for (size_t i = 0; i < kPatternWords; ++i) mine[i] = Pattern(comm.rank(), region, i);
    // Pageable source: the call returns once `mine` is staged, so it may be refilled.
    const cudaError_t e = cudaMemcpyAsync(comm.peer_bases()[size_t(comm.rank())] + offsets[region],
                                          mine.data(), kPatternWords * sizeof(uint32_t),
                                          cudaMemcpyHostToDevice, stream);
    if (e != cudaSuccess) note(Internal("writing the pattern: ", cudaGetErrorString(e)));
  }
  // Every rank's pattern is in place once every rank has passed this barrier.
  TPFUSE_RETURN_IF_ERROR(HostBarrier(comm, stream));
  for (int region = 0; region < 2; ++region) {
    note(CheckEveryRank(comm, stream, offsets[region], kPatternWords, "rank-tagged pattern",
                        [region](int r, size_t i) { return Pattern(r, region, i); }));
  }
  // Nobody changes or frees its workspace while a peer may still read it; then the sentinels the
  // patterns overwrote come back (ResetWorkspace ends with its own barrier).
  TPFUSE_RETURN_IF_ERROR(HostBarrier(comm, stream));
  note(comm.ResetWorkspace(stream));
  return first;
}

// ---------------------------------------------------------------------------- no GPU needed

TEST(CommTest, FromUniqueIdRejectsBadArgumentsBeforeTouchingTheGpu) {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  StatusOr<std::unique_ptr<Communicator>> too_many =
      Communicator::FromUniqueId(id, 0, cuda::kMaxRanks + 1, 0, SmallOptions());
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), StatusCode::kOutOfRange);
  EXPECT_TRUE(Contains(too_many.status().message(), "world size 9")) << too_many.status().ToString();

  StatusOr<std::unique_ptr<Communicator>> bad_rank =
      Communicator::FromUniqueId(id, 2, 2, 0, SmallOptions());
  ASSERT_FALSE(bad_rank.ok());
  EXPECT_EQ(bad_rank.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(bad_rank.status().message(), "rank 2")) << bad_rank.status().ToString();
}

TEST(CommTest, FromNcclRejectsNull) {
  StatusOr<std::unique_ptr<Communicator>> c = Communicator::FromNccl(nullptr, SmallOptions());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
}

TEST(CommTest, ProtocolPhaseNames) {
  EXPECT_EQ(cuda::ProtocolPhaseName(cuda::kPhaseOneShotGather), "one-shot gather");
  EXPECT_EQ(cuda::ProtocolPhaseName(cuda::kPhaseTwoShotReduceScatter), "two-shot reduce-scatter");
  EXPECT_EQ(cuda::ProtocolPhaseName(cuda::kPhaseTwoShotAllGather), "two-shot all-gather");
  EXPECT_EQ(cuda::ProtocolPhaseName(7), "protocol phase 7");
}

TEST(CommTest, ExchangeUniqueIdRejectsUnknownMethod) {
  StatusOr<ncclUniqueId> id = cuda::ExchangeUniqueId("udp", "127.0.0.1:1", 1, 2, 1.0);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(id.status().message(), "udp")) << id.status().ToString();
}

// ---------------------------------------------------------------------------- one GPU

TEST(CommTest, CheckHealthReportsTimeoutAndPoisons) {
  TPFUSE_REQUIRE_GPUS(1);
  StatusOr<std::unique_ptr<MultiGpu>> group = MultiGpu::Create(1, SmallOptions());
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  const Status checked = (*group)->RunAll([](int rank, Communicator& comm, cudaStream_t stream) {
    TPFUSE_RETURN_IF_ERROR(comm.CheckHealth(stream));
    if (comm.poisoned()) return Internal("poisoned after a healthy check");
    // What a one-shot kernel writes when rank 1 never arrives.
    CommDeviceState state;
    std::memset(&state, 0, sizeof(state));
    state.error_code = cuda::kErrorTimeout;
    state.error_peer = 1;
    state.error_phase = cuda::kPhaseOneShotGather;
    TPFUSE_CUDA_CHECK(cudaMemcpyAsync(comm.device_state(), &state, sizeof(state),
                                      cudaMemcpyHostToDevice, stream));
    const Status health = comm.CheckHealth(stream);
    if (health.code() != StatusCode::kTimeout) {
      return Internal("CheckHealth gave ", health.ToString(), ", expected a timeout");
    }
    const std::string expected =
        "rank 0 timed out after 60.0 s waiting for rank 1 in the one-shot gather (peer dead, or "
        "the ranks called different ops)";
    if (health.message() != expected) {
      return Internal("CheckHealth says '", health.message(), "', expected '", expected, "'");
    }
    if (!comm.poisoned()) return Internal("not poisoned after a timeout");
    if (comm.poison_status().message() != expected) return Internal("poison_status differs");
    // Once poisoned, the same error again.
    const Status again = comm.CheckHealth(stream);
    if (again.code() != StatusCode::kTimeout || again.message() != expected) {
      return Internal("second CheckHealth gave ", again.ToString());
    }
    return Status::Ok();
  });
  EXPECT_TRUE(checked.ok()) << checked.ToString();
  // Destroying a poisoned communicator that owns its NCCL communicator aborts it: no hang.
  group->reset();
}

TEST(CommTest, TimeoutOptionBecomesNanoseconds) {
  TPFUSE_REQUIRE_GPUS(1);
  CommOptions options = SmallOptions();
  options.timeout_seconds = 2.5;
  StatusOr<std::unique_ptr<MultiGpu>> group = MultiGpu::Create(1, options);
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  EXPECT_EQ((*group)->comm(0).timeout_ns(), uint64_t(2500000000ull));
}

// ---------------------------------------------------------------------------- two GPUs

// What a fresh two-rank communicator with SmallOptions() reports about itself (no peer
// involved).
Status CheckFreshCommunicator(int rank, const Communicator& comm) {
  if (comm.rank() != rank || comm.world_size() != 2 || comm.device() != rank) {
    return Internal("rank/world/device are ", comm.rank(), "/", comm.world_size(), "/",
                    comm.device(), ", expected ", rank, "/2/", rank);
  }
  if (!comm.has_peer_memory()) return Internal("no peer memory: ", comm.why_no_peer_memory());
  if (!comm.why_no_peer_memory().empty()) return Internal("a reason without a failure");
  if (comm.window() == nullptr || comm.dev_comm() == nullptr) return Internal("no window");
  for (int r = 0; r < cuda::kMaxRanks; ++r) {
    const bool set = comm.peer_bases()[size_t(r)] != nullptr;
    if (set != (r < 2)) return Internal("peer_bases()[", r, "] is ", set ? "set" : "null");
  }
  if (comm.peer_bases()[0] == comm.peer_bases()[1]) return Internal("peer bases coincide");
  cuda::WorkspaceConfig config;
  config.world_size = 2;
  config.max_tokens = 64;
  config.max_hidden = 256;
  config.oneshot_max_tokens = 16;
  if (comm.layout().total_bytes != WorkspaceLayout::Make(config).total_bytes) {
    return Internal("layout of ", comm.layout().total_bytes, " bytes");
  }
  if (comm.nccl_scratch() == nullptr || comm.nccl_scratch_bytes() != 64u * 256u * 2u) {
    return Internal("nccl scratch of ", comm.nccl_scratch_bytes(), " bytes");
  }
  if (comm.timeout_ns() != 60000000000ull) return Internal("timeout_ns ", comm.timeout_ns());
  if (comm.poisoned()) return Internal("poisoned");
  return Status::Ok();
}

TEST(CommTest, CreatesFromUniqueIdWithPeerMemory) {
  TPFUSE_REQUIRE_GPUS(2);
  StatusOr<std::unique_ptr<MultiGpu>> group = MultiGpu::Create(2, SmallOptions());
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  const Status checked = (*group)->RunAll([](int rank, Communicator& comm, cudaStream_t stream) {
    FirstError errors;
    errors.Note(CheckFreshCommunicator(rank, comm));
    errors.Note(CheckAllReduce(comm, stream));
    errors.Note(comm.CheckHealth(stream));
    return errors.status();
  });
  EXPECT_TRUE(checked.ok()) << checked.ToString();
}

TEST(CommTest, WorkspaceInitializedOnEveryRank) {
  TPFUSE_REQUIRE_GPUS(2);
  StatusOr<std::unique_ptr<MultiGpu>> group = MultiGpu::Create(2, SmallOptions());
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  const Status checked = (*group)->RunAll([](int, Communicator& comm, cudaStream_t stream) {
    return CheckWorkspaceInitialized(comm, stream);
  });
  EXPECT_TRUE(checked.ok()) << checked.ToString();
}

TEST(CommTest, PeerBasesReachEveryRank) {
  TPFUSE_REQUIRE_GPUS(2);
  StatusOr<std::unique_ptr<MultiGpu>> group = MultiGpu::Create(2, SmallOptions());
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  const Status checked = (*group)->RunAll(
      [](int, Communicator& comm, cudaStream_t stream) { return CheckPeerReads(comm, stream); });
  EXPECT_TRUE(checked.ok()) << checked.ToString();
}

TEST(CommTest, DestroyAndRecreate) {
  TPFUSE_REQUIRE_GPUS(2);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(StrCat("round ", round));
    StatusOr<std::unique_ptr<MultiGpu>> group = MultiGpu::Create(2, SmallOptions());
    ASSERT_TRUE(group.ok()) << group.status().ToString();
    const Status checked = (*group)->RunAll([](int, Communicator& comm, cudaStream_t stream) {
      FirstError errors;
      errors.Note(CheckWorkspaceInitialized(comm, stream));
      errors.Note(CheckPeerReads(comm, stream));
      errors.Note(CheckAllReduce(comm, stream));
      errors.Note(comm.CheckHealth(stream));
      return errors.status();
    });
    EXPECT_TRUE(checked.ok()) << checked.ToString();
    group->reset();  // destroys every rank's communicator, in parallel
  }
}

TEST(CommTest, CachedGroupsAreReused) {
  TPFUSE_REQUIRE_GPUS(2);
  StatusOr<MultiGpu*> first = MultiGpu::Cached(2, SmallOptions());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  StatusOr<MultiGpu*> second = MultiGpu::Cached(2, SmallOptions());
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(*first, *second);
  CommOptions other = SmallOptions();
  other.max_hidden = 512;
  StatusOr<MultiGpu*> third = MultiGpu::Cached(2, other);
  ASSERT_TRUE(third.ok()) << third.status().ToString();
  EXPECT_NE(*first, *third);
  const Status checked = (*first)->RunAll([](int, Communicator& comm, cudaStream_t stream) {
    TPFUSE_RETURN_IF_ERROR(CheckAllReduce(comm, stream));
    return comm.CheckHealth(stream);
  });
  EXPECT_TRUE(checked.ok()) << checked.ToString();
}

TEST(CommTest, PeerMemoryOffGivesTheReason) {
  TPFUSE_REQUIRE_GPUS(2);
  CommOptions options = SmallOptions();
  options.peer_memory = false;
  StatusOr<std::unique_ptr<MultiGpu>> group = MultiGpu::Create(2, options);
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  const Status checked = (*group)->RunAll([](int, Communicator& comm, cudaStream_t stream) {
    FirstError errors;
    errors.Note(CheckAllReduce(comm, stream));
    errors.Note(comm.CheckHealth(stream));
    if (comm.has_peer_memory()) return Internal("peer memory although disabled");
    if (!Contains(comm.why_no_peer_memory(), "peer_memory = false")) {
      return Internal("reason '", comm.why_no_peer_memory(), "'");
    }
    if (comm.window() != nullptr || comm.dev_comm() != nullptr) return Internal("a window");
    for (char* base : comm.peer_bases()) {
      if (base != nullptr) return Internal("a peer base without peer memory");
    }
    if (comm.nccl_scratch() == nullptr) return Internal("no nccl scratch");
    return errors.status();
  });
  EXPECT_TRUE(checked.ok()) << checked.ToString();
}

TEST(CommTest, PeerMemoryOffOnOneRankTurnsItOffEverywhere) {
  TPFUSE_REQUIRE_GPUS(2);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  std::vector<std::unique_ptr<Communicator>> comms(2);
  const Status created = CombineRankStatuses(RunOnRankThreads(2, [&](int r) -> Status {
    CommOptions options = SmallOptions();
    options.peer_memory = r == 0;  // rank 1 opts out
    TPFUSE_ASSIGN_OR_RETURN(comms[size_t(r)], Communicator::FromUniqueId(id, r, 2, r, options));
    return Status::Ok();
  }));
  ASSERT_TRUE(created.ok()) << created.ToString();
  EXPECT_FALSE(comms[0]->has_peer_memory());
  EXPECT_FALSE(comms[1]->has_peer_memory());
  EXPECT_TRUE(Contains(comms[0]->why_no_peer_memory(), "rank 1")) << comms[0]->why_no_peer_memory();
  EXPECT_TRUE(Contains(comms[1]->why_no_peer_memory(), "peer_memory = false"))
      << comms[1]->why_no_peer_memory();
  (void)RunOnRankThreads(2, [&](int r) {
    comms[size_t(r)].reset();
    return Status::Ok();
  });
}

// Raw NCCL communicators, one per GPU, created on rank threads.
StatusOr<std::vector<ncclComm_t>> CreateRawNcclComms(int world_size) {
  ncclUniqueId id;
  TPFUSE_NCCL_CHECK(ncclGetUniqueId(&id));
  std::vector<ncclComm_t> comms(static_cast<size_t>(world_size), nullptr);
  const Status created = CombineRankStatuses(RunOnRankThreads(world_size, [&](int r) -> Status {
    TPFUSE_NCCL_CHECK(ncclCommInitRank(&comms[size_t(r)], world_size, id, r));
    return Status::Ok();
  }));
  if (!created.ok()) return created;
  return comms;
}

void DestroyRawNcclComms(std::vector<ncclComm_t>& comms) {
  (void)RunOnRankThreads(int(comms.size()), [&](int r) {
    if (comms[size_t(r)] != nullptr) (void)ncclCommDestroy(comms[size_t(r)]);
    comms[size_t(r)] = nullptr;
    return Status::Ok();
  });
}

TEST(CommTest, FromNcclBorrowsTheCommunicator) {
  TPFUSE_REQUIRE_GPUS(2);
  StatusOr<std::vector<ncclComm_t>> raw = CreateRawNcclComms(2);
  ASSERT_TRUE(raw.ok()) << raw.status().ToString();
  const Status checked = CombineRankStatuses(RunOnRankThreads(2, [&](int r) -> Status {
    TPFUSE_ASSIGN_OR_RETURN(cuda::Stream stream, cuda::Stream::Create());
    FirstError errors;
    {
      // Creation fails on every rank or on none, so returning here skips no peer's step.
      TPFUSE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
                              Communicator::FromNccl((*raw)[size_t(r)], SmallOptions()));
      if (comm->rank() != r || comm->device() != r) errors.Note(Internal("wrong rank or device"));
      errors.Note(CheckWorkspaceInitialized(*comm, stream.get()));
      errors.Note(CheckPeerReads(*comm, stream.get()));
    }
    // The borrowed NCCL communicator outlives the tpfuse one.
    TPFUSE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> again,
                            Communicator::FromNccl((*raw)[size_t(r)], SmallOptions()));
    errors.Note(CheckAllReduce(*again, stream.get()));
    return errors.status();
  }));
  EXPECT_TRUE(checked.ok()) << checked.ToString();
  DestroyRawNcclComms(*raw);
}

TEST(CommTest, DifferentWorkspaceOptionsFailOnEveryRank) {
  TPFUSE_REQUIRE_GPUS(2);
  StatusOr<std::vector<ncclComm_t>> raw = CreateRawNcclComms(2);
  ASSERT_TRUE(raw.ok()) << raw.status().ToString();
  const std::vector<Status> statuses = RunOnRankThreads(2, [&](int r) -> Status {
    CommOptions options = SmallOptions();
    options.max_hidden = r == 0 ? 256 : 512;
    StatusOr<std::unique_ptr<Communicator>> comm = Communicator::FromNccl((*raw)[size_t(r)], options);
    if (comm.ok()) return Internal("rank ", r, " created a communicator");
    if (comm.status().code() != StatusCode::kInvalidArgument ||
        !Contains(comm.status().message(), "different workspace options")) {
      return Internal("rank ", r, " failed with ", comm.status().ToString());
    }
    return Status::Ok();
  });
  EXPECT_TRUE(CombineRankStatuses(statuses).ok()) << CombineRankStatuses(statuses).ToString();
  DestroyRawNcclComms(*raw);
}

TEST(CommTest, InvalidOptionsOnOneRankFailEveryRank) {
  TPFUSE_REQUIRE_GPUS(2);
  StatusOr<std::vector<ncclComm_t>> raw = CreateRawNcclComms(2);
  ASSERT_TRUE(raw.ok()) << raw.status().ToString();
  const std::vector<Status> statuses = RunOnRankThreads(2, [&](int r) -> Status {
    CommOptions options = SmallOptions();
    if (r == 1) options.max_tokens = 0;
    StatusOr<std::unique_ptr<Communicator>> comm = Communicator::FromNccl((*raw)[size_t(r)], options);
    if (comm.ok()) return Internal("rank ", r, " created a communicator");
    const StatusCode want = r == 1 ? StatusCode::kInvalidArgument : StatusCode::kFailedPrecondition;
    const std::string says = r == 1 ? "max_tokens (0)" : "rank 1 failed";
    if (comm.status().code() != want || !Contains(comm.status().message(), says)) {
      return Internal("rank ", r, " failed with ", comm.status().ToString());
    }
    return Status::Ok();
  });
  EXPECT_TRUE(CombineRankStatuses(statuses).ok()) << CombineRankStatuses(statuses).ToString();
  DestroyRawNcclComms(*raw);
}

// ---------------------------------------------------------------------------- one process per GPU

// A bootstrap address no other test uses: a fresh path, or a loopback port free just now.
std::string FreshAddress(const std::string& method) {
  if (method == "file") {
    static std::atomic<int> counter{0};
    return StrCat("/tmp/tpfuse_comm_test_", ::getpid(), "_x", counter.fetch_add(1), ".id");
  }
  StatusOr<int> port = PickFreeLoopbackPort();
  return StrCat("127.0.0.1:", port.ok() ? *port : 1);
}

// A child of OneProcessPerGpu: bootstraps the unique id, creates its communicator, checks an
// all-reduce, the workspace and peer memory across processes.
// Exit 0: all good; 1: a failure; 3: everything but peer memory worked.
int CommBootstrapChild(const ChildSpec& spec) {
  auto fail = [&](const Status& s) {
    std::printf("child rank %d: FAILED: %s\n", spec.rank, s.ToString().c_str());
    return 1;
  };
  if (CudaDeviceCount() < spec.world_size) return fail(Internal(WhyFewerGpusThan(spec.world_size)));
  if (cudaSetDevice(spec.rank) != cudaSuccess) return fail(Internal("cudaSetDevice failed"));
  StatusOr<ncclUniqueId> id =
      cuda::ExchangeUniqueId(spec.method, spec.address, spec.rank, spec.world_size, 60.0);
  if (!id.ok()) return fail(id.status());
  StatusOr<std::unique_ptr<Communicator>> comm =
      Communicator::FromUniqueId(*id, spec.rank, spec.world_size, spec.rank, SmallOptions());
  if (!comm.ok()) return fail(comm.status());
  StatusOr<cuda::Stream> stream = cuda::Stream::Create();
  if (!stream.ok()) return fail(stream.status());
  FirstError errors;
  errors.Note(CheckAllReduce(**comm, stream->get()));
  // has_peer_memory() is the same on every rank: the checks below run on all or none.
  if (!(*comm)->has_peer_memory()) {
    if (!errors.status().ok()) return fail(errors.status());
    std::printf("child rank %d: all-reduce ok, but no peer memory: %s\n", spec.rank,
                (*comm)->why_no_peer_memory().c_str());
    return 3;
  }
  errors.Note(CheckWorkspaceInitialized(**comm, stream->get()));
  errors.Note(CheckPeerReads(**comm, stream->get()));
  errors.Note((*comm)->CheckHealth(stream->get()));
  if (!errors.status().ok()) return fail(errors.status());
  std::printf("child rank %d of %d (%s bootstrap): all-reduce, workspace and peer memory ok\n",
              spec.rank, spec.world_size, spec.method.c_str());
  return 0;
}

const bool kCommChildRegistered = RegisterChildMain("comm_bootstrap", &CommBootstrapChild);

class OneProcessPerGpu : public ::testing::TestWithParam<std::string> {};

TEST_P(OneProcessPerGpu, BootstrapsAndSharesPeerMemory) {
  TPFUSE_REQUIRE_GPUS(2);
  ASSERT_TRUE(kCommChildRegistered);
  const std::string method = GetParam();
  const std::string address = FreshAddress(method);
  StatusOr<std::vector<ChildResult>> children =
      RunChildren("comm_bootstrap", 2, method, address, /*timeout_seconds=*/240.0);
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  for (const ChildResult& child : *children) {
    EXPECT_FALSE(child.timed_out) << "rank " << child.rank << " was killed after the timeout:\n"
                                  << child.output;
    EXPECT_EQ(child.exit_code, 0) << "rank " << child.rank << " (exit 3: no peer memory):\n"
                                  << child.output;
    std::printf("%s", child.output.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, OneProcessPerGpu, ::testing::Values("file", "tcp"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// ---------------------------------------------------------------------------- processes, no GPU


// Prints what it was given and exits with 10 + rank; with address "block", blocks forever
// instead: only the harness's kill ends it.
int EchoChild(const ChildSpec& spec) {
  std::printf("child %d of %d: %s %s\n", spec.rank, spec.world_size, spec.method.c_str(),
              spec.address.c_str());
  std::fflush(stdout);
  if (spec.address == "block") {
    while (true) ::pause();
  }
  return 10 + spec.rank;
}
const bool kEchoChildRegistered = RegisterChildMain("harness_echo", &EchoChild);

// Bootstraps the unique id (no GPU needed) and prints it in hex.
int ExchangeIdChild(const ChildSpec& spec) {
  StatusOr<ncclUniqueId> id =
      cuda::ExchangeUniqueId(spec.method, spec.address, spec.rank, spec.world_size, 60.0);
  if (!id.ok()) {
    std::printf("child rank %d: FAILED: %s\n", spec.rank, id.status().ToString().c_str());
    return 1;
  }
  constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (char c : id->internal) {
    hex += kDigits[uint8_t(c) >> 4];
    hex += kDigits[uint8_t(c) & 15];
  }
  std::printf("id %s\n", hex.c_str());
  return 0;
}
const bool kExchangeIdChildRegistered = RegisterChildMain("exchange_id", &ExchangeIdChild);

TEST(HarnessTest, ChildrenReportExitCodesAndOutput) {
  ASSERT_TRUE(kEchoChildRegistered);
  StatusOr<std::vector<ChildResult>> children = RunChildren("harness_echo", 3, "file", "a,b", 60.0);
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  ASSERT_EQ(children->size(), 3u);
  for (const ChildResult& child : *children) {
    EXPECT_FALSE(child.timed_out);
    EXPECT_EQ(child.exit_code, 10 + child.rank) << child.output;
    EXPECT_EQ(child.output, StrCat("child ", child.rank, " of 3: file a,b\n"));
  }
}

TEST(HarnessTest, ChildrenAreKilledAfterTheTimeout) {
  // Children that never exit: the timeout is their only way out, however long they take to
  // start, so the outcome does not depend on the machine's speed.
  constexpr double kTimeoutSeconds = 0.5;
  const auto start = std::chrono::steady_clock::now();
  StatusOr<std::vector<ChildResult>> children = RunChildren("harness_echo", 2, "file", "block", kTimeoutSeconds);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  ASSERT_EQ(children->size(), 2u);
  EXPECT_GE(took, kTimeoutSeconds) << "children were killed before the timeout";
  for (const ChildResult& child : *children) {
    EXPECT_TRUE(child.timed_out) << "rank " << child.rank;
    EXPECT_EQ(child.term_signal, SIGKILL) << "rank " << child.rank << " was not killed by the harness";
    EXPECT_EQ(child.exit_code, -1) << "rank " << child.rank;
  }
}

class ExchangeUniqueIdAcrossProcesses : public ::testing::TestWithParam<std::string> {};

TEST_P(ExchangeUniqueIdAcrossProcesses, EveryRankGetsRankZerosId) {
  ASSERT_TRUE(kExchangeIdChildRegistered);
  StatusOr<std::vector<ChildResult>> children =
      RunChildren("exchange_id", 4, GetParam(), FreshAddress(GetParam()), 120.0);
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  const std::string zeros = StrCat("id ", std::string(2 * sizeof(ncclUniqueId), '0'), "\n");
  for (const ChildResult& child : *children) {
    EXPECT_EQ(child.exit_code, 0) << "rank " << child.rank << ":\n" << child.output;
    EXPECT_EQ(child.output.rfind("id ", 0), 0u) << child.output;
    EXPECT_NE(child.output, zeros);
    EXPECT_EQ(child.output, (*children)[0].output) << "rank " << child.rank;
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, ExchangeUniqueIdAcrossProcesses, ::testing::Values("file", "tcp"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace tpfuse::testing
