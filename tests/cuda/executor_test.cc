// The CUDA executor at world size 2 against the CPU executor: unfused layers (every unfused op
// kind, all_reduce through NCCL, GEMMs), the decomposed forms the compiler recognizes, the fused
// op after the pass pipeline with every strategy and with the dispatcher, and errors. Outputs
// are compared with the oracle's through runtime::CompareGraphOutputs (Contract 3's table);
// inputs are fresh random values per run (the seed is printed with any failure).
#include "runtime/executor.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "ir/ops.h"
#include "ir/parser.h"
#include "passes/pass.h"
#include "runtime/check.h"
#include "runtime/cuda/cuda_executor.h"
#include "runtime/inputs.h"
#include "support/cuda_harness.h"
#include "support/shapes.h"

namespace tpfuse::testing {
namespace {

using runtime::CudaExecutor;
using runtime::CudaExecutorOptions;
using runtime::RankOutputs;
using runtime::TensorMap;

constexpr int kWorld = 2;

// Replaces every "{H}" of a graph's text with the hidden size.
std::string WithHidden(std::string text, int64_t hidden) {
  const std::string key = "{H}";
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at))
    text.replace(at, key.size(), std::to_string(hidden));
  return text;
}

// The Contract 1 example: all_reduce -> add + RMSNorm -> group quant, and a GEMM on the norm.
// Groups of 64, which divide every hidden size of the shared list (2880 is not a multiple of
// 128).
constexpr char kUnfusedLayer[] = R"(
func @layer(%x: bf16[T, {H}], %res: bf16[T, {H}], %g: bf16[{H}], %wk: bf16[{H}, 128]) {
  %ar = all_reduce(%x)
  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
  %q, %s = quant_fp8(%y) {mode = "group", group_size = 64}
  %k = matmul(%y, %wk)
  return %q, %s, %r, %k
}
)";

// The decomposed forms of an exported graph: residual add in the other order, RMSNorm as
// cast -> pow -> mean -> add eps -> rsqrt -> mul -> cast -> mul(w), static quant as
// div -> clamp -> cast, and a no-op view.
constexpr char kDecomposedLayer[] = R"(
func @decomposed(%x: bf16[T, {H}], %res: bf16[T, {H}], %w: bf16[{H}], %scale: f32[]) {
  %ar = all_reduce(%x)
  %h = add(%res, %ar)
  %hf = cast(%h) {to = f32}
  %sq = pow(%hf) {exponent = 2}
  %ms = mean(%sq) {dim = -1, keepdim = true}
  %me = add(%ms) {scalar = 1e-6}
  %rs = rsqrt(%me)
  %n = mul(%hf, %rs)
  %nb = cast(%n) {to = bf16}
  %y = mul(%nb, %w)
  %d = div(%y, %scale)
  %c = clamp(%d) {min = -448, max = 448}
  %q = cast(%c) {to = f8e4m3}
  %v = view(%q) {shape = [T, {H}]}
  return %v, %h, %y
}
)";

// The chain the fusion pass turns into one allreduce_rmsnorm emitting norm, residual and quant.
constexpr char kFusableLayer[] = R"(
func @fusable(%x: bf16[T, {H}], %res: bf16[T, {H}], %g: bf16[{H}]) {
  %ar = all_reduce(%x)
  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
  %q, %s = quant_fp8(%y) {mode = "group", group_size = 64, scale_layout = "col"}
  return %y, %q, %s, %r
}
)";

// An MLP-style consumer: per-token quant feeding the FP8 GEMM (weights sharded per rank).
constexpr char kScaledMatmulLayer[] = R"(
func @mlp(%x: bf16[T, {H}], %res: bf16[T, {H}], %g: f32[{H}], %w: f8e4m3[{H}, 256], %ws: f32[]) {
  %ar = all_reduce(%x)
  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-5, weight_bias = 1}
  %q, %s = quant_fp8(%y) {mode = "token"}
  %o = scaled_matmul(%q, %s, %w, %ws)
  return %o, %r
}
)";

std::unique_ptr<ir::Graph> Parse(const char* text, int64_t hidden) {
  StatusOr<std::unique_ptr<ir::Graph>> graph = ir::ParseGraph(WithHidden(text, hidden), "test.tpg");
  EXPECT_TRUE(graph.ok()) << graph.status().ToString();
  return graph.ok() ? std::move(graph).value() : nullptr;
}

// The graph after the default pipeline for the CUDA backend at world size 2.
std::unique_ptr<ir::Graph> Fused(const ir::Graph& graph, int64_t max_tokens) {
  std::unique_ptr<ir::Graph> fused = graph.Clone();
  passes::PassContext ctx;
  ctx.world_size = kWorld;
  ctx.max_tokens = max_tokens;
  ctx.caps = CudaFusionCapabilities();
  StatusOr<bool> changed = passes::MakeDefaultPipeline().Run(*fused, ctx);
  EXPECT_TRUE(changed.ok()) << changed.status().ToString();
  return fused;
}

int CountOps(const ir::Graph& graph, const std::string& op) {
  const auto counts = graph.OpCounts();
  auto it = counts.find(op);
  return it == counts.end() ? 0 : it->second;
}

// Indices of the returned values that are not (views of) GEMM outputs.
std::vector<int> ReplicatedOutputs(const ir::Graph& graph) {
  std::vector<int> indices;
  for (int i = 0; i < int(graph.outputs().size()); ++i) {
    const ir::Value* v = ir::SkipViews(graph.outputs()[size_t(i)]);
    const bool gemm = v->producer() && (v->producer()->op() == "matmul" || v->producer()->op() == "scaled_matmul");
    if (!gemm) indices.push_back(i);
  }
  return indices;
}

class CudaExecutorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TPFUSE_REQUIRE_GPUS(kWorld);
    seed_ = std::random_device{}();
  }
  static void TearDownTestSuite() { executors_.clear(); }

  // One executor per strategy override (nullopt: the dispatcher), shared by the suite so the
  // communicators are created once.
  static CudaExecutor* Executor(StrategyRequest strategy = std::nullopt) {
    const int key = strategy ? int(*strategy) : -1;
    auto it = executors_.find(key);
    if (it != executors_.end()) return static_cast<CudaExecutor*>(it->second.get());
    CudaExecutorOptions options;
    options.strategy_override = strategy;
    options.comm.timeout_seconds = 60.0;  // a bound on a hang, not on speed
    StatusOr<std::unique_ptr<runtime::Executor>> made = runtime::MakeCudaExecutor(kWorld, options);
    EXPECT_TRUE(made.ok()) << made.status().ToString();
    if (!made.ok()) return nullptr;
    auto* cuda = static_cast<CudaExecutor*>(made->get());
    executors_[key] = std::move(made).value();
    return cuda;
  }

  // Runs `got_graph` on the GPUs and `ref_graph` on the CPU oracle with the same random inputs
  // and expects every output of every rank within tolerance, and the ranks bitwise equal.
  // Returns the GPU outputs.
  RankOutputs RunAndCompare(const ir::Graph& ref_graph, const ir::Graph& got_graph, int64_t tokens,
                            runtime::Executor* gpu) {
    SCOPED_TRACE(StrCat("T ", tokens, " seed ", seed_));
    StatusOr<std::vector<TensorMap>> inputs =
        runtime::MakeRandomInputs(ref_graph, kWorld, tokens, seed_);
    EXPECT_TRUE(inputs.ok()) << inputs.status().ToString();
    if (!inputs.ok() || gpu == nullptr) return {};
    StatusOr<RankOutputs> ref = runtime::MakeCpuExecutor(kWorld)->Run(ref_graph, *inputs);
    EXPECT_TRUE(ref.ok()) << ref.status().ToString();
    StatusOr<RankOutputs> got = gpu->Run(got_graph, *inputs);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    if (!ref.ok() || !got.ok()) return {};
    StatusOr<runtime::CheckReport> report =
        runtime::CompareGraphOutputs(ref_graph, *ref, got_graph, *got, *inputs);
    EXPECT_TRUE(report.ok()) << report.status().ToString();
    if (report.ok()) {
      EXPECT_TRUE(report->ok) << report->ToString();
    }
    // Outputs of GEMMs with per-rank (sharded) weights differ between ranks by design; every
    // other output is computed from replicated values and must be bitwise identical.
    const Status same = runtime::CheckRanksIdentical(got_graph, *got, ReplicatedOutputs(got_graph));
    EXPECT_TRUE(same.ok()) << same.ToString();
    return std::move(got).value();
  }

  uint32_t seed_ = 0;
  static std::map<int, std::unique_ptr<runtime::Executor>> executors_;
};

std::map<int, std::unique_ptr<runtime::Executor>> CudaExecutorTest::executors_;

// ---------------------------------------------------------------- unfused graphs

TEST_F(CudaExecutorTest, UnfusedLayerMatchesTheCpuExecutor) {
  for (int64_t hidden : kQuickHiddenSizes) {
    std::unique_ptr<ir::Graph> graph = Parse(kUnfusedLayer, hidden);
    ASSERT_NE(graph, nullptr);
    for (int64_t tokens : kTokenCounts) {
      SCOPED_TRACE(StrCat("H ", hidden));
      RunAndCompare(*graph, *graph, tokens, Executor());
    }
  }
}

TEST_F(CudaExecutorTest, DecomposedFormsMatchTheCpuExecutor) {
  for (int64_t hidden : kHiddenSizes) {
    std::unique_ptr<ir::Graph> graph = Parse(kDecomposedLayer, hidden);
    ASSERT_NE(graph, nullptr);
    for (int64_t tokens : kTokenCounts) {
      SCOPED_TRACE(StrCat("H ", hidden));
      RunAndCompare(*graph, *graph, tokens, Executor());
    }
  }
}

// The decomposed forms after the pipeline (canonicalized and fused as far as the CUDA backend
// allows) against the decomposed graph on the CPU: what `tpfuse run --check` does.
TEST_F(CudaExecutorTest, CompiledDecomposedFormsMatchTheCpuExecutor) {
  for (int64_t hidden : kQuickHiddenSizes) {
    std::unique_ptr<ir::Graph> graph = Parse(kDecomposedLayer, hidden);
    ASSERT_NE(graph, nullptr);
    std::unique_ptr<ir::Graph> compiled = Fused(*graph, 1000);
    for (int64_t tokens : kTokenCounts) {
      SCOPED_TRACE(StrCat("H ", hidden));
      RunAndCompare(*graph, *compiled, tokens, Executor());
    }
  }
}

TEST_F(CudaExecutorTest, ScaledMatmulLayerMatchesTheCpuExecutor) {
  for (int64_t hidden : kQuickHiddenSizes) {
    std::unique_ptr<ir::Graph> graph = Parse(kScaledMatmulLayer, hidden);
    ASSERT_NE(graph, nullptr);
    for (int64_t tokens : kQuickTokenCounts) {
      SCOPED_TRACE(StrCat("H ", hidden));
      RunAndCompare(*graph, *graph, tokens, Executor());
    }
  }
}

// ---------------------------------------------------------------- the fused op

// The pipeline's fused graph on the GPUs with every strategy, against the unfused graph on the
// CPU; one-shot and two-shot bitwise equal (Contract 3, rule 5).
TEST_F(CudaExecutorTest, FusedGraphMatchesTheUnfusedOracleWithEveryStrategy) {
  for (int64_t hidden : kHiddenSizes) {
    std::unique_ptr<ir::Graph> graph = Parse(kFusableLayer, hidden);
    ASSERT_NE(graph, nullptr);
    std::unique_ptr<ir::Graph> fused = Fused(*graph, 1000);
    ASSERT_EQ(CountOps(*fused, "allreduce_rmsnorm"), 1) << "the pass did not fuse the chain";
    ASSERT_EQ(CountOps(*fused, "all_reduce"), 0);
    for (int64_t tokens : kTokenCounts) {
      SCOPED_TRACE(StrCat("H ", hidden));
      std::vector<RankOutputs> by_strategy;
      for (Strategy s : kAllStrategies) {
        SCOPED_TRACE(StrCat("strategy ", StrategyName(s)));
        CudaExecutor* gpu = Executor(s);
        ASSERT_NE(gpu, nullptr);
        by_strategy.push_back(RunAndCompare(*graph, *fused, tokens, gpu));
        ASSERT_EQ(gpu->last_fused_strategies().size(), 1u);
        EXPECT_NE(gpu->last_fused_strategies()[0].find(std::string(": ") +
                                                       std::string(StrategyName(s))),
                  std::string::npos)
            << gpu->last_fused_strategies()[0];
      }
      // RunAndCompare draws the same inputs for every strategy (same seed).
      ASSERT_EQ(by_strategy.size(), 3u);
      ASSERT_FALSE(by_strategy[0].empty());
      ASSERT_FALSE(by_strategy[1].empty());
      for (size_t i = 0; i < by_strategy[0][0].size(); ++i) {
        EXPECT_TRUE(by_strategy[0][0][i].BitwiseEquals(by_strategy[1][0][i]))
            << "one-shot and two-shot differ in output " << i;
      }
      // And the dispatcher's choice runs too.
      RunAndCompare(*graph, *fused, tokens, Executor());
    }
  }
}

TEST_F(CudaExecutorTest, DispatcherChoiceIsReported) {
  std::unique_ptr<ir::Graph> graph = Parse(kFusableLayer, 4096);
  ASSERT_NE(graph, nullptr);
  std::unique_ptr<ir::Graph> fused = Fused(*graph, 1000);
  CudaExecutor* gpu = Executor();
  ASSERT_NE(gpu, nullptr);
  for (int64_t tokens : {int64_t{1}, int64_t{1000}}) {
    RunAndCompare(*graph, *fused, tokens, gpu);
    ASSERT_EQ(gpu->last_fused_strategies().size(), 1u);
    const std::string& used = gpu->last_fused_strategies()[0];
    // The built-in table at TP 2: one-shot up to 128 tokens, two-shot above (nccl only when
    // this machine has no peer memory).
    const std::string want = tokens <= 128 ? "oneshot" : "twoshot";
    EXPECT_TRUE(used.find(want) != std::string::npos || used.find("nccl") != std::string::npos)
        << used;
    std::printf("T %lld: %s\n", static_cast<long long>(tokens), used.c_str());
  }
}

// The unfused layer with its fused chain next to a GEMM (norm fan-out).
TEST_F(CudaExecutorTest, FusedLayerWithGemmMatchesTheUnfusedOracle) {
  std::unique_ptr<ir::Graph> graph = Parse(kUnfusedLayer, 2880);
  ASSERT_NE(graph, nullptr);
  std::unique_ptr<ir::Graph> fused = Fused(*graph, 1000);
  ASSERT_EQ(CountOps(*fused, "allreduce_rmsnorm"), 1);
  for (int64_t tokens : kQuickTokenCounts) RunAndCompare(*graph, *fused, tokens, Executor());
}

// ---------------------------------------------------------------- repeated runs and errors

TEST_F(CudaExecutorTest, TimeRunsReportsEveryRank) {
  std::unique_ptr<ir::Graph> graph = Parse(kFusableLayer, 4096);
  ASSERT_NE(graph, nullptr);
  std::unique_ptr<ir::Graph> fused = Fused(*graph, 128);
  StatusOr<std::vector<TensorMap>> inputs = runtime::MakeRandomInputs(*fused, kWorld, 16, seed_);
  ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
  CudaExecutor* gpu = Executor();
  ASSERT_NE(gpu, nullptr);
  StatusOr<std::vector<double>> times = gpu->TimeRuns(*fused, *inputs, 5, 50);
  ASSERT_TRUE(times.ok()) << times.status().ToString();
  ASSERT_EQ(times->size(), size_t(kWorld));
  for (double us : *times) EXPECT_GT(us, 0.0);
  std::printf("fused layer T 16 H 4096: %.2f / %.2f us per run\n", (*times)[0], (*times)[1]);
  // The executor stays usable and correct afterwards.
  RunAndCompare(*graph, *fused, 16, gpu);
}

TEST_F(CudaExecutorTest, BadInputsNameTheParameterAndLeaveTheExecutorUsable) {
  std::unique_ptr<ir::Graph> graph = Parse(kUnfusedLayer, 128);
  ASSERT_NE(graph, nullptr);
  CudaExecutor* gpu = Executor();
  ASSERT_NE(gpu, nullptr);
  StatusOr<std::vector<TensorMap>> inputs = runtime::MakeRandomInputs(*graph, kWorld, 3, seed_);
  ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();

  std::vector<TensorMap> missing = *inputs;
  missing[1].erase("res");
  StatusOr<RankOutputs> r1 = gpu->Run(*graph, missing);
  ASSERT_FALSE(r1.ok());
  EXPECT_NE(r1.status().message().find("%res"), std::string::npos) << r1.status().ToString();

  std::vector<TensorMap> wrong = *inputs;
  wrong[0]["g"] = HostTensor(DType::kF32, {128});
  StatusOr<RankOutputs> r2 = gpu->Run(*graph, wrong);
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find("%g"), std::string::npos) << r2.status().ToString();

  std::vector<TensorMap> one_rank = {(*inputs)[0]};
  StatusOr<RankOutputs> r3 = gpu->Run(*graph, one_rank);
  ASSERT_FALSE(r3.ok());
  EXPECT_NE(r3.status().message().find("world size"), std::string::npos) << r3.status().ToString();

  RunAndCompare(*graph, *graph, 3, gpu);
}

TEST_F(CudaExecutorTest, OpaqueOpsAndOpsWithoutKernelsAreUnimplemented) {
  CudaExecutor* gpu = Executor();
  ASSERT_NE(gpu, nullptr);
  const auto run = [&](const std::string& text) -> Status {
    StatusOr<std::unique_ptr<ir::Graph>> graph = ir::ParseGraph(text, "test.tpg");
    EXPECT_TRUE(graph.ok()) << graph.status().ToString();
    if (!graph.ok()) return graph.status();
    StatusOr<std::vector<TensorMap>> inputs = runtime::MakeRandomInputs(**graph, kWorld, 3, seed_);
    EXPECT_TRUE(inputs.ok()) << inputs.status().ToString();
    if (!inputs.ok()) return inputs.status();
    return gpu->Run(**graph, *inputs).status();
  };
  const Status opaque = run(
      "func @f(%x: bf16[T, 128]) {\n"
      "  %y = opaque(%x) {name = \"aten.silu\"} : bf16[T, 128]\n"
      "  return %y\n"
      "}\n");
  EXPECT_EQ(opaque.code(), StatusCode::kUnimplemented) << opaque.ToString();
  EXPECT_NE(opaque.message().find("opaque op 'aten.silu'"), std::string::npos) << opaque.ToString();
  const Status abs = run(
      "func @f(%x: bf16[T, 128]) {\n"
      "  %y = abs(%x)\n"
      "  return %y\n"
      "}\n");
  EXPECT_EQ(abs.code(), StatusCode::kUnimplemented) << abs.ToString();
  EXPECT_NE(abs.message().find("op 'abs' has no CUDA kernel yet"), std::string::npos)
      << abs.ToString();
  // The executor stays usable.
  std::unique_ptr<ir::Graph> graph = Parse(kUnfusedLayer, 128);
  ASSERT_NE(graph, nullptr);
  RunAndCompare(*graph, *graph, 3, gpu);
}

TEST_F(CudaExecutorTest, StrategyThatCannotRunTheShapeIsAnErrorOnlyWhenForced) {
  // Over the one-shot workspace (default 1024 rows of the default 8192 max hidden): forced
  // one-shot fails naming the node, the dispatcher falls back.
  std::unique_ptr<ir::Graph> graph = Parse(kFusableLayer, 8192);
  ASSERT_NE(graph, nullptr);
  std::unique_ptr<ir::Graph> fused = Fused(*graph, 2000);
  StatusOr<std::vector<TensorMap>> inputs = runtime::MakeRandomInputs(*fused, kWorld, 2000, seed_);
  ASSERT_TRUE(inputs.ok());
  CudaExecutor* forced = Executor(Strategy::kOneShot);
  ASSERT_NE(forced, nullptr);
  StatusOr<RankOutputs> r = forced->Run(*fused, *inputs);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("allreduce_rmsnorm"), std::string::npos)
      << r.status().ToString();
  EXPECT_NE(r.status().message().find("oneshot"), std::string::npos) << r.status().ToString();
  RunAndCompare(*graph, *fused, 2000, Executor());
}

// The graph `text` ({H} for each quick hidden size) on one GPU against the CPU oracle at every
// token count: bitwise, any NaN for a NaN.
void ExpectOneGpuBitwiseTheOracle(const char* text, uint64_t seed) {
  StatusOr<std::unique_ptr<runtime::Executor>> gpu = runtime::MakeCudaExecutor(1);
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  for (int64_t hidden : kQuickHiddenSizes) {
    std::unique_ptr<ir::Graph> graph = Parse(text, hidden);
    ASSERT_NE(graph, nullptr);
    for (int64_t tokens : kTokenCounts) {
      SCOPED_TRACE(StrCat("H ", hidden, " T ", tokens));
      StatusOr<std::vector<TensorMap>> inputs = runtime::MakeRandomInputs(*graph, 1, tokens, seed);
      ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
      StatusOr<RankOutputs> ref = runtime::MakeCpuExecutor(1)->Run(*graph, *inputs);
      StatusOr<RankOutputs> got = (*gpu)->Run(*graph, *inputs);
      ASSERT_TRUE(ref.ok() && got.ok()) << ref.status().ToString() << got.status().ToString();
      StatusOr<runtime::CheckReport> report = runtime::CompareGraphOutputs(
          *graph, *ref, *graph, *got, *inputs, runtime::CompareMode::kBitwiseAnyNaN);
      ASSERT_TRUE(report.ok()) << report.status().ToString();
      EXPECT_TRUE(report->ok) << report->ToString();
    }
  }
}

// The unfused quant_fp8 with its scale step as the form wrote it, on one GPU: a static scale by
// division and dynamic scales by the reciprocal (rounding scale_op_swapped), then the defaults,
// every output bit for bit the oracle's. (The kernels once took the defaults' step for all.)
TEST(CudaExecutorOneGpu, QuantScaleStepsAsWrittenAreBitwiseTheOracle) {
  TPFUSE_REQUIRE_GPUS(1);
  constexpr char kQuants[] = R"(
func @quants(%y: bf16[T, {H}], %scale: f32[]) {
  %qa = quant_fp8(%y, %scale) {mode = "tensor", rounding = ["scale_op_swapped"]}
  %qb, %sb = quant_fp8(%y) {mode = "token", rounding = ["scale_op_swapped"]}
  %qc, %sc = quant_fp8(%y) {mode = "group", group_size = 64, rounding = ["scale_op_swapped"]}
  %qd = quant_fp8(%y, %scale) {mode = "tensor"}
  %qe, %se = quant_fp8(%y) {mode = "group", group_size = 64}
  return %qa, %qb, %sb, %qc, %sc, %qd, %qe, %se
}
)";
  ExpectOneGpuBitwiseTheOracle(kQuants, /*seed=*/7);
}

// A norm written without a weight folds with a unit weight, full([H], 1): the CUDA backend
// makes it (zeros, then clamp(0, v, v)) and the fused op reads it, bitwise the oracle; a full of
// another value and dtype too.
TEST(CudaExecutorOneGpu, AUnitWeightAndTheFusedOpReadingItAreBitwiseTheOracle) {
  TPFUSE_REQUIRE_GPUS(1);
  constexpr char kUnit[] = R"(
func @unit(%x: bf16[T, {H}], %res: bf16[T, {H}]) {
  %w = full() {dtype = bf16, shape = [{H}], value = 1}
  %y, %h = allreduce_rmsnorm(%x, %res, %w) {emit = ["norm", "residual"], eps = 1e-06, local = true, quant = "none"}
  %c = full() {dtype = f32, shape = [3, {H}], value = -2.5}
  return %y, %h, %c
}
)";
  ExpectOneGpuBitwiseTheOracle(kUnit, /*seed=*/11);
}

// No GPU needed: asking for more GPUs than the machine has is a clear error.
TEST(CudaExecutorCreation, TooFewGpusIsUnimplemented) {
  StatusOr<std::unique_ptr<runtime::Executor>> made = runtime::MakeCudaExecutor(64);
  ASSERT_FALSE(made.ok());
  EXPECT_EQ(made.status().code(), StatusCode::kUnimplemented) << made.status().ToString();
  EXPECT_NE(made.status().message().find("64"), std::string::npos) << made.status().ToString();

  StatusOr<std::unique_ptr<runtime::Executor>> zero = runtime::MakeCudaExecutor(0);
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tpfuse::testing
