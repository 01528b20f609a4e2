#include "bench/runner.h"

#include <cstdio>
#include <cstdlib>

#if TPFUSE_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "backends/cuda/allreduce_rmsnorm.h"
#include "backends/cuda/comm/communicator.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "bench/gpu_support.h"
#include "bench/report.h"
#include "runtime/cuda/fused_dispatch.h"
#include "runtime/dispatcher.h"
#endif

namespace tpfuse::bench {

#if !TPFUSE_HAVE_CUDA

bool HaveCuda() { return false; }

StatusOr<int> CountGpus() {
  return Unimplemented(
      "this tpfuse was built without the CUDA backend (nvcc and NCCL were not "
      "found when it was configured)");
}

int RunRank(const Plan& plan, int rank) {
  std::fprintf(stderr,
               "tpfuse %s: error: rank %d: this tpfuse was built without the CUDA backend\n",
               std::string(ModeName(plan.mode)).c_str(), rank);
  return 1;
}

#else  // TPFUSE_HAVE_CUDA

namespace {

using Clock = std::chrono::steady_clock;
using cuda::DeviceBuffer;

// Bound on every wait for the other ranks (a barrier, the end of a timed loop). Generous: a
// rank may be capturing graphs or writing files while the others wait.
constexpr double kWaitSeconds = 300;
constexpr size_t kMaxPeerCopyBytes = size_t(256) << 20;
constexpr int kPeerWarmupCopies = 2;
constexpr int kPeerTimedCopies = 10;
// A rank's median further than this from rank 0's gets a warning.
constexpr double kRankSpreadWarning = 0.10;
// Byte offsets inside the small synchronization buffer.
constexpr size_t kSyncBarrier = 0;   // int32 (always 0: a sum of zeros)
constexpr size_t kSyncSend = 64;     // double
constexpr size_t kSyncGather = 128;  // double [kMaxRanks]
constexpr size_t kSyncBytes = 256;

// ---------------------------------------------------------------- the SM copy kernel
// One 16-byte load and store per thread per step of a grid-stride loop: dst[i] = src[i] for
// i < n 16-byte vectors. PTX rather than CUDA C++ because the CLI is compiled by the host
// compiler; the driver JIT-compiles it for the GPU at load time.
constexpr const char kCopyKernelPtx[] = R"(
.version 7.0
.target sm_70
.address_size 64

.visible .entry tpfuse_bench_copy16(
	.param .u64 dst_param,
	.param .u64 src_param,
	.param .u64 n_param
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<10>;
	.reg .b64 	%rd<12>;

	ld.param.u64 	%rd1, [dst_param];
	ld.param.u64 	%rd2, [src_param];
	ld.param.u64 	%rd3, [n_param];
	cvta.to.global.u64 	%rd1, %rd1;
	cvta.to.global.u64 	%rd2, %rd2;
	mov.u32 	%r1, %ctaid.x;
	mov.u32 	%r2, %ntid.x;
	mov.u32 	%r3, %tid.x;
	mov.u32 	%r4, %nctaid.x;
	mul.wide.u32 	%rd4, %r1, %r2;
	cvt.u64.u32 	%rd5, %r3;
	add.s64 	%rd4, %rd4, %rd5;
	mul.wide.u32 	%rd6, %r4, %r2;
$L_loop:
	setp.ge.u64 	%p1, %rd4, %rd3;
	@%p1 bra 	$L_done;
	shl.b64 	%rd7, %rd4, 4;
	add.s64 	%rd8, %rd2, %rd7;
	ld.global.nc.v4.u32 	{%r5, %r6, %r7, %r8}, [%rd8];
	add.s64 	%rd9, %rd1, %rd7;
	st.global.v4.u32 	[%rd9], {%r5, %r6, %r7, %r8};
	add.s64 	%rd4, %rd4, %rd6;
	bra.uni 	$L_loop;
$L_done:
	ret;
}
)";
constexpr int kCopyKernelThreads = 512;
constexpr int kCopyKernelBlocksPerSm = 4;

class CopyKernel {
 public:
  CopyKernel() = default;
  ~CopyKernel() {
    if (library_ != nullptr) (void)cudaLibraryUnload(library_);
  }
  CopyKernel(const CopyKernel&) = delete;
  CopyKernel& operator=(const CopyKernel&) = delete;

  Status Load() {
    TPFUSE_CUDA_CHECK(
        cudaLibraryLoadData(&library_, kCopyKernelPtx, nullptr, nullptr, 0, nullptr, nullptr, 0));
    TPFUSE_CUDA_CHECK(cudaLibraryGetKernel(&kernel_, library_, "tpfuse_bench_copy16"));
    return Status::Ok();
  }
  // `bytes` a multiple of 16; both pointers 16-byte aligned.
  Status Launch(void* dst, const void* src, size_t bytes, int sms, cudaStream_t stream) const {
    if (kernel_ == nullptr) return FailedPrecondition("the copy kernel is not loaded");
    unsigned long long dst_arg = reinterpret_cast<uintptr_t>(dst);
    unsigned long long src_arg = reinterpret_cast<uintptr_t>(src);
    unsigned long long vectors = bytes / 16;
    void* args[] = {&dst_arg, &src_arg, &vectors};
    TPFUSE_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(kernel_),
                                       dim3(unsigned(sms * kCopyKernelBlocksPerSm)),
                                       dim3(kCopyKernelThreads), args, 0, stream));
    return Status::Ok();
  }

 private:
  cudaLibrary_t library_ = nullptr;
  cudaKernel_t kernel_ = nullptr;
};

// ---------------------------------------------------------------- one shape

bool IsFusedPath(Path p) { return p == Path::kOneShot || p == Path::kTwoShot || p == Path::kNccl; }

Strategy ToStrategy(Path p) {
  switch (p) {
    case Path::kOneShot: return Strategy::kOneShot;
    case Path::kTwoShot: return Strategy::kTwoShot;
    default: return Strategy::kNccl;
  }
}

Path PathOf(Strategy s) {
  switch (s) {
    case Strategy::kOneShot: return Path::kOneShot;
    case Strategy::kTwoShot: return Path::kTwoShot;
    case Strategy::kNccl: return Path::kNccl;
  }
  return Path::kNccl;
}

struct Shape {
  AllreduceRmsnormSpec spec;
  int64_t tokens = 0;
  SetLayout layout;
  Rotation rotation;

  std::string Name() const {
    return StrCat("H=", spec.hidden, " ", QuantModeName(spec.quant), " T=", tokens);
  }
};

// ================================================================================ the rank

class RankRunner {
 public:
  RankRunner(const Plan& plan, int rank) : plan_(plan), rank_(rank) {}

  Status Run();
  bool has_communicator() const { return comm_ != nullptr; }

 private:
  Status SetUp();
  Status MeasurePeerBandwidth();
  // Times `kPeerTimedCopies` runs of `enqueue` in lockstep with the other ranks. A failing
  // enqueue is this rank's own result (*error), not fatal: every rank still takes the same
  // barriers. The returned Status is fatal.
  Status TimeCopies(const std::function<Status()>& enqueue, size_t bytes,
                    std::optional<double>* gbps, std::string* error);
  StatusOr<ShapeResult> RunShape(const AllreduceRmsnormSpec& spec, int64_t tokens);
  Status FillInputs(const Shape& shape);
  StatusOr<PathResult> MeasurePath(Path path, const Shape& shape);
  Status EnqueueOp(Path path, const Shape& shape, int set);
  Status EnqueueBaselineA(const Shape& shape, char* set);
  StatusOr<std::vector<double>> TimeReplays(const GraphExec& graph, const Shape& shape);
  Status FlushL2();
  Status Barrier(const std::string& what);
  Status WaitStream(const std::string& what);
  StatusOr<std::vector<double>> AllGather(double value);
  Status Finish();

  char* SetBase(const Shape& shape, int set) const {
    return arena_.get<char>() + size_t(set) * shape.layout.bytes;
  }
  bool reporting() const { return rank_ == 0; }

  const Plan plan_;
  const int rank_;
  // NOTE: the communicator is declared first so that it is destroyed last, after every
  // stream, graph and buffer that uses it.
  std::unique_ptr<cuda::Communicator> comm_;
  cuda::Stream stream_;
  DeviceBuffer arena_;       // the input/output sets of the current shape
  DeviceBuffer ar_scratch_;  // baseline A's and NCCL's all-reduce output [T_max, H_max] bf16
  DeviceBuffer flush_;       // 2x L2, overwritten between replays of small shapes
  DeviceBuffer random_;      // kRandomSourceBytes of random bf16
  DeviceBuffer weight_;      // [H_max] bf16
  DeviceBuffer scale_;       // f32 static scale
  DeviceBuffer sync_;        // barrier word and gather slots
  std::vector<cuda::Event> starts_, stops_;
  runtime::StrategyTable table_;
  Report report_;  // filled on rank 0
  int64_t l2_bytes_ = 0;
  int sm_count_ = 0;
  unsigned flush_count_ = 0;
};

Status RankRunner::Run() {
  TPFUSE_RETURN_IF_ERROR(SetUp());
  if (plan_.mode == Mode::kBench) TPFUSE_RETURN_IF_ERROR(MeasurePeerBandwidth());
  if (reporting()) {
    std::fputs(FormatHeader(report_).c_str(), stdout);
    std::fflush(stdout);
  }
  const int total = plan_.num_shapes();
  int index = 0;
  for (int64_t hidden : plan_.hidden) {
    for (QuantMode quant : plan_.quants) {
      const AllreduceRmsnormSpec spec = MakeSpec(hidden, quant, plan_.emit_norm);
      for (int64_t tokens : plan_.tokens) {
        ++index;
        const Clock::time_point start = Clock::now();
        StatusOr<ShapeResult> shape = RunShape(spec, tokens);
        if (!shape.ok()) return shape.status();
        if (reporting()) {
          const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
          std::fprintf(stderr, "[%d/%d] %s (%.1f s)\n", index, total,
                       FormatProgress(report_, *shape).c_str(), seconds);
          for (const std::string& w : shape->warnings)
            std::fprintf(stderr, "  warning: %s\n", w.c_str());
          report_.shapes.push_back(std::move(shape).value());
        }
      }
      if (reporting()) {
        std::fputs(FormatTable(report_, hidden, quant).c_str(), stdout);
        std::fflush(stdout);
        // Written after every table, so an interrupted sweep keeps what it measured.
        if (plan_.mode == Mode::kBench)
          TPFUSE_RETURN_IF_ERROR(WriteBenchOutputs(report_, plan_.out));
      }
    }
  }
  return Finish();
}

Status RankRunner::Finish() {
  // Every rank leaves together: no rank tears its communicator down under a peer's kernel.
  TPFUSE_RETURN_IF_ERROR(Barrier("the end of the sweep"));
  if (!reporting()) return Status::Ok();
  if (plan_.mode == Mode::kBench) {
    std::fprintf(stdout, "\n%swrote bench.csv, bench.json and bench_H<h>_<quant>.svg to %s\n",
                 FormatSummary(report_).c_str(), plan_.out.c_str());
    std::fflush(stdout);
    return Status::Ok();
  }
  const runtime::StrategyTable table = TunedTable(report_);
  const std::string json = table.ToJson();
  // What the runtime will read must load.
  StatusOr<runtime::StrategyTable> reloaded = runtime::StrategyTable::FromJson(json);
  if (!reloaded.ok())
    return reloaded.status().WithContext("the tuned strategy table does not load back");
  TPFUSE_RETURN_IF_ERROR(WriteFileAtomically(plan_.out, json));
  std::fprintf(stdout, "\nstrategy table for %s, written to %s:\n%s", table.source.c_str(),
               plan_.out.c_str(), FormatRules(table).c_str());
  std::fflush(stdout);
  return Status::Ok();
}

// ---------------------------------------------------------------- setup

Status RankRunner::SetUp() {
  const int n = plan_.world_size;
  TPFUSE_CUDA_CHECK(cudaSetDevice(rank_));
  TPFUSE_CUDA_CHECK(cudaFree(nullptr));  // create the context now, before the NCCL bootstrap
  int l2 = 0;
  TPFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, rank_));
  TPFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, rank_));
  l2_bytes_ = l2;

  if (plan_.table.empty()) {
    // The runtime's default: $TPFUSE_STRATEGY_TABLE when set, else the built-in table.
    TPFUSE_ASSIGN_OR_RETURN(table_, runtime::DefaultStrategyTable());
  } else {
    TPFUSE_ASSIGN_OR_RETURN(table_, runtime::StrategyTable::Load(plan_.table));
  }

  // ---- communicator, sized for the largest shape (the same options on every rank)
  TPFUSE_ASSIGN_OR_RETURN(const ncclUniqueId id,
                          cuda::ExchangeUniqueId("file", plan_.id_file, rank_, n, kWaitSeconds));
  const WorkspacePlan workspace = PlanWorkspace(plan_);
  cuda::CommOptions options;
  options.max_tokens = workspace.max_tokens;
  options.max_hidden = workspace.max_hidden;
  options.oneshot_max_tokens = workspace.oneshot_max_tokens;
  options.init_timeout_seconds = kWaitSeconds;
  TPFUSE_ASSIGN_OR_RETURN(comm_, cuda::Communicator::FromUniqueId(id, rank_, n, rank_, options));
  TPFUSE_ASSIGN_OR_RETURN(stream_, cuda::Stream::Create());

  // ---- buffers: the largest rotation of the sweep, and the rest
  size_t arena_bytes = 0;
  for (int64_t h : plan_.hidden) {
    for (QuantMode q : plan_.quants) {
      const AllreduceRmsnormSpec spec = MakeSpec(h, q, plan_.emit_norm);
      for (int64_t t : plan_.tokens) {
        const SetLayout layout = SetLayout::Make(spec, t);
        const Rotation rotation =
            ChooseRotation(layout.bytes, size_t(l2_bytes_), plan_.ops_per_graph);
        arena_bytes = std::max(arena_bytes, size_t(rotation.sets) * layout.bytes);
      }
    }
  }
  const size_t peer_bytes =
      comm_->has_peer_memory() ? std::min(cuda::kLamportBuffers * comm_->layout().rs_buffer_bytes, kMaxPeerCopyBytes) / 4096 * 4096
                               : 0;
  arena_bytes = std::max(arena_bytes, peer_bytes);
  const size_t scratch_bytes = size_t(plan_.max_tokens()) * size_t(plan_.max_hidden()) * 2;
  const size_t flush_bytes = std::max<size_t>(2 * size_t(l2_bytes_), 4096);
  const size_t needed = arena_bytes + scratch_bytes + flush_bytes + kRandomSourceBytes;
  size_t free_bytes = 0, total_bytes = 0;
  TPFUSE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (needed + (size_t(512) << 20) > free_bytes) {
    return OutOfRange(
        "rank ", rank_, ": the sweep's buffers need ", needed >> 20, " MiB (input sets ",
        arena_bytes >> 20, " MiB, all-reduce scratch ", scratch_bytes >> 20, " MiB) but only ",
        free_bytes >> 20,
        " MiB are free after the communicator; use fewer or smaller --tokens/--hidden");
  }
  TPFUSE_ASSIGN_OR_RETURN(arena_, DeviceBuffer::Allocate(arena_bytes));
  TPFUSE_ASSIGN_OR_RETURN(ar_scratch_, DeviceBuffer::Allocate(scratch_bytes));
  TPFUSE_ASSIGN_OR_RETURN(flush_, DeviceBuffer::Allocate(flush_bytes));
  TPFUSE_ASSIGN_OR_RETURN(random_, DeviceBuffer::Allocate(kRandomSourceBytes));
  TPFUSE_ASSIGN_OR_RETURN(weight_, DeviceBuffer::Allocate(size_t(plan_.max_hidden()) * 2));
  TPFUSE_ASSIGN_OR_RETURN(scale_, DeviceBuffer::Allocate(sizeof(float)));
  TPFUSE_ASSIGN_OR_RETURN(sync_, DeviceBuffer::Allocate(kSyncBytes));

  // ---- contents: random activations (different on every rank), a weight near 1 (the same on
  // every rank, as a replicated norm weight is), the static scale
  const std::vector<uint16_t> random =
      RandomBf16(kRandomSourceBytes / 2, plan_.seed * 1000003ull + uint64_t(rank_), -1.0f, 1.0f);
  const std::vector<uint16_t> weight =
      RandomBf16(size_t(plan_.max_hidden()), plan_.seed, 0.5f, 1.5f);
  TPFUSE_CUDA_CHECK(
      cudaMemcpy(random_.get(), random.data(), kRandomSourceBytes, cudaMemcpyHostToDevice));
  TPFUSE_CUDA_CHECK(
      cudaMemcpy(weight_.get(), weight.data(), weight.size() * 2, cudaMemcpyHostToDevice));
  TPFUSE_CUDA_CHECK(cudaMemcpy(scale_.get(), &kStaticScale, sizeof(float), cudaMemcpyHostToDevice));
  TPFUSE_CUDA_CHECK(cudaMemset(sync_.get(), 0, kSyncBytes));
  TPFUSE_CUDA_CHECK(cudaDeviceSynchronize());

  for (int i = 0; i < std::max(plan_.replays, 1); ++i) {
    TPFUSE_ASSIGN_OR_RETURN(cuda::Event start, cuda::Event::Create());
    TPFUSE_ASSIGN_OR_RETURN(cuda::Event stop, cuda::Event::Create());
    starts_.push_back(std::move(start));
    stops_.push_back(std::move(stop));
  }

  if (reporting()) {
    report_.plan = plan_;
    TPFUSE_ASSIGN_OR_RETURN(report_.machine, QueryMachine(rank_));
    report_.table_source = table_.source;
    report_.workspace = workspace;
    if (workspace.oneshot_capped) {
      report_.warnings.push_back(
          StrCat("the one-shot workspace is capped at ", workspace.oneshot_max_tokens,
                 " tokens of H=", workspace.max_hidden, " (", kMaxLamportBytes >> 30,
                 " GiB of Lamport buffers); one-shot is skipped above"));
    }
    if (!comm_->has_peer_memory()) {
      report_.warnings.push_back(StrCat("no peer memory (", comm_->why_no_peer_memory(),
                                        "): only the nccl strategy and the baselines run"));
    }
  }
  return Barrier("setup");
}

// ---------------------------------------------------------------- synchronization

Status RankRunner::WaitStream(const std::string& what) {
  const Clock::time_point start = Clock::now();
  while (true) {
    const cudaError_t e = cudaStreamQuery(stream_.get());
    if (e == cudaSuccess) return Status::Ok();
    if (e != cudaErrorNotReady)
      return Status(StatusCode::kCudaError,
                    StrCat("while waiting for ", what, ": ", cudaGetErrorString(e)));
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm_->nccl(), &async) == ncclSuccess && async != ncclSuccess &&
        async != ncclInProgress) {
      return Status(StatusCode::kNcclError, StrCat("NCCL failed while waiting for ", what, ": ",
                                                   ncclGetErrorString(async)));
    }
    if (std::chrono::duration<double>(Clock::now() - start).count() > kWaitSeconds) {
      return Status(StatusCode::kTimeout, StrCat("waited ", kWaitSeconds, " s for ", what,
                                                 " (another rank died or is stuck)"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

Status RankRunner::Barrier(const std::string& what) {
  TPFUSE_NCCL_CHECK(ncclAllReduce(sync_.get<char>() + kSyncBarrier,
                                  sync_.get<char>() + kSyncBarrier, 1, ncclInt32, ncclSum,
                                  comm_->nccl(), stream_.get()));
  return WaitStream("the barrier at " + what);
}

StatusOr<std::vector<double>> RankRunner::AllGather(double value) {
  char* base = sync_.get<char>();
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(base + kSyncSend, &value, sizeof(double),
                                    cudaMemcpyHostToDevice, stream_.get()));
  TPFUSE_NCCL_CHECK(ncclAllGather(base + kSyncSend, base + kSyncGather, 1, ncclFloat64,
                                  comm_->nccl(), stream_.get()));
  TPFUSE_RETURN_IF_ERROR(WaitStream("the gather of the medians"));
  std::vector<double> all(size_t(plan_.world_size));
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(all.data(), base + kSyncGather, all.size() * sizeof(double),
                                    cudaMemcpyDeviceToHost, stream_.get()));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  return all;
}

// ---------------------------------------------------------------- peer copy bandwidth

Status RankRunner::TimeCopies(const std::function<Status()>& enqueue, size_t bytes,
                              std::optional<double>* gbps, std::string* error) {
  Status local = Status::Ok();
  TPFUSE_RETURN_IF_ERROR(Barrier("the peer copy warm-up"));
  for (int i = 0; i < kPeerWarmupCopies && local.ok(); ++i) local = enqueue();
  TPFUSE_RETURN_IF_ERROR(WaitStream("the peer copy warm-up"));
  TPFUSE_RETURN_IF_ERROR(Barrier("the timed peer copies"));
  if (local.ok()) {
    TPFUSE_RETURN_IF_ERROR(starts_[0].Record(stream_.get()));
    for (int i = 0; i < kPeerTimedCopies && local.ok(); ++i) local = enqueue();
    TPFUSE_RETURN_IF_ERROR(stops_[0].Record(stream_.get()));
  }
  TPFUSE_RETURN_IF_ERROR(WaitStream("the timed peer copies"));
  // NOTE: no rank may go on to the fused op while a peer still writes into its workspace.
  TPFUSE_RETURN_IF_ERROR(Barrier("the end of the peer copies"));
  if (!local.ok()) {
    (void)cudaGetLastError();
    *error = local.message();
    return Status::Ok();
  }
  float ms = 0;
  TPFUSE_CUDA_CHECK(cudaEventElapsedTime(&ms, starts_[0].get(), stops_[0].get()));
  if (ms > 0) *gbps = double(bytes) * kPeerTimedCopies / (double(ms) * 1e-3) / 1e9;
  return Status::Ok();
}

Status RankRunner::MeasurePeerBandwidth() {
  PeerBandwidth& result = report_.peer;
  if (!comm_->has_peer_memory()) {
    result.why_not = StrCat("no peer memory: ", comm_->why_no_peer_memory());
    return Status::Ok();
  }
  // Into the next rank's two-shot reduce-scatter landing area, before any fused op runs; the
  // copies overwrite its sentinels, so the workspace is reset afterwards (a collective call).
  const cuda::WorkspaceLayout& layout = comm_->layout();
  const int peer = (rank_ + 1) % plan_.world_size;
  const size_t bytes = std::min(cuda::kLamportBuffers * layout.rs_buffer_bytes, kMaxPeerCopyBytes) / 4096 * 4096;
  char* dst = comm_->peer_bases()[size_t(peer)] + layout.rs_offset;
  const char* src = arena_.get<char>();
  TPFUSE_CUDA_CHECK(cudaMemsetAsync(arena_.get(), 0x3c, bytes, stream_.get()));
  result.measured = true;
  result.bytes = bytes;
  result.copies = kPeerTimedCopies;

  TPFUSE_RETURN_IF_ERROR(TimeCopies(
      [&]() -> Status {
        TPFUSE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_.get()));
        return Status::Ok();
      },
      bytes, &result.copy_engine_gbps, &result.copy_engine_error));

  CopyKernel kernel;
  const Status loaded = kernel.Load();
  TPFUSE_RETURN_IF_ERROR(TimeCopies(
      [&]() -> Status {
        if (!loaded.ok()) return loaded.WithContext("loading the copy kernel");
        return kernel.Launch(dst, src, bytes, sm_count_, stream_.get());
      },
      bytes, &result.sm_copy_gbps, &result.sm_copy_error));
  return comm_->ResetWorkspace(stream_.get()).WithContext("resetting the workspace after the peer copies");
}

// ---------------------------------------------------------------- shapes and paths

StatusOr<ShapeResult> RankRunner::RunShape(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  Shape shape;
  shape.spec = spec;
  shape.tokens = tokens;
  shape.layout = SetLayout::Make(spec, tokens);
  shape.rotation = ChooseRotation(shape.layout.bytes, size_t(l2_bytes_), plan_.ops_per_graph);
  TPFUSE_RETURN_IF_ERROR(FillInputs(shape).WithContext(shape.Name()));

  ShapeResult result;
  result.hidden = spec.hidden;
  result.quant = spec.quant;
  result.emit = spec.emit;
  result.tokens = tokens;
  result.set_bytes = shape.layout.bytes;
  result.rotation = shape.rotation;
  for (Path path : kAllPaths) {
    if (plan_.mode == Mode::kTune && !IsFusedPath(path)) {
      result.at(path).skipped = "tune measures the fused op's strategies only";
      continue;
    }
    StatusOr<PathResult> measured = MeasurePath(path, shape);
    if (!measured.ok())
      return measured.status().WithContext(StrCat(shape.Name(), " ", PathName(path)));
    result.at(path) = std::move(measured).value();
    const PathResult& r = result.at(path);
    for (size_t other = 1; r.measured && other < r.rank_medians_us.size(); ++other) {
      const double spread = (r.rank_medians_us[other] - r.stats.median_us) / r.stats.median_us;
      if (std::fabs(spread) > kRankSpreadWarning) {
        char text[200];
        std::snprintf(text, sizeof(text),
                      "%s: rank %zu's median %.2f us is %+.0f%% off rank 0's %.2f us",
                      std::string(PathName(path)).c_str(), other, r.rank_medians_us[other],
                      spread * 100, r.stats.median_us);
        result.warnings.push_back(text);
      }
    }
  }

  if (plan_.mode == Mode::kBench) {
    // What the runtime runs: the table's choice, demoted when the communicator cannot run it.
    result.dispatched_choice = table_.Choose(plan_.world_size, spec.hidden, spec.quant, tokens);
    result.dispatched = PathOf(runtime::ChooseStrategy(table_, *comm_, spec, tokens));
    const Path chosen = StrategyPath(result.dispatched_choice);
    if (result.dispatched != chosen) {
      result.dispatch_note = StrCat("the table picks ", StrategyName(result.dispatched_choice),
                                    ", which cannot run here (", result.at(chosen).skipped,
                                    "); the runtime runs ", PathName(result.dispatched));
    }
    if (!result.at(result.dispatched).measured) {
      return Internal(shape.Name(), ": the runtime would run ", PathName(result.dispatched),
                      ", which could not be measured: ", result.at(result.dispatched).skipped);
    }
  }
  return result;
}

Status RankRunner::FillInputs(const Shape& shape) {
  // x and residual of every set: random bf16 copied out of the source at offsets that differ
  // per set and field.
  const size_t act = size_t(shape.tokens) * size_t(shape.spec.hidden) * 2;
  const size_t chunk_max = kRandomSourceBytes / 2;
  uint64_t state = plan_.seed ^ (uint64_t(shape.tokens) << 32) ^ uint64_t(shape.spec.hidden);
  for (int set = 0; set < shape.rotation.sets; ++set) {
    char* base = SetBase(shape, set);
    for (size_t field : {shape.layout.x, shape.layout.residual}) {
      for (size_t done = 0; done < act;) {
        const size_t n = std::min(chunk_max, act - done);
        const size_t offset = (SplitMix64(state) % (kRandomSourceBytes - n + 1)) / 256 * 256;
        TPFUSE_CUDA_CHECK(cudaMemcpyAsync(base + field + done, random_.get<char>() + offset, n,
                                          cudaMemcpyDeviceToDevice, stream_.get()));
        done += n;
      }
    }
  }
  return WaitStream("the input fill");
}

Status RankRunner::EnqueueBaselineA(const Shape& shape, char* set) {
  const AllreduceRmsnormSpec& spec = shape.spec;
  const SetLayout& l = shape.layout;
  TPFUSE_NCCL_CHECK(ncclAllReduce(set + l.x, ar_scratch_.get(), size_t(shape.tokens * spec.hidden),
                                  ncclBfloat16, ncclSum, comm_->nccl(), stream_.get()));
  return EnqueueUnfusedEpilogue(spec, shape.tokens, ar_scratch_.get(), set, l, weight_.get(),
                                scale_.get<float>(), stream_.get());
}

Status RankRunner::EnqueueOp(Path path, const Shape& shape, int set_index) {
  char* set = SetBase(shape, set_index);
  const AllreduceRmsnormSpec& spec = shape.spec;
  const SetLayout& l = shape.layout;
  switch (path) {
    case Path::kOneShot:
    case Path::kTwoShot:
    case Path::kNccl: {
      const cuda::FusedBuffers b =
          FusedBuffersOfSet(spec, set, l, weight_.get(), scale_.get<float>());
      cuda::LaunchOptions options;
      options.pdl = plan_.pdl;
      // The nccl column is baseline B, ncclAllReduce + one fused epilogue kernel, at every N
      // (the fused op's own nccl strategy gathers the partials above N = 2 instead).
      options.nccl_reduction = cuda::NcclReduction::kAllReduce;
      return cuda::LaunchAllreduceRmsnorm(*comm_, spec, shape.tokens, b, ToStrategy(path),
                                          stream_.get(), options);
    }
    case Path::kBaselineA: return EnqueueBaselineA(shape, set);
    case Path::kNcclAllReduce:
      TPFUSE_NCCL_CHECK(ncclAllReduce(set + l.x, ar_scratch_.get(),
                                      size_t(shape.tokens * spec.hidden), ncclBfloat16, ncclSum,
                                      comm_->nccl(), stream_.get()));
      return Status::Ok();
  }
  return Internal("unhandled path");
}

Status RankRunner::FlushL2() {
  TPFUSE_CUDA_CHECK(
      cudaMemsetAsync(flush_.get(), int(++flush_count_ & 0xff), flush_.size(), stream_.get()));
  return Status::Ok();
}

StatusOr<std::vector<double>> RankRunner::TimeReplays(const GraphExec& graph, const Shape& shape) {
  const int replays = plan_.replays;
  for (int i = 0; i < replays; ++i) {
    if (shape.rotation.flush_l2) TPFUSE_RETURN_IF_ERROR(FlushL2());
    TPFUSE_RETURN_IF_ERROR(starts_[size_t(i)].Record(stream_.get()));
    TPFUSE_CUDA_CHECK(cudaGraphLaunch(graph.get(), stream_.get()));
    TPFUSE_RETURN_IF_ERROR(stops_[size_t(i)].Record(stream_.get()));
  }
  TPFUSE_RETURN_IF_ERROR(WaitStream("the timed replays"));
  std::vector<double> per_op_us;
  per_op_us.reserve(size_t(replays));
  for (int i = 0; i < replays; ++i) {
    float ms = 0;
    TPFUSE_CUDA_CHECK(cudaEventElapsedTime(&ms, starts_[size_t(i)].get(), stops_[size_t(i)].get()));
    per_op_us.push_back(double(ms) * 1000.0 / plan_.ops_per_graph);
  }
  return per_op_us;
}

StatusOr<PathResult> RankRunner::MeasurePath(Path path, const Shape& shape) {
  PathResult result;
  if (IsFusedPath(path)) {
    // The same answer on every rank (same options, same shape): all skip together.
    const Status can = cuda::CanRun(*comm_, shape.spec, shape.tokens, ToStrategy(path));
    if (!can.ok()) {
      result.skipped = can.message();
      return result;
    }
  }
  const std::string name(PathName(path));
  auto enqueue = [&](int op) { return EnqueueOp(path, shape, op % shape.rotation.sets); };

  // One op outside the graph first: it validates the launch and warms the launcher's caches.
  TPFUSE_RETURN_IF_ERROR(Barrier("the start of " + name));
  TPFUSE_RETURN_IF_ERROR(enqueue(0));
  TPFUSE_RETURN_IF_ERROR(WaitStream("the first " + name + " op"));
  TPFUSE_ASSIGN_OR_RETURN(GraphExec graph,
                          CaptureGraph(stream_.get(), plan_.ops_per_graph, enqueue));

  TPFUSE_RETURN_IF_ERROR(Barrier("the warm-up of " + name));
  for (int i = 0; i < plan_.warmup; ++i) {
    if (shape.rotation.flush_l2) TPFUSE_RETURN_IF_ERROR(FlushL2());
    TPFUSE_CUDA_CHECK(cudaGraphLaunch(graph.get(), stream_.get()));
  }
  TPFUSE_RETURN_IF_ERROR(WaitStream("the warm-up replays"));
  // NOTE: the ranks start the timed loop together; a rank that started late would show up as
  // time spent waiting in the others' first replays.
  TPFUSE_RETURN_IF_ERROR(Barrier("the timed loop of " + name));
  TPFUSE_ASSIGN_OR_RETURN(std::vector<double> per_op_us, TimeReplays(graph, shape));
  // A fused kernel's peer timeout or an asynchronous NCCL error surfaces here.
  TPFUSE_RETURN_IF_ERROR(comm_->CheckHealth(stream_.get()));

  result.measured = true;
  result.stats = Summarize(std::move(per_op_us));
  TPFUSE_ASSIGN_OR_RETURN(result.rank_medians_us, AllGather(result.stats.median_us));
  return result;
}

}  // namespace

bool HaveCuda() { return true; }

StatusOr<int> CountGpus() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorNoDevice) return 0;
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Status(StatusCode::kCudaError, StrCat("cudaGetDeviceCount: ", cudaGetErrorString(e)));
  }
  return count;
}

int RunRank(const Plan& plan, int rank) {
  auto runner = std::make_unique<RankRunner>(plan, rank);
  const Status status = runner->Run();
  if (status.ok()) {
    runner.reset();
    return 0;
  }
  std::fflush(stdout);
  std::fprintf(stderr, "tpfuse %s: error: rank %d: %s\n", std::string(ModeName(plan.mode)).c_str(),
               rank, status.ToString().c_str());
  std::fflush(stderr);
  if (runner->has_communicator()) std::_Exit(1);
  return 1;
}

#endif  // TPFUSE_HAVE_CUDA

}  // namespace tpfuse::bench
