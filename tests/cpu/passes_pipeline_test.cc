// The pass machinery: PassManager (verify after each pass, dump after each pass), the greedy
// pattern driver (benefit order, fixpoint, iteration cap, decline counters), dce, idempotence
// of the default pipeline, and self-checks of the test harness itself.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "passes/rewriter.h"
#include "passes_test_util.h"

namespace tpfuse::passes::testing {
namespace {

std::string ReadPassesData(const std::string& name) {
  std::ifstream in(std::string(TPFUSE_TEST_DATA_DIR) + "/passes/" + name);
  EXPECT_TRUE(in.good()) << name;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

constexpr char kLayer[] = R"(
  func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %wk: bf16[256, 128]) {
    %ar = all_reduce(%x)
    %h = add(%res, %ar)
    %y = rms_norm(%h, %g) {eps = 1e-6}
    %q, %s = quant_fp8(%y) {mode = "group", group_size = 128}
    %k = matmul(%y, %wk)
    return %q, %s, %k, %h
  }
)";

// ---------------------------------------------------------------- PassManager

TEST(PassesPipeline, DefaultPipelineOrder) {
  EXPECT_EQ(MakeDefaultPipeline().PassNames(),
            (std::vector<std::string>{"canonicalize", "fuse_allreduce_epilogue", "dce"}));
}

// A pass that leaves a result with a type its op does not infer.
class BreakingPass final : public Pass {
 public:
  std::string name() const override { return "breaks_types"; }
  StatusOr<bool> Run(ir::Graph& graph, PassContext&) override {
    graph.nodes().front()->result()->set_type(ir::TensorType{DType::kF32, {}});
    return true;
  }
};

class FailingPass final : public Pass {
 public:
  std::string name() const override { return "fails"; }
  StatusOr<bool> Run(ir::Graph&, PassContext&) override { return InvalidArgument("no luck"); }
};

TEST(PassesPipeline, ABrokenGraphIsAnInternalErrorNamingThePass) {
  std::unique_ptr<ir::Graph> g = ParseOrFail(kLayer);
  ASSERT_TRUE(g);
  PassManager pm;
  pm.Add(MakeCanonicalizePass());
  pm.Add(std::make_unique<BreakingPass>());
  pm.Add(MakeDcePass());
  PassContext ctx;
  StatusOr<bool> result = pm.Run(*g, ctx);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInternal);
  EXPECT_NE(result.status().message().find("pass breaks_types left an invalid graph"),
            std::string::npos)
      << result.status().ToString();
}

TEST(PassesPipeline, APassErrorNamesThePass) {
  std::unique_ptr<ir::Graph> g = ParseOrFail(kLayer);
  ASSERT_TRUE(g);
  PassManager pm;
  pm.Add(std::make_unique<FailingPass>());
  PassContext ctx;
  StatusOr<bool> result = pm.Run(*g, ctx);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("fails"), std::string::npos);
  EXPECT_NE(result.status().message().find("no luck"), std::string::npos);
}

TEST(PassesPipeline, PrintsTheGraphAfterEachPass) {
  std::ostringstream dump;
  PassContext ctx;
  ctx.dump = &dump;
  Compiled c = Compile(kLayer, ctx);
  ASSERT_TRUE(c.ok());
  const std::string text = dump.str();
  // Split at the "# after <pass>" headers; each section is a whole graph that parses back.
  std::vector<std::string> headers, sections;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# after ", 0) == 0) {
      headers.push_back(line);
      sections.emplace_back();
    } else if (!sections.empty()) {
      sections.back() += line + "\n";
    }
  }
  EXPECT_EQ(headers, (std::vector<std::string>{"# after canonicalize",
                                               "# after fuse_allreduce_epilogue",
                                               "# after dce (unchanged)"}));
  ASSERT_EQ(sections.size(), 3u);
  for (const std::string& section : sections) {
    std::unique_ptr<ir::Graph> g = ParseOrFail(section);
    ASSERT_TRUE(g) << section;
  }
  FileCheck(sections[0], "CHECK: %y, %h = fused_add_rms_norm(%ar, %res, %g)");
  FileCheck(sections[1], "CHECK: %y, %h, %q, %s = allreduce_rmsnorm(%x, %res, %g)");
  std::unique_ptr<ir::Graph> last = ParseOrFail(sections[2]);
  ASSERT_TRUE(last);
  EXPECT_EQ(Print(*last), Print(*c.after));
}

// Running the pipeline on its own output changes nothing and fuses nothing more.
void ExpectIdempotent(const std::string& text) {
  Compiled first = Compile(text);
  ASSERT_TRUE(first.ok());
  PassContext ctx;
  std::unique_ptr<ir::Graph> again = first.after->Clone();
  StatusOr<bool> changed = MakeDefaultPipeline().Run(*again, ctx);
  ASSERT_TRUE(changed.ok()) << changed.status().ToString();
  EXPECT_FALSE(*changed) << Print(*again);
  EXPECT_EQ(Print(*again), Print(*first.after));
  EXPECT_TRUE(ctx.fusions.empty()) << DescribeReport(ctx);
  // Anchors left alone the first time are left alone again, for the same reasons.
  ASSERT_EQ(ctx.rejections.size(), first.ctx.rejections.size());
  for (size_t i = 0; i < ctx.rejections.size(); ++i)
    EXPECT_EQ(ctx.rejections[i].reason, first.ctx.rejections[i].reason);
}

TEST(PassesPipeline, IdempotentOnALayer) { ExpectIdempotent(kLayer); }

TEST(PassesPipeline, IdempotentOnFourSites) { ExpectIdempotent(ReadPassesData("four_sites.tpg")); }

TEST(PassesPipeline, IdempotentOnDecomposedForms) {
  ExpectIdempotent(ReadPassesData("decomposed_layer.tpg"));
}

TEST(PassesPipeline, IdempotentWithRejections) {
  ExpectIdempotent(R"(
    func @f(%x: bf16[T, 256], %x2: bf16[T, 256], %w: bf16[256, 64], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %o = matmul(%ar, %w)
      %ar2 = all_reduce(%x2) {group = "dp"}
      %y = rms_norm(%ar2, %g) {eps = 1e-6}
      return %o, %y
    }
  )");
}

// The exported layer with every variant at once: decomposed norm (Gemma's 1 + w), decomposed
// static quant by multiplication, swapped add, a view around the all_reduce.
TEST(PassesPipeline, DecomposedLayerFusesCompletely) {
  Compiled c = Compile(ReadPassesData("decomposed_layer.tpg"));
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %partial.view = view(%partial) {shape = [T, 256]}
    CHECK: %hidden, %fp8 = allreduce_rmsnorm(%partial.view, %residual, %norm_w, %quant_scale)
    CHECK-SAME: emit = ["residual", "quant"]
    CHECK-SAME: quant = "fp8_tensor", weight_bias = 1.0
    CHECK: %out = scaled_matmul(%fp8, %act_scale, %w_o, %w_scale)
    CHECK: return %out, %hidden
  )");
  ExpectFusions(c.ctx, {{"sum", QuantMode::kFp8Tensor, {"residual", "quant"}}});
  EXPECT_EQ(c.after->num_nodes(), 3) << Print(*c.after);
  ExpectSameOutputs(c);
}

// ---------------------------------------------------------------- the greedy driver

// Sets the all_reduce group from "tp" to `to_`: two of these compete for the same root.
class RenameGroup final : public Pattern {
 public:
  RenameGroup(std::string name, int benefit, std::string from, std::string to)
      : name_(std::move(name)), benefit_(benefit), from_(std::move(from)), to_(std::move(to)) {}
  std::string_view name() const override { return name_; }
  int benefit() const override { return benefit_; }
  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->op() != "all_reduce") return false;
    const ir::Attr* group = root->attr("group");
    const std::string current = group ? *group->AsText() : "tp";
    if (current != from_) return false;
    rw.SetAttr(root, "group", ir::Attr::Str(to_));
    return true;
  }

 private:
  std::string name_;
  int benefit_;
  std::string from_, to_;
};

// Always declines, with one reason.
class AlwaysDeclines final : public Pattern {
 public:
  std::string_view name() const override { return "declines"; }
  int benefit() const override { return 0; }
  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter&, MatchNotes& notes) const override {
    if (root->op() == "all_reduce") notes.Decline("never");
    return false;
  }
};

constexpr char kTwoAllReduces[] = R"(
  func @f(%a: bf16[T, 256], %b: bf16[T, 256]) {
    %x = all_reduce(%a)
    %y = all_reduce(%b)
    return %x, %y
  }
)";

TEST(PassesGreedy, HighestBenefitFirst) {
  std::unique_ptr<ir::Graph> g = ParseOrFail(kTwoAllReduces);
  ASSERT_TRUE(g);
  PatternList patterns;
  patterns.push_back(std::make_unique<RenameGroup>("low", 1, "tp", "low"));
  patterns.push_back(std::make_unique<RenameGroup>("high", 2, "tp", "high"));
  PassContext ctx;
  StatusOr<bool> changed = ApplyPatternsGreedily(*g, patterns, ctx);
  ASSERT_TRUE(changed.ok()) << changed.status().ToString();
  EXPECT_TRUE(*changed);
  FileCheck(Print(*g), R"(
    CHECK: %x = all_reduce(%a) {group = "high"}
    CHECK: %y = all_reduce(%b) {group = "high"}
  )");
  EXPECT_EQ(Counter(ctx, "high", "applied"), 2);
  EXPECT_EQ(Counter(ctx, "low", "applied"), 0);
}

TEST(PassesGreedy, RunsToAFixpoint) {
  std::unique_ptr<ir::Graph> g = ParseOrFail(kTwoAllReduces);
  ASSERT_TRUE(g);
  PatternList patterns;  // tp -> a -> b -> c: three sweeps of changes, then a quiet one
  patterns.push_back(std::make_unique<RenameGroup>("b_to_c", 1, "b", "c"));
  patterns.push_back(std::make_unique<RenameGroup>("a_to_b", 1, "a", "b"));
  patterns.push_back(std::make_unique<RenameGroup>("tp_to_a", 1, "tp", "a"));
  patterns.push_back(std::make_unique<AlwaysDeclines>());
  PassContext ctx;
  ASSERT_TRUE(ApplyPatternsGreedily(*g, patterns, ctx).ok());
  FileCheck(Print(*g), R"(
    CHECK: {group = "c"}
    CHECK: {group = "c"}
  )");
  // Declines come from the final sweep only: once per node, not once per sweep.
  EXPECT_EQ(Counter(ctx, "declines", "declined: never"), 2);
}

TEST(PassesGreedy, PatternsThatUndoEachOtherHitTheCap) {
  std::unique_ptr<ir::Graph> g = ParseOrFail(kTwoAllReduces);
  ASSERT_TRUE(g);
  PatternList patterns;
  patterns.push_back(std::make_unique<RenameGroup>("there", 1, "tp", "dp"));
  patterns.push_back(std::make_unique<RenameGroup>("back", 1, "dp", "tp"));
  PassContext ctx;
  StatusOr<bool> result = ApplyPatternsGreedily(*g, patterns, ctx, GreedyOptions{.max_sweeps = 8});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInternal);
  EXPECT_NE(result.status().message().find("did not reach a fixpoint after 8 sweeps"),
            std::string::npos)
      << result.status().ToString();
}

TEST(PassesGreedy, NothingMatchesNothingChanges) {
  std::unique_ptr<ir::Graph> g = ParseOrFail(kTwoAllReduces);
  ASSERT_TRUE(g);
  PatternList patterns;
  patterns.push_back(std::make_unique<AlwaysDeclines>());
  PassContext ctx;
  StatusOr<bool> changed = ApplyPatternsGreedily(*g, patterns, ctx);
  ASSERT_TRUE(changed.ok());
  EXPECT_FALSE(*changed);
}

// ---------------------------------------------------------------- dce

TEST(PassesDce, RemovesDeadChainsAndKeepsParams) {
  std::unique_ptr<ir::Graph> g = ParseOrFail(R"(
    func @f(%x: bf16[T, 256], %unused: bf16[256]) {
      %a = add(%x) {scalar = 1}
      %b = mul(%a) {scalar = 2}
      %q, %s = quant_fp8(%b) {mode = "token"}
      %c = add(%x) {scalar = 3}
      return %c
    }
  )");
  ASSERT_TRUE(g);
  PassManager pm;
  pm.Add(MakeDcePass());
  PassContext ctx;
  StatusOr<bool> changed = pm.Run(*g, ctx);
  ASSERT_TRUE(changed.ok()) << changed.status().ToString();
  EXPECT_TRUE(*changed);
  EXPECT_EQ(Print(*g),
            "func @f(%x: bf16[T, 256], %unused: bf16[256]) {\n"
            "  %c = add(%x) {scalar = 3}\n"
            "  return %c\n"
            "}\n");
  EXPECT_EQ(Counter(ctx, "dce", "removed"), 3);
  // A quant whose scale alone is used stays whole.
  std::unique_ptr<ir::Graph> partly = ParseOrFail(R"(
    func @f(%x: bf16[T, 256]) {
      %q, %s = quant_fp8(%x) {mode = "token"}
      return %s
    }
  )");
  ASSERT_TRUE(partly);
  PassContext ctx2;
  changed = pm.Run(*partly, ctx2);
  ASSERT_TRUE(changed.ok());
  EXPECT_FALSE(*changed);
}

// ---------------------------------------------------------------- the harness checks itself

TEST(PassesHarness, NumericCheckCatchesAWrongFusion) {
  static std::unique_ptr<ir::Graph> unfused, wrong;
  unfused = ParseOrFail(R"(
    func @f(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      return %y
    }
  )");
  wrong = ParseOrFail(R"(
    func @f(%x: bf16[T, 256], %g: bf16[256]) {
      %y = allreduce_rmsnorm(%x, %g) {eps = 0.5, emit = ["norm"]}
      return %y
    }
  )");
  ASSERT_TRUE(unfused && wrong);
  EXPECT_NONFATAL_FAILURE(ExpectSameOutputs(*unfused, *wrong, 2, {3}), "report->ok");
}

TEST(PassesHarness, FileCheckCatchesMissingAndForbiddenLines) {
  EXPECT_NONFATAL_FAILURE(FileCheck("a\nb\n", "CHECK: c"), "'c' not found");
  EXPECT_NONFATAL_FAILURE(FileCheck("a\nb\n", "CHECK: b\nCHECK: a"), "'a' not found");
  EXPECT_NONFATAL_FAILURE(FileCheck("a x\nb\n", "CHECK: a\nCHECK-NOT: x\nCHECK: b"),
                          "CHECK-NOT: 'x'");
  EXPECT_NONFATAL_FAILURE(FileCheck("a\nb x\n", "CHECK: a\nCHECK-SAME: x"), "'x' not found");
  FileCheck("a x y\nb\n", "CHECK: a\nCHECK-SAME: y\nCHECK-NOT: a\nCHECK: b");
}

}  // namespace
}  // namespace tpfuse::passes::testing
