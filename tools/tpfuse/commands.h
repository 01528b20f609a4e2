// The tpfuse CLI's subcommands (DESIGN.md Contract 4). Each command registers its subcommand
// and options on the app and sets `run` to the function that executes it; main() parses and
// calls it. Exit status: 0 success, 1 invalid input (message on stderr naming the problem),
// 2 usage error.
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace tpfuse::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitInvalidInput = 1;
inline constexpr int kExitUsage = 2;

using CommandFn = std::function<int()>;

void AddCompileCommand(CLI::App& app, CommandFn& run);  // cmd_compile.cc
void AddRunCommand(CLI::App& app, CommandFn& run);      // cmd_run.cc
void AddDemoCommand(CLI::App& app, CommandFn& run);     // cmd_demo.cc
void AddBenchCommand(CLI::App& app, CommandFn& run);    // cmd_bench.cc
void AddTuneCommand(CLI::App& app, CommandFn& run);     // cmd_tune.cc

}  // namespace tpfuse::cli
