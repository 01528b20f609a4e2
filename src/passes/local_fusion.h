// Which local chains (`[add ->] rms_norm [-> quant]` with no communication: world size 1, or a
// norm no all_reduce feeds) the fused op runs faster than Inductor's own kernel for the same
// chain, as measured: the rule of `--fuse-local inductor`, which the PyTorch pass uses (there a
// chain left unfused becomes Inductor's generated kernel, not tpfuse's unfused ops).
//
// The measurement (docs/perf/h200x1/inductor_epilogue.md, one H200): H {2880, 4096, 5120, 7168,
// 8192} x T {1, 2, 4, ..., 8192} x {fp8_tensor, fp8_token, fp8_group + norm}. The fused op lost
// by more than the run-to-run spread (2 %) only where MeasuredLosses() lists: nowhere since the
// kernels with fixed recipes (run 21 there). An H between the measured ones follows the nearest
// measured H (the larger one on a tie); a quant mode the sweep did not time (none) has no loss
// listed.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "tpfuse/fused_op.h"

namespace tpfuse::passes {

// Inductor's kernel measured faster for `quant` at `hidden` from `from_tokens` tokens on.
struct MeasuredLoss {
  QuantMode quant;
  int64_t hidden;
  int64_t from_tokens;
};

// The H values the measurement swept, ascending.
std::span<const int64_t> MeasuredHidden();
// Where Inductor's kernel was measured faster (empty: nowhere).
std::span<const MeasuredLoss> MeasuredLosses();

// "" when, by `losses`, the fused op is at least as fast as Inductor's kernel for a local chain
// of `spec` at every T up to `max_tokens` (0: unknown, any T; a chain of constant rows passes
// its rows); otherwise why the chain is left to Inductor, in words.
std::string WhyInductorIsFaster(const AllreduceRmsnormSpec& spec, int64_t max_tokens,
                                std::span<const MeasuredLoss> losses = MeasuredLosses());

}  // namespace tpfuse::passes
