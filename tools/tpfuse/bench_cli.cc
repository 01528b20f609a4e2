#include "bench_cli.h"

#include <CLI/CLI.hpp>

namespace tpfuse::bench {

void AddCommandOptions(CLI::App& command, CommandFlags& flags, Mode mode) {
  command
      .add_option("--world-size", flags.world_size,
                  mode == Mode::kBench
                      ? "GPUs to use, one process each: 2, 4 or 8 (default: every visible GPU, at least 2); "
                        "1 measures the fused op without communication on one GPU, in this "
                        "process, against the unfused kernels and the copy roofline"
                      : "GPUs to use, one process each: 2, 4 or 8 (default: every visible GPU, at least 2)")
      ->type_name("N");
  command
      .add_option("--tokens", flags.tokens,
                  "token counts T, comma-separated, 1..65536 (default 1,2,4,...,8192)")
      ->type_name("LIST");
  command
      .add_option("--hidden", flags.hidden,
                  mode == Mode::kBench
                      ? "hidden sizes H, comma-separated (default 4096,7168,8192; at world size "
                        "1: 2880,4096,5120,7168,8192)"
                      : "hidden sizes H, comma-separated (default 4096,7168,8192)")
      ->type_name("LIST");
  command
      .add_option("--quant", flags.quant,
                  "quant modes, comma-separated, from none, fp8_tensor, fp8_token, fp8_group, "
                  "or all (default all)")
      ->type_name("LIST");
  command
      .add_option("--emit-norm", flags.emit_norm,
                  "also emit the bf16 norm output: yes, no, or auto = for quant none and "
                  "fp8_group (default auto)")
      ->type_name("MODE");
  command
      .add_option("--ops-per-graph", flags.ops_per_graph,
                  "ops captured back to back in each CUDA graph, 1..1000 (default 20)")
      ->type_name("N");
  command
      .add_option("--replays", flags.replays, "timed replays of each graph, 1..100000 (default 50)")
      ->type_name("N");
  command
      .add_option("--warmup", flags.warmup, "untimed replays before timing, 0..1000 (default 5)")
      ->type_name("N");
  if (mode == Mode::kBench) {
    command
        .add_option("--table", flags.table,
                    "strategy table JSON for the dispatched path, as written by `tpfuse "
                    "tune` (default: $TPFUSE_STRATEGY_TABLE if set, else the built-in "
                    "defaults, as in the runtime); not at world size 1")
        ->type_name("FILE");
  }
  command.add_flag("--no-pdl", flags.no_pdl,
                   "launch the fused op without programmatic dependent launch (default: PDL on)");
  command
      .add_option("--out", flags.out,
                  mode == Mode::kBench
                      ? "directory for bench.csv, bench.json and bench_H<h>_<quant>.svg; at "
                        "world size 1 bench.txt, bench.csv and bench_roofline.svg (default "
                        "./tpfuse-bench)"
                      : "strategy table JSON file to write (default ./tpfuse-strategy.json)")
      ->type_name(mode == Mode::kBench ? "DIR" : "FILE");
  command.add_option("--seed", flags.seed, "seed of the random inputs (default 1)")->type_name("N");
  command
      .add_option("--timeout", flags.timeout,
                  mode == Mode::kBench
                      ? "bound on the whole run in seconds; ranks still running then are killed "
                        "(at world size 1: checked between shapes) (default 1800)"
                      : "bound on the whole run in seconds; ranks still running then are killed "
                        "(default 1800)")
      ->type_name("SECONDS");
  // Every option above is read as text and its default stands for an empty one: an empty
  // value given on the command line (`--tokens ""`, a shell variable unset) is an error.
  const CLI::Validator given(
      [](const std::string& text) { return text.empty() ? std::string("an empty value") : ""; },
      "");
  const auto takes_a_value = [](CLI::Option* o) { return o->get_expected_min() > 0; };
  for (CLI::Option* option : command.get_options(takes_a_value)) option->check(given);
  command.add_option("--child-plan", flags.child_plan)->group("");
  command.add_option("--child-rank", flags.child_rank)->group("");
}

}  // namespace tpfuse::bench
