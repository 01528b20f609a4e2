#include "passes/local_fusion.h"

#include <cstdlib>

#include "tpfuse/status.h"

namespace tpfuse::passes {

namespace {

constexpr int64_t kMeasuredHidden[] = {64, 128, 256, 512, 1024, 1536, 2048, 2880, 4096, 5120, 7168, 8192};

int64_t NearestMeasuredHidden(int64_t hidden) {
  int64_t best = kMeasuredHidden[0];
  for (int64_t h : kMeasuredHidden) {
    if (std::llabs(h - hidden) <= std::llabs(best - hidden)) best = h;  // ties: the larger
  }
  return best;
}

// docs/perf/h200x1/inductor_epilogue.md, run 45: where tpfuse / Inductor stays above 1.02 from a
// T (rows) on, with the ratios measured from there. Rows of H <= 512 are one block of at most
// two warps each, and Inductor's kernel packs many rows per block; the norm alone at H 7168-8192
// reads only x, too few bytes in flight per block at large T. Single cells above 1.02 between
// wins are not listed (the fused op wins on both sides): the residual chain at H 512 T 2048
// (1.04), H 2048 T 1024 (1.10); the norm alone at H 4096 and 8192 T 512 (1.06, 1.05).
constexpr MeasuredLoss kMeasuredLosses[] = {
    {QuantMode::kNone, true, 64, 2048},  // 2048:1.20 4096:1.44 8192:1.68
    {QuantMode::kNone, true, 128, 2048},  // 2048:1.22 4096:1.46 8192:1.66
    {QuantMode::kNone, true, 256, 2048},  // 2048:1.16 4096:1.41 8192:1.52
    {QuantMode::kNone, true, 512, 8192},  // 8192:1.05
    {QuantMode::kNone, false, 64, 1024},  // 1024:1.13 2048:1.75 4096:2.89 16384:8.16 65536:13.67 262144:14.64
    {QuantMode::kNone, false, 128, 1024},  // 1024:1.11 2048:1.67 4096:2.70 16384:6.33 65536:8.04 262144:9.44
    {QuantMode::kNone, false, 256, 2048},  // 2048:1.23 4096:1.46 16384:1.84 65536:1.96 262144:1.98
    {QuantMode::kNone, false, 512, 2048},  // 2048:1.14 4096:1.42 16384:1.74 65536:1.91
    {QuantMode::kNone, false, 7168, 2048},  // 2048:1.05 4096:1.11 8192:1.15
    {QuantMode::kNone, false, 8192, 2048},  // 2048:1.04 4096:1.07 8192:1.09
    {QuantMode::kFp8Tensor, true, 64, 1024},  // 1024:1.11 2048:1.66 4096:2.72 16384:6.69 65536:8.70
    {QuantMode::kFp8Tensor, true, 128, 4096},  // 4096:1.60 16384:2.90 65536:4.21
    {QuantMode::kFp8Tensor, true, 256, 2048},  // 2048:1.14 4096:1.37 16384:1.75 65536:1.93
    {QuantMode::kFp8Tensor, true, 512, 8192},  // 8192:1.14
    {QuantMode::kFp8Tensor, false, 64, 1024},  // 1024:1.17 2048:1.79 4096:2.98 16384:7.54 65536:12.03
    {QuantMode::kFp8Tensor, false, 128, 2048},  // 2048:1.23 4096:2.03 16384:5.13 65536:7.87
    {QuantMode::kFp8Tensor, false, 256, 2048},  // 2048:1.20 4096:1.44 16384:1.83 65536:1.95
    {QuantMode::kFp8Tensor, false, 512, 2048},  // 2048:1.12 4096:1.40 16384:1.70 65536:1.88
    {QuantMode::kFp8Tensor, false, 8192, 4096},  // 4096:1.06 8192:1.09
    {QuantMode::kFp8Token, true, 64, 2048},  // 2048:1.14 4096:1.83 16384:3.81 65536:5.36
    {QuantMode::kFp8Token, true, 128, 2048},  // 2048:1.05 4096:1.27 16384:1.76 65536:1.93
    {QuantMode::kFp8Token, true, 256, 4096},  // 4096:1.24 16384:1.69 65536:1.90
    {QuantMode::kFp8Token, false, 64, 4096},  // 4096:1.59 16384:4.06 65536:5.42
    {QuantMode::kFp8Token, false, 128, 2048},  // 2048:1.05 4096:1.67 16384:3.19 65536:4.29
    {QuantMode::kFp8Token, false, 256, 2048},  // 2048:1.07 4096:1.32 16384:1.78 65536:1.94
    {QuantMode::kFp8Token, false, 512, 4096},  // 4096:1.06 16384:1.19 65536:1.27
    {QuantMode::kFp8Group, true, 64, 4096},  // 4096:1.15 16384:2.92 65536:3.85
    {QuantMode::kFp8Group, true, 128, 16384},  // 16384:1.77 65536:2.09
    {QuantMode::kFp8Group, true, 256, 16384},  // 16384:1.22 65536:1.34
    {QuantMode::kFp8Group, false, 64, 2048},  // 2048:1.11 4096:1.31 16384:1.78 65536:1.94
    {QuantMode::kFp8Group, false, 128, 2048},  // 2048:1.10 4096:1.31 16384:1.80 65536:1.94
    {QuantMode::kFp8Group, false, 256, 16384},  // 16384:1.26 65536:1.36
};

}  // namespace

std::span<const int64_t> MeasuredHidden() { return kMeasuredHidden; }
std::span<const MeasuredLoss> MeasuredLosses() { return kMeasuredLosses; }

std::string WhyInductorIsFaster(const AllreduceRmsnormSpec& spec, int64_t max_tokens,
                                std::span<const MeasuredLoss> losses) {
  const int64_t measured = NearestMeasuredHidden(spec.hidden);
  for (const MeasuredLoss& loss : losses) {
    if (loss.quant != spec.quant || loss.residual != spec.has_residual || loss.hidden != measured) continue;
    if (max_tokens > 0 && max_tokens < loss.from_tokens) continue;
    const std::string at_h = measured == spec.hidden ? StrCat("H ", measured)
                                                     : StrCat("H ", measured, ", the measured H nearest ", spec.hidden);
    const std::string rows = max_tokens > 0 ? StrCat("up to ", max_tokens, " rows")
                                            : std::string("a number of rows with no bound");
    return StrCat("Inductor's kernel for this chain was measured faster than the fused op for ",
                  QuantModeName(spec.quant), spec.has_residual ? " with the residual add" : " of the norm alone",
                  " at ", at_h, " from ", loss.from_tokens, " rows (docs/perf/h200x1/inductor_epilogue.md),",
                  " and the chain has ", rows);
  }
  return "";
}

}  // namespace tpfuse::passes
