// `tpfuse bench --world-size 1`: the fused op on one GPU, without communication, against the
// project's unfused kernels and the copy roofline of the same bytes. This header is the plain
// C++ part (no CUDA): the spec of each cell, the bytes it must move, its set layout, the
// results, the tables, the CSV, the plot and the summary against the world-size-1 targets. The
// measuring is RunLocalBench (bench/runner.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/plan.h"
#include "bench/report.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::bench {

std::vector<int64_t> DefaultLocalHidden();  // 2880, 4096, 5120, 7168, 8192

// Cells with at most this many tokens are checked bit for bit against the CPU oracle (the
// fused op and the unfused kernels) before anything is timed. Small enough for the oracle to
// take a second or two in all; every row has its own block, so a larger T runs the same code
// on more blocks (tests/cuda/local_fused_test.cc checks T = 1000).
inline constexpr int64_t kLocalCheckMaxTokens = 64;

// The fused op measured at world size 1 for (H, quant): MakeSpec's, with `local` set (no
// all_reduce feeds it: a = x) and the group size 128, or 64 where 128 does not divide H
// (H = 2880: 45 groups of 64).
AllreduceRmsnormSpec MakeLocalSpec(int64_t hidden, QuantMode quant, EmitNorm emit_norm);

// Bytes one op must move through HBM at least, from the T x H activations, the f32 scales
// (ScaleElements) and nothing else: the norm weight (H elements, read once and cached) and
// the static scale are left out, as in the copy roofline.
struct Traffic {
  int64_t read = 0;
  int64_t write = 0;
  int64_t total() const { return read + write; }
};
// The fused op: read x and residual; write residual_out, the norm y when emitted, q when
// quantized, s when dynamic.
//   fp8_tensor: 4 + 3 bytes per element; fp8_group + norm: 4 + 5 (+ 4 per group); none: 4 + 4.
Traffic FusedTraffic(const AllreduceRmsnormSpec& spec, int64_t tokens);
// The unfused kernels: fused_add_rms_norm reads x and residual and writes residual_out and y;
// the quant kernel reads y and writes q (and s). 8 + 3 = 11 bytes per element when quantized
// (whatever the fused op emits: y is always written between the two kernels); 8 for none.
Traffic UnfusedTraffic(const AllreduceRmsnormSpec& spec, int64_t tokens);
// FusedTraffic / UnfusedTraffic, the factor the unfused time is scaled by for "the fused op at
// the unfused kernels' bandwidth": 7/11 for fp8_tensor and fp8_token, 289/353 (9/11 plus the
// scales) for fp8_group + norm at group 128, 1 for none.
double UnfusedByteRatio(const AllreduceRmsnormSpec& spec, int64_t tokens);
// The copy of the roofline: cudaMemcpyAsync of (read + write) / 2 bytes of the fused op's
// traffic (reads and writes that many), rounded up to kCopyGranule. On an H200 a device-to-device
// copy whose size is not a multiple of 4 KiB took 16-50 % longer at 2.5-25 MB (the dynamic
// modes' scales made theirs so below T 2048: docs/perf/h200x1/NOTES.md, run 13), which flattered
// the fused op; the rounded copy moves at most 4 KiB more, so the roofline errs strict.
inline constexpr size_t kCopyGranule = 4096;
size_t CopyBytes(const AllreduceRmsnormSpec& spec, int64_t tokens);

// One input/output set of a cell: the fused op's regions (SetLayout: x, residual,
// residual_out, norm_out, quant, scale) followed by the copy's destination. The copy reads
// CopyBytes from the start of the set (x onward) and writes them at copy_dst, past both the
// op's regions and the source.
struct LocalSetLayout {
  SetLayout op;
  size_t copy_dst = 0;
  size_t copy_bytes = 0;
  size_t bytes = 0;  // a multiple of 256
  static LocalSetLayout Make(const AllreduceRmsnormSpec& spec, int64_t tokens);
};
// The rotation of a cell: ChooseRotation on the fused op's traffic (what one op moves; the
// copy moves the same, the unfused kernels more), so every path reads each set past the L2.
Rotation ChooseLocalRotation(const AllreduceRmsnormSpec& spec, int64_t tokens, size_t l2_bytes,
                             int ops_per_graph);

// One measured cell.
struct LocalCell {
  int64_t hidden = 0;
  QuantMode quant = QuantMode::kNone;
  EmitSet emit;
  int64_t group_size = 0;  // fp8_group
  int64_t tokens = 0;
  Traffic fused_bytes;
  Traffic unfused_bytes;
  size_t copy_bytes = 0;
  Rotation rotation;
  bool checked = false;  // bitwise against the oracle (T <= kLocalCheckMaxTokens)
  ReplayStats fused, unfused, copy;

  double FusedOverCopy() const;
  double FusedOverUnfused() const;
  double ByteRatio() const;  // fused_bytes / unfused_bytes
  // fused / (unfused x ByteRatio): 1.0 = the fused op moves its bytes exactly as fast as the
  // unfused kernels move theirs.
  double FusedOverScaledUnfused() const;
  double FusedGBps() const;  // fused_bytes.total() / fused median
  double CopyGBps() const;   // 2 x copy_bytes / copy median
};

struct LocalReport {
  Plan plan;
  MachineInfo machine;
  std::vector<LocalCell> cells;

  // Cells of one (H, quant) in token order.
  std::vector<const LocalCell*> Group(int64_t hidden, QuantMode quant) const;
};

// The header: machine, method, what each column is.
std::string FormatLocalHeader(const LocalReport& report);
// A cell's name in progress lines, summaries and errors: "H=7168 fp8_group+norm T=128" ("+norm"
// when a quantized cell also emits the norm output).
std::string LocalCellName(int64_t hidden, QuantMode quant, const EmitSet& emit, int64_t tokens);
// One (H, quant) table.
std::string FormatLocalTable(const LocalReport& report, int64_t hidden, QuantMode quant);
// "H=4096 fp8_tensor T=128: fused 2.10 unfused 5.30 copy 1.60 us -> 1.31x copy 0.40x unfused"
std::string FormatLocalProgress(const LocalCell& cell);
// The run against the world-size-1 targets, each with the worst cell: T >= 1024 within 1.18x of the
// copy; T = 1 at most 2.0 us; fp8_group + norm within 1.15x of fp8_tensor at T <= 128; at most
// 0.6x the unfused kernels at T <= 128; within 1.05x of the unfused time scaled by the byte
// ratio at T >= 1024. A target with no cell to judge says so.
std::string FormatLocalSummary(const LocalReport& report);

// bench.csv: one row per cell: machine, hidden, quant, emit, group_size, tokens, fused_us,
// fused_p10_us, fused_p90_us, unfused_us, copy_us, read_bytes, write_bytes, copy_bytes,
// unfused_bytes, fused_gbps, copy_gbps, fused_over_copy, fused_over_unfused, byte_ratio,
// fused_over_scaled_unfused, sets, l2_flush, checked.
std::string LocalToCsv(const LocalReport& report);
// The ratio to the roofline (fused / copy) against T on log-log axes, one line per H x quant
// (colour per quant, dash per H), with the roofline at 1.
StatusOr<std::string> LocalPlotSvg(const LocalReport& report);
// Writes bench.txt (header, tables, summary), bench.csv and bench_roofline.svg into `dir`.
Status WriteLocalOutputs(const LocalReport& report, const std::string& dir);

}  // namespace tpfuse::bench
