// The check with the GEMMs carried over (runtime::RunAndCheck): a backend whose GEMMs sum in
// another order must pass when everything else it computes is the oracle's, and must fail when
// anything else is off. The other backend is the CPU oracle itself with every GEMM output
// scaled by 1 + 2^-7 after it is computed: about one ulp of a 16-bit value, within the GEMM
// bound, and enough that a later layer's FP8 codes round the other way (or, to fail, every add's
// value scaled by 1 + 2^-5).
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "ir/ops.h"
#include "ir/parser.h"
#include "runtime/check.h"
#include "runtime/executor.h"
#include "runtime/inputs.h"

namespace tpfuse::runtime {
namespace {

template <typename T>
T Unwrap(StatusOr<T> s) {
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

// Four layers: all_reduce, residual add, RMSNorm, a dynamic per-group FP8 quant written out and
// dequantized, and a GEMM whose output the next layer's all_reduce reads.
std::unique_ptr<ir::Graph> FourLayers() {
  // One layer; $ is its index, $P the partial sum it reduces, $R the residual it adds.
  const std::string layer = R"(
  %ar$ = all_reduce($P)
  %h$ = add($R, %ar$)
  %v$ = cast(%h$) {to = f32}
  %sq$ = pow(%v$) {exponent = 2}
  %ms$ = mean(%sq$) {dim = -1, keepdim = true}
  %ve$ = add(%ms$) {scalar = 1e-6}
  %rs$ = rsqrt(%ve$)
  %n$ = mul(%v$, %rs$)
  %nb$ = cast(%n$) {to = bf16}
  %y$ = mul(%g, %nb$)
  %yf$ = cast(%y$) {to = f32}
  %yg$ = view(%yf$) {shape = [T, 2, 128]}
  %ab$ = abs(%yg$)
  %am$ = amax(%ab$) {dim = -1, keepdim = true}
  %cl$ = clamp(%am$) {min = 1e-10}
  %s$ = div(%cl$) {scalar = 448}
  %d$ = div(%yg$, %s$)
  %c$ = clamp(%d$) {min = -448, max = 448}
  %q$ = cast(%c$) {to = f8e4m3}
  %qf$ = cast(%q$) {to = f32}
  %dq$ = mul(%qf$, %s$)
  %du$ = view(%dq$) {shape = [T, 256]}
  %db$ = cast(%du$) {to = bf16}
  %m$ = matmul(%db$, %w$))";
  std::string text =
      "func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %w0: bf16[256, 256], "
      "%w1: bf16[256, 256], %w2: bf16[256, 256], %w3: bf16[256, 256]) {";
  for (int l = 0; l < 4; ++l) {
    std::string body = layer;
    const auto put = [&body](const std::string& key, const std::string& value) {
      for (size_t at = body.find(key); at != std::string::npos; at = body.find(key, at))
        body.replace(at, key.size(), value);
    };
    put("$P", l == 0 ? "%x" : "%m" + std::to_string(l - 1));
    put("$R", l == 0 ? "%res" : "%h" + std::to_string(l - 1));
    put("$", std::to_string(l));
    text += body;
  }
  text += "\n  return %m3, %h3, %q3, %s3\n}\n";
  return Unwrap(ir::ParseGraph(text));
}

// The oracle, with the results of every node of kind `kind` scaled by `factor` after it runs.
class PerturbingExecutor : public Executor {
 public:
  PerturbingExecutor(int world_size, ir::OpKind kind, double factor = 1.0 + 1.0 / 128)
      : oracle_(MakeCpuExecutor(world_size)), kind_(kind), factor_(factor) {}
  std::string name() const override { return "perturbed cpu"; }
  int world_size() const override { return oracle_->world_size(); }
  StatusOr<RankOutputs> Run(const ir::Graph& graph, const std::vector<TensorMap>& inputs) override {
    std::unique_ptr<ir::Graph> g = graph.Clone();
    for (ir::Node* node : g->NodesSnapshot()) {
      if (node->kind() != kind_) continue;
      ir::Value* v = node->result();
      const std::vector<ir::Node*> nodes = g->NodesSnapshot();
      const auto at = std::find(nodes.begin(), nodes.end(), node) + 1;
      TPFUSE_ASSIGN_OR_RETURN(
          ir::Node * scaled,
          ir::BuildNode(*g, "mul", {v}, {{"scalar", ir::Attr::Float(factor_)}},
                        {v->name() + ".scaled"}, at == nodes.end() ? nullptr : *at));
      v->ReplaceUsesIf(scaled->result(),
                       [&](const ir::Use& u) { return u.is_return() || u.user != scaled; });
    }
    return oracle_->Run(*g, inputs);
  }

 private:
  std::unique_ptr<Executor> oracle_;
  ir::OpKind kind_;
  double factor_;
};

TEST(CheckGemmsTest, AnchorGemmsCarriesEveryGemmOver) {
  const std::unique_ptr<ir::Graph> g = FourLayers();
  const AnchoredGraphs a = Unwrap(AnchorGemms(*g, *g));
  EXPECT_EQ(a.gemms, (std::vector<std::string>{"m0", "m1", "m2", "m3"}));
  EXPECT_EQ(a.params, (std::vector<std::string>{"m0.run", "m1.run", "m2.run", "m3.run"}));
  ASSERT_EQ(a.num_outputs, 4u);
  ASSERT_EQ(a.run->outputs().size(), 8u);
  ASSERT_EQ(a.reference->outputs().size(), 8u);
  // The reference's next all_reduce reads the carried value; the returned %m3 does too, and the
  // GEMM itself is returned after the graph's outputs.
  EXPECT_EQ(a.reference->FindValue("ar1")->producer()->operand(0)->name(), "m0.run");
  EXPECT_EQ(a.reference->outputs()[0]->name(), "m3.run");
  EXPECT_EQ(a.reference->outputs()[7]->name(), "m3");
  EXPECT_EQ(a.run->outputs()[4]->name(), "m0");
}

TEST(CheckGemmsTest, GemmsInAnotherOrderPassAndEverythingElseIsBitwise) {
  const std::unique_ptr<ir::Graph> g = FourLayers();
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(*g, 2, 64, 1));
  PerturbingExecutor backend(2, ir::OpKind::kMatmul);
  const std::unique_ptr<Executor> oracle = MakeCpuExecutor(2);

  // Without the GEMMs carried over, the later layers' FP8 codes round the other way somewhere
  // and the last GEMM's output is out of its bound: what the check must not report.
  const RankOutputs got = Unwrap(backend.Run(*g, inputs));
  const RankOutputs ref = Unwrap(oracle->Run(*g, inputs));
  const CheckReport plain = Unwrap(CompareGraphOutputs(*g, ref, *g, got, inputs));
  ASSERT_FALSE(plain.ok) << "the perturbation no longer flips an FP8 code; the test needs a "
                            "larger one\n"
                         << plain.ToString();

  const CheckedRun run = Unwrap(RunAndCheck(*g, *g, backend, *oracle, inputs));
  EXPECT_TRUE(run.report.ok) << run.report.ToString();
  ASSERT_EQ(run.report.gemms, 4);
  ASSERT_EQ(run.report.outputs.size(), 8u);
  ASSERT_EQ(run.outputs[0].size(), 4u);  // the graph's own outputs
  // Every output but the GEMMs' is bitwise the oracle's on the run's GEMM values.
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(run.report.outputs[i].max_abs_err, 0.0) << i;
  for (size_t i = 4; i < 8; ++i) {
    const OutputCheck& o = run.report.outputs[i];
    EXPECT_EQ(o.cls, ToleranceClass::kGemm) << o.ToString();
    EXPECT_GT(o.max_abs_err, 0.0) << o.ToString();  // the GEMMs did differ
    EXPECT_EQ(o.basis, "from the run's earlier GEMMs");
  }
}

TEST(CheckGemmsTest, AnythingElseOffStillFails) {
  const std::unique_ptr<ir::Graph> g = FourLayers();
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(*g, 2, 16, 3));
  const std::unique_ptr<Executor> oracle = MakeCpuExecutor(2);
  // Adds off by about four ulps: the last residual fails its 1-ulp class.
  PerturbingExecutor adds(2, ir::OpKind::kAdd, 1.0 + 1.0 / 32);
  const CheckedRun run = Unwrap(RunAndCheck(*g, *g, adds, *oracle, inputs));
  EXPECT_FALSE(run.report.ok) << run.report.ToString();
  EXPECT_FALSE(run.report.outputs[1].ok) << run.report.ToString();  // %h3
}

}  // namespace
}  // namespace tpfuse::runtime
