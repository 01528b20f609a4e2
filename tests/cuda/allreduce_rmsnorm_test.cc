// The fused op on GPUs against the CPU oracle (DESIGN.md Contract 3): every strategy, every
// variant, the shared shape list, poisoned outputs, fresh random inputs; bitwise equality across
// ranks and strategies; row independence of T; CUDA-graph replays; bounded waits; validation.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <unistd.h>

#include "backends/cuda/allreduce_rmsnorm.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "common/tolerance.h"
#include "cuda/graph_replay_kernels.h"
#include "support/cuda_harness.h"
#include "support/fused_check.h"
#include "support/shapes.h"

namespace tpfuse::testing {
namespace {

using cuda::Communicator;

// The world size of the fused-op tests: 2, or $TPFUSE_TEST_WORLD_SIZE (4 or 8 on larger nodes).
int WorldSize() {
  static const int world = [] {
    const char* env = std::getenv("TPFUSE_TEST_WORLD_SIZE");
    const int n = env ? std::atoi(env) : 2;
    return n >= 2 && n <= 8 ? n : 2;
  }();
  return world;
}
const int kWorld = WorldSize();
// The cached communicators' sizing: every shape of the shared list fits every strategy.
cuda::CommOptions TestCommOptions() {
  cuda::CommOptions o;
  o.max_tokens = 2048;
  o.max_hidden = 7168;
  o.oneshot_max_tokens = 2048;
  // A bound on a hang, not on speed: a rank thread the host is slow to schedule must not turn
  // into a peer timeout.
  o.timeout_seconds = 60.0;
  return o;
}
constexpr int64_t kMaxTestTokens = 2048;  // "max" of the shape list: the workspace limit

AllreduceRmsnormSpec MakeSpec(int64_t hidden, QuantMode quant, bool residual = true) {
  AllreduceRmsnormSpec s;
  s.hidden = hidden;
  s.has_residual = residual;
  s.eps = 1e-6f;
  s.quant = quant;
  s.group_size = 128;
  s.emit.norm = true;
  s.emit.residual = residual;
  s.emit.quant = quant != QuantMode::kNone;
  return s;
}

// Device copies of one rank's inputs and outputs for one call.
struct RankCall {
  cuda::DeviceBuffer x, x2, residual, weight, bias, scale;
  std::vector<cuda::DeviceBuffer> outputs;
  std::vector<HostTensor> host_outputs;  // shapes to download into
  cuda::FusedBuffers buffers;
};

Status Upload(cuda::DeviceBuffer& dst, const HostTensor& src, cudaStream_t stream) {
  TPFUSE_ASSIGN_OR_RETURN(dst, cuda::DeviceBuffer::Allocate(src.nbytes()));
  if (src.nbytes() > 0)
    TPFUSE_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.data(), src.nbytes(), cudaMemcpyHostToDevice, stream));
  return Status::Ok();
}

// Allocates and uploads rank `rank`'s inputs, allocates outputs poisoned with 0xFF (NaN in every
// output dtype, so an unwritten element fails the comparison).
Status PrepareRank(const AllreduceRmsnormSpec& spec, const FusedInputs& in, int64_t tokens, int rank,
                   cudaStream_t stream, RankCall& call) {
  TPFUSE_RETURN_IF_ERROR(Upload(call.x, in.partials[size_t(rank)], stream));
  if (!in.partials2.empty()) TPFUSE_RETURN_IF_ERROR(Upload(call.x2, in.partials2[size_t(rank)], stream));
  if (in.has_residual) TPFUSE_RETURN_IF_ERROR(Upload(call.residual, in.residual, stream));
  TPFUSE_RETURN_IF_ERROR(Upload(call.weight, in.weight, stream));
  if (in.has_bias) TPFUSE_RETURN_IF_ERROR(Upload(call.bias, in.bias, stream));
  if (in.has_scale) TPFUSE_RETURN_IF_ERROR(Upload(call.scale, in.scale, stream));
  call.host_outputs = FusedOutputShapes(spec, tokens);
  call.outputs.clear();
  for (const HostTensor& t : call.host_outputs) {
    TPFUSE_ASSIGN_OR_RETURN(cuda::DeviceBuffer b, cuda::DeviceBuffer::Allocate(std::max<size_t>(t.nbytes(), 16)));
    TPFUSE_CUDA_CHECK(cudaMemsetAsync(b.get(), 0xFF, b.size(), stream));
    call.outputs.push_back(std::move(b));
  }
  std::vector<void*> outputs;
  for (cuda::DeviceBuffer& out : call.outputs) outputs.push_back(out.get());
  call.buffers = FusedBuffersFor(spec, call.x.get(), in.has_residual ? call.residual.get() : nullptr,
                                 call.weight.get(), in.has_scale ? call.scale.get<float>() : nullptr,
                                 outputs);
  if (!in.partials2.empty()) call.buffers.x2 = call.x2.get();
  if (in.has_bias) call.buffers.bias = call.bias.get();
  return Status::Ok();
}

Status Download(RankCall& call, cudaStream_t stream) {
  for (size_t i = 0; i < call.outputs.size(); ++i) {
    HostTensor& t = call.host_outputs[i];
    if (t.nbytes() > 0)
      TPFUSE_CUDA_CHECK(cudaMemcpyAsync(t.data(), call.outputs[i].get(), t.nbytes(), cudaMemcpyDeviceToHost, stream));
  }
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return Status::Ok();
}

// Runs the fused op on every rank of `gpus` with `strategy`; outputs[rank] are the results.
Status RunFused(MultiGpu& gpus, const AllreduceRmsnormSpec& spec, const FusedInputs& in, int64_t tokens,
                Strategy strategy, std::vector<std::vector<HostTensor>>& outputs,
                cuda::LaunchOptions options = {}) {
  outputs.assign(size_t(gpus.world_size()), {});
  return gpus.RunAll([&](int rank, Communicator& comm, cudaStream_t stream) -> Status {
    RankCall call;
    TPFUSE_RETURN_IF_ERROR(PrepareRank(spec, in, tokens, rank, stream, call));
    TPFUSE_RETURN_IF_ERROR(cuda::LaunchAllreduceRmsnorm(comm, spec, tokens, call.buffers, strategy, stream, options));
    TPFUSE_RETURN_IF_ERROR(comm.CheckHealth(stream));
    TPFUSE_RETURN_IF_ERROR(Download(call, stream));
    outputs[size_t(rank)] = std::move(call.host_outputs);
    return Status::Ok();
  });
}

// Every rank's outputs against the oracle, and every rank bitwise equal to rank 0.
void ExpectMatchesOracle(const AllreduceRmsnormSpec& spec, const FusedInputs& in,
                         const std::vector<std::vector<HostTensor>>& outputs,
                         const std::vector<HostTensor>& ref, const std::string& what) {
  for (size_t r = 0; r < outputs.size(); ++r) {
    const std::string report = CompareFusedOutputs(spec, in, outputs[r], ref);
    EXPECT_TRUE(report.empty()) << what << " rank " << r << ":\n" << report;
    if (r > 0) {
      const std::string diff = BitwiseDiff(outputs[r], outputs[0]);
      EXPECT_TRUE(diff.empty()) << what << ": rank " << r << " differs from rank 0: " << diff;
    }
  }
}

std::string Describe(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  return StrCat(spec.ToString(), " T=", tokens);
}

class FusedOpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TPFUSE_REQUIRE_GPUS(kWorld);
    auto gpus = MultiGpu::Cached(kWorld, TestCommOptions());
    ASSERT_TRUE(gpus.ok()) << gpus.status().ToString();
    gpus_ = *gpus;
    ASSERT_TRUE(gpus_->comm(0).has_peer_memory()) << gpus_->comm(0).why_no_peer_memory();
  }

  // A spec only the nccl strategy runs: nccl against the oracle on fresh inputs, and one-shot and
  // two-shot refusing it with `refusal` in their reason.
  void ExpectNcclOnly(const AllreduceRmsnormSpec& spec, int64_t tokens, uint64_t seed, const std::string& refusal) {
    const FusedInputs in = MakeFusedInputs(spec, tokens, kWorld, seed);
    std::vector<std::vector<HostTensor>> out;
    const std::string what = Describe(spec, tokens);
    const Status st = RunFused(*gpus_, spec, in, tokens, Strategy::kNccl, out);
    ASSERT_TRUE(st.ok()) << what << ": " << st.ToString();
    ExpectMatchesOracle(spec, in, out, OracleOutputs(spec, in), what);
    for (Strategy strategy : {Strategy::kOneShot, Strategy::kTwoShot}) {
      const Status refused = cuda::CanRun(gpus_->comm(0), spec, tokens, strategy);
      EXPECT_NE(refused.message().find(refusal), std::string::npos)
          << what << " " << StrategyName(strategy) << ": " << refused.ToString();
    }
  }

  MultiGpu* gpus_ = nullptr;
};

// ---------------------------------------------------------------- the shape sweep

class FusedOpShapes : public FusedOpTest, public ::testing::WithParamInterface<QuantMode> {};

TEST_P(FusedOpShapes, EveryStrategyMatchesOracleAndEachOther) {
  std::vector<int64_t> tokens_list = kTokenCounts;
  tokens_list.push_back(kMaxTestTokens);
  uint64_t seed = 1000 + uint64_t(GetParam());
  for (int64_t hidden : kHiddenSizes) {
    for (int64_t tokens : tokens_list) {
      if (tokens == kMaxTestTokens && hidden > 4096) continue;  // keeps the CPU oracle quick
      AllreduceRmsnormSpec spec = MakeSpec(hidden, GetParam());
      if (hidden % spec.group_size != 0) spec.group_size = 64;  // 2880 = 45 x 64
      const FusedInputs in = MakeFusedInputs(spec, tokens, kWorld, ++seed);
      const std::vector<HostTensor> ref = OracleOutputs(spec, in);
      ASSERT_FALSE(ref.empty());
      std::vector<std::vector<HostTensor>> results[3];
      for (int s = 0; s < 3; ++s) {
        const std::string what = StrCat(Describe(spec, tokens), " ", StrategyName(kAllStrategies[s]));
        const Status st = RunFused(*gpus_, spec, in, tokens, kAllStrategies[s], results[s]);
        ASSERT_TRUE(st.ok()) << what << ": " << st.ToString();
        ExpectMatchesOracle(spec, in, results[s], ref, what);
      }
      // Contract 3.5: one-shot and two-shot bitwise equal; the nccl strategy sums in the same
      // order (ncclAllReduce at N = 2, gathered partials above), so it is bitwise equal too.
      EXPECT_EQ(BitwiseDiff(results[0][0], results[1][0]), "") << Describe(spec, tokens) << " oneshot vs twoshot";
      EXPECT_EQ(BitwiseDiff(results[0][0], results[2][0]), "") << Describe(spec, tokens) << " oneshot vs nccl";
      if (HasFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllQuantModes, FusedOpShapes,
                         ::testing::Values(QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token,
                                           QuantMode::kFp8Group),
                         [](const auto& info) { return std::string(QuantModeName(info.param)); });

// ---------------------------------------------------------------- variants

TEST_F(FusedOpTest, EveryVariantMatchesOracle) {
  struct Shape {
    int64_t tokens, hidden;
  };
  const Shape shapes[] = {{19, 2880}, {128, 4096}};
  uint64_t seed = 77;
  int cases = 0;
  for (const Shape& shape : shapes) {
    for (DType act : {DType::kBF16, DType::kF16}) {
      for (DType w : {DType::kBF16, DType::kF16, DType::kF32}) {
        for (bool residual : {true, false}) {
          for (QuantMode quant : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group}) {
            for (int layout = 0; layout < (IsDynamicQuant(quant) ? 4 : 1); ++layout) {
              AllreduceRmsnormSpec spec = MakeSpec(shape.hidden, quant, residual);
              spec.act_dtype = act;
              spec.weight_dtype = w;
              spec.weight_bias = (cases % 3 == 0) ? 1.0f : 0.0f;
              spec.sum_scale = (cases % 7 == 0) ? 0.22f : 1.0f;  // Granite's multiplier
              spec.group_size = (cases % 5 == 0 && shape.hidden % 64 == 0) ? 64 : 128;
              if (shape.hidden % spec.group_size != 0) spec.group_size = 64;
              spec.scale_layout = (layout & 1) ? ScaleLayout::kCol : ScaleLayout::kRow;
              spec.scale_fmt = (layout & 2) ? ScaleFormat::kUe8m0 : ScaleFormat::kF32;
              // Emit combinations the compiler produces: the fan-out (norm + quant), quant only,
              // the all_reduce result too, norm only.
              const int emit_kind = cases % 4;
              spec.emit.allreduce = emit_kind == 2;
              spec.emit.norm = quant == QuantMode::kNone || emit_kind != 1;
              spec.emit.residual = residual && emit_kind != 3;
              ++cases;
              if (!spec.Validate().ok()) continue;
              const FusedInputs in = MakeFusedInputs(spec, shape.tokens, kWorld, ++seed);
              const std::vector<HostTensor> ref = OracleOutputs(spec, in);
              ASSERT_FALSE(ref.empty()) << spec.ToString();
              std::vector<std::vector<HostTensor>> one, two;
              for (Strategy strategy : {Strategy::kOneShot, Strategy::kTwoShot}) {
                auto& out = strategy == Strategy::kOneShot ? one : two;
                const std::string what = StrCat(Describe(spec, shape.tokens), " ", StrategyName(strategy));
                const Status st = RunFused(*gpus_, spec, in, shape.tokens, strategy, out);
                ASSERT_TRUE(st.ok()) << what << ": " << st.ToString();
                ExpectMatchesOracle(spec, in, out, ref, what);
              }
              EXPECT_EQ(BitwiseDiff(one[0], two[0]), "") << Describe(spec, shape.tokens);
              if (HasFailure()) return;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 100);
}

// A residual stream kept in f32 runs on the nccl strategy (one-shot and two-shot refuse it and
// say so; the dispatcher's choice demotes to nccl): every quant mode, f32 residual in and out;
// and with quant none the norm output in f32 (form 4: with the f32 stream, 5: alone).
TEST_F(FusedOpTest, AnF32ResidualStreamRunsOnNcclAndMatchesTheOracle) {
  uint64_t seed = 900;
  for (QuantMode quant : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
    for (int form = 1; form < 6; ++form) {
      if (form > 3 && quant != QuantMode::kNone) continue;
      AllreduceRmsnormSpec spec = MakeSpec(4096, quant);
      spec.residual_f32_in = form == 1 || form == 3 || form == 4;
      spec.rounding.residual_out_f32 = form == 2 || form == 3 || form == 4;
      spec.rounding.norm_input_f32 = form < 5;
      spec.rounding.norm_out_f32 = form > 3;
      for (int64_t tokens : {int64_t{1}, int64_t{77}})
        ExpectNcclOnly(spec, tokens, ++seed, "an f32 residual or norm output runs on nccl");
    }
}

// Two all_reduces summed (second_sum) run on the nccl strategy, two ncclAllReduce calls and one
// epilogue (one-shot and two-shot refuse it and say so): every quant mode, each sum scaled or not,
// the sum scaled or not, the second into the residual; T over the scratch's chunking too.
TEST_F(FusedOpTest, TwoSummedAllReducesRunOnNcclAndMatchTheOracle) {
  uint64_t seed = 950;
  for (QuantMode quant : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
    for (int form = 0; form < 5; ++form) {  // 4: the second into the residual
      AllreduceRmsnormSpec spec = MakeSpec(4096, quant);
      spec.emit.allreduce = false;
      spec.second_sum = true;
      spec.second_sum_into_residual = form == 4;
      spec.first_scale = form & 1 ? 0.5f : 1.0f;
      spec.second_scale = form & 1 || form == 4 ? 1.5f : 1.0f;
      spec.sum_scale = form & 2 ? 0.22f : 1.0f;
      for (int64_t tokens : {int64_t{1}, int64_t{77}, kMaxTestTokens})
        ExpectNcclOnly(spec, tokens, ++seed, "two summed all_reduces run on nccl");
    }
}

// A bias added to the sum (has_bias) runs on the nccl strategy, one ncclAllReduce and one epilogue
// that adds the bias (one-shot and two-shot refuse it and say so): every quant mode, the biased
// sum scaled or not, the all_reduce's result emitted or not, a bias per token; T over the scratch's
// chunking too.
TEST_F(FusedOpTest, ABiasAddedToTheSumRunsOnNcclAndMatchesTheOracle) {
  uint64_t seed = 970;
  for (QuantMode quant : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
    for (int form = 0; form < 5; ++form) {  // 3, 4: a bias per token ([T, H]), 4 scaled
      AllreduceRmsnormSpec spec = MakeSpec(4096, quant);
      spec.has_bias = true;
      spec.bias_per_token = form >= 3;
      spec.sum_scale = form == 1 || form == 4 ? 0.22f : 1.0f;
      spec.emit.allreduce = form == 2 || form == 4;
      for (int64_t tokens : {int64_t{1}, int64_t{77}, kMaxTestTokens})
        ExpectNcclOnly(spec, tokens, ++seed, "adds no bias to the sum: a bias runs on nccl");
    }
}

// ---------------------------------------------------------------- structure of the results

TEST_F(FusedOpTest, RowResultDoesNotDependOnTokenCount) {
  AllreduceRmsnormSpec spec = MakeSpec(4096, QuantMode::kFp8Group);
  const FusedInputs big = MakeFusedInputs(spec, 1000, kWorld, 4242);
  // The first 3 rows of the same inputs, alone.
  FusedInputs small = big;
  for (HostTensor& x : small.partials) {
    HostTensor t(x.dtype(), {3, 4096});
    std::memcpy(t.data(), x.data(), t.nbytes());
    x = t;
  }
  HostTensor res(big.residual.dtype(), {3, 4096});
  std::memcpy(res.data(), big.residual.data(), res.nbytes());
  small.residual = res;
  for (Strategy strategy : kAllStrategies) {
    std::vector<std::vector<HostTensor>> out_big, out_small;
    ASSERT_TRUE(RunFused(*gpus_, spec, big, 1000, strategy, out_big).ok());
    ASSERT_TRUE(RunFused(*gpus_, spec, small, 3, strategy, out_small).ok());
    for (size_t i = 0; i < out_small[0].size(); ++i) {
      const HostTensor& a = out_small[0][i];
      const HostTensor& b = out_big[0][i];
      // Row-major outputs: the first 3 rows' bytes are a prefix.
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0)
          << StrategyName(strategy) << " output " << i << ": rows 0..2 differ between T=3 and T=1000";
    }
  }
}

TEST_F(FusedOpTest, ProgrammaticDependentLaunchOffGivesTheSameBits) {
  AllreduceRmsnormSpec spec = MakeSpec(7168, QuantMode::kFp8Tensor);
  const FusedInputs in = MakeFusedInputs(spec, 128, kWorld, 99);
  for (Strategy strategy : kAllStrategies) {
    std::vector<std::vector<HostTensor>> with, without;
    ASSERT_TRUE(RunFused(*gpus_, spec, in, 128, strategy, with).ok());
    cuda::LaunchOptions no_pdl;
    no_pdl.pdl = false;
    ASSERT_TRUE(RunFused(*gpus_, spec, in, 128, strategy, without, no_pdl).ok());
    EXPECT_EQ(BitwiseDiff(with[0], without[0]), "") << StrategyName(strategy);
  }
}

TEST_F(FusedOpTest, RankTaggedInputsReduceExactly) {
  // Small integers: every sum is exact, so a routing error (wrong slot, wrong rank, wrong row)
  // is an exact mismatch of the all-reduce output.
  AllreduceRmsnormSpec spec = MakeSpec(2880, QuantMode::kNone);
  spec.emit.allreduce = true;
  const FusedInputs in = MakeFusedInputs(spec, 19, kWorld, 5, InputKind::kRankTagged);
  const std::vector<HostTensor> ref = OracleOutputs(spec, in);
  for (Strategy strategy : kAllStrategies) {
    std::vector<std::vector<HostTensor>> out;
    ASSERT_TRUE(RunFused(*gpus_, spec, in, 19, strategy, out).ok());
    for (int r = 0; r < kWorld; ++r) {
      const CompareResult c = CompareExact(out[size_t(r)][0], ref[0]);
      EXPECT_TRUE(c.ok) << StrategyName(strategy) << " rank " << r << ": " << c.summary;
    }
  }
}

// ---------------------------------------------------------------- CUDA graphs

TEST_F(FusedOpTest, TenThousandGraphReplaysWithChangingInputs) {
  constexpr int64_t kTokens = 16, kHidden = 4096;
  constexpr int kBanks = 4, kReplays = 10000;
  AllreduceRmsnormSpec spec = MakeSpec(kHidden, QuantMode::kFp8Group);
  spec.emit = {};
  spec.emit.norm = true;  // one bf16 output checked bitwise on device
  spec.emit.residual = false;
  spec.emit.quant = true;
  std::vector<FusedInputs> banks;
  for (int k = 0; k < kBanks; ++k) {
    banks.push_back(MakeFusedInputs(spec, kTokens, kWorld, 500 + k));
    // Only x changes between replays: the graph's residual and weight are bank 0's.
    banks.back().residual = banks[0].residual;
    banks.back().weight = banks[0].weight;
  }
  // Expected norm outputs per bank: a plain (ungraphed) run, itself checked against the oracle.
  std::vector<std::vector<HostTensor>> expected(kBanks);
  for (int k = 0; k < kBanks; ++k) {
    std::vector<std::vector<HostTensor>> out;
    ASSERT_TRUE(RunFused(*gpus_, spec, banks[size_t(k)], kTokens, Strategy::kOneShot, out).ok());
    ASSERT_EQ(CompareFusedOutputs(spec, banks[size_t(k)], out[0], OracleOutputs(spec, banks[size_t(k)])), "");
    expected[size_t(k)] = out[0];
  }
  for (Strategy strategy : {Strategy::kOneShot, Strategy::kTwoShot}) {
    const Status st = gpus_->RunAll([&](int rank, Communicator& comm, cudaStream_t stream) -> Status {
      const size_t x_bytes = size_t(kTokens * kHidden * 2);
      RankCall call;
      TPFUSE_RETURN_IF_ERROR(PrepareRank(spec, banks[0], kTokens, rank, stream, call));
      TPFUSE_ASSIGN_OR_RETURN(auto x_banks, cuda::DeviceBuffer::Allocate(x_bytes * kBanks));
      TPFUSE_ASSIGN_OR_RETURN(auto norm_expected, cuda::DeviceBuffer::Allocate(x_bytes * kBanks));
      TPFUSE_ASSIGN_OR_RETURN(auto counters, cuda::DeviceBuffer::Allocate(64));
      for (int k = 0; k < kBanks; ++k) {
        TPFUSE_CUDA_CHECK(cudaMemcpyAsync(x_banks.get<char>() + k * x_bytes, banks[size_t(k)].partials[size_t(rank)].data(),
                                          x_bytes, cudaMemcpyHostToDevice, stream));
        TPFUSE_CUDA_CHECK(cudaMemcpyAsync(norm_expected.get<char>() + k * x_bytes, expected[size_t(k)][0].data(), x_bytes,
                                          cudaMemcpyHostToDevice, stream));
      }
      TPFUSE_CUDA_CHECK(cudaMemsetAsync(counters.get(), 0, 64, stream));
      uint32_t* counter = counters.get<uint32_t>();
      auto* mismatches = reinterpret_cast<unsigned long long*>(counters.get<char>() + 8);
      const size_t words = x_bytes / 16;

      cudaGraph_t graph;
      TPFUSE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
      LaunchCopyBank(x_banks.get(), const_cast<void*>(call.buffers.x), words, kBanks, counter, stream);
      Status launch = cuda::LaunchAllreduceRmsnorm(comm, spec, kTokens, call.buffers, strategy, stream);
      LaunchCheckBank(call.buffers.norm_out, norm_expected.get(), words, kBanks, counter, mismatches, stream);
      LaunchAdvance(counter, stream);
      TPFUSE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
      TPFUSE_RETURN_IF_ERROR(launch);
      cudaGraphExec_t exec;
      TPFUSE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      for (int i = 0; i < kReplays; ++i) TPFUSE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      TPFUSE_RETURN_IF_ERROR(comm.CheckHealth(stream));
      unsigned long long host_mismatches = 0;
      uint32_t host_counter = 0;
      TPFUSE_CUDA_CHECK(cudaMemcpy(&host_mismatches, mismatches, 8, cudaMemcpyDeviceToHost));
      TPFUSE_CUDA_CHECK(cudaMemcpy(&host_counter, counter, 4, cudaMemcpyDeviceToHost));
      TPFUSE_CUDA_CHECK(cudaGraphExecDestroy(exec));
      TPFUSE_CUDA_CHECK(cudaGraphDestroy(graph));
      if (host_counter != uint32_t(kReplays)) return Internal("ran ", host_counter, " replays, expected ", kReplays);
      if (host_mismatches != 0)
        return Internal(host_mismatches, " mismatching 16-byte words over ", kReplays, " replays");
      return Status::Ok();
    });
    EXPECT_TRUE(st.ok()) << StrategyName(strategy) << ": " << st.ToString();
  }
}

// ---------------------------------------------------------------- bounded waits

TEST_F(FusedOpTest, PeerThatNeverArrivesTimesOut) {
  // Fresh communicators with a short timeout: the test poisons them.
  cuda::CommOptions options = TestCommOptions();
  options.max_tokens = 64;
  options.oneshot_max_tokens = 64;
  options.timeout_seconds = 0.5;
  for (Strategy strategy : {Strategy::kOneShot, Strategy::kTwoShot}) {
    auto gpus = MultiGpu::Create(kWorld, options);
    ASSERT_TRUE(gpus.ok()) << gpus.status().ToString();
    AllreduceRmsnormSpec spec = MakeSpec(4096, QuantMode::kFp8Group);
    const FusedInputs in = MakeFusedInputs(spec, 8, kWorld, 1);
    const auto start = std::chrono::steady_clock::now();
    std::vector<Status> statuses = (*gpus)->Run([&](int rank, Communicator& comm, cudaStream_t stream) -> Status {
      if (rank != 0) return Status::Ok();  // rank 1 never calls
      RankCall call;
      TPFUSE_RETURN_IF_ERROR(PrepareRank(spec, in, 8, rank, stream, call));
      TPFUSE_RETURN_IF_ERROR(cuda::LaunchAllreduceRmsnorm(comm, spec, 8, call.buffers, strategy, stream));
      const Status health = comm.CheckHealth(stream);
      if (health.code() != StatusCode::kTimeout)
        return Internal("expected a timeout, got ", health.ToString());
      if (health.message().find("rank 0 timed out after 0.5 s waiting for rank 1") == std::string::npos)
        return Internal("the timeout does not name the configured bound and the missing peer: ", health.message());
      // A poisoned communicator refuses further calls at once.
      const Status again = cuda::LaunchAllreduceRmsnorm(comm, spec, 8, call.buffers, strategy, stream);
      if (again.code() != StatusCode::kFailedPrecondition)
        return Internal("expected the poisoned communicator to refuse, got ", again.ToString());
      return Status::Ok();
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_TRUE(statuses[0].ok()) << StrategyName(strategy) << ": " << statuses[0].ToString();
    // The kernel gives up no earlier than the bound after its first wait (its GPU clock); how
    // much later depends on the host, so that is not checked.
    EXPECT_GE(seconds, 0.5) << "the wait gave up before the configured bound";
  }
}

// ---------------------------------------------------------------- validation and limits

TEST_F(FusedOpTest, InvalidCallsReturnErrorsThatNameTheProblem) {
  AllreduceRmsnormSpec spec = MakeSpec(4096, QuantMode::kFp8Group);
  const FusedInputs in = MakeFusedInputs(spec, 4, kWorld, 3);
  const Status st = gpus_->RunAll([&](int rank, Communicator& comm, cudaStream_t stream) -> Status {
    RankCall call;
    TPFUSE_RETURN_IF_ERROR(PrepareRank(spec, in, 4, rank, stream, call));
    auto expect = [&](Status s, StatusCode code, const char* needle) -> Status {
      if (s.code() != code || s.message().find(needle) == std::string::npos)
        return Internal("expected ", StatusCodeName(code), " naming '", needle, "', got ", s.ToString());
      return Status::Ok();
    };
    cuda::FusedBuffers b = call.buffers;
    b.norm_out = nullptr;
    TPFUSE_RETURN_IF_ERROR(expect(cuda::LaunchAllreduceRmsnorm(comm, spec, 4, b, Strategy::kOneShot, stream),
                                  StatusCode::kInvalidArgument, "norm_out"));
    b = call.buffers;
    b.x = static_cast<const char*>(b.x) + 2;
    TPFUSE_RETURN_IF_ERROR(expect(cuda::LaunchAllreduceRmsnorm(comm, spec, 4, b, Strategy::kOneShot, stream),
                                  StatusCode::kInvalidArgument, "aligned"));
    AllreduceRmsnormSpec odd = spec;
    odd.hidden = 4100;
    odd.quant = QuantMode::kNone;
    odd.emit.quant = false;
    TPFUSE_RETURN_IF_ERROR(expect(cuda::CanRun(comm, odd, 4, Strategy::kOneShot), StatusCode::kInvalidArgument, "4100"));
    TPFUSE_RETURN_IF_ERROR(expect(cuda::CanRun(comm, spec, 1 << 20, Strategy::kOneShot), StatusCode::kOutOfRange, "one-shot"));
    TPFUSE_RETURN_IF_ERROR(expect(cuda::CanRun(comm, spec, 1 << 20, Strategy::kTwoShot), StatusCode::kOutOfRange, "two-shot"));
    TPFUSE_RETURN_IF_ERROR(cuda::CanRun(comm, spec, 1 << 20, Strategy::kNccl));
    return Status::Ok();
  });
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(FusedOpTest, NcclPathHandlesShapesOverTheWorkspace) {
  // 3000 rows of H 7168 exceed the scratch of the cached communicators (2048 x 7168): the nccl
  // strategy runs them in chunks with the same per-row results.
  AllreduceRmsnormSpec spec = MakeSpec(7168, QuantMode::kFp8Group);
  spec.scale_layout = ScaleLayout::kCol;
  const int64_t tokens = 3001;
  const FusedInputs in = MakeFusedInputs(spec, tokens, kWorld, 8);
  std::vector<std::vector<HostTensor>> out;
  const Status st = RunFused(*gpus_, spec, in, tokens, Strategy::kNccl, out);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectMatchesOracle(spec, in, out, OracleOutputs(spec, in), "nccl chunked");
}

// ---------------------------------------------------------------- one process per GPU

int FusedChildMain(const ChildSpec& child) {
  auto fail = [&](const Status& s) {
    std::fprintf(stderr, "rank %d: %s\n", child.rank, s.ToString().c_str());
    return 1;
  };
  if (cudaSetDevice(child.rank) != cudaSuccess) return fail(Internal("cudaSetDevice failed"));
  auto id = cuda::ExchangeUniqueId(child.method, child.address, child.rank, child.world_size, 60.0);
  if (!id.ok()) return fail(id.status());
  cuda::CommOptions options;
  options.max_tokens = 256;
  options.max_hidden = 4096;
  options.oneshot_max_tokens = 256;
  auto comm = Communicator::FromUniqueId(*id, child.rank, child.world_size, child.rank, options);
  if (!comm.ok()) return fail(comm.status());
  cudaStream_t stream;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) return fail(Internal("stream"));
  int failures = 0;
  for (QuantMode quant : {QuantMode::kNone, QuantMode::kFp8Group}) {
    AllreduceRmsnormSpec spec = MakeSpec(4096, quant);
    // The same seed on every process: identical inputs, each process uses its own partial.
    const FusedInputs in = MakeFusedInputs(spec, 128, child.world_size, 31 + int(quant));
    const std::vector<HostTensor> ref = OracleOutputs(spec, in);
    for (Strategy strategy : kAllStrategies) {
      RankCall call;
      Status s = PrepareRank(spec, in, 128, child.rank, stream, call);
      if (s.ok()) s = cuda::LaunchAllreduceRmsnorm(**comm, spec, 128, call.buffers, strategy, stream);
      if (s.ok()) s = (*comm)->CheckHealth(stream);
      if (s.ok()) s = Download(call, stream);
      if (!s.ok()) return fail(s);
      const std::string report = CompareFusedOutputs(spec, in, call.host_outputs, ref);
      if (!report.empty()) {
        std::fprintf(stderr, "rank %d %s %s:\n%s", child.rank, std::string(QuantModeName(quant)).c_str(),
                     std::string(StrategyName(strategy)).c_str(), report.c_str());
        ++failures;
      }
    }
  }
  cudaStreamDestroy(stream);
  return failures == 0 ? 0 : 1;
}
const bool kFusedChildRegistered = RegisterChildMain("fused", &FusedChildMain);

TEST(FusedOpProcesses, OneProcessPerGpuThroughTheUniqueIdBootstrap) {
  TPFUSE_REQUIRE_GPUS(kWorld);
  for (const char* method : {"file", "tcp"}) {
    const std::string address = std::string(method) == "file"
                                    ? StrCat("/tmp/tpfuse-fused-test-", ::getpid(), ".id")
                                    : StrCat("127.0.0.1:", 29000 + ::getpid() % 1000);
    auto results = RunChildren("fused", kWorld, method, address, 120.0);
    ASSERT_TRUE(results.ok()) << results.status().ToString();
    for (const ChildResult& r : *results) {
      EXPECT_EQ(r.exit_code, 0) << method << " rank " << r.rank << (r.timed_out ? " timed out" : "") << ":\n" << r.output;
    }
  }
}

}  // namespace
}  // namespace tpfuse::testing
