// The CPU reference ops: every op of DESIGN.md Contract 2 and the fused op of Contract 3 on
// host tensors. This is the oracle every other backend is compared against, so each op states
// its arithmetic exactly (what is computed in f32, what in double, where it rounds).
//
// No IR types here: plain HostTensors in and out. The caller (the executor) decides result
// dtypes from the IR and passes them in. Errors are Status values naming the operand at fault.
//
// Conventions shared by every op:
//  - Inputs are decoded to f32 (bf16/f16/f8e4m3/i32 decode exactly), the op is computed in f32
//    and the result is rounded once to the output dtype (round to nearest even; FP8 saturates
//    to +-448 and keeps NaN).
//  - "Rows" are all leading dims flattened; the last dim is the hidden/column dim.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "common/tensor.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::cpu {

// ---------------------------------------------------------------- elementwise

enum class BinaryOp : uint8_t { kAdd, kSub, kMul, kDiv };
std::string_view BinaryOpName(BinaryOp op);  // "add", "sub", "mul", "div"

// y = a (op) b in f32 with NumPy broadcasting (shapes aligned on the right, a dim of 1
// stretches): covers [T,H]x[H], [T,H]x[T,1], rank-0 with anything, in either order.
StatusOr<HostTensor> Binary(BinaryOp op, const HostTensor& a, const HostTensor& b,
                            DType out_dtype);
// y = a (op) scalar (the scalar is the right operand: sub/div compute a - s, a / s).
HostTensor BinaryScalar(BinaryOp op, const HostTensor& a, float scalar, DType out_dtype);

// y = x^exponent with PyTorch's special cases for f32 on the CPU: 2 is x * x, 3 is x * x * x,
// 1 is x, 0.5 is sqrtf(x), -0.5 is 1.0f / sqrtf(x), -1 is 1.0f / x, -2 is 1.0f / (x * x);
// anything else std::pow in f32. So `pow(x, 2)` and `mul(x, x)` agree bit for bit, and
// `pow(s, -1)` is `reciprocal(s)`.
HostTensor Pow(const HostTensor& x, float exponent, DType out_dtype);
// y = 1.0f / std::sqrt(x) (not a fast rsqrt, so a GPU can match it bit for bit).
HostTensor Rsqrt(const HostTensor& x, DType out_dtype);

// One-operand elementwise ops, each one correctly rounded f32 operation (or a libm call) on the
// decoded input, rounded once to out_dtype.
enum class UnaryOp : uint8_t {
  kSqrt,        // std::sqrt
  kAbs,         // std::fabs (-0.0 -> +0.0; NaN stays NaN)
  kNeg,         // -x (flips the sign bit, also of 0 and NaN)
  kReciprocal,  // 1.0f / x
  kLog2,        // std::log2 in f32
  kExp2,        // std::exp2 in f32 (exact for integer arguments in range)
  kCeil,        // std::ceil
};
std::string_view UnaryOpName(UnaryOp op);  // "sqrt", "abs", ...
HostTensor Unary(UnaryOp op, const HostTensor& x, DType out_dtype);
// y = min(max(x, lo), hi); NaN stays NaN.
HostTensor Clamp(const HostTensor& x, float lo, float hi, DType out_dtype);
// Decode and re-encode in out_dtype (one rounding; FP8 saturates; i32 rounds to nearest).
HostTensor Cast(const HostTensor& x, DType out_dtype);
// Same bytes, another shape with the same element count.
StatusOr<HostTensor> View(const HostTensor& x, const std::vector<int64_t>& shape);
// Mean over the last dim (dim must be -1 or rank - 1): the row summed in f32 in the kernels'
// order (RowSumInKernelOrder, common/row_layout.h), divided by float(n) in f32, one rounding to
// out_dtype. keepdim keeps a trailing dim of 1.
// NOTE: this is the order of the fused op's sum of squares: the mean of a decomposed RMSNorm
// (pow(2) or mul(x, x), then mean) is then the very float the fused op computes.
StatusOr<HostTensor> Mean(const HostTensor& x, int64_t dim, bool keepdim, DType out_dtype);
// Max over the last dim (dim must be -1 or rank - 1), as torch.amax: NaN propagates, -0.0 and
// +0.0 compare equal (the first one met is kept). keepdim keeps a trailing dim of 1.
StatusOr<HostTensor> Amax(const HostTensor& x, int64_t dim, bool keepdim, DType out_dtype);

// ---------------------------------------------------------------- RMSNorm

// y = round(x * r * (w + weight_bias)) per row, computed as Contract 3 step 3 and exactly as
// the CUDA kernels compute it (every operation one f32 rounding, no fused multiply-adds):
//   sum_sq = the f32 squares h * h summed in RowSumInKernelOrder (common/row_layout.h)
//   r = 1.0f / sqrtf(sum_sq / float(H) + eps)
//   w' = w + weight_bias in f32 (no add when weight_bias is 0, so -0.0 stays -0.0)
//   y = round((h * r) * w')
// x: [..., H]; w: [H] (bf16, f16 or f32).
StatusOr<HostTensor> RmsNorm(const HostTensor& x, const HostTensor& w, float eps,
                             float weight_bias, DType out_dtype);

struct AddRmsNormResult {
  HostTensor y;             // [..., H] out_dtype
  HostTensor residual_out;  // h = round(x + residual) in residual_dtype
};
// h = round(x + residual) (f32 add, one rounding to residual_dtype), then RmsNorm of h.
// NOTE: RmsNorm, FusedAddRmsNorm and AllreduceRmsnorm share one row helper, so on the CPU the
// unfused chain all_reduce -> [fused_add_]rms_norm and the fused op are bitwise identical.
StatusOr<AddRmsNormResult> FusedAddRmsNorm(const HostTensor& x, const HostTensor& residual,
                                           const HostTensor& w, float eps, float weight_bias,
                                           DType out_dtype, DType residual_dtype);

// ---------------------------------------------------------------- FP8 quantization

// q = fp8(y * (1.0f / scale)), the reciprocal taken once in f32; with `divides`,
// q = fp8(y / scale) (IEEE division). scale: f32, one element.
StatusOr<HostTensor> QuantFp8Tensor(const HostTensor& y, const HostTensor& scale,
                                    bool divides = false);

// Dynamic (per-token or per-group) quantization parameters: mode kFp8Token or kFp8Group.
using DynamicQuantConfig = QuantParams;
struct DynamicQuantResult {
  HostTensor q;  // f8e4m3, y's shape
  HostTensor s;  // f32: row layout [T, G], column layout [G, pad4(T)] (padding left 0)
};
// Per row (token) or per group_size contiguous columns of a row (group), as the kernels do it:
//   amax = max |y| (MaxOfMagnitudes: a NaN wins, as in torch's amax), s = DynamicScaleOf(amax)
//   (common/quotient.h: max(amax, 1e-10f) / 448.0f in f32, or max(amax / 448.0f, 1 / (448 *
//   512)) when config.scale_floor_after_div; inf and NaN amax give inf and NaN; for ue8m0
//   rounded up to a power of two, from max(s, 1e-10) when config.ue8m0_floor, and floored after
//   the rounding when config.scale_floor_after_div);
//   q = fp8(y / s) by QuotientByReciprocal(y, s, 1 / s) (common/quotient.h: the IEEE quotient
//   wherever FP8 can see a difference) when config.Divides() and the scale is not a power of two
//   by construction (ue8m0 without the floor after), else q = fp8(y * (1.0f / s)) (exact for a
//   power of two s); a non-finite s takes the form's
//   own step (y / s, or y * (1.0f / s) when the form multiplies), so every value, inf and NaN
//   included, is what the torch form computes.
// y: [..., H] (rows = leading dims flattened).
StatusOr<DynamicQuantResult> QuantFp8Dynamic(const HostTensor& y,
                                             const DynamicQuantConfig& config);

// ---------------------------------------------------------------- GEMMs

// y[.., N] = a[.., K] x b[K, N]: products and sums in double, one rounding to out_dtype.
StatusOr<HostTensor> Matmul(const HostTensor& a, const HostTensor& b, DType out_dtype);

// How the activation scale `s` of scaled_matmul maps onto q [T, K] (shared vocabulary; the
// executor decides it from the IR).
using ActScaleLayout = tpfuse::ActScaleLayout;
using tpfuse::ActScaleLayoutName;

// y[T, N] = (q * s) x (w * ws): q f8e4m3 [T, K] dequantized with s per `s_layout`; w f8e4m3
// [K, N] dequantized with ws, either one element (per tensor) or blocks [K / bk, N / bn] (the
// block sizes follow from the shapes and must divide K and N). Dequantization, products and
// sums in double; one rounding to out_dtype (bf16 in the IR).
StatusOr<HostTensor> ScaledMatmul(const HostTensor& q, const HostTensor& s,
                                  ActScaleLayout s_layout, const HostTensor& w,
                                  const HostTensor& ws, DType out_dtype);

// ---------------------------------------------------------------- collectives

// a = round(sum over ranks 0..N-1 of partials[r]) with f32 accumulation in rank order, one
// rounding to the partials' dtype. Every partial must have the same dtype and shape.
// NOTE: the sum starts from rank 0's value and adds ranks 1..N-1 in order; every backend and
// strategy sums in this order, which is what makes all ranks' results bitwise identical.
StatusOr<HostTensor> AllreduceSum(const std::vector<const HostTensor*>& partials);
StatusOr<HostTensor> AllreduceSum(const std::vector<HostTensor>& partials);

// The fused op of Contract 3 for one rank: partials[r] is rank r's x [T, H]; residual [T, H]
// or null (spec.has_residual); w [H]; scale f32[] or null (quant = fp8_tensor); partials2[r]
// rank r's x2 (spec.second_sum), one per rank like partials, else empty; pre_weight [H] the
// weight of the norm before the residual add (spec.pre_residual_norm), else null; bias [H] (or
// [T, H]: spec.bias_per_token) the bias added to the sum (spec.has_bias), else null.
// Returns the emitted results in Contract 3's order: allreduce, norm, residual, q, s (only
// those in spec.emit; s only for dynamic quant).
StatusOr<std::vector<HostTensor>> AllreduceRmsnorm(const AllreduceRmsnormSpec& spec,
                                                   const std::vector<const HostTensor*>& partials,
                                                   const HostTensor* residual, const HostTensor& w,
                                                   const HostTensor* scale,
                                                   const std::vector<const HostTensor*>& partials2 = {},
                                                   const HostTensor* pre_weight = nullptr,
                                                   const HostTensor* bias = nullptr);
StatusOr<std::vector<HostTensor>> AllreduceRmsnorm(const AllreduceRmsnormSpec& spec,
                                                   const std::vector<HostTensor>& partials,
                                                   const HostTensor* residual, const HostTensor& w,
                                                   const HostTensor* scale,
                                                   const std::vector<HostTensor>& partials2 = {},
                                                   const HostTensor* pre_weight = nullptr,
                                                   const HostTensor* bias = nullptr);

}  // namespace tpfuse::cpu
