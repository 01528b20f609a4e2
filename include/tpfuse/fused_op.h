// The fused op `allreduce_rmsnorm` (DESIGN.md Contract 3): its description, its result layout,
// and what a backend can do with it. Shared by the compiler, the CPU oracle and the CUDA runtime.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tpfuse/dtype.h"
#include "tpfuse/status.h"

namespace tpfuse {

enum class QuantMode : uint8_t { kNone, kFp8Tensor, kFp8Token, kFp8Group };
enum class ScaleLayout : uint8_t { kRow, kCol };
enum class ScaleFormat : uint8_t { kF32, kUe8m0 };

std::string_view QuantModeName(QuantMode mode);  // "none", "fp8_tensor", "fp8_token", "fp8_group"
std::string_view ScaleLayoutName(ScaleLayout layout);  // "row", "col"
std::string_view ScaleFormatName(ScaleFormat format);  // "f32", "ue8m0"
StatusOr<QuantMode> ParseQuantMode(std::string_view name);
StatusOr<ScaleLayout> ParseScaleLayout(std::string_view name);
StatusOr<ScaleFormat> ParseScaleFormat(std::string_view name);

// How the fused op moves data between the GPUs (docs/kernels.md). The one vocabulary of the
// public API, the dispatcher, the launchers, the CLI and the benchmark.
enum class Strategy : uint8_t {
  kOneShot,  // every rank pushes its rows to every peer, data words carry readiness
  kTwoShot,  // reduce-scatter by rows, epilogue on the owned rows, all-gather
  kNccl,     // NCCL collectives + one fused epilogue kernel (multi-node, no peer memory, any size):
             // ncclAllReduce at N = 2, ncclAllGather + a rank-ordered sum above
};
inline constexpr Strategy kAllStrategies[] = {Strategy::kOneShot, Strategy::kTwoShot,
                                              Strategy::kNccl};
std::string_view StrategyName(Strategy strategy);  // "oneshot", "twoshot", "nccl"
StatusOr<Strategy> ParseStrategy(std::string_view name);

// A strategy asked for by a caller: a fixed one, or std::nullopt for the dispatcher's choice
// ("auto": per world size, hidden, quant and T; nccl when over the workspace).
using StrategyRequest = std::optional<Strategy>;
std::string_view StrategyRequestName(StrategyRequest request);  // "auto" or StrategyName
// "auto" or a strategy name.
StatusOr<StrategyRequest> ParseStrategyRequest(std::string_view name);

// How the activation scale `s` of scaled_matmul maps onto q [M, K].
enum class ActScaleLayout : uint8_t {
  kPerTensor,    // s: one element
  kPerToken,     // s: [M, 1] (M elements)
  kPerGroupRow,  // s: [M, K / g] row-major
  kPerGroupCol,  // s: [K / g, M_pad] column-major, M_pad >= M (pad4(M))
};
std::string_view ActScaleLayoutName(ActScaleLayout layout);  // "per-tensor", ...

inline bool IsDynamicQuant(QuantMode mode) {
  return mode == QuantMode::kFp8Token || mode == QuantMode::kFp8Group;
}

// An FP8 quantization's parameters, in one description: the quant_fp8 op, the quant step of the
// fused op (AllreduceRmsnormSpec::quant_params) and the CPU reference read this.
struct QuantParams {
  QuantMode mode = QuantMode::kFp8Token;
  int group_size = 128;                    // fp8_group only; fp8_token quantizes whole rows
  ScaleLayout layout = ScaleLayout::kRow;  // dynamic scales: [T, G] or [G, pad4(T)]
  ScaleFormat format = ScaleFormat::kF32;  // ue8m0: scales rounded up to a power of two
  // The scale step written the other way round from the mode's default (RoundingRecipe).
  bool scale_op_swapped = false;
  // Dynamic modes: s = max(amax / 448, 1 / (448 * 512)) rather than max(amax, 1e-10) / 448
  // (RoundingRecipe::scale_floor_after_div); ue8m0: the floor after the rounding.
  bool scale_floor_after_div = false;
  // ue8m0: the power of two is taken of max(s, 1e-10) (RoundingRecipe::ue8m0_floor).
  bool ue8m0_floor = false;

  bool operator==(const QuantParams&) const = default;
  // Whether q = fp8(y / scale) rather than fp8(y * (1 / scale)), the reciprocal taken once in
  // f32: fp8_tensor multiplies by default, fp8_token and fp8_group divide.
  bool Divides() const { return (mode != QuantMode::kFp8Tensor) != scale_op_swapped; }
  // scale_floor_after_div needs a dynamic mode, ue8m0_floor a dynamic mode and ue8m0 scales.
  // Names the problem.
  Status Validate() const;
};

// The results the graph uses. Results come in this field order; `quant` contributes q and, for
// dynamic modes, s.
struct EmitSet {
  bool allreduce = false;  // a = round(sum of partials)
  bool norm = false;       // y
  bool residual = false;   // h = a + residual (residual_out)
  bool quant = false;      // q [, s]

  bool empty() const { return !allreduce && !norm && !residual && !quant; }
  bool operator==(const EmitSet&) const = default;
  // ["allreduce", "norm", ...] in result order.
  std::vector<std::string> Names() const;
  // Parses names in any order; rejects unknown or repeated names.
  static StatusOr<EmitSet> FromNames(const std::vector<std::string>& names);
};

// Where the form the fused op replaced rounds (DESIGN.md Contract 3, attribute `rounding`). The
// defaults are Contract 3's original form; the compiler sets the others from the graph it
// matched, so that fusing changes no bit of the graph's results.
struct RoundingRecipe {
  // The norm reads the unrounded f32 h = a + residual (vLLM's native fused-add RMSNorm) instead
  // of round(h) (the residual add written in the activation dtype).
  bool norm_input_f32 = false;
  // y = round(round(n) * w') (LlamaRMSNorm's `weight * x.to(input_dtype)`, vLLM's
  // forward_static) instead of y = round(n * w').
  bool weight_after_round = false;
  // w' = round_to_weight_dtype(w + weight_bias) (the graph adds the 1 in the weight's dtype)
  // instead of the f32 sum. No effect when weight_bias is 0 or the weight is f32.
  bool weight_bias_in_weight_dtype = false;
  // The quantization's scale step written the other way round from the mode's default:
  // fp8_tensor divides y / scale (default: y * (1/scale), the reciprocal once in f32); fp8_token
  // and fp8_group multiply y * (1/s) (default: y / s).
  bool scale_op_swapped = false;
  // The dynamic scale floored after the division, s = max(amax / 448, 1 / (448 * 512)) (vLLM's
  // per-token kernel and its QuantFP8 torch forms), instead of s = max(amax, 1e-10) / 448
  // (DeepSeek's and vLLM's per-group kernels). With ue8m0 scales the floor follows the rounding
  // to a power of two, s = max(pow2_ceil(amax / 448), 1 / (448 * 512)) (QuantFP8's UE8M0 form).
  // fp8_token and fp8_group only.
  bool scale_floor_after_div = false;
  // UE8M0 scales rounded up from max(s, 1e-10) (vLLM's per_token_group_fp8_quant:
  // exp2(ceil(log2(max(|s|, 1e-10))))) instead of from s: the two differ for s < 2^-34, an amax
  // below about 2.6e-8 (all-zero groups). fp8_token and fp8_group with ue8m0 scales only.
  bool ue8m0_floor = false;
  // residual_out is the f32 sum h itself, unrounded (f32), instead of round(h) in the activation
  // dtype: a model that keeps its residual stream in f32 (SGLang's fp32_residual, vLLM's f16
  // Gemma). Needs a residual.
  bool residual_out_f32 = false;
  // The norm output is y = n * w' itself, unrounded (f32), instead of round(y) in the activation
  // dtype: a graph that returns the norm in f32 (FlashInfer's fusion tests' reference, a norm
  // weight kept in f32 multiplying the f32 normalized value). Quant none only: the quantization
  // reads the rounded y.
  bool norm_out_f32 = false;

  bool operator==(const RoundingRecipe&) const = default;
  bool is_default() const { return *this == RoundingRecipe{}; }
  // Names of the flags set, in field order: "norm_input_f32", "weight_after_round",
  // "weight_bias_in_weight_dtype", "scale_op_swapped", "scale_floor_after_div", "ue8m0_floor",
  // "residual_out_f32", "norm_out_f32". Empty for the defaults.
  std::vector<std::string> Names() const;
  // Parses flag names in any order; rejects unknown or repeated names.
  static StatusOr<RoundingRecipe> FromNames(const std::vector<std::string>& names);
};

// Everything that fixes the fused op's behaviour except the token count.
struct AllreduceRmsnormSpec {
  DType act_dtype = DType::kBF16;     // x, residual, allreduce/norm/residual outputs
  DType weight_dtype = DType::kBF16;  // w: bf16, f16 or f32
  int64_t hidden = 0;                 // H
  // false: x is this rank's partial sum and a = round(sum over ranks) (Contract 3 step 1).
  // true: no all_reduce feeds the chain (TP 1, or a norm of a replicated value): a = x on every
  // rank, no communication; emit.allreduce is then not allowed (the graph already has x).
  bool local = false;
  bool has_residual = false;
  // The residual operand is f32 (a residual stream kept in f32), not of the activation dtype.
  // h = a' + residual in f32 either way.
  bool residual_f32_in = false;
  float eps = 1e-6f;
  float weight_bias = 0.0f;           // 1 for Gemma's x * (1 + w)
  // a' = round(a * sum_scale) before the residual add (Granite's and Falcon-H1's
  // `residual + out * multiplier`): f32 product of a and sum_scale, rounded to the activation
  // dtype. 1: no scaling (a' = a). The emitted allreduce is a, not a'.
  float sum_scale = 1.0f;
  // A bias added to the sum first (a row-parallel layer's bias added after its all_reduce, as
  // transformers' row-wise tensor-parallel plan adds it; TensorRT-LLM's fused all_reduce takes
  // one too): the operand bias [H] of the activation dtype, ab = round(a + bias) (f32 sum, one
  // rounding), which sum_scale and the residual add then read in a's place. The emitted allreduce
  // is a, without the bias. No second_sum and no pre_residual_norm.
  bool has_bias = false;
  // The bias is a tensor of x's shape [T, H], one row per token, not one [H] for every row: a
  // tensor computed beside the all_reduce and added to its sum before the residual add
  // (transformers' tp_plan MoE blocks: the routed experts' all_reduced sum plus the replicated
  // shared experts' output, or plus the routed sum of another all_reduce). Needs has_bias.
  bool bias_per_token = false;
  // Two all_reduces summed before the residual add (Granite-MoE's `moe_out + shared_mlp_out`,
  // Falcon-H1's attention and SSM mixers, each behind its own all_reduce): the operand x2 is this
  // rank's partial of the second. a2 = round(sum of x2) like a, and the sum the residual add reads
  // is round(round(a * first_scale) + round(a2 * second_scale)) (a scale of 1 is no step), then
  // scaled by sum_scale. A local op (world size 1) reads x2 as a2, as it reads x as a.
  // emit.allreduce is not allowed (there is no one all_reduce result to emit).
  bool second_sum = false;
  float first_scale = 1.0f;
  float second_scale = 1.0f;
  // With second_sum: the second sum goes into the residual first, h1 = round(residual +
  // round(a2 * second_scale)), and the norm's input is a' + h1 (a' = round(a * sum_scale)), as
  // `residual + attention + mlp` computes it (Cohere2-MoE's and LongCat-Flash's parallel blocks,
  // each block behind its own all_reduce). Needs a residual of the activation dtype and no
  // first_scale (the first sum's scale is sum_scale there).
  bool second_sum_into_residual = false;
  // A norm of the sum before the residual add (Gemma 2/3/4's and GLM-4's sandwich norms, OLMo's
  // post-norm before the next norm: `residual + norm(a)`, then the norm this op ends in): the
  // operand pre_weight [H] (weight_dtype) and pre_eps. a' = round(a * r0 * w0') (under
  // rounding.weight_after_round round(round(a * r0) * w0')), r0 = 1 / sqrt(mean(a^2) + pre_eps)
  // with the sum of squares in the kernels' order, w0' = pre_weight + weight_bias as for the
  // weight (the two norms are of one form: weight dtype, weight_bias and their rounding). The
  // residual add reads a'. Needs a residual; no second_sum and no sum_scale.
  bool pre_residual_norm = false;
  float pre_eps = 1e-6f;
  QuantMode quant = QuantMode::kNone;
  int group_size = 128;               // fp8_group only; fp8_token uses H
  ScaleLayout scale_layout = ScaleLayout::kRow;
  ScaleFormat scale_fmt = ScaleFormat::kF32;
  EmitSet emit;
  RoundingRecipe rounding;

  // The quantization step's parameters (mode, group, scale layout and format, scale step).
  QuantParams quant_params() const {
    return QuantParams{quant, group_size, scale_layout, scale_fmt, rounding.scale_op_swapped,
                       rounding.scale_floor_after_div, rounding.ue8m0_floor};
  }
  // Whether the quantization divides by its scale (y / scale, y / s) rather than multiplying by
  // the reciprocal taken once in f32: the mode's default, swapped by rounding.scale_op_swapped.
  bool QuantDivides() const { return quant_params().Divides(); }

  // Checks internal consistency (dtypes, hidden > 0, group divides hidden, emit not empty,
  // emit.quant iff quant != none, emit.residual and an f32 residual need a residual, an f32 norm
  // output quant none). Names the
  // problem.
  Status Validate() const;

  // Columns per row of the dynamic-quant scale: H / group_size (group), 1 (token), 0 otherwise.
  int64_t ScaleGroupsPerRow() const;
  // Elements of the scale output for T tokens (row-major [T, G] or column-major [G, pad4(T)]).
  int64_t ScaleElements(int64_t tokens) const;
  // Number of results, in order allreduce, norm, residual, q, s.
  int NumResults() const;
  // Whether the residual stream is kept in f32: an f32 residual operand or residual_out.
  bool f32_residual() const { return has_residual && (residual_f32_in || rounding.residual_out_f32); }
  // The dtypes of the residual operand and of residual_out (f32 or the activation dtype).
  DType residual_in_dtype() const { return residual_f32_in ? DType::kF32 : act_dtype; }
  DType residual_out_dtype() const { return rounding.residual_out_f32 ? DType::kF32 : act_dtype; }
  // The dtype of the norm output (f32 under rounding.norm_out_f32, else the activation dtype).
  DType norm_out_dtype() const { return rounding.norm_out_f32 ? DType::kF32 : act_dtype; }
  // Whether the residual stream or the norm output is f32 (f32_residual() or norm_out_f32): the
  // backends' kernels for f32 values serve these.
  bool has_f32_values() const { return f32_residual() || rounding.norm_out_f32; }
  // One-line description for logs and errors.
  std::string ToString() const;
};

// Device pointers of one fused-op call: x (and x2), residual and outputs [T, H] row-major (the residual
// and residual_out in their dtypes, AllreduceRmsnormSpec::residual_in_dtype/_out_dtype, the norm
// output in norm_out_dtype); weight [H];
// scale f32[] (fp8_tensor); scale_out spec.ScaleElements(T) floats. Outputs not in spec.emit
// are null; the others are 16-byte aligned (scale pointers 4-byte).
struct FusedBuffers {
  const void* x = nullptr;
  const void* residual = nullptr;
  const void* weight = nullptr;
  const float* scale = nullptr;
  void* allreduce_out = nullptr;
  void* norm_out = nullptr;
  void* residual_out = nullptr;
  void* quant_out = nullptr;
  float* scale_out = nullptr;
  const void* x2 = nullptr;  // the second all_reduce's partial [T, H] (spec.second_sum)
  const void* pre_weight = nullptr;  // the norm's weight before the residual add [H] (spec.pre_residual_norm)
  const void* bias = nullptr;  // the bias added to the sum [H], or [T, H] (spec.has_bias, bias_per_token)
};

// Row padding of the column-major scale layout: T rounded up to a multiple of 4.
inline int64_t PaddedScaleTokens(int64_t tokens) { return (tokens + 3) / 4 * 4; }

// What a backend's fused op supports. The fusion pass asks this before rewriting; a backend
// that cannot do something gets a smaller fusion or none, with the reason in words.
struct FusionCapabilities {
  std::string backend;                          // "cpu", "cuda"
  std::vector<int> world_sizes;                 // TP degrees the fused op runs at
  std::vector<DType> act_dtypes;
  std::vector<DType> weight_dtypes;
  std::vector<QuantMode> quant_modes;
  std::vector<int> group_sizes;                 // fp8_group group sizes
  bool scale_col_major = true;
  bool scale_ue8m0 = true;
  bool emit_allreduce = true;                   // may return the all_reduce result itself
  bool emit_norm_with_quant = true;             // may return y and q together (fan-out)
  bool residual_f32 = true;                     // an f32 residual operand or residual_out
  bool norm_out_f32 = true;                     // the norm output in f32 (rounding norm_out_f32)
  bool second_sum = true;                       // two all_reduces summed (spec.second_sum)
  bool bias = true;                             // a bias added to the sum (spec.has_bias)
  bool bias_per_token = true;                   // ... of x's shape (spec.bias_per_token)
  // The world sizes at which the fused op runs a norm before the residual add
  // (spec.pre_residual_norm); empty: every one it supports.
  std::vector<int> pre_residual_norm_world_sizes;
  int64_t hidden_multiple = 8;
  int64_t max_hidden = 0;                       // 0: no limit

  // Empty when supported; otherwise why not, in words ("quant fp8_token is not supported by
  // backend cuda", "hidden 4100 is not a multiple of 8").
  std::string WhyUnsupported(const AllreduceRmsnormSpec& spec, int world_size) const;
  // Why a world size alone is unsupported, or empty.
  std::string WhyWorldSizeUnsupported(int world_size) const;
};

// The CPU reference backend does everything at any world size >= 1.
FusionCapabilities CpuFusionCapabilities();
// The CUDA backend (plain data: available without a GPU or nvcc, so `compile --backend cuda`
// works anywhere).
FusionCapabilities CudaFusionCapabilities();

}  // namespace tpfuse
