// `tpfuse tune`: measures the fused op's strategies on this machine and writes the
// dispatcher's strategy table (runtime/dispatcher.h) that the runtime loads.
#include <CLI/CLI.hpp>

#include <memory>

#include "bench_cli.h"
#include "commands.h"

namespace tpfuse::cli {

void AddTuneCommand(CLI::App& app, CommandFn& run) {
  CLI::App* command = app.add_subcommand(
      "tune",
      "Measure the fused op's strategies (oneshot, twoshot, nccl) per (H, quant, T) on this "
      "node's GPUs and write the dispatcher's strategy table.");
  auto flags = std::make_shared<bench::CommandFlags>();
  bench::AddCommandOptions(*command, *flags, bench::Mode::kTune);
  command->footer(
      "Each strategy is timed as `tpfuse bench` times it (CUDA graphs, rotated inputs, rank 0's\n"
      "median of the replays). Per T the lowest median wins, however small the margin (only an\n"
      "exact tie goes to the simpler strategy: nccl, then twoshot, then oneshot); the table\n"
      "prints the margin. A measured T decides every T from itself up to the next measured T - 1\n"
      "(the smallest from 1, the largest upward); consecutive T with the same winner become one\n"
      "rule {world_size, hidden, quant, min_tokens, max_tokens, strategy}. The file names the\n"
      "machine; load it with `tpfuse bench --table FILE` or the runtime's StrategyTable::Load.\n"
      "Exit status: 0 done; 1 a hidden size the fused op does not take, no CUDA backend,\n"
      "fewer than 2 GPUs or a rank failed; 2 usage error (an unknown option, a missing value,\n"
      "a value outside its option's range or choices). See docs/benchmarking.md.");
  command->callback(
      [&run, flags] { run = [flags] { return bench::RunCommand(*flags, bench::Mode::kTune); }; });
}

}  // namespace tpfuse::cli
