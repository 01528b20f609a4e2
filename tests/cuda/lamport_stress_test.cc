// Stress of the peer-memory strategies' buffer reuse (comm/lamport.h) on 2 GPUs: thousands of
// fused calls back to back, on one stream without host synchronization and inside a CUDA graph,
// with T on both sides of the residency boundaries, every H, quant mode and strategy mixed, so
// that consecutive calls launch different instantiations and grids (mixed calls of a serving loop).
//
// Every call writes its own outputs, kept until the end and compared bitwise, on the device,
// with its case's reference: the same case run on the nccl path (no Lamport buffer), itself
// checked element by element against the CPU oracle with Contract 3's tolerance. Contract 3.5
// makes every strategy's result bitwise equal to that reference, so one wrong element of any
// call is an exact mismatch. Consecutive calls never share a case, so a value left over from
// the previous call differs from the expected one.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "backends/cuda/allreduce_rmsnorm.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "cuda/stress_compare_kernels.h"
#include "support/cuda_harness.h"
#include "support/fused_check.h"

namespace tpfuse::testing {
namespace {

using cuda::Communicator;
using cuda::DeviceBuffer;

constexpr int kWorld = 2;
// Token counts around the co-resident grids of the persistent kernels on an H200 (132 SMs:
// 264 = 2 x 132) and up to the workspace limit; hidden sizes of different row layouts.
const int64_t kStressTokens[] = {1, 7, 263, 264, 265, 300, 511, 1000, 2048};
const int64_t kStressHidden[] = {2880, 4096, 7168};
const QuantMode kStressQuants[] = {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token,
                                   QuantMode::kFp8Group};
const Strategy kStressStrategies[] = {Strategy::kOneShot, Strategy::kTwoShot, Strategy::kNccl};
constexpr int kCases = 36;  // 12 (H, quant) pairs x 3 token counts: every T 4 times, every H all 9 T

cuda::CommOptions StressCommOptions() {
  cuda::CommOptions o;
  o.max_tokens = 2048;
  o.max_hidden = 7168;
  o.oneshot_max_tokens = 2048;
  o.timeout_seconds = 60.0;  // a bound on a hang, not on speed
  return o;
}

size_t AlignUp16(size_t n) { return (n + 15) / 16 * 16; }

template <class Fn>
void ParallelFor(int n, const Fn& fn) {
  const int threads = std::max(1, std::min(n, int(std::thread::hardware_concurrency())));
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
    });
  }
  for (std::thread& t : pool) t.join();
}

// ---------------------------------------------------------------- cases and calls

// One shape with its inputs and oracle: calls are drawn from these.
struct StressCase {
  AllreduceRmsnormSpec spec;
  int64_t tokens = 0;
  FusedInputs inputs;
  std::vector<HostTensor> oracle;
  std::vector<std::string> names;  // of the outputs, in result order
  std::vector<size_t> offsets;     // of each output in a call's region (16-byte aligned)
  std::vector<size_t> sizes;       // bytes of each output
  size_t region_bytes = 0;         // a multiple of 16; padding stays 0xFF
};

std::string Describe(const StressCase& c) { return StrCat(c.spec.ToString(), " T=", c.tokens); }

// Case `index`'s spec: emit sets, residual or not, weight dtype and scale layouts vary with it.
AllreduceRmsnormSpec CaseSpec(int index, int64_t hidden, QuantMode quant) {
  AllreduceRmsnormSpec s;
  s.hidden = hidden;
  s.eps = 1e-6f;
  s.quant = quant;
  s.group_size = hidden % 128 == 0 ? 128 : 64;  // 2880 = 45 x 64
  s.weight_dtype = index % 4 == 2 ? DType::kF32 : DType::kBF16;
  s.has_residual = index % 5 != 4;
  s.emit.allreduce = index % 3 == 0;
  s.emit.norm = quant == QuantMode::kNone || index % 4 != 1;
  s.emit.residual = s.has_residual && index % 7 != 3;
  s.emit.quant = quant != QuantMode::kNone;
  if (IsDynamicQuant(quant)) {
    s.scale_layout = index % 2 ? ScaleLayout::kCol : ScaleLayout::kRow;
    s.scale_fmt = (index / 2) % 2 ? ScaleFormat::kUe8m0 : ScaleFormat::kF32;
  }
  return s;
}

StressCase MakeCase(int index) {
  const int pair = index / 3;  // (H, quant) pair 0..11
  StressCase c;
  c.tokens = kStressTokens[(3 * pair + index % 3) % 9];
  c.spec = CaseSpec(index, kStressHidden[pair / 4], kStressQuants[pair % 4]);
  c.inputs = MakeFusedInputs(c.spec, c.tokens, kWorld, 9000 + uint64_t(index));
  c.oracle = OracleOutputs(c.spec, c.inputs);
  c.names = FusedOutputNames(c.spec);
  for (const HostTensor& t : FusedOutputShapes(c.spec, c.tokens)) {
    c.offsets.push_back(c.region_bytes);
    c.sizes.push_back(t.nbytes());
    c.region_bytes += AlignUp16(std::max<size_t>(t.nbytes(), 16));
  }
  return c;
}

// Built once per process (host memory only), in parallel: inputs and oracle of every case.
const std::vector<StressCase>& Cases() {
  static const std::vector<StressCase> cases = [] {
    std::vector<StressCase> out(kCases);
    ParallelFor(kCases, [&](int i) { out[size_t(i)] = MakeCase(i); });
    return out;
  }();
  return cases;
}

struct StressCall {
  int case_index;
  Strategy strategy;
};

// `count` calls, the same on every rank; a call never has the case of the one before it.
std::vector<StressCall> MakeCalls(int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<StressCall> calls;
  int previous = -1;
  for (int i = 0; i < count; ++i) {
    int c = int(rng() % kCases);
    while (c == previous) c = int(rng() % kCases);
    calls.push_back({c, kStressStrategies[rng() % 3]});
    previous = c;
  }
  return calls;
}

// Where call i's first differing word lies: the output, the byte in it, its row.
std::string DescribeWord(const StressCase& c, unsigned long long word) {
  const size_t byte = size_t(word) * 16;
  for (size_t i = 0; i < c.offsets.size(); ++i) {
    if (byte < c.offsets[i] || byte >= c.offsets[i] + AlignUp16(std::max<size_t>(c.sizes[i], 16))) continue;
    const size_t in_output = byte - c.offsets[i];
    if (in_output >= c.sizes[i]) return StrCat("padding after '", c.names[i], "' (written out of bounds)");
    const size_t row_bytes = c.sizes[i] / size_t(std::max<int64_t>(c.tokens, 1));
    return StrCat("'", c.names[i], "' byte ", in_output, " (row ", in_output / std::max<size_t>(row_bytes, 1), ")");
  }
  return StrCat("byte ", byte);
}

// ---------------------------------------------------------------- one rank's device state

struct RankInputs {
  DeviceBuffer x, residual, weight, scale;
};

struct RankSetup {
  std::vector<RankInputs> inputs;        // by case
  DeviceBuffer expected;                 // every case's reference region
  std::vector<size_t> expected_offsets;  // by case
};

// NOTE: every copy and memset goes on the rank's (non-blocking) stream, ordered with the calls.
Status Upload(DeviceBuffer& dst, const HostTensor& src, cudaStream_t stream) {
  TPFUSE_ASSIGN_OR_RETURN(dst, DeviceBuffer::Allocate(std::max<size_t>(src.nbytes(), 16)));
  if (src.nbytes() > 0)
    TPFUSE_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.data(), src.nbytes(), cudaMemcpyHostToDevice, stream));
  return Status::Ok();
}

// The call's buffers with its outputs in the region at `region`.
cuda::FusedBuffers BuffersFor(const StressCase& c, const RankInputs& in, char* region) {
  cuda::FusedBuffers b;
  b.x = in.x.get();
  b.residual = c.inputs.has_residual ? in.residual.get() : nullptr;
  b.weight = in.weight.get();
  b.scale = c.inputs.has_scale ? in.scale.get<float>() : nullptr;
  size_t i = 0;
  if (c.spec.emit.allreduce) b.allreduce_out = region + c.offsets[i++];
  if (c.spec.emit.norm) b.norm_out = region + c.offsets[i++];
  if (c.spec.emit.residual) b.residual_out = region + c.offsets[i++];
  if (c.spec.emit.quant) {
    b.quant_out = region + c.offsets[i++];
    if (IsDynamicQuant(c.spec.quant)) b.scale_out = reinterpret_cast<float*>(region + c.offsets[i++]);
  }
  return b;
}

// Uploads this rank's inputs of every case and runs every case once on the nccl path into the
// expected arena; `references` gets those outputs (checked against the oracle by the caller).
Status SetUpRank(int rank, Communicator& comm, cudaStream_t stream, const std::vector<StressCase>& cases,
                 RankSetup& setup, std::vector<std::vector<HostTensor>>& references) {
  setup.inputs.resize(cases.size());
  size_t total = 0;
  for (size_t c = 0; c < cases.size(); ++c) {
    const FusedInputs& in = cases[c].inputs;
    TPFUSE_RETURN_IF_ERROR(Upload(setup.inputs[c].x, in.partials[size_t(rank)], stream));
    if (in.has_residual) TPFUSE_RETURN_IF_ERROR(Upload(setup.inputs[c].residual, in.residual, stream));
    TPFUSE_RETURN_IF_ERROR(Upload(setup.inputs[c].weight, in.weight, stream));
    if (in.has_scale) TPFUSE_RETURN_IF_ERROR(Upload(setup.inputs[c].scale, in.scale, stream));
    setup.expected_offsets.push_back(total);
    total += cases[c].region_bytes;
  }
  TPFUSE_ASSIGN_OR_RETURN(setup.expected, DeviceBuffer::Allocate(total));
  TPFUSE_CUDA_CHECK(cudaMemsetAsync(setup.expected.get(), 0xFF, total, stream));
  for (size_t c = 0; c < cases.size(); ++c) {
    char* region = setup.expected.get<char>() + setup.expected_offsets[c];
    TPFUSE_RETURN_IF_ERROR(cuda::LaunchAllreduceRmsnorm(comm, cases[c].spec, cases[c].tokens,
                                                        BuffersFor(cases[c], setup.inputs[c], region),
                                                        Strategy::kNccl, stream)
                               .WithContext(Describe(cases[c])));
  }
  TPFUSE_RETURN_IF_ERROR(comm.CheckHealth(stream));
  references.assign(cases.size(), {});
  for (size_t c = 0; c < cases.size(); ++c) {
    references[c] = FusedOutputShapes(cases[c].spec, cases[c].tokens);
    const char* region = setup.expected.get<char>() + setup.expected_offsets[c];
    for (size_t i = 0; i < references[c].size(); ++i) {
      HostTensor& t = references[c][i];
      if (t.nbytes() > 0)
        TPFUSE_CUDA_CHECK(cudaMemcpyAsync(t.data(), region + cases[c].offsets[i], t.nbytes(), cudaMemcpyDeviceToHost, stream));
    }
  }
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return Status::Ok();
}

// Per call: differing 16-byte words (summed over graph replays) and the first one's index.
struct SequenceResult {
  std::vector<unsigned long long> mismatches, first;
};

// Launches every call of `calls` (graph: captured once, replayed `replays` times) with its own
// output region, then compares every region with its case's reference on the device.
Status RunSequence(Communicator& comm, cudaStream_t stream, const std::vector<StressCase>& cases,
                   const RankSetup& setup, const std::vector<StressCall>& calls, bool graph, int replays,
                   SequenceResult& result) {
  const size_t n = calls.size();
  std::vector<size_t> offsets(n);
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    offsets[i] = total;
    total += cases[size_t(calls[i].case_index)].region_bytes;
  }
  size_t free_bytes = 0, device_bytes = 0;
  TPFUSE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &device_bytes));
  if (total + (size_t{1} << 30) > free_bytes)
    return OutOfRange("the stress outputs need ", total >> 20, " MiB of device memory, ", free_bytes >> 20, " MiB free");
  TPFUSE_ASSIGN_OR_RETURN(DeviceBuffer arena, DeviceBuffer::Allocate(total));
  std::vector<CompareJob> jobs(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t c = size_t(calls[i].case_index);
    jobs[i] = {arena.get<char>() + offsets[i], setup.expected.get<char>() + setup.expected_offsets[c],
               cases[c].region_bytes / 16};
  }
  TPFUSE_ASSIGN_OR_RETURN(DeviceBuffer jobs_dev, DeviceBuffer::Allocate(n * sizeof(CompareJob)));
  TPFUSE_CUDA_CHECK(
      cudaMemcpyAsync(jobs_dev.get(), jobs.data(), n * sizeof(CompareJob), cudaMemcpyHostToDevice, stream));
  TPFUSE_ASSIGN_OR_RETURN(DeviceBuffer counts, DeviceBuffer::Allocate(2 * n * sizeof(unsigned long long)));
  auto* mismatches = counts.get<unsigned long long>();
  TPFUSE_CUDA_CHECK(cudaMemsetAsync(mismatches, 0, n * sizeof(unsigned long long), stream));
  TPFUSE_CUDA_CHECK(cudaMemsetAsync(mismatches + n, 0xFF, n * sizeof(unsigned long long), stream));

  auto launch = [&](size_t i) {
    const StressCase& c = cases[size_t(calls[i].case_index)];
    return cuda::LaunchAllreduceRmsnorm(
        comm, c.spec, c.tokens, BuffersFor(c, setup.inputs[size_t(calls[i].case_index)], arena.get<char>() + offsets[i]),
        calls[i].strategy, stream);
  };
  // Every call back to back: no host synchronization between them.
  auto launch_all = [&]() -> Status {
    for (size_t i = 0; i < n; ++i) {
      const Status s = launch(i);
      if (!s.ok()) return s.WithContext(StrCat("call ", i, " (", Describe(cases[size_t(calls[i].case_index)]), ")"));
    }
    return Status::Ok();
  };

  // Released after the last replay has completed (CheckHealth below synchronizes).
  std::unique_ptr<CUgraph_st, cudaError_t (*)(cudaGraph_t)> graph_owner(nullptr, cudaGraphDestroy);
  std::unique_ptr<CUgraphExec_st, cudaError_t (*)(cudaGraphExec_t)> exec_owner(nullptr, cudaGraphExecDestroy);
  if (!graph) {
    TPFUSE_CUDA_CHECK(cudaMemsetAsync(arena.get(), 0xFF, total, stream));
    TPFUSE_RETURN_IF_ERROR(HostBarrier(comm, stream));  // both ranks start together
    TPFUSE_RETURN_IF_ERROR(launch_all());
    LaunchCompareJobs(jobs_dev.get<CompareJob>(), int(n), mismatches, mismatches + n, stream);
    TPFUSE_CUDA_CHECK(cudaGetLastError());
  } else {
    // Every (case, strategy) of the sequence once outside the capture, so that nothing is
    // loaded or queried for the first time inside it.
    std::set<std::pair<int, int>> seen;
    for (size_t i = 0; i < n; ++i)
      if (seen.insert({calls[i].case_index, int(calls[i].strategy)}).second) TPFUSE_RETURN_IF_ERROR(launch(i));
    TPFUSE_RETURN_IF_ERROR(comm.CheckHealth(stream));

    cudaGraph_t captured = nullptr;
    TPFUSE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    // Poisoned again at every replay: a call that writes nothing fails even after a good replay.
    const cudaError_t memset = cudaMemsetAsync(arena.get(), 0xFF, total, stream);
    const Status launched = memset == cudaSuccess ? launch_all() : Status::Ok();
    LaunchCompareJobs(jobs_dev.get<CompareJob>(), int(n), mismatches, mismatches + n, stream);
    const cudaError_t ended = cudaStreamEndCapture(stream, &captured);
    graph_owner.reset(captured);
    TPFUSE_CUDA_CHECK(memset);
    TPFUSE_RETURN_IF_ERROR(launched);
    TPFUSE_CUDA_CHECK(ended);
    cudaGraphExec_t exec = nullptr;
    TPFUSE_CUDA_CHECK(cudaGraphInstantiate(&exec, captured, 0));
    exec_owner.reset(exec);
    TPFUSE_RETURN_IF_ERROR(HostBarrier(comm, stream));  // both ranks start together
    for (int r = 0; r < replays; ++r) TPFUSE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  }
  TPFUSE_RETURN_IF_ERROR(comm.CheckHealth(stream));
  result.mismatches.assign(n, 0);
  result.first.assign(n, 0);
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(result.mismatches.data(), mismatches, n * 8, cudaMemcpyDeviceToHost, stream));
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(result.first.data(), mismatches + n, n * 8, cudaMemcpyDeviceToHost, stream));
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return Status::Ok();
}

// ---------------------------------------------------------------- references

// The references of every rank against the oracle (every element, Contract 3's tolerance) and
// bitwise across ranks; checked once per process, later runs must reproduce them bit for bit.
std::string VerifyReferences(const std::vector<StressCase>& cases,
                             const std::vector<std::vector<std::vector<HostTensor>>>& references) {
  static std::mutex mutex;
  static std::vector<std::vector<HostTensor>> verified;
  std::lock_guard<std::mutex> lock(mutex);
  std::vector<std::string> reports(cases.size() * kWorld);
  if (verified.empty()) {
    ParallelFor(int(reports.size()), [&](int job) {
      const size_t c = size_t(job) / kWorld, r = size_t(job) % kWorld;
      std::string report = CompareFusedOutputs(cases[c].spec, cases[c].inputs, references[r][c], cases[c].oracle);
      if (r > 0) {
        const std::string diff = BitwiseDiff(references[r][c], references[0][c]);
        if (!diff.empty()) report += StrCat("differs from rank 0: ", diff, "\n");
      }
      if (!report.empty()) reports[size_t(job)] = StrCat(Describe(cases[c]), " rank ", r, ":\n", report);
    });
  } else {
    for (size_t c = 0; c < cases.size(); ++c)
      for (size_t r = 0; r < size_t(kWorld); ++r) {
        const std::string diff = BitwiseDiff(references[r][c], verified[c]);
        if (!diff.empty()) reports[c * kWorld + r] = StrCat(Describe(cases[c]), " rank ", r, ": ", diff, "\n");
      }
  }
  std::string all;
  for (const std::string& r : reports) all += r;
  if (all.empty() && verified.empty()) verified = references[0];
  return all;
}

// ---------------------------------------------------------------- the tests

class LamportStressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TPFUSE_REQUIRE_GPUS(kWorld);
    // Fresh communicators: a failure here may poison them, and no other test shares them.
    auto gpus = MultiGpu::Create(kWorld, StressCommOptions());
    ASSERT_TRUE(gpus.ok()) << gpus.status().ToString();
    gpus_ = std::move(gpus).value();
    ASSERT_TRUE(gpus_->comm(0).has_peer_memory()) << gpus_->comm(0).why_no_peer_memory();
  }

  void RunStress(int count, bool graph, int replays, uint64_t seed) {
    const std::vector<StressCase>& cases = Cases();
    const std::vector<StressCall> calls = MakeCalls(count, seed);
    // The sequence covers what it is meant to.
    std::set<int64_t> tokens, hidden;
    std::set<int> quants, strategies;
    for (const StressCall& call : calls) {
      const StressCase& c = cases[size_t(call.case_index)];
      tokens.insert(c.tokens);
      hidden.insert(c.spec.hidden);
      quants.insert(int(c.spec.quant));
      strategies.insert(int(call.strategy));
    }
    ASSERT_EQ(tokens.size(), std::size(kStressTokens));
    ASSERT_EQ(hidden.size(), std::size(kStressHidden));
    ASSERT_EQ(quants.size(), std::size(kStressQuants));
    ASSERT_EQ(strategies.size(), std::size(kStressStrategies));

    std::vector<std::vector<std::vector<HostTensor>>> references(kWorld);
    std::vector<SequenceResult> results(kWorld);
    const Status st = gpus_->RunAll([&](int rank, Communicator& comm, cudaStream_t stream) -> Status {
      RankSetup setup;
      TPFUSE_RETURN_IF_ERROR(SetUpRank(rank, comm, stream, cases, setup, references[size_t(rank)]));
      return RunSequence(comm, stream, cases, setup, calls, graph, replays, results[size_t(rank)]);
    });
    ASSERT_TRUE(st.ok()) << st.ToString();
    const std::string refs = VerifyReferences(cases, references);
    ASSERT_EQ(refs, "") << "the references (nccl path) against the oracle:\n" << refs;

    int failing = 0;
    std::string report;
    for (int rank = 0; rank < kWorld; ++rank) {
      const SequenceResult& r = results[size_t(rank)];
      ASSERT_EQ(r.mismatches.size(), calls.size());
      for (size_t i = 0; i < calls.size(); ++i) {
        if (r.mismatches[i] == 0) continue;
        if (++failing > 10) continue;
        const StressCase& c = cases[size_t(calls[i].case_index)];
        report += StrCat("rank ", rank, " call ", i, " (", Describe(c), ", ", StrategyName(calls[i].strategy), ")");
        if (i > 0) {
          report += StrCat(" after ", Describe(cases[size_t(calls[i - 1].case_index)]), ", ",
                           StrategyName(calls[i - 1].strategy));
        }
        report += StrCat(": ", r.mismatches[i], " differing 16-byte words, the first in ", DescribeWord(c, r.first[i]), "\n");
      }
    }
    EXPECT_EQ(failing, 0) << failing << " calls differ from their reference (first 10):\n" << report;
  }

  std::unique_ptr<MultiGpu> gpus_;
};

TEST_F(LamportStressTest, MixedCallsBackToBackOnOneStream) {
  RunStress(/*count=*/2000, /*graph=*/false, /*replays=*/1, /*seed=*/81);
}

TEST_F(LamportStressTest, MixedCallsInACudaGraphReplayedBackToBack) {
  RunStress(/*count=*/1000, /*graph=*/true, /*replays=*/3, /*seed=*/82);
}

}  // namespace
}  // namespace tpfuse::testing
