// `tpfuse bench` and `tpfuse tune` without their command line: the option values as typed, the
// checks of the values, and the parent process that starts one rank process per GPU
// (re-executing the running binary with --child-plan / --child-rank), or, for `bench
// --world-size 1`, measures on one GPU in this process. The CLI registers the options
// (tools/tpfuse/bench_cli.h) and calls RunCommand.
#pragma once

#include <string>

#include "bench/plan.h"
#include "tpfuse/status.h"

namespace tpfuse::bench {

// RunCommand's exit statuses, the CLI's (tools/tpfuse/commands.h).
inline constexpr int kExitOk = 0;
// An input the fused op cannot take (a --table file, a hidden size), no CUDA backend, too few
// GPUs, a rank failed.
inline constexpr int kExitFailed = 1;
// A value outside its option's range or choices (PlanFromFlags), as the command line's own
// usage errors (an unknown option, a missing value) are.
inline constexpr int kExitUsage = 2;

// Option values as typed, checked after parsing (PlanFromFlags), so that every message names
// its option.
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

// The plan the flags describe, with defaults filled in, except world_size (0: every GPU) and
// id_file. World size 1 (bench only) has its own hidden sizes by default (DefaultLocalHidden)
// and no --table. Errors are values outside their option's range or choices (usage errors),
// and name the option.
StatusOr<Plan> PlanFromFlags(const CommandFlags& flags, Mode mode);

// What a well-formed plan may still ask of the fused op that it cannot do: a --table that does
// not load, a hidden size or group size the kernels do not take (invalid input). Names the
// option.
Status CheckPlanInputs(const Plan& plan);

// Runs the command: the parent (counts GPUs, checks the sweep, starts and waits for the rank
// processes), with --child-plan one rank process, or at world size 1 the whole measurement
// (RunLocalBench). Returns the exit status.
int RunCommand(const CommandFlags& flags, Mode mode);

}  // namespace tpfuse::bench
