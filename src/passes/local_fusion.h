// Which local chains (`[add ->] rms_norm [-> quant]` with no communication: world size 1, or a
// norm no all_reduce feeds) the fused op runs faster than Inductor's own kernel for the same
// chain, as measured: the rule of `--fuse-local inductor`, which the PyTorch pass uses (there a
// chain left unfused becomes Inductor's generated kernel, not tpfuse's unfused ops).
//
// The measurement (docs/perf/h200x1/inductor_epilogue.md, one H200): every quant mode, chains
// with the residual add and the norm alone, H 64-8192, T (rows) 1-262144. MeasuredLosses() lists
// where the fused op lost by more than the run-to-run spread (2 %) from a T on, against the
// fastest Inductor kernel any run measured (Inductor's choice of configuration differs between
// sessions): quant none and fp8_tensor at H 64-512 from 16384-262144 rows (rows packed into
// blocks), and the norm alone at H 1024 and 7168-8192 from T 2048-4096 (runs 45, 51-58 and 60).
// An H between the measured ones follows the nearest measured H (the larger one on a tie).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "tpfuse/fused_op.h"

namespace tpfuse::passes {

// Inductor's kernel measured faster for `quant` at `hidden` from `from_tokens` tokens (rows) on,
// for chains with the residual add (`residual`) or for the norm alone.
struct MeasuredLoss {
  QuantMode quant;
  bool residual;
  int64_t hidden;
  int64_t from_tokens;
};

// The H values the measurement swept, ascending.
std::span<const int64_t> MeasuredHidden();
// Where Inductor's kernel was measured faster (empty: nowhere).
std::span<const MeasuredLoss> MeasuredLosses();
// The same for the chain with a norm before the residual add (spec.pre_residual_norm: sandwich
// norms), measured on one H100 (docs/perf/h100x1/NOTES.md; empty since run 118).
std::span<const int64_t> MeasuredPreNormHidden();
std::span<const MeasuredLoss> MeasuredPreNormLosses();

// "" when, by `losses` (by `pre_norm_losses` for a spec with a norm before the residual add), the
// fused op is at least as fast as Inductor's kernel for a local chain of `spec` at every T up to
// `max_tokens` (0: unknown, any T; a chain of constant rows passes its rows); otherwise why the
// chain is left to Inductor, in words.
std::string WhyInductorIsFaster(const AllreduceRmsnormSpec& spec, int64_t max_tokens,
                                std::span<const MeasuredLoss> losses = MeasuredLosses(),
                                std::span<const MeasuredLoss> pre_norm_losses = MeasuredPreNormLosses());

}  // namespace tpfuse::passes
