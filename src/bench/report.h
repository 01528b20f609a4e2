// What `tpfuse bench` and `tpfuse tune` measured, and how it is shown: the header, one table per
// (H, quant), progress lines, bench.csv, bench.json, the SVG plots, and the tuned strategy
// table. Plain C++ (no CUDA): rank 0 fills a Report and the CPU suite tests the formatting.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bench/plan.h"
#include "runtime/dispatcher.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::bench {

// The graphs measured per shape. Baseline B (ncclAllReduce + one fused add-RMSNorm-quant kernel)
// is exactly the fused op's nccl strategy, so it is kNccl under a second name; the dispatched
// path is whichever strategy the dispatcher picks, also not measured twice.
enum class Path : uint8_t {
  kOneShot,        // fused op, one-shot strategy
  kTwoShot,        // fused op, two-shot strategy
  kNccl,           // fused op, nccl strategy = baseline B
  kBaselineA,      // ncclAllReduce + fused_add_rms_norm kernel + quant_fp8 kernel
  kNcclAllReduce,  // ncclAllReduce alone
};
inline constexpr int kNumPaths = 5;
inline constexpr std::array<Path, kNumPaths> kAllPaths = {
    Path::kOneShot, Path::kTwoShot, Path::kNccl, Path::kBaselineA, Path::kNcclAllReduce};
// bench.csv / bench.json names: "oneshot", "twoshot", "nccl", "baseline_a", "nccl_allreduce".
std::string_view PathName(Path path);
// The fused op's strategies as paths.
Path StrategyPath(Strategy strategy);

struct PathResult {
  bool measured = false;
  std::string skipped;                  // why not, when !measured
  ReplayStats stats;                    // rank 0's replays
  std::vector<double> rank_medians_us;  // every rank's median, by rank
};

struct ShapeResult {
  int64_t hidden = 0;
  QuantMode quant = QuantMode::kNone;
  EmitSet emit;
  int64_t tokens = 0;
  size_t set_bytes = 0;
  Rotation rotation;
  std::array<PathResult, kNumPaths> paths;
  // Bench: the dispatcher's choice and the path that ran it (the choice, or nccl when the
  // choice cannot run this shape, as in the runtime).
  Strategy dispatched_choice = Strategy::kNccl;
  Path dispatched = Path::kNccl;
  std::string dispatch_note;
  // Cross-rank spread and the like, printed under the table.
  std::vector<std::string> warnings;

  const PathResult& at(Path p) const { return paths[size_t(p)]; }
  PathResult& at(Path p) { return paths[size_t(p)]; }
  // Rank 0's median, when measured.
  std::optional<double> Median(Path p) const;
  // The tune winner among the three strategies (nullopt: none ran).
  std::optional<Strategy> Fastest() const;
};

struct MachineInfo {
  std::string gpu_name;      // "NVIDIA H200"
  int gpu_count = 0;         // GPUs visible on the node
  std::string driver;        // "570.124.06" (or the CUDA driver API version when unknown)
  std::string cuda_driver;   // CUDA version the driver supports: "13.0"
  std::string cuda_runtime;  // "13.0"
  std::string nccl;          // "2.28.9"
  std::string host;
  int64_t l2_bytes = 0;
  int sm_count = 0;

  std::string Label() const;     // "2x NVIDIA H200"
  std::string Describe() const;  // "2x NVIDIA H200 (driver 570.124.06, CUDA 13.0, NCCL 2.28.9)"
};

// One-way peer copy bandwidth, measured at start by every rank at once into the next rank's
// workspace through the peer mapping; rank 0's numbers.
struct PeerBandwidth {
  bool measured = false;
  std::string why_not;  // when !measured (no peer memory, ...)
  size_t bytes = 0;     // per copy
  int copies = 0;       // timed copies of each kind
  std::optional<double> copy_engine_gbps;
  std::string copy_engine_error;
  std::optional<double> sm_copy_gbps;
  std::string sm_copy_error;
};

struct Report {
  Plan plan;
  MachineInfo machine;
  PeerBandwidth peer;
  std::string table_source;  // the dispatcher's table: "built-in" or the file
  WorkspacePlan workspace;
  std::vector<ShapeResult> shapes;
  std::vector<std::string> warnings;  // about the whole run; printed in the header

  // Shapes of one (H, quant) in token order.
  std::vector<const ShapeResult*> Group(int64_t hidden, QuantMode quant) const;
};

// The header printed before any table: machine, peer bandwidth, method, legend.
std::string FormatHeader(const Report& report);
// B's epilogue share: (B - ncclAllReduce alone) / B, the part of baseline B that is its
// add-RMSNorm-quant kernel (the fused op's own epilogue); nullopt unless both were measured.
// Negative when B measured faster than ncclAllReduce alone: noise, shown as it is.
std::optional<double> BaselineBEpilogueShare(const ShapeResult& shape);
// One (H, quant) table of `tpfuse bench` or `tpfuse tune` (per report.plan.mode), with its
// notes (skips, fallbacks, warnings of that group).
std::string FormatTable(const Report& report, int64_t hidden, QuantMode quant);
// The closing verdict of a bench run: fused (dispatched) / B over every shape where both ran,
// its median and worst, and each shape where the fused op is slower than B.
std::string FormatSummary(const Report& report);
// "H=4096 fp8_group T=128: oneshot 4.10 twoshot 6.02 B 9.10 A 11.30 NCCL 6.80 us -> oneshot
// 0.45x B" (bench) or the three strategies and the winner (tune).
std::string FormatProgress(const Report& report, const ShapeResult& shape);

// bench.csv: one row per shape and path (oneshot, twoshot, nccl, dispatched, baseline_a,
// baseline_b, nccl_allreduce; measured paths only), columns machine, world_size, hidden, quant,
// tokens, path, us_median, us_p10, us_p90, busbw_gbps, ratio_vs_B, detail.
std::string ToCsv(const Report& report);
// bench.json: the header data and every shape with every path (skips with their reason).
std::string ToJson(const Report& report);
// The latency-vs-T plot of one (H, quant).
StatusOr<std::string> PlotSvg(const Report& report, int64_t hidden, QuantMode quant);
// "bench_H4096_fp8_group.svg"
std::string PlotFileName(int64_t hidden, QuantMode quant);
// Writes bench.csv, bench.json and every plot with data into `dir` (which must exist).
Status WriteBenchOutputs(const Report& report, const std::string& dir);

// The tuned table: rules from each (H, quant)'s winners, named after the machine.
runtime::StrategyTable TunedTable(const Report& report);
// The rules as a readable table.
std::string FormatRules(const runtime::StrategyTable& table);

// Writes `text` to `path` through a temporary file and a rename.
Status WriteFileAtomically(const std::string& path, const std::string& text);

}  // namespace tpfuse::bench
