// `tpfuse bench`: the fused op against its unfused baselines, per shape, on this node's GPUs.
// The measuring lives in src/bench/runner.cc (world size 1: local_runner.cc), the reporting in
// src/bench/report.cc (local.cc);
// docs/benchmarking.md describes the method.
#include <CLI/CLI.hpp>

#include <memory>

#include "bench_cli.h"
#include "commands.h"

namespace tpfuse::cli {

void AddBenchCommand(CLI::App& app, CommandFn& run) {
  CLI::App* command = app.add_subcommand(
      "bench",
      "Measure the fused all_reduce + residual + RMSNorm [+ FP8 quant] op against its unfused "
      "baselines on this node's GPUs, one process per GPU; with --world-size 1, on one GPU "
      "without communication, against the unfused kernels and the copy roofline.");
  auto flags = std::make_shared<bench::CommandFlags>();
  bench::AddCommandOptions(*command, *flags, bench::Mode::kBench);
  command->footer(
      "Sweep: every T x H x quant given (default 14 x 3 x 4 = 168 shapes), bf16 activations and\n"
      "weight, residual on, group size 128, row-major f32 scales; emits residual_out, q [, s]\n"
      "when quantized, and the norm output per --emit-norm.\n"
      "Paths per shape, all in one run, each a CUDA graph of --ops-per-graph ops whose inputs\n"
      "rotate over sets larger than twice the L2:\n"
      "  oneshot, twoshot, nccl   the fused op with that strategy (those the workspace can run)\n"
      "  dispatched               what the runtime's dispatcher runs (--table FILE, else\n"
      "                           $TPFUSE_STRATEGY_TABLE, else the built-in table)\n"
      "  A                        ncclAllReduce + fused_add_rms_norm kernel + quant_fp8 kernel\n"
      "  B                        ncclAllReduce + one fused add-RMSNorm-quant kernel: at N = 2\n"
      "                           exactly the fused op's nccl strategy (one measurement, two\n"
      "                           names); above N = 2 that strategy gathers the partials to\n"
      "                           keep Contract 3's sum, and B keeps ncclAllReduce\n"
      "  NCCL                     ncclAllReduce alone\n"
      "Reported: rank 0's median (p10, p90 in the files) of the per-op time of each replay,\n"
      "fused(dispatched)/B, bus bandwidth = T*H*2 bytes * 2(N-1)/N / time, next to the peer\n"
      "copy bandwidth measured at start, and B's epilogue share (B - NCCL) / B. Progress goes\n"
      "to stderr, tables to stdout.\n"
      "World size 1 (--world-size 1; default H 2880,4096,5120,7168,8192; group size 128, or\n"
      "64 where 128 does not divide H; no --table), per shape, in this process, over the same\n"
      "rotating sets:\n"
      "  fused                    the fused op without communication (a = x)\n"
      "  unfused                  the unfused kernels: fused_add_rms_norm, then quant_fp8\n"
      "  copy                     cudaMemcpyAsync of (read + write) / 2 of the fused op's\n"
      "                           minimum bytes, rounded up to 4 KiB: the roofline\n"
      "  Reported: the three medians, fused/copy, fused/unfused, the byte ratio r (fused bytes /\n"
      "  unfused bytes: 7/11 for fp8_tensor) and fused/(unfused*r), then a summary against the\n"
      "  targets. Shapes with T <= 64 are first checked bit for bit against the CPU oracle;\n"
      "  a mismatch ends the run before anything is timed. Files: bench.txt, bench.csv,\n"
      "  bench_roofline.svg (fused/copy against T, one line per H x quant).\n"
      "Exit status: 0 done; 1 a --table that does not load, a hidden size the fused op does\n"
      "not take, no CUDA backend, fewer GPUs than the world size, a rank failed or (world\n"
      "size 1) a result differs from the oracle; 2 usage error (an unknown option, a missing\n"
      "value, a value outside its option's range or choices).\n"
      "See docs/benchmarking.md.");
  command->callback(
      [&run, flags] { run = [flags] { return bench::RunCommand(*flags, bench::Mode::kBench); }; });
}

}  // namespace tpfuse::cli
