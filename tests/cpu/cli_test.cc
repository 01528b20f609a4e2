// The tpfuse binary as a user runs it (DESIGN.md Contract 4): exit codes (0 ok, 1 invalid input
// with a message naming the problem, 2 usage), `compile --json`'s report, `compile`'s text output,
// `run --check`, and `demo`.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "ir/parser.h"
#include "support/cli_runner.h"

namespace {

struct CliResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Per process: ctest runs the tests of this file in parallel processes.
std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/tpfuse_cli_test_" + std::to_string(::getpid()) + "_" + name;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Runs `tpfuse <args>`; stdout through a pipe, stderr through a file.
CliResult RunCli(const std::string& args) {
  const std::string err_path = TempPath("stderr.txt");
  const tpfuse::testing::CliResult r =
      tpfuse::testing::RunCommand(tpfuse::testing::CliPath() + " " + args + " 2>" + err_path);
  return CliResult{r.exit_code, r.output, ReadFile(err_path)};
}

bool Contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

// Two funcs: Contract 1's example (one chain: group quant + a bf16 GEMM on the norm) and a
// plain all_reduce that nothing follows (left unfused, with its reason).
constexpr char kGraph[] = R"(# two funcs for the CLI tests
func @layer(%x: bf16[T, 4096], %res: bf16[T, 4096], %g: bf16[4096], %wk: bf16[4096, 128]) {
  %ar = all_reduce(%x)
  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
  %q, %s = quant_fp8(%y) {mode = "group", group_size = 128}
  %k = matmul(%y, %wk)
  return %q, %s, %r, %k
}

func @plain(%x: bf16[T, 256]) {
  %y = all_reduce(%x)
  return %y
}
)";

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    graph_path_ = TempPath("graph.tpg");
    WriteFile(graph_path_, kGraph);
  }
  void TearDown() override {
    const std::string prefix = std::filesystem::path(TempPath("")).filename();
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(::testing::TempDir(), ec)) {
      if (entry.path().filename().string().rfind(prefix, 0) == 0)
        std::filesystem::remove_all(entry.path(), ec);
    }
  }
  std::string graph_path_;
};

// ---------------------------------------------------------------- usage and exit codes

TEST_F(CliTest, HelpNamesEverySubcommandAndExitsZero) {
  const CliResult r = RunCli("--help");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const char* sub : {"compile", "run", "bench", "tune", "demo"})
    EXPECT_TRUE(Contains(r.out, sub)) << sub << "\n" << r.out;
  for (const char* sub : {"compile", "run", "demo"}) {
    const CliResult help = RunCli(std::string(sub) + " --help");
    EXPECT_EQ(help.exit_code, 0) << sub << ": " << help.err;
    EXPECT_TRUE(Contains(help.out, "--world-size")) << sub << "\n" << help.out;
  }
}

TEST_F(CliTest, VersionExitsZero) {
  const CliResult r = RunCli("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.out, "tpfuse ")) << r.out;
}

TEST_F(CliTest, UsageErrorsExitTwoWithAMessage) {
  for (const std::string args :
       {std::string(""), std::string("frobnicate"), std::string("compile"),
        "compile " + graph_path_ + " --no-such-flag", "compile " + graph_path_ + " --world-size x",
        "compile " + graph_path_ + " --backend tpu", "run " + graph_path_ + " --tokens 0",
        "compile " + graph_path_ + " run " + graph_path_, std::string("demo --world-size 0")}) {
    const CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 2) << "tpfuse " << args << "\n" << r.out << r.err;
    EXPECT_FALSE(r.err.empty()) << "tpfuse " << args;
  }
}

// An integer option of compile, run or demo names what is wrong with its value, as bench's do:
// text that is no integer, or an integer outside the option's range, with the range.
TEST_F(CliTest, IntegerOptionsNameTheirValueAndRange) {
  const std::pair<std::string, std::string> cases[] = {
      {"compile " + graph_path_ + " --max-tokens -3", "--max-tokens: -3 is outside 0.."},
      {"compile " + graph_path_ + " --max-tokens 1e3", "--max-tokens: '1e3' is not an integer"},
      {"run " + graph_path_ + " --seed abc", "--seed: 'abc' is not an integer"},
      {"run " + graph_path_ + " --tokens 2000000", "--tokens: 2000000 is outside 1..1048576"},
      {"run " + graph_path_ + " -n 1025", "--world-size: 1025 is outside 1..1024"},
      {"demo --tokens 1.5", "--tokens: '1.5' is not an integer"},
      {"run " + graph_path_ + " --dim T=x", "--dim: the value of T: 'x' is not an integer"},
  };
  for (const auto& [args, message] : cases) {
    const CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 2) << "tpfuse " << args << "\n" << r.err;
    EXPECT_TRUE(Contains(r.err, message)) << "tpfuse " << args << "\n" << r.err;
  }
  const CliResult largest = RunCli("run " + graph_path_ + " --seed 9223372036854775807 --tokens 2");
  EXPECT_EQ(largest.exit_code, 0) << largest.err;
}

TEST_F(CliTest, UnknownSubcommandIsNamed) {
  const CliResult r = RunCli("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(Contains(r.err, "unknown subcommand 'frobnicate'")) << r.err;
}

TEST_F(CliTest, BadGraphExitsOneNamingLineAndColumn) {
  const std::string bad = TempPath("bad.tpg");
  WriteFile(bad, "func @f(%x: bf16[T, 64]) {\n  %y = all_reduse(%x)\n  return %y\n}\n");
  for (const char* command : {"compile", "run"}) {
    const CliResult r = RunCli(std::string(command) + " " + bad);
    EXPECT_EQ(r.exit_code, 1) << command << ": " << r.err;
    EXPECT_TRUE(Contains(r.err, "bad.tpg:2:8")) << r.err;
    EXPECT_TRUE(Contains(r.err, "all_reduse")) << r.err;
  }
  // A missing file and a model description with a wrong field are invalid input too.
  const CliResult missing = RunCli("compile " + TempPath("missing.tpg"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_TRUE(Contains(missing.err, "missing.tpg")) << missing.err;
  const std::string model = TempPath("model.json");
  WriteFile(model, R"({"hidden_size": 4096, "num_hidden_layers": 2, "intermediate_size": 1024,
                       "num_attention_heads": 32, "quant": "fp9"})");
  const CliResult bad_model = RunCli("run " + model);
  EXPECT_EQ(bad_model.exit_code, 1);
  EXPECT_TRUE(Contains(bad_model.err, "model.json: field 'quant'")) << bad_model.err;
}

// Shapes too large for the machine are refused with their sizes before anything is allocated,
// and widths past the IR's largest dim in a model description are named; exit 1, no abort.
TEST_F(CliTest, ShapesLargerThanTheMachineAreRefusedWithTheirSizes) {
  const std::string huge = TempPath("huge.tpg");
  WriteFile(huge, "func @f(%x: bf16[2147483647, 2147483647]) {\n  %y = all_reduce(%x)\n"
                  "  return %y\n}\n");
  const CliResult r = RunCli("run " + huge);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(Contains(r.err, "the inputs need more than this machine's")) << r.err;
  EXPECT_TRUE(Contains(r.err, "parameter %x, bf16[2147483647, 2147483647]")) << r.err;
  const std::string model = TempPath("wide.json");
  WriteFile(model, R"({"hidden_size": 1099511627776, "num_hidden_layers": 2,
                       "intermediate_size": 1024, "num_attention_heads": 32})");
  const CliResult wide = RunCli("compile " + model);
  EXPECT_EQ(wide.exit_code, 1) << wide.err;
  EXPECT_TRUE(Contains(wide.err, "field 'hidden_size': must be at most 2147483647")) << wide.err;
}

// An empty value where a value is due (a shell variable left unset) is a usage error, not the
// default or stdout.
TEST_F(CliTest, AnEmptyValueIsAUsageError) {
  const std::string compile = "compile " + graph_path_ + " -o ''";
  for (const std::string args : {compile, std::string("bench --tokens ''"),
                                 std::string("tune --quant ''")}) {
    const CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.out << r.err;
    EXPECT_TRUE(Contains(r.err, "an empty")) << args << ": " << r.err;
  }
}

// run says which symbols the token count (or --dim) binds, and the rows they give.
TEST_F(CliTest, RunNamesTheShapeSymbolsTheTokenCountBinds) {
  const std::string bs = TempPath("bs.tpg");
  const std::string f = "func @f(%x: bf16[B, S, 64], %g: bf16[64]) {\n  %a = all_reduce(%x)\n"
                        "  %y = rms_norm(%a, %g) {eps = 1e-6}\n  return %y\n}\n";
  WriteFile(bs, f);
  const CliResult r = RunCli("run " + bs + " --tokens 3");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "@f: world size 2, B = S = 3 (9 rows),")) << r.out;
  EXPECT_TRUE(Contains(r.out, "bf16[3, 3, 64]")) << r.out;

  // --dim gives one symbol its own value; the others keep the token count.
  const CliResult dim = RunCli("run " + bs + " --tokens 3 --dim B=2 --check");
  EXPECT_EQ(dim.exit_code, 0) << dim.err;
  EXPECT_TRUE(Contains(dim.out, "@f: world size 2, B = 2, S = 3 (6 rows),")) << dim.out;
  EXPECT_TRUE(Contains(dim.out, "bf16[2, 3, 64]")) << dim.out;
  EXPECT_TRUE(Contains(dim.out, "PASS")) << dim.out;

  // A symbol the graph lacks is an error about the input; a malformed --dim a usage error.
  const CliResult unknown = RunCli("run " + bs + " --dim T=2");
  EXPECT_EQ(unknown.exit_code, 1) << unknown.out;
  EXPECT_TRUE(Contains(unknown.err, "--dim: no shape symbol T (the shape symbols: B, S)"))
      << unknown.err;
  // In a module, a --dim binds its symbol in the funcs that have it.
  const std::string two = TempPath("two.tpg");
  WriteFile(two, f + "func @g(%x: bf16[T, 64], %g: bf16[64]) {\n  %a = all_reduce(%x)\n"
                 "  %y = rms_norm(%a, %g) {eps = 1e-6}\n  return %y\n}\n");
  const CliResult module = RunCli("run " + two + " --tokens 3 --dim S=5 --check");
  EXPECT_EQ(module.exit_code, 0) << module.err;
  EXPECT_TRUE(Contains(module.out, "@f: world size 2, B = 3, S = 5 (15 rows),")) << module.out;
  EXPECT_TRUE(Contains(module.out, "@g: world size 2, T = 3,")) << module.out;
  for (const std::string bad : {"B", "B=0", "B=x", "=3", "B=2097152"}) {
    const CliResult r2 = RunCli("run " + bs + " --dim " + bad);
    EXPECT_EQ(r2.exit_code, 2) << bad << "\n" << r2.err;
    EXPECT_TRUE(Contains(r2.err, "Run 'tpfuse run --help' for usage.")) << bad << "\n" << r2.err;
  }
}

// ---------------------------------------------------------------- compile

TEST_F(CliTest, CompileJsonIsOneObjectWithCountsFusionsAndRejections) {
  const CliResult r = RunCli("compile " + graph_path_ + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(r.out)) << r.out;
  for (const char* key : {"ops_before", "ops_after", "fusions", "rejections", "counters", "funcs"})
    ASSERT_TRUE(j.contains(key)) << key << "\n" << r.out;

  // Merged over the two funcs.
  EXPECT_EQ(j["ops_before"]["all_reduce"], 2);
  EXPECT_EQ(j["ops_before"]["fused_add_rms_norm"], 1);
  EXPECT_EQ(j["ops_before"]["quant_fp8"], 1);
  EXPECT_EQ(j["ops_after"]["allreduce_rmsnorm"], 1);
  EXPECT_EQ(j["ops_after"]["all_reduce"], 1);  // @plain's
  EXPECT_EQ(j["ops_after"]["matmul"], 1);
  EXPECT_FALSE(j["ops_after"].contains("quant_fp8"));

  ASSERT_EQ(j["fusions"].size(), 1u);
  const nlohmann::json& f = j["fusions"][0];
  EXPECT_EQ(f["anchor"], "ar");
  EXPECT_EQ(f["quant"], "fp8_group");
  EXPECT_EQ(f["emit"], nlohmann::json({"norm", "residual", "quant"}));
  EXPECT_EQ(f["group_size"], 128);
  EXPECT_EQ(f["has_residual"], true);
  EXPECT_EQ(f["func"], "layer");

  ASSERT_EQ(j["rejections"].size(), 1u);
  EXPECT_EQ(j["rejections"][0]["anchor"], "y");
  EXPECT_FALSE(j["rejections"][0]["reason"].get<std::string>().empty());
  EXPECT_EQ(j["rejections"][0]["func"], "plain");

  EXPECT_EQ(j["counters"]["fuse_allreduce_epilogue"]["anchors_seen"], 2);
  EXPECT_EQ(j["counters"]["fuse_allreduce_epilogue"]["fused"], 1);

  // Per func.
  ASSERT_EQ(j["funcs"].size(), 2u);
  EXPECT_EQ(j["funcs"][0]["name"], "layer");
  EXPECT_EQ(j["funcs"][0]["fusions"].size(), 1u);
  EXPECT_EQ(j["funcs"][1]["name"], "plain");
  EXPECT_EQ(j["funcs"][1]["rejections"].size(), 1u);
}

TEST_F(CliTest, CompileJsonFollowsTheBackendAndWorldSize) {
  // World size 1 fuses chains locally by default (--fuse-local auto); off leaves them.
  const CliResult one = RunCli("compile " + graph_path_ + " --json --world-size 1");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const nlohmann::json j = nlohmann::json::parse(one.out);
  ASSERT_EQ(j["fusions"].size(), 1u) << one.out;
  EXPECT_EQ(j["fusions"][0]["local"], true);
  EXPECT_EQ(j["rejections"].size(), 1u);
  EXPECT_EQ(j["world_size"], 1);
  EXPECT_EQ(j["fuse_local"], true);
  const CliResult off =
      RunCli("compile " + graph_path_ + " --json --world-size 1 --fuse-local off");
  ASSERT_EQ(off.exit_code, 0) << off.err;
  const nlohmann::json k = nlohmann::json::parse(off.out);
  EXPECT_EQ(k["fusions"].size(), 0u);
  EXPECT_EQ(k["rejections"].size(), 2u);
  EXPECT_EQ(RunCli("compile " + graph_path_ + " --fuse-local sometimes").exit_code, 2);

  // The CUDA backend's capabilities are plain data: compiling for it works without a GPU.
  const CliResult cuda =
      RunCli("compile " + graph_path_ + " --json --backend cuda --world-size 16");
  ASSERT_EQ(cuda.exit_code, 0) << cuda.err;
  const nlohmann::json c = nlohmann::json::parse(cuda.out);
  EXPECT_EQ(c["backend"], "cuda");
  // No all_reduce fuses at world size 16; on CUDA, --fuse-local auto fuses @main's norm after
  // it as a local op (the fused local op was measured faster than tpfuse's unfused kernels).
  EXPECT_EQ(c["fuse_local"], true);
  ASSERT_EQ(c["fusions"].size(), 1u) << c;
  EXPECT_EQ(c["fusions"][0]["local"], true) << c["fusions"][0];
  ASSERT_GE(c["rejections"].size(), 1u);
  EXPECT_TRUE(Contains(c["rejections"][0]["reason"].get<std::string>(), "world size 16"))
      << c["rejections"];
}

TEST_F(CliTest, CompilePrintsAParseableGraphAndASummaryOnStderr) {
  const CliResult r = RunCli("compile " + graph_path_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "allreduce_rmsnorm")) << r.out;
  tpfuse::StatusOr<tpfuse::ir::Module> module = tpfuse::ir::ParseModule(r.out, "stdout");
  ASSERT_TRUE(module.ok()) << module.status().ToString() << "\n" << r.out;
  EXPECT_EQ(module->funcs.size(), 2u);
  EXPECT_TRUE(Contains(r.err, "1 fusion")) << r.err;
  EXPECT_TRUE(Contains(r.err, "%y")) << r.err;  // @plain's all_reduce, with its reason

  // -o writes the same text to the file; --print-after-all dumps every pass on stderr.
  const std::string out_path = TempPath("fused.tpg");
  const CliResult o = RunCli("compile " + graph_path_ + " -o " + out_path + " --print-after-all");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(ReadFile(out_path), r.out);
  EXPECT_TRUE(Contains(o.err, "# after fuse_allreduce_epilogue")) << o.err;
}

TEST_F(CliTest, CompileAcceptsAModelDescription) {
  const CliResult r = RunCli("compile " + std::string(TPFUSE_MODELS_DIR) + "/gemma.json --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["fusions"].size(), 4u);
  EXPECT_EQ(j["rejections"].size(), 0u);
}

// ---------------------------------------------------------------- run

TEST_F(CliTest, RunCheckPassesOnAGoodGraph) {
  const CliResult r = RunCli("run " + graph_path_ + " --check --tokens 3 --seed 7");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, "PASS")) << r.out;
  EXPECT_TRUE(Contains(r.out, "%q")) << r.out;
  EXPECT_TRUE(Contains(r.out, "bf16[3, 4096]")) << r.out;

  // The same seed gives the same outputs: the checksums repeat.
  const CliResult again = RunCli("run " + graph_path_ + " --tokens 3 --seed 7");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  const std::string line = r.out.substr(r.out.find("%q  "), 60);
  EXPECT_TRUE(Contains(again.out, line)) << line << "\n" << again.out;

  const CliResult unfused = RunCli("run " + graph_path_ + " --check --no-fuse --tokens 2");
  EXPECT_EQ(unfused.exit_code, 0) << unfused.out << unfused.err;
}

// The check carries the run's GEMM outputs over to the oracle and says so: the returned %k is
// the run's own, and the GEMM gets its own line, compared with the oracle's.
TEST_F(CliTest, RunCheckCarriesTheGemmsOver) {
  const CliResult r = RunCli("run " + graph_path_ + " --check --tokens 3");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, "what follows a GEMM reads the run's GEMM output")) << r.out;
  EXPECT_TRUE(Contains(r.out, "gemm (the run's GEMM, carried over)")) << r.out;
  EXPECT_TRUE(Contains(r.out, "gemm (from the run's earlier GEMMs)")) << r.out;
  EXPECT_TRUE(Contains(r.out, "PASS: 4 outputs and 1 GEMM on 2 ranks")) << r.out;
  // @plain has no GEMM: nothing is carried over.
  EXPECT_TRUE(Contains(r.out, "PASS: 1 output on 2 ranks")) << r.out;
}

TEST_F(CliTest, RunExactComparesBitwise) {
  // On the cpu backend the fused graph computes the unfused graph's bits.
  const CliResult r = RunCli("run " + graph_path_ + " --exact --tokens 5 --seed 3");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, "PASS")) << r.out;
  EXPECT_TRUE(Contains(r.out, "bitwise equal")) << r.out;
  EXPECT_FALSE(Contains(r.out, "within Contract 3's tolerance")) << r.out;
  const CliResult help = RunCli("run --help");
  EXPECT_TRUE(Contains(help.out, "--exact")) << help.out;
}

// The chained graphs of the dynamic FP8 quant written in torch ops: every site fuses and the
// fused graph computes the unfused graph's bits.
TEST_F(CliTest, RunExactOnTheDynamicQuantForms) {
  for (const char* file : {"dynamic_token_quant.tpg", "dynamic_group_quant.tpg"}) {
    const std::string path = std::string(TPFUSE_TEST_DATA_DIR) + "/forms/" + file;
    for (int tokens : {1, 5, 33}) {
      for (int seed : {1, 7}) {
        const std::string args = "run " + path + " --exact --tokens " + std::to_string(tokens) +
                                 " --seed " + std::to_string(seed);
        const CliResult r = RunCli(args);
        EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.out << r.err;
        EXPECT_TRUE(Contains(r.out, "bitwise equal")) << args << "\n" << r.out;
      }
    }
  }
}

// The f32 residual stream and the f32 norm output fused at TP 2 against their decomposed graphs,
// and canonical norms with recipes run as written: every output bit for bit.
TEST_F(CliTest, RunExactOnTheF32ResidualStreamAndTheNormRecipes) {
  const std::string forms = std::string(TPFUSE_TEST_DATA_DIR) + "/forms/";
  for (const std::string args : {"run " + forms + "f32_residual_stream.tpg --exact --dim B=2 --dim S=7",
                                 "run " + forms + "flashinfer_f32_reference.tpg --exact --tokens 9",
                                 "run " + forms + "norm_recipes.tpg --exact --no-fuse -n 1 --tokens 5"}) {
    const CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.out << r.err;
    EXPECT_TRUE(Contains(r.out, "bitwise equal")) << args << "\n" << r.out;
  }
  const CliResult fused = RunCli("run " + forms + "f32_residual_stream.tpg --dim B=1 --dim S=3");
  EXPECT_TRUE(Contains(fused.out, "2 fused, 0 left unfused")) << fused.out;
}

TEST_F(CliTest, RunRefusesAnOpaqueOpNamingIt) {
  const std::string path = TempPath("opaque.tpg");
  WriteFile(path,
            "func @f(%x: bf16[T, 64]) {\n"
            "  %ar = all_reduce(%x)\n"
            "  %y = opaque(%ar) {name = \"aten.silu\"} : bf16[T, 64]\n"
            "  return %y\n"
            "}\n");
  const CliResult r = RunCli("run " + path + " --tokens 2");
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_TRUE(Contains(r.err, "opaque op 'aten.silu'")) << r.err;
  // It compiles (the passes leave it alone) and prints back as it was written.
  const CliResult c = RunCli("compile " + path);
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_TRUE(Contains(c.out, "opaque(%ar) {name = \"aten.silu\"} : bf16[T, 64]")) << c.out;
}

TEST_F(CliTest, RunOnCudaWithoutTheBackendSaysSo) {
#if TPFUSE_HAVE_CUDA
  GTEST_SKIP() << "this build has the CUDA backend";
#else
  const CliResult r = RunCli("run " + graph_path_ + " --backend cuda");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "without the CUDA backend")) << r.err;
#endif
}

// ---------------------------------------------------------------- demo

TEST_F(CliTest, DemoPassesAndSaysWhereItRan) {
  const CliResult r = RunCli("demo --tokens 4");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  for (const char* model : {"llama-3.1-8b-fp8", "deepseek-v3.2", "qwen3-next", "gemma"})
    EXPECT_TRUE(Contains(r.out, model)) << model;
  EXPECT_TRUE(Contains(r.out, "rejections: none")) << r.out;
  EXPECT_TRUE(Contains(r.out, "PASS: ")) << r.out;
#if !TPFUSE_HAVE_CUDA
  EXPECT_TRUE(Contains(r.out, "ran on the CPU reference backend with 2 simulated ranks")) << r.out;
#endif
}

TEST_F(CliTest, DemoFailsOnABadModelDirectory) {
  const CliResult none = RunCli("demo --models " + TempPath("no_such_dir"));
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_TRUE(Contains(none.err, "no_such_dir")) << none.err;

  // One broken description: the others still run, the verdict fails and names it.
  const std::string dir = TempPath("models");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(std::string(TPFUSE_MODELS_DIR) + "/gemma.json", dir + "/gemma.json",
                             std::filesystem::copy_options::overwrite_existing);
  WriteFile(dir + "/broken.json", R"({"hidden_size": -1})");
  const CliResult r = RunCli("demo --tokens 2 --models " + dir);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(Contains(r.out, "broken.json: field 'hidden_size'")) << r.out;
  EXPECT_TRUE(Contains(r.out, "1 of 2 models")) << r.out;
}

}  // namespace
