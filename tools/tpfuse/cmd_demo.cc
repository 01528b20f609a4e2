// tpfuse demo [--models DIR] [--world-size N] [--tokens T] [--seed S] [--backend auto|cpu|cuda]
//
// The main job, on whatever machine it finds:
//   1. compiles every bundled model (models/*.json) and prints, per model, the op counts before
//      and after, every fusion with what it emits, and every rejection with its reason;
//   2. runs each fused graph on the backend and the unfused graph on the CPU oracle with the
//      same inputs at N ranks, and compares every output with Contract 3's tolerance;
//   3. prints a summary table and a verdict. Exit 0 only when every model compiled, ran and
//      passed every check.
// The backend is CUDA when this build has it and the machine has at least N GPUs; otherwise
// the CPU reference backend with N simulated ranks, and the demo says so.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>

#include "common/clock.h"
#include "runtime/check.h"
#include "runtime/inputs.h"
#include "tpfuse/cli_common.h"
#include "tpfuse/commands.h"

namespace tpfuse::cli {
namespace {

constexpr char kCommand[] = "demo";

struct DemoArgs {
  std::string models_dir = models::BundledModelsDir();
  int world_size = 0;  // 0: 2, or 1 on a machine with one GPU (TP 1 on the GPU)
  int64_t tokens = 8;
  uint64_t seed = 1;
  std::string backend = "auto";
};

// What happened to one model, for the summary table.
struct ModelOutcome {
  std::string name;
  int chains = 0;  // all_reduce ops before compiling
  int fusions = 0;  // of those, the ones a fused op took over (two where it sums two)
  int local = 0;    // local chains no all_reduce feeds (--fuse-local auto fuses them on CUDA)
  int rejections = 0;
  int outputs = 0;
  int bitwise = 0;  // outputs bitwise equal to the oracle's on every rank
  double seconds = 0.0;
  bool ok = false;
  std::string error;  // why the model did not get through, if it did not
};

std::string Fixed(double value, int digits) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << value;
  return os.str();
}

// The backend and the sentence that says why it was chosen.
struct BackendChoice {
  Backend backend = Backend::kCpu;
  std::string why;
};

StatusOr<BackendChoice> ChooseBackend(const DemoArgs& args) {
  const int gpus = CudaDeviceCount();
  const std::string cpu_words =
      StrCat("ran on the CPU reference backend with ", args.world_size, " simulated ranks");
  if (args.backend == "cpu")
    return BackendChoice{Backend::kCpu, StrCat("--backend cpu: ", cpu_words)};
  if (args.backend == "cuda") {
    if (!CudaBuilt() || gpus < args.world_size)
      return MakeExecutor(Backend::kCuda, args.world_size).status();
    return BackendChoice{Backend::kCuda,
                         StrCat("ran on ", args.world_size, " of ", gpus, " GPUs (CUDA backend)")};
  }
  if (!CudaBuilt())
    return BackendChoice{Backend::kCpu,
                         StrCat("no GPU found: ", cpu_words, " (this build has no CUDA backend)")};
  if (gpus == 0) return BackendChoice{Backend::kCpu, StrCat("no GPU found: ", cpu_words)};
  if (gpus < args.world_size)
    return BackendChoice{Backend::kCpu,
                         StrCat("found ", gpus, " GPU, need ", args.world_size, ": ", cpu_words)};
  return BackendChoice{Backend::kCuda,
                       StrCat("ran on ", args.world_size, " of ", gpus, " GPUs (CUDA backend)")};
}

// Op counts before and after, one row per op that appears in either.
void PrintOpTable(const Compiled& c, std::ostream& os) {
  std::set<std::string> ops;
  for (const auto& [op, n] : c.ops_before) ops.insert(op);
  for (const auto& [op, n] : c.ops_after) ops.insert(op);
  const auto count = [](const std::map<std::string, int>& m, const std::string& op) {
    auto it = m.find(op);
    return it == m.end() ? 0 : it->second;
  };
  os << "      " << std::left << std::setw(22) << "op" << std::right << std::setw(8) << "before"
     << std::setw(8) << "after"
     << "\n";
  for (const std::string& op : ops) {
    os << "      " << std::left << std::setw(22) << op << std::right << std::setw(8)
       << count(c.ops_before, op) << std::setw(8) << count(c.ops_after, op) << "\n";
  }
  os << "      " << std::left << std::setw(22) << "total" << std::right << std::setw(8)
     << TotalOps(c.ops_before) << std::setw(8) << TotalOps(c.ops_after) << "\n";
}

// Compiles one model and prints its section. Fills the outcome's compile fields.
StatusOr<Compiled> CompileModel(const Program& program, const DemoArgs& args, Backend backend,
                                ModelOutcome& outcome) {
  const models::ModelConfig& model = *program.model;
  const ir::Graph& graph = *program.funcs[0];
  CompileOptions options;
  options.world_size = args.world_size;
  options.max_tokens = args.tokens;
  options.backend = backend;
  TPFUSE_ASSIGN_OR_RETURN(Compiled c, CompileGraph(graph, options));
  outcome.chains = c.ops_before.count("all_reduce") ? c.ops_before.at("all_reduce") : 0;
  std::set<std::string> all_reduces;
  for (const ir::Node* n : graph.NodesSnapshot())
    if (n->kind() == ir::OpKind::kAllReduce) all_reduces.insert(n->result()->name());
  for (const passes::FusionRecord& f : c.ctx.fusions) {
    if (all_reduces.count(f.anchor)) {
      outcome.fusions += 1 + int(all_reduces.count(f.second_anchor));
    } else {
      ++outcome.local;
    }
  }
  outcome.rejections = int(c.ctx.rejections.size());

  std::cout << "      " << model.Summary() << "\n";
  PrintOpTable(c, std::cout);
  std::cout << "      fused " << outcome.fusions << " of " << outcome.chains
            << " all_reduces"
            << (outcome.local ? StrCat(" and ", outcome.local, " local chain(s)") : "") << ":\n";
  for (const passes::FusionRecord& f : c.ctx.fusions) {
    std::cout << "        " << DescribeFusion(f) << "\n";
    for (const std::string& note : f.notes) std::cout << "          note: " << note << "\n";
  }
  if (c.ctx.rejections.empty()) std::cout << "      rejections: none\n";
  for (const passes::Rejection& r : c.ctx.rejections)
    std::cout << "      rejected %" << r.anchor << ": " << r.reason << "\n";
  return c;
}

// Runs the fused graph on the backend and the unfused one on the oracle; prints one line per
// output. Returns whether every output is within tolerance.
StatusOr<bool> CheckModel(const ir::Graph& unfused, const ir::Graph& fused, const DemoArgs& args,
                          runtime::Executor& executor, runtime::Executor& oracle,
                          ModelOutcome& outcome) {
  TPFUSE_ASSIGN_OR_RETURN(
      std::vector<runtime::TensorMap> inputs,
      runtime::MakeRandomInputs(unfused, args.world_size, args.tokens, args.seed));
  TPFUSE_ASSIGN_OR_RETURN(
      runtime::CheckedRun run,
      runtime::RunAndCheck(unfused, fused, executor, oracle, std::move(inputs)));
  const runtime::CheckReport& report = run.report;
  // The graph's outputs first, then its GEMMs, each checked on the run's operands.
  outcome.outputs = int(report.outputs.size()) - report.gemms;
  for (size_t i = 0; i < report.outputs.size(); ++i) {
    const runtime::OutputCheck& o = report.outputs[i];
    std::cout << "      " << o.ToString() << "\n";
    if (int(i) < outcome.outputs && o.ok && o.max_abs_err == 0.0 && o.max_ulp_err == 0.0)
      ++outcome.bitwise;
  }
  return report.ok;
}

// The world size when --world-size is not given: TP 1 on a machine with exactly one GPU (the
// models then run on it, every all_reduce the identity), else two ranks (GPUs or simulated).
int DefaultWorldSize(const DemoArgs& args) {
  if (args.backend == "cpu" || !CudaBuilt()) return 2;
  return CudaDeviceCount() == 1 ? 1 : 2;
}

int RunDemo(DemoArgs args) {
  const auto demo_start = std::chrono::steady_clock::now();
  if (args.world_size == 0) args.world_size = DefaultWorldSize(args);
  StatusOr<BackendChoice> choice = ChooseBackend(args);
  if (!choice.ok()) return Fail(kCommand, choice.status());
  StatusOr<std::vector<std::string>> files = models::ListModelFiles(args.models_dir);
  if (!files.ok()) return Fail(kCommand, files.status());

  std::cout << "tpfuse demo: " << files->size() << " models from " << args.models_dir
            << ", world size " << args.world_size << ", T = " << args.tokens << ", seed "
            << args.seed << "\n";
  // One executor for every model: on the GPUs, creating the communicators is the slow part.
  StatusOr<std::unique_ptr<runtime::Executor>> executor =
      MakeExecutor(choice->backend, args.world_size);
  if (!executor.ok()) return Fail(kCommand, executor.status());
  const std::unique_ptr<runtime::Executor> oracle = runtime::MakeCpuExecutor(args.world_size);
  const bool on_gpu = choice->backend == Backend::kCuda;
  std::cout << (on_gpu ? "backend: CUDA, fused graphs on the GPUs, checked against the CPU oracle"
                       : "backend: CPU reference (no GPU used)")
            << "\n\n";

  std::vector<ModelOutcome> outcomes;
  for (size_t i = 0; i < files->size(); ++i) {
    const std::string& file = (*files)[i];
    ModelOutcome outcome;
    const auto start = std::chrono::steady_clock::now();
    std::cout << "[" << i + 1 << "/" << files->size() << "] ";

    StatusOr<Program> program = LoadProgram(file, args.world_size);
    if (!program.ok()) {
      outcome.name = file;
      outcome.error = program.status().message();
      std::cout << file << "\n      error: " << outcome.error << "\n\n";
      outcomes.push_back(outcome);
      continue;
    }
    const models::ModelConfig& model = *program->model;
    outcome.name = model.name;
    std::cout << model.name << (model.description.empty() ? "" : ": " + model.description) << "\n";

    StatusOr<Compiled> compiled = CompileModel(*program, args, choice->backend, outcome);
    if (!compiled.ok()) {
      outcome.error = compiled.status().message();
      std::cout << "      error: " << outcome.error << "\n\n";
      outcomes.push_back(outcome);
      continue;
    }
    std::cout << "      fused (" << BackendName(choice->backend) << ") vs unfused (CPU oracle), "
              << args.world_size << " ranks, T = " << args.tokens << ":\n";
    std::cout.flush();
    StatusOr<bool> ok =
        CheckModel(*program->funcs[0], *compiled->graph, args, **executor, *oracle, outcome);
    outcome.seconds = SecondsSince(start);
    if (!ok.ok()) {
      outcome.error = ok.status().message();
      std::cout << "      error: " << outcome.error << "\n\n";
    } else {
      outcome.ok = *ok;
      if (!outcome.ok) outcome.error = "outputs out of tolerance";
      std::cout << "      " << (outcome.ok ? "PASS" : "FAIL") << " (" << Fixed(outcome.seconds, 2)
                << " s)\n\n"
                << std::flush;
    }
    outcomes.push_back(outcome);
  }

  // ---- summary
  int passed = 0;
  std::cout << "summary\n"
            << "  " << std::left << std::setw(34) << "model" << std::right << std::setw(9)
            << "fused" << std::setw(12) << "rejections" << std::setw(9) << "outputs" << std::setw(9)
            << "bitwise" << std::setw(9) << "time"
            << "  verdict\n";
  for (const ModelOutcome& o : outcomes) {
    passed += o.ok ? 1 : 0;
    std::cout << "  " << std::left << std::setw(34) << o.name << std::right << std::setw(9)
              << StrCat(o.fusions, "/", o.chains) << std::setw(12) << o.rejections << std::setw(9)
              << o.outputs << std::setw(9) << o.bitwise << std::setw(9)
              << (Fixed(o.seconds, 2) + " s") << "  " << (o.ok ? "PASS" : "FAIL: " + o.error)
              << "\n";
  }
  std::cout << "  (outputs: checked with Contract 3's tolerance on every rank, the oracle reading "
               "the run's GEMM outputs; bitwise: of those, equal to the oracle bit for bit)\n\n";
  std::cout << choice->why << ".\n";
  const bool all_ok = passed == int(outcomes.size());
  std::cout << (all_ok ? "PASS" : "FAIL") << ": " << passed << " of " << outcomes.size()
            << " models fused and matched the CPU oracle within Contract 3's tolerance ("
            << Fixed(SecondsSince(demo_start), 1) << " s)\n";
  return all_ok ? kExitOk : kExitInvalidInput;
}

}  // namespace

void AddDemoCommand(CLI::App& app, CommandFn& run) {
  auto args = std::make_shared<DemoArgs>();
  CLI::App* cmd = app.add_subcommand(
      kCommand, "Compile every bundled model, run fused vs unfused, check (GPUs if there are any)");
  cmd->add_option("--models", args->models_dir, "directory of model descriptions (*.json)")
      ->capture_default_str();
  cmd->add_option("--world-size,-n", args->world_size,
                  "ranks: GPUs, or simulated on the CPU backend (default: 1 on a machine with one "
                  "GPU, else 2)")
      ->check(IntegerIn(1, 64));
  cmd->add_option("--tokens,-t", args->tokens, "token count T")
      ->capture_default_str()
      ->check(IntegerIn(1, 4096));
  cmd->add_option("--seed", args->seed, "seed of the random inputs (0 .. 2^63 - 1, as bench)")
      ->capture_default_str()
      ->check(IntegerIn(0, INT64_MAX));
  cmd->add_option("--backend", args->backend,
                  "auto: the GPUs when the build has CUDA and the machine enough GPUs")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->callback([&run, args] { run = [args] { return RunDemo(*args); }; });
}

}  // namespace tpfuse::cli
