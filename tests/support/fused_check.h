// Inputs and oracle comparison for the fused op (DESIGN.md Contract 3), shared by the GPU tests
// of every strategy and executor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/tensor.h"
#include "tpfuse/fused_op.h"

namespace tpfuse::testing {

// The fused op's buffers: its inputs (residual and scale as the spec has them) and the emitted
// outputs, given in Contract 3's order (allreduce, norm, residual, q, s).
FusedBuffers FusedBuffersFor(const AllreduceRmsnormSpec& spec, const void* x, const void* residual,
                             const void* weight, const float* scale,
                             const std::vector<void*>& outputs);

// One rank-set of inputs for the fused op.
struct FusedInputs {
  std::vector<HostTensor> partials;  // [rank] x [T, H]
  HostTensor residual;               // [T, H] (replicated), empty when !spec.has_residual
  HostTensor weight;                 // [H]
  HostTensor scale;                  // f32[] for fp8_tensor, else empty
  std::vector<HostTensor> partials2;  // [rank] x2 [T, H] (spec.second_sum), else empty
  HostTensor pre_weight;              // [H] (spec.pre_residual_norm), else empty
  bool has_pre_weight = false;
  HostTensor bias;                    // [H], or [T, H] (spec.has_bias, bias_per_token), else empty
  bool has_bias = false;
  bool has_residual = false;
  bool has_scale = false;
};

enum class InputKind {
  kRandom,      // fresh random values (a few exact zeros and -0.0 mixed in)
  kRankTagged,  // small integers: rank r contributes (r + 1) * (small pattern), sums exact
};

// Draws inputs for `spec` at T tokens and `world_size` ranks. Deterministic per seed.
FusedInputs MakeFusedInputs(const AllreduceRmsnormSpec& spec, int64_t tokens, int world_size,
                            uint64_t seed, InputKind kind = InputKind::kRandom);

// The oracle's outputs (Contract 3 order: allreduce, norm, residual, q, s — emitted only).
std::vector<HostTensor> OracleOutputs(const AllreduceRmsnormSpec& spec, const FusedInputs& in);

// Empty host tensors with the shapes and dtypes of every emitted output.
std::vector<HostTensor> FusedOutputShapes(const AllreduceRmsnormSpec& spec, int64_t tokens);

// Compares every emitted output of `got` with `ref` under Contract 3's tolerances (every
// element). Returns "" when everything passes, else one line per failing output with the max
// error and the first mismatching indices.
std::string CompareFusedOutputs(const AllreduceRmsnormSpec& spec, const FusedInputs& in,
                                const std::vector<HostTensor>& got,
                                const std::vector<HostTensor>& ref);

// Bitwise comparison of two output sets; "" when identical, else what differs first.
// `nan_is_nan`: a NaN matches any NaN (CompareExact's; for GPU results against the oracle's).
std::string BitwiseDiff(const std::vector<HostTensor>& a, const std::vector<HostTensor>& b,
                        bool nan_is_nan = false);

// Names of the outputs in order ("allreduce", "norm", "residual", "q", "s").
std::vector<std::string> FusedOutputNames(const AllreduceRmsnormSpec& spec);

}  // namespace tpfuse::testing
