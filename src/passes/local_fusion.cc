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

// docs/perf/h200x1/inductor_epilogue.md: where tpfuse / Inductor stays above 1.02 from a T (rows)
// on, with the ratios measured from there. Rows of H <= 512 (runs 51-52, rows packed into
// blocks): only the static modes at H 64-128 and 512, from 65536 rows or more, at 2.8-4.0 TB/s
// against Inductor's 3.1-4.2. The norm alone at H 7168-8192 (run 45) reads only x, too few
// bytes in flight per block at large T. Single cells above 1.02 between wins are not listed (the
// fused op wins on both sides): the residual chain at H 2048 T 1024 (1.10, run 45); the norm
// alone at H 4096 and 8192 T 512 (1.06, 1.05).
constexpr MeasuredLoss kMeasuredLosses[] = {
    {QuantMode::kNone, true, 64, 262144},  // 262144:1.04 (run 51)
    {QuantMode::kNone, true, 128, 262144},  // 262144:1.09 (run 51; 65536: 1.01)
    {QuantMode::kNone, true, 512, 65536},  // 65536:1.04 262144:1.04 (run 52)
    {QuantMode::kNone, false, 64, 65536},  // 65536:1.04 262144:1.07 (run 51)
    {QuantMode::kNone, false, 128, 262144},  // 262144:1.06 (run 51)
    {QuantMode::kNone, false, 512, 65536},  // 65536:1.02 262144:1.02 (run 52)
    {QuantMode::kNone, false, 7168, 2048},  // 2048:1.05 4096:1.11 8192:1.15
    {QuantMode::kNone, false, 8192, 2048},  // 2048:1.04 4096:1.07 8192:1.09
    {QuantMode::kFp8Tensor, true, 128, 262144},  // 262144:1.10 (run 51)
    {QuantMode::kFp8Tensor, true, 512, 65536},  // 65536:1.04 262144:1.05 (run 52)
    {QuantMode::kFp8Tensor, false, 64, 262144},  // 262144:1.13 (run 51)
    {QuantMode::kFp8Tensor, false, 128, 262144},  // 262144:1.09 (run 51)
    {QuantMode::kFp8Tensor, false, 8192, 4096},  // 4096:1.06 8192:1.09
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
