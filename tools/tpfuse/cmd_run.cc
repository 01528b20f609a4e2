// tpfuse run FILE.tpg|MODEL.json [--backend cpu|cuda] [--world-size N] [--tokens T]
//                                [--dim NAME=VALUE]... [--check] [--seed S] [--no-fuse]
//
// Builds the graph, binds its shape symbols (each to T, or to the value --dim gives it), draws
// random inputs for N ranks (runtime::MakeRandomInputs: the same for a graph and its fused
// form), compiles it for the backend (for the rows the bindings give) and runs it there.
// Prints one line per output (rank 0: type, checksum, a few values) and whether the ranks agree
// bitwise.
//
// --check also runs the unfused graph on the CPU oracle and compares every output of every
// rank with Contract 3's tolerance; any output out of tolerance exits 1. --exact (implies
// --check) compares every output bit for bit instead: on the cpu backend a graph fused with the
// rounding recipe of the form it replaced computes the unfused graph's bits (Contract 3); on the
// cuda backend a NaN matches any NaN (the GPU has one NaN).
#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <memory>
#include <set>

#include "common/clock.h"
#include "runtime/check.h"
#include "runtime/inputs.h"
#include "tpfuse/cli_common.h"
#include "tpfuse/commands.h"

namespace tpfuse::cli {
namespace {

constexpr char kCommand[] = "run";
// The largest token count, and value of a shape symbol, run takes.
constexpr int64_t kMaxTokens = int64_t{1} << 20;

struct RunArgs {
  std::string file;
  std::string backend = "cpu";
  int world_size = 0;  // 0: the model's tp_size, or 2 for a .tpg
  int64_t tokens = 8;
  runtime::ShapeBindings dims;  // --dim NAME=VALUE
  bool check = false;
  bool exact = false;
  uint64_t seed = 1;
  bool no_fuse = false;
};

// Runs one func; returns whether every check passed (true without --check), or an error.
// `module`: the value of every shape symbol of the module (RunRun); this func takes its own.
StatusOr<bool> RunFunc(const ir::Graph& graph, const RunArgs& args, int world_size,
                       const runtime::ShapeBindings& module, runtime::Executor& executor) {
  const Backend backend = ParseBackendName(args.backend);
  // Every shape symbol takes the token count or its --dim: say which, and the rows they give.
  runtime::ShapeBindings bindings;
  for (const std::string& symbol : runtime::ShapeSymbols(graph))
    bindings[symbol] = module.at(symbol);
  const int64_t rows = runtime::SymbolRows(graph, bindings);
  std::cout << "@" << graph.name() << ": world size " << world_size << ", "
            << (bindings.empty() ? StrCat("no shape symbols (T = ", args.tokens, " unused)")
                : bindings.size() == 1 ? runtime::FormatBindings(bindings)
                                       : StrCat(runtime::FormatBindings(bindings), " (", rows,
                                                " rows)"))
            << ", backend " << BackendName(backend) << (args.no_fuse ? ", unfused" : ", fused")
            << ", seed " << args.seed << "\n";

  TPFUSE_ASSIGN_OR_RETURN(std::vector<runtime::TensorMap> inputs,
                          runtime::MakeRandomInputs(graph, world_size, bindings, args.seed));

  // The graph to run: the compiled one, or the input itself with --no-fuse.
  std::unique_ptr<ir::Graph> compiled_graph;
  const ir::Graph* to_run = &graph;
  if (!args.no_fuse) {
    CompileOptions options;
    options.world_size = world_size;
    options.max_tokens = rows > 0 ? rows : args.tokens;
    options.backend = backend;
    TPFUSE_ASSIGN_OR_RETURN(Compiled compiled, CompileGraph(graph, options));
    std::cout << "  compiled: " << compiled.ctx.fusions.size() << " fused, "
              << compiled.ctx.rejections.size() << " left unfused; ops "
              << TotalOps(compiled.ops_before) << " -> " << TotalOps(compiled.ops_after) << "\n";
    for (const passes::Rejection& r : compiled.ctx.rejections)
      std::cout << "    unfused %" << r.anchor << ": " << r.reason << "\n";
    compiled_graph = std::move(compiled.graph);
    to_run = compiled_graph.get();
  }

  const bool checking = args.check || args.exact;
  // On the GPU a NaN is the GPU's one NaN, whatever payload the oracle's carries.
  const runtime::CompareMode mode =
      !args.exact ? runtime::CompareMode::kTolerance
      : backend == Backend::kCuda ? runtime::CompareMode::kBitwiseAnyNaN
                                  : runtime::CompareMode::kBitwise;
  runtime::CheckedRun run;
  if (checking) {
    std::unique_ptr<runtime::Executor> oracle = runtime::MakeCpuExecutor(world_size);
    TPFUSE_ASSIGN_OR_RETURN(run, runtime::RunAndCheck(graph, *to_run, executor, *oracle,
                                                      std::move(inputs), mode));
  } else {
    auto start = std::chrono::steady_clock::now();
    TPFUSE_ASSIGN_OR_RETURN(run.outputs, executor.Run(*to_run, inputs));
    run.run_seconds = SecondsSince(start);
  }
  const runtime::RankOutputs& outputs = run.outputs;

  std::cout << "  outputs (rank 0), " << FormatSeconds(run.run_seconds) << " on "
            << executor.name() << ":\n";
  const std::vector<ir::Value*>& returned = to_run->outputs();
  for (size_t i = 0; i < returned.size() && i < outputs[0].size(); ++i) {
    std::cout << "    %" << returned[i]->name() << "  " << SummarizeTensor(outputs[0][i]) << "\n";
  }
  if (world_size > 1) {
    // Per-rank partials (e.g. a row-parallel GEMM's output) legitimately differ across ranks;
    // this is a fact about the graph, not a check.
    const Status same = runtime::CheckRanksIdentical(*to_run, outputs);
    // "output %y differs between rank 0 and rank 1: <comparison>": the part before the colon.
    const std::string first = same.message().substr(0, same.message().find(": "));
    std::cout << "  ranks: "
              << (same.ok() ? "every output is bitwise identical on every rank"
                            : "per-rank outputs (" + first + ")")
              << "\n";
  }
  if (!checking) return true;

  const runtime::CheckReport& report = run.report;
  std::cout << "  check against the CPU oracle (unfused graph, "
            << FormatSeconds(run.oracle_seconds)
            << (report.gemms > 0 ? "; what follows a GEMM reads the run's GEMM output, and "
                                   "each GEMM is compared with the oracle's from there"
                                 : "")
            << "):\n";
  for (const runtime::OutputCheck& o : report.outputs) std::cout << "    " << o.ToString() << "\n";
  const auto counted = [](int n, const char* what) {
    return StrCat(n, " ", what, n == 1 ? "" : "s");
  };
  std::string checked = counted(int(report.outputs.size()) - report.gemms, "output");
  if (report.gemms > 0) checked += " and " + counted(report.gemms, "GEMM");
  std::cout << "  " << (report.ok ? "PASS" : "FAIL") << ": " << checked << " on "
            << counted(world_size, "rank") << " "
            << (report.ok ? (!args.exact ? "within Contract 3's tolerance"
                             : mode == runtime::CompareMode::kBitwiseAnyNaN && report.gemms > 0
                                 ? "bitwise equal, the GEMMs (cuBLAS's) within their bound"
                                 : "bitwise equal")
                          : (args.exact ? "checked, some not bitwise equal"
                                        : "checked, some out of tolerance"))
            << "\n";
  return report.ok;
}

int RunRun(const RunArgs& args) {
  if (args.backend == "cuda" && !CudaBuilt())
    return Fail(kCommand, MakeExecutor(Backend::kCuda, 2).status());
  StatusOr<Program> program = LoadProgram(args.file, args.world_size);
  if (!program.ok()) return Fail(kCommand, program.status());
  const int world_size = args.world_size > 0 ? args.world_size
                         : program->model    ? program->model->tp_size
                                             : 2;
  // Each --dim must name a shape symbol of some func; each func takes its symbols' values.
  std::set<std::string> symbols;
  for (const std::unique_ptr<ir::Graph>& func : program->funcs)
    for (const std::string& symbol : runtime::ShapeSymbols(*func)) symbols.insert(symbol);
  StatusOr<runtime::ShapeBindings> bindings = runtime::BindShapeSymbols(
      {symbols.begin(), symbols.end()}, args.tokens, args.dims);
  if (!bindings.ok()) return Fail(kCommand, bindings.status().WithContext("--dim"));
  // One executor for every func (on the GPUs, creating the communicators is the slow part).
  StatusOr<std::unique_ptr<runtime::Executor>> executor =
      MakeExecutor(ParseBackendName(args.backend), world_size);
  if (!executor.ok()) return Fail(kCommand, executor.status());
  if (program->model)
    std::cout << "model " << program->model->name << ": " << program->model->Summary() << "\n";

  bool all_ok = true;
  for (const std::unique_ptr<ir::Graph>& func : program->funcs) {
    StatusOr<bool> ok = RunFunc(*func, args, world_size, *bindings, **executor);
    if (!ok.ok()) return Fail(kCommand, ok.status().WithContext("@" + func->name()));
    all_ok = all_ok && *ok;
  }
  return all_ok ? kExitOk : kExitInvalidInput;
}

}  // namespace

void AddRunCommand(CLI::App& app, CommandFn& run) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand(
      kCommand,
      "Run a graph (.tpg) or a model (.json) on random inputs; --check against the oracle");
  cmd->add_option("file", args->file, "the graph (.tpg) or model description (.json)")->required();
  cmd->add_option("--backend", args->backend, "where the fused graph runs")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--world-size,-n", args->world_size,
                  "ranks (default: the model's tp_size, 2 for a .tpg)")
      ->check(IntegerIn(1, 1024));
  cmd->add_option("--tokens,-t", args->tokens,
                  "token count T: the value of every shape symbol of the graph --dim does not "
                  "give (T; B and S alike, so [B, S, H] has T^2 rows)")
      ->capture_default_str()
      ->check(IntegerIn(1, kMaxTokens));
  cmd->add_option_function<std::vector<std::string>>(
         "--dim",
         [args](const std::vector<std::string>& dims) {
           for (const std::string& d : dims) {
             const size_t eq = d.find('=');
             args->dims[d.substr(0, eq)] = std::stoll(d.substr(eq + 1));
           }
         },
         StrCat("NAME=VALUE: the value of shape symbol NAME, 1..", kMaxTokens,
                " (repeatable: --dim B=2 --dim S=150); a func of the file must have the symbol"))
      ->type_name("NAME=VALUE")
      ->check(CLI::Validator(
          [](std::string& d) -> std::string {
            const size_t eq = d.find('=');
            if (eq == 0 || eq == std::string::npos) return "expected NAME=VALUE, got '" + d + "'";
            std::string value = d.substr(eq + 1);
            const std::string why = IntegerIn(1, kMaxTokens)(value);
            return why.empty() ? why : "the value of " + d.substr(0, eq) + ": " + why;
          },
          ""));
  cmd->add_flag("--check", args->check,
                "also run the unfused graph on the CPU oracle and compare with Contract 3's "
                "tolerance; the oracle reads the run's GEMM outputs for what follows each GEMM, "
                "and each GEMM is compared with the oracle's from there");
  cmd->add_flag("--exact", args->exact,
                "like --check, but every output must be bitwise equal (on the cpu backend a "
                "graph fused with its form's rounding recipe computes the unfused graph's bits; "
                "on the cuda backend a NaN matches any NaN, the GPU having one, and the GEMMs, "
                "cuBLAS's, keep their bound)");
  cmd->add_option("--seed", args->seed, "seed of the random inputs (0 .. 2^63 - 1, as bench)")
      ->capture_default_str()
      ->check(IntegerIn(0, INT64_MAX));
  cmd->add_flag("--no-fuse", args->no_fuse, "run the graph as written, without compiling it");
  cmd->callback([&run, args] { run = [args] { return RunRun(*args); }; });
}

}  // namespace tpfuse::cli
