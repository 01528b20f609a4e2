// The printer: exact output for Contract 1's example, and parse -> print -> parse -> print
// stability over every test graph.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "ir/ops.h"
#include "ir/parser.h"
#include "ir/printer.h"
#include "ir/verifier.h"

namespace tpfuse::ir {
namespace {

std::vector<std::string> TestGraphPaths() {
  std::vector<std::string> paths;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(TPFUSE_TEST_DATA_DIR) + "/ir")) {
    if (entry.path().extension() == ".tpg") paths.push_back(entry.path().string());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

// Same name, parameters, nodes (op, operands, attributes, results and their types, in order)
// and outputs.
void ExpectEquivalent(const Graph& a, const Graph& b) {
  EXPECT_EQ(a.name(), b.name());
  ASSERT_EQ(a.params().size(), b.params().size());
  for (size_t i = 0; i < a.params().size(); ++i) {
    EXPECT_EQ(a.params()[i]->name(), b.params()[i]->name());
    EXPECT_EQ(a.params()[i]->type(), b.params()[i]->type());
  }
  ASSERT_EQ(a.num_nodes(), b.num_nodes());
  const std::vector<Node*> na = a.NodesSnapshot();
  const std::vector<Node*> nb = b.NodesSnapshot();
  for (size_t i = 0; i < na.size(); ++i) {
    SCOPED_TRACE(StrCat("node ", i, " ", na[i]->op()));
    EXPECT_EQ(na[i]->op(), nb[i]->op());
    EXPECT_EQ(na[i]->attrs(), nb[i]->attrs());
    ASSERT_EQ(na[i]->num_operands(), nb[i]->num_operands());
    for (int k = 0; k < na[i]->num_operands(); ++k)
      EXPECT_EQ(na[i]->operand(k)->name(), nb[i]->operand(k)->name());
    ASSERT_EQ(na[i]->num_results(), nb[i]->num_results());
    for (int k = 0; k < na[i]->num_results(); ++k) {
      EXPECT_EQ(na[i]->result(k)->name(), nb[i]->result(k)->name());
      EXPECT_EQ(na[i]->result(k)->type(), nb[i]->result(k)->type());
      EXPECT_EQ(na[i]->result(k)->num_uses(), nb[i]->result(k)->num_uses());
    }
  }
  ASSERT_EQ(a.outputs().size(), b.outputs().size());
  for (size_t i = 0; i < a.outputs().size(); ++i)
    EXPECT_EQ(a.outputs()[i]->name(), b.outputs()[i]->name());
}

TEST(IrPrinterTest, ContractExampleGolden) {
  StatusOr<Module> module =
      ParseModuleFile(std::string(TPFUSE_TEST_DATA_DIR) + "/ir/contract1_example.tpg");
  ASSERT_TRUE(module.ok()) << module.status().message();
  EXPECT_EQ(PrintGraph(*module->funcs[0]),
            "func @layer(%x: bf16[T, 4096], %res: bf16[T, 4096], %g: bf16[4096], "
            "%wk: bf16[4096, 128]) {\n"
            "  %ar = all_reduce(%x)  # bf16[T, 4096]\n"
            "  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-06}  "
            "# bf16[T, 4096], bf16[T, 4096]\n"
            "  %q, %s = quant_fp8(%y) {group_size = 128, mode = \"group\"}  "
            "# f8e4m3[T, 4096], f32[T, 32]\n"
            "  %k = matmul(%y, %wk)  # bf16[T, 128]\n"
            "  return %q, %s, %r, %k\n"
            "}\n");
  EXPECT_EQ(PrintGraph(*module->funcs[0], PrintOptions{.result_types = false}),
            "func @layer(%x: bf16[T, 4096], %res: bf16[T, 4096], %g: bf16[4096], "
            "%wk: bf16[4096, 128]) {\n"
            "  %ar = all_reduce(%x)\n"
            "  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-06}\n"
            "  %q, %s = quant_fp8(%y) {group_size = 128, mode = \"group\"}\n"
            "  %k = matmul(%y, %wk)\n"
            "  return %q, %s, %r, %k\n"
            "}\n");
}

TEST(IrPrinterTest, RoundTripEveryTestGraph) {
  const std::vector<std::string> paths = TestGraphPaths();
  ASSERT_GE(paths.size(), 8u);
  for (const std::string& path : paths) {
    SCOPED_TRACE(path);
    StatusOr<Module> first = ParseModuleFile(path);
    ASSERT_TRUE(first.ok()) << first.status().message();
    for (bool types : {true, false}) {
      const PrintOptions options{.result_types = types};
      const std::string text1 = PrintModule(*first, options);
      StatusOr<Module> second = ParseModule(text1, "printed");
      ASSERT_TRUE(second.ok()) << second.status().message() << "\n" << text1;
      const std::string text2 = PrintModule(*second, options);
      EXPECT_EQ(text1, text2);
      ASSERT_EQ(first->funcs.size(), second->funcs.size());
      for (size_t i = 0; i < first->funcs.size(); ++i) {
        ExpectEquivalent(*first->funcs[i], *second->funcs[i]);
        EXPECT_TRUE(Verify(*second->funcs[i]).ok());
      }
    }
  }
}

TEST(IrPrinterTest, NumbersAndStringsRoundTrip) {
  const std::string text =
      "func @f(%x: f32[4]) {\n"
      "  %a = add(%x) {scalar = 0.1}\n"
      "  %b = mul(%a) {scalar = 1e-300}\n"
      "  %c = sub(%b) {scalar = -0.0}\n"
      "  %d = div(%c) {scalar = 123456789012345678}\n"
      "  %e = clamp(%d) {max = inf, min = -inf}\n"
      "  %g = add(%e) {scalar = 3.0}\n"
      "  %h = all_reduce(%g) {group = \"quote \\\" and \\\\ backslash\"}\n"
      "  return %h\n"
      "}\n";
  StatusOr<std::unique_ptr<Graph>> g = ParseGraph(text);
  ASSERT_TRUE(g.ok()) << g.status().message();
  const std::string printed = PrintGraph(**g, PrintOptions{.result_types = false});
  EXPECT_NE(printed.find("{scalar = 0.1}"), std::string::npos) << printed;
  EXPECT_NE(printed.find("{scalar = 1e-300}"), std::string::npos) << printed;
  EXPECT_NE(printed.find("{scalar = -0.0}"), std::string::npos) << printed;
  EXPECT_NE(printed.find("{scalar = 123456789012345678}"), std::string::npos) << printed;
  EXPECT_NE(printed.find("{max = inf, min = -inf}"), std::string::npos) << printed;
  EXPECT_NE(printed.find("{scalar = 3.0}"), std::string::npos) << printed;
  EXPECT_NE(printed.find("{group = \"quote \\\" and \\\\ backslash\"}"), std::string::npos)
      << printed;
  StatusOr<std::unique_ptr<Graph>> again = ParseGraph(printed);
  ASSERT_TRUE(again.ok()) << again.status().message();
  ExpectEquivalent(**g, **again);
  EXPECT_EQ(PrintGraph(**again, PrintOptions{.result_types = false}), printed);
}

TEST(IrPrinterTest, BuiltGraphsPrintParseable) {
  // A graph made through the API, as a pass would: generated names, the fused op's attributes.
  Graph g("built");
  Value* x = g.AddParam("x", TensorType{DType::kBF16, {Dim::Sym("T"), Dim::Const(256)}});
  Value* w = g.AddParam("w", TensorType{DType::kF32, {Dim::Const(256)}});
  AllreduceRmsnormSpec spec;
  spec.hidden = 256;
  spec.weight_dtype = DType::kF32;
  spec.quant = QuantMode::kFp8Group;
  spec.scale_layout = ScaleLayout::kCol;
  spec.emit = EmitSet{.norm = true, .quant = true};
  StatusOr<Node*> fused = BuildNode(g, "allreduce_rmsnorm", {x, w}, FusedAttrsFromSpec(spec),
                                    {"x", "", g.UniqueName("s")});
  ASSERT_TRUE(fused.ok()) << fused.status().message();
  EXPECT_EQ((*fused)->result(0)->name(), "x.1");
  EXPECT_EQ((*fused)->result(1)->name(), "allreduce_rmsnorm_1");
  g.SetOutputs((*fused)->results());
  ASSERT_TRUE(Verify(g).ok());
  const std::string printed = PrintGraph(g);
  EXPECT_EQ(printed,
            "func @built(%x: bf16[T, 256], %w: f32[256]) {\n"
            "  %x.1, %allreduce_rmsnorm_1, %s = allreduce_rmsnorm(%x, %w) {emit = [\"norm\", "
            "\"quant\"], eps = 1e-06, group_size = 128, quant = \"fp8_group\", scale_fmt = "
            "\"f32\", scale_layout = \"col\"}  # bf16[T, 256], f8e4m3[T, 256], f32[2, pad4(T)]\n"
            "  return %x.1, %allreduce_rmsnorm_1, %s\n"
            "}\n");
  StatusOr<std::unique_ptr<Graph>> back = ParseGraph(printed);
  ASSERT_TRUE(back.ok()) << back.status().message();
  ExpectEquivalent(g, **back);
}

TEST(IrPrinterTest, ModuleSeparatesFuncsWithBlankLines) {
  StatusOr<Module> m =
      ParseModule("func @a(%x: f32[2]) { return %x }\nfunc @b(%y: f32[3]) { return %y }");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(PrintModule(*m),
            "func @a(%x: f32[2]) {\n  return %x\n}\n\nfunc @b(%y: f32[3]) {\n  return %y\n}\n");
}

}  // namespace
}  // namespace tpfuse::ir
