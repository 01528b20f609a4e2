#include "passes/local_fusion.h"

#include <cstdlib>

#include "tpfuse/status.h"

namespace tpfuse::passes {

namespace {

constexpr int64_t kMeasuredHidden[] = {64, 128, 256, 384, 512, 1024, 1536, 2048, 2880, 4096, 5120, 7168, 8192};

int64_t NearestMeasuredHidden(std::span<const int64_t> measured, int64_t hidden) {
  int64_t best = measured[0];
  for (int64_t h : measured) {
    if (std::llabs(h - hidden) <= std::llabs(best - hidden)) best = h;  // ties: the larger
  }
  return best;
}

// docs/perf/h200x1/inductor_epilogue.md: where tpfuse / Inductor stays above 1.02 from a T (rows)
// on, with the ratios measured from there. Inductor's choice of kernel configuration for a shape
// differs between sessions (the same shape measured up to 9.8 x apart in runs 45-60, while the
// fused op's times repeat within 10 %), so a ratio divides the fused op's latest time by the
// fastest Inductor time of any run; "f" names the fused op's run, "i" Inductor's (H 384: run 60
// only). Rows of H <= 512 (rows packed into blocks): the static modes from 16384-262144 rows,
// except fp8_tensor's norm alone at H 384-512 (a warp per row from 4096 rows: 0.72-0.97 x,
// run 60). The norm alone at H 1024 and 7168-8192 reads only x:
// too few bytes in flight per block at large T. Single cells above 1.02 between wins are not
// listed (the fused op wins on both sides): the residual chain at H 2048 T 1024 (1.10, run 45)
// and, quant none, at H 7168 T 512 (1.03, runs 123 and 133); the norm alone at H 4096 and 8192
// T 512 (1.06, 1.05). One exception to "every larger T": H 1024's norm alone at T 4096 (0.88)
// and 65536 (1.00) was measured only in run 45, whose Inductor kernels at this H ran 1.2 x
// slower than runs 57-58's at the T both measured; listed from T 2048. Run 101 measured the norm
// alone's own kernels (three blocks per SM) on the H200: fp8_tensor at H 7168 0.94-1.00 from
// 2048 rows (not listed), and Inductor's fp8_tensor kernel at H 1024 1.2-1.4 x faster than in
// runs 45 and 58 from 8192 rows, where the fused op's time repeats: listed from 8192.
constexpr MeasuredLoss kMeasuredLosses[] = {
    {QuantMode::kNone, true, 64, 262144},  // 262144:1.03 (f 57, i 51)
    {QuantMode::kNone, true, 128, 262144},  // 262144:1.08 (f 57, i 57; 65536: 1.02)
    {QuantMode::kNone, true, 256, 65536},  // 65536:1.05 262144:1.07 (f 57, i 57)
    {QuantMode::kNone, true, 384, 65536},  // 65536:1.09 262144:1.07 (f 60, i 60; 16384: 1.017)
    {QuantMode::kNone, true, 512, 16384},  // 16384:1.022 65536:1.08 262144:1.07 (f 60, i 57)
    {QuantMode::kNone, false, 64, 65536},  // 65536:1.04 262144:1.07 (f 57, i 51 and 57)
    {QuantMode::kNone, false, 128, 65536},  // 65536:1.04 262144:1.07 (f 57, i 45)
    {QuantMode::kNone, false, 256, 16384},  // 16384:1.05 65536:1.07 262144:1.08 (f 57, i 57)
    {QuantMode::kNone, false, 384, 16384},  // 16384:1.05 65536:1.13 262144:1.14 (f 60, i 60)
    {QuantMode::kNone, false, 512, 16384},  // 16384:1.022 65536:1.05 262144:1.06 (f 60, i 57)
    {QuantMode::kNone, false, 1024, 2048},  // 2048:1.11 8192:1.07 16384:1.16 (f and i 57-58)
    {QuantMode::kNone, false, 7168, 2048},  // 2048:1.05 4096:1.11 8192:1.15 16384:1.16 (f 45, 57; i 45, 56)
    {QuantMode::kNone, false, 8192, 2048},  // 2048:1.04 4096:1.07 8192:1.09 16384:1.10 (f 45, 57; i 45, 57)
    {QuantMode::kFp8Tensor, true, 64, 262144},  // 262144:1.03 (f 57, i 57)
    {QuantMode::kFp8Tensor, true, 128, 262144},  // 262144:1.10 (f 57, i 51)
    {QuantMode::kFp8Tensor, true, 256, 262144},  // 262144:1.09 (f 57, i 57)
    {QuantMode::kFp8Tensor, true, 384, 65536},  // 65536:1.03 262144:1.08 (f 60, i 60)
    {QuantMode::kFp8Tensor, true, 512, 65536},  // 65536:1.07 262144:1.09 (f 60, i 60 and 55)
    {QuantMode::kFp8Tensor, false, 64, 262144},  // 262144:1.13 (f 57, i 51)
    {QuantMode::kFp8Tensor, false, 128, 16384},  // 16384:1.06 65536:1.14 262144:1.24 (f 57, i 57)
    {QuantMode::kFp8Tensor, false, 256, 65536},  // 65536:1.08 262144:1.15 (f 57, i 57)
    {QuantMode::kFp8Tensor, false, 1024, 8192},  // 8192:1.07 16384:1.24 (f and i 101; i 45, 58: 0.87-0.93)
    {QuantMode::kFp8Tensor, false, 8192, 4096},  // 4096:1.06 8192:1.10 16384:1.13 (f 45, 101; i 45, 101)
};

// The chain with a norm before the residual add (pre_residual_norm, sandwich norms), on one H100
// (docs/perf/h100x1/NOTES.md, Gemma's norms, H 2304 / 3584 / 5376, T 1 / 128 / 1024 / 8192), by
// the same rule: none since run 118 (its kernels under their own register bound), where the fused
// op took 0.62-0.99 x Inductor's time. Runs 114-116 had measured Inductor's faster at H 5376:
// quant none from T 1024 (1.16, 1.11 at 8192), fp8_token at T 8192 (1.05).
constexpr int64_t kMeasuredPreNormHidden[] = {2304, 3584, 5376};

}  // namespace

std::span<const int64_t> MeasuredHidden() { return kMeasuredHidden; }
std::span<const MeasuredLoss> MeasuredLosses() { return kMeasuredLosses; }
std::span<const int64_t> MeasuredPreNormHidden() { return kMeasuredPreNormHidden; }
std::span<const MeasuredLoss> MeasuredPreNormLosses() { return {}; }

std::string WhyInductorIsFaster(const AllreduceRmsnormSpec& spec, int64_t max_tokens,
                                std::span<const MeasuredLoss> losses, std::span<const MeasuredLoss> pre_norm_losses) {
  // The kernels for f32 values (an f32 residual stream, an f32 norm output) hold a row in one
  // block (or a cluster), never rows packed into blocks: rows of one or two warps (H <= 512) so
  // held lost to Inductor's kernel from 2048 rows in the 16-bit kernels (run 45, 1.04-1.68 x with
  // the residual add), before packed rows. Not measured with the f32 kernels; left to Inductor
  // from there.
  constexpr int64_t kF32ResidualSmallRowMaxHidden = 512, kF32ResidualSmallRowFromTokens = 2048;
  if (spec.has_f32_values() && spec.hidden <= kF32ResidualSmallRowMaxHidden &&
      (max_tokens == 0 || max_tokens >= kF32ResidualSmallRowFromTokens)) {
    return StrCat("the fused op's kernels for f32 values (an f32 residual stream or norm output) hold rows of H <= ",
                  kF32ResidualSmallRowMaxHidden, " one to a block, which lost to Inductor's kernel from ",
                  kF32ResidualSmallRowFromTokens, " rows in the 16-bit kernels (docs/perf/h200x1/"
                  "inductor_epilogue.md, run 45), and the chain has ",
                  max_tokens > 0 ? StrCat("up to ", max_tokens, " rows") : std::string("a number of rows with no bound"));
  }
  const bool pre_norm = spec.pre_residual_norm;
  const int64_t measured =
      NearestMeasuredHidden(pre_norm ? MeasuredPreNormHidden() : MeasuredHidden(), spec.hidden);
  for (const MeasuredLoss& loss : pre_norm ? pre_norm_losses : losses) {
    if (loss.quant != spec.quant || loss.residual != spec.has_residual || loss.hidden != measured) continue;
    if (max_tokens > 0 && max_tokens < loss.from_tokens) continue;
    const std::string at_h = measured == spec.hidden ? StrCat("H ", measured)
                                                     : StrCat("H ", measured, ", the measured H nearest ", spec.hidden);
    const std::string rows = max_tokens > 0 ? StrCat("up to ", max_tokens, " rows")
                                            : std::string("a number of rows with no bound");
    return StrCat("Inductor's kernel for this chain was measured faster than the fused op for ",
                  QuantModeName(spec.quant),
                  pre_norm             ? " with a norm before the residual add"
                  : spec.has_residual ? " with the residual add"
                                      : " of the norm alone",
                  " at ", at_h, " from ", loss.from_tokens, " rows (",
                  pre_norm ? "docs/perf/h100x1/NOTES.md" : "docs/perf/h200x1/inductor_epilogue.md",
                  "), and the chain has ", rows);
  }
  return "";
}

}  // namespace tpfuse::passes
