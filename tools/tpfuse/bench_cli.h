// The command-line side shared by `tpfuse bench` and `tpfuse tune`: their options, the checks
// of the values, and the parent process that starts one rank process per GPU (re-executing
// this binary with hidden --child-plan / --child-rank options).
#pragma once

#include <string>

#include "bench_plan.h"
#include "tpfuse/status.h"

namespace CLI {
class App;
}

namespace tpfuse::bench {

// Option values as typed. They are checked after parsing, so that a bad value is an invalid
// input (exit 1, with a message naming the option) while an unknown option or a missing value
// stays a usage error (exit 2).
struct CommandFlags {
  std::string world_size;
  std::string tokens;
  std::string hidden;
  std::string quant;
  std::string emit_norm = "auto";
  std::string ops_per_graph;
  std::string replays;
  std::string warmup;
  std::string table;
  std::string out;
  std::string seed;
  std::string timeout;
  bool no_pdl = false;
  // Hidden: set by the parent on the rank processes it starts.
  std::string child_plan;
  std::string child_rank;
};

// Registers the options of `mode`'s command on `command` (bench also has --table).
void AddCommandOptions(CLI::App& command, CommandFlags& flags, Mode mode);

// The plan the flags describe, with defaults filled in, except world_size (0: every GPU) and
// id_file. Errors name the option.
StatusOr<Plan> PlanFromFlags(const CommandFlags& flags, Mode mode);

// Runs the command: the parent (counts GPUs, checks the sweep, starts and waits for the rank
// processes) or, with --child-plan, one rank process. Returns the exit status.
int RunCommand(const CommandFlags& flags, Mode mode);

}  // namespace tpfuse::bench
