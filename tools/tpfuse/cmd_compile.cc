// tpfuse compile FILE.tpg [--world-size N] [--max-tokens T] [--backend cpu|cuda] [-o OUT.tpg]
//                         [--json] [--print-after-all]
//
// Parses the module (or builds a model's decode graph from a .json description), runs the
// default pipeline on every func for the target backend's capabilities, and prints the fused
// module. The summary of fusions and rejections goes to stderr, so stdout is the graph alone.
//
// --json prints one JSON object instead:
//   {"file", "backend", "world_size", "max_tokens",
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
};

template <class Map>
void AddCounts(Map& into, const Map& from) {
  for (const auto& [key, n] : from) into[key] += n;
}

nlohmann::ordered_json RejectionJson(const passes::Rejection& rejection) {
  return {{"anchor", rejection.anchor}, {"reason", rejection.reason}};
}

// The per-func part of the JSON report.
nlohmann::ordered_json FuncJson(const ir::Graph& input, const Compiled& c) {
  nlohmann::ordered_json fusions = nlohmann::ordered_json::array();
  for (const passes::FusionRecord& f : c.ctx.fusions) fusions.push_back(FusionJson(f));
  nlohmann::ordered_json rejections = nlohmann::ordered_json::array();
  for (const passes::Rejection& r : c.ctx.rejections) rejections.push_back(RejectionJson(r));
  return {{"name", input.name()}, {"ops_before", c.ops_before}, {"ops_after", c.ops_after},
          {"fusions", fusions},   {"rejections", rejections},   {"counters", c.ctx.counters}};
}

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
  os << "  ops before (" << TotalOps(c.ops_before) << "): " << FormatOpCounts(c.ops_before) << "\n"
     << "  ops after  (" << TotalOps(c.ops_after) << "): " << FormatOpCounts(c.ops_after) << "\n";
}

int RunCompile(const CompileArgs& args) {
  StatusOr<Program> program = LoadProgram(args.file, args.world_size);
  if (!program.ok()) return Fail(kCommand, program.status());

  CompileOptions options;
  options.world_size = args.world_size;
  options.max_tokens = args.max_tokens;
  options.backend = ParseBackendName(args.backend);
  options.dump = args.print_after_all ? &std::cerr : nullptr;

  ir::Module fused;
  std::vector<Compiled> results;
  for (const std::unique_ptr<ir::Graph>& func : program->funcs) {
    if (options.dump) *options.dump << "# ---- @" << func->name() << "\n";
    StatusOr<Compiled> compiled = CompileGraph(*func, options);
    if (!compiled.ok()) return Fail(kCommand, compiled.status());
    results.push_back(std::move(*compiled));
  }
  for (Compiled& c : results) fused.funcs.push_back(std::move(c.graph));
  const std::string text = ir::PrintModule(fused);

  if (!args.output.empty()) {
    std::ofstream out(args.output, std::ios::binary);
    out << text;
    out.close();
    if (!out) return Fail(kCommand, InvalidArgument("cannot write ", args.output));
  }

  if (args.json) {
    nlohmann::ordered_json report = {{"file", args.file},
                                     {"backend", args.backend},
                                     {"world_size", args.world_size},
                                     {"max_tokens", args.max_tokens}};
    std::map<std::string, int> ops_before, ops_after;
    std::map<std::string, std::map<std::string, int>> counters;
    nlohmann::ordered_json fusions = nlohmann::ordered_json::array();
    nlohmann::ordered_json rejections = nlohmann::ordered_json::array();
    nlohmann::ordered_json funcs = nlohmann::ordered_json::array();
    for (size_t i = 0; i < results.size(); ++i) {
      const ir::Graph& input = *program->funcs[i];
      const Compiled& c = results[i];
      AddCounts(ops_before, c.ops_before);
      AddCounts(ops_after, c.ops_after);
      for (const auto& [rule, rule_counters] : c.ctx.counters)
        AddCounts(counters[rule], rule_counters);
      for (const passes::FusionRecord& f : c.ctx.fusions) {
        nlohmann::ordered_json j = FusionJson(f);
        j["func"] = input.name();
        fusions.push_back(std::move(j));
      }
      for (const passes::Rejection& r : c.ctx.rejections) {
        nlohmann::ordered_json j = RejectionJson(r);
        j["func"] = input.name();
        rejections.push_back(std::move(j));
      }
      funcs.push_back(FuncJson(input, c));
    }
    report["ops_before"] = ops_before;
    report["ops_after"] = ops_after;
    report["fusions"] = fusions;
    report["rejections"] = rejections;
    report["counters"] = counters;
    report["funcs"] = funcs;
    std::cout << report.dump(2) << "\n";
    return kExitOk;
  }

  if (args.output.empty()) std::cout << text;
  for (size_t i = 0; i < results.size(); ++i)
    PrintSummary(*program->funcs[i], results[i], args, std::cerr);
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
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--max-tokens", args->max_tokens, "largest token count T (0: unknown)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--backend", args->backend, "target whose fused op capabilities apply")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("-o,--output", args->output, "write the fused graph here instead of stdout");
  cmd->add_flag("--json", args->json, "print one JSON report (op counts, fusions, rejections)");
  cmd->add_flag("--print-after-all", args->print_after_all,
                "print the graph after every pass (to stderr)");
  cmd->callback([&run, args] { run = [args] { return RunCompile(*args); }; });
}

}  // namespace tpfuse::cli
