// tpfuse compile FILE.tpg [--world-size N] [--max-tokens T] [--backend cpu|cuda] [-o OUT.tpg]
//                         [--json] [--print-after-all] [--fuse-local auto|inductor|on|off]
//
// Parses the module (or builds a model's decode graph from a .json description), runs the
// default pipeline on every func for the target backend's capabilities, and prints the fused
// module. The summary of fusions and rejections goes to stderr, so stdout is the graph alone.
//
// --json prints one JSON object instead (passes/compile.h, CompileResult::json):
//   {"source", "backend", "world_size", "max_tokens", "fuse_local",
//    "ops_before", "ops_after", "fusions", "rejections", "counters",   <- every func merged
//    "funcs": [{"name", "ops_before", "ops_after", "fusions", "rejections", "counters"}, ...]}
// Merged op counts and counters are sums over the funcs; merged fusions and rejections carry a
// "func" key. With -o, the fused module is written to the file in both modes.
#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "ir/printer.h"
#include "tpfuse/cli_common.h"
#include "tpfuse/commands.h"

namespace tpfuse::cli {
namespace {

constexpr char kCommand[] = "compile";

struct CompileArgs {
  std::string file;
  int world_size = 2;
  int64_t max_tokens = 0;
  std::string backend = "cpu";
  std::string output;
  bool json = false;
  bool print_after_all = false;
  std::string fuse_local = "auto";
};

// Human summary of one func, for stderr.
void PrintSummary(const ir::Graph& input, const Compiled& c, const CompileArgs& args,
                  std::ostream& os) {
  os << "@" << input.name() << " (backend " << args.backend << ", world size " << args.world_size
     << "): " << c.ctx.fusions.size() << " fusion" << (c.ctx.fusions.size() == 1 ? "" : "s") << ", "
     << c.ctx.rejections.size() << " rejection" << (c.ctx.rejections.size() == 1 ? "" : "s")
     << "\n";
  for (const passes::FusionRecord& f : c.ctx.fusions) {
    os << "  fused    " << DescribeFusion(f) << "\n";
    for (const std::string& note : f.notes) os << "           note: " << note << "\n";
  }
  for (const passes::Rejection& r : c.ctx.rejections)
    os << "  unfused  %" << r.anchor << ": " << r.reason << "\n";
  // Local chains left alone are no rejections (those are about all_reduces).
  for (const passes::Rejection& r : c.ctx.local_unfused)
    os << "  local    %" << r.anchor << " left unfused: " << r.reason << "\n";
  os << "  ops before (" << TotalOps(c.ops_before) << "): " << FormatOpCounts(c.ops_before) << "\n"
     << "  ops after  (" << TotalOps(c.ops_after) << "): " << FormatOpCounts(c.ops_after) << "\n";
}

int RunCompile(const CompileArgs& args) {
  StatusOr<Program> program = LoadProgram(args.file, args.world_size);
  if (!program.ok()) return Fail(kCommand, program.status());
  StatusOr<passes::FuseLocal> fuse_local = passes::ParseFuseLocal(args.fuse_local);
  if (!fuse_local.ok()) return Fail(kCommand, fuse_local.status());

  CompileOptions options;
  options.world_size = args.world_size;
  options.max_tokens = args.max_tokens;
  options.backend = ParseBackendName(args.backend);
  options.fuse_local = *fuse_local;
  options.dump = args.print_after_all ? &std::cerr : nullptr;

  std::vector<const ir::Graph*> funcs;
  for (const std::unique_ptr<ir::Graph>& func : program->funcs) funcs.push_back(func.get());
  StatusOr<passes::CompileResult> result =
      passes::CompileModule(funcs, options.ForLibrary(), args.file);
  if (!result.ok()) return Fail(kCommand, result.status());

  if (!args.output.empty()) {
    std::ofstream out(args.output, std::ios::binary);
    out << result->text;
    out.close();
    if (!out) return Fail(kCommand, InvalidArgument("cannot write ", args.output));
  }

  if (args.json) {
    std::cout << result->json << "\n";
    return kExitOk;
  }

  if (args.output.empty()) std::cout << result->text;
  for (size_t i = 0; i < result->funcs.size(); ++i)
    PrintSummary(*program->funcs[i], result->funcs[i], args, std::cerr);
  if (!args.output.empty()) std::cerr << "wrote " << args.output << "\n";
  return kExitOk;
}

}  // namespace

void AddCompileCommand(CLI::App& app, CommandFn& run) {
  auto args = std::make_shared<CompileArgs>();
  CLI::App* cmd = app.add_subcommand(
      kCommand, "Fuse the all_reduce epilogues of a graph (.tpg, or a model .json) and print it");
  cmd->add_option("file", args->file, "the graph (.tpg) or model description (.json)")->required();
  cmd->add_option("--world-size,-n", args->world_size, "TP degree the graph runs at")
      ->capture_default_str()
      ->check(IntegerIn(1, 1024));
  cmd->add_option("--max-tokens", args->max_tokens,
                  "largest token count T, counted as the chains' rows (B * S for [B, S, H]; "
                  "0: unknown)")
      ->capture_default_str()
      ->check(IntegerIn(0, INT64_MAX));
  cmd->add_option("--backend", args->backend, "target whose fused op capabilities apply")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("-o,--output", args->output, "write the fused graph here instead of stdout")
      ->check(CLI::Validator(
          [](const std::string& path) { return path.empty() ? std::string("an empty path") : ""; },
          "PATH"));
  cmd->add_flag("--json", args->json, "print one JSON report (op counts, fusions, rejections)");
  cmd->add_option("--fuse-local", args->fuse_local,
                  "fuse [add ->] rms_norm [-> quant] chains that no all_reduce feeds into the "
                  "local fused op (no communication): auto = backend cuda at every world size (the "
                  "fused op beat tpfuse's unfused kernels in every measured quantized shape), "
                  "backend cpu at world size 1 only, where every all_reduce is the identity "
                  "(docs/pytorch.md); inductor = auto less, on backend cuda, the chains Inductor's own "
                  "kernel was measured faster on, unless the chain's rows are a constant or --max-tokens is below "
                  "the T where it was (the table: docs/pytorch.md, \"Local chains\"; what the "
                  "PyTorch pass uses); on = at every world size (e.g. the first layer's norm of the "
                  "embedding), off = never")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "inductor", "on", "off"}));
  cmd->add_flag("--print-after-all", args->print_after_all,
                "print the graph after every pass (to stderr)");
  cmd->callback([&run, args] { run = [args] { return RunCompile(*args); }; });
}

}  // namespace tpfuse::cli
