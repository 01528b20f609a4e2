// Host entry points of the unfused op kernels (DESIGN.md Contract 2 on one GPU): elementwise
// arithmetic, casts, mean, RMSNorm, FP8 quantization, and the GEMMs (cuBLASLt). The CUDA
// executor runs every op that is not a collective or the fused op through these.
//
// Kernels live in kernels/{elementwise,norm,quant}.cuh, launches in
// launch/{elementwise,norm,quant,matmul}.cu. Numerics follow the CPU oracle
// (backends/cpu/reference_ops.h) op for op: inputs decoded to f32, the op in f32 (row sums in
// the order of common/row_layout.h, as the oracle's), one rounding to the output dtype: results
// are bitwise the oracle's, except GEMMs, which differ in summation order.
//
// Every launcher validates dtypes, shapes and alignment, returns a Status that names the
// problem, and is asynchronous on `stream`. Tensors are dense row-major device buffers.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tpfuse/dtype.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::cuda {

// A dense row-major tensor in device memory.
struct DeviceTensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  int64_t numel() const;
  size_t nbytes() const;
  int rank() const { return int(shape.size()); }
  // Size of the last dim (1 for rank 0).
  int64_t cols() const;
  // Product of the leading dims (numel / cols; 1 for rank 0).
  int64_t rows() const;
  // "bf16[3, 4096]"
  std::string ToString() const;
};

// ---------------------------------------------------------------- elementwise

enum class BinaryOpKind : uint8_t { kAdd, kSub, kMul, kDiv };

// y = a (op) b in f32, one rounding to y's dtype. Broadcasting of Contract 2 (and any NumPy
// broadcast that keeps each operand a full, row-broadcast, column-broadcast or scalar view of
// y viewed as [rows, last dim]): [T,H]x[T,H], [T,H]x[H], [T,H]x[T,1], rank 0 with anything,
// either order. dtypes: a, b and y all bf16, f16 or f32, or a and b mixed with y f32 (the IR's
// promotion).
Status LaunchBinary(BinaryOpKind op, const DeviceTensor& a, const DeviceTensor& b,
                    const DeviceTensor& y, cudaStream_t stream);
// y = a (op) scalar (the scalar is the right operand). a and y have one dtype (bf16/f16/f32).
Status LaunchBinaryScalar(BinaryOpKind op, const DeviceTensor& a, float scalar,
                          const DeviceTensor& y, cudaStream_t stream);
// y = x^exponent with the oracle's special cases, bit for bit as on the CPU: 2 is x * x, 3 is
// x * x * x, 1 is x, 0.5 is sqrtf(x), -0.5 is 1 / sqrtf(x), -1 is 1 / x, -2 is 1 / (x * x);
// anything else powf (within an ulp or two of the CPU's powf).
Status LaunchPow(const DeviceTensor& x, float exponent, const DeviceTensor& y,
                 cudaStream_t stream);
// y = 1.0f / sqrtf(x), both IEEE-rounded.
Status LaunchRsqrt(const DeviceTensor& x, const DeviceTensor& y, cudaStream_t stream);
// y = x < lo ? lo : (x > hi ? hi : x) (NaN stays NaN). Pass -inf / +inf for a missing bound.
Status LaunchClamp(const DeviceTensor& x, float lo, float hi, const DeviceTensor& y,
                   cudaStream_t stream);
// Decode x, re-encode as y's dtype with one rounding (f8e4m3 saturates to +-448).
// x: bf16, f16, f32, f8e4m3 or i32; y: bf16, f16, f32 or f8e4m3.
Status LaunchCast(const DeviceTensor& x, const DeviceTensor& y, cudaStream_t stream);

// ---------------------------------------------------------------- reductions and norms

// y[r] = mean of row r of x (the last dim): the f32 sum in common/row_layout.h's order divided
// by float(cols), one rounding (the oracle's, bit for bit). y has x's dtype and rows() elements.
Status LaunchMean(const DeviceTensor& x, const DeviceTensor& y, cudaStream_t stream);

// y = round((h * r) * (w + weight_bias)), r = 1.0f / sqrtf(sum(h^2) / H + eps), the sum of
// squares in f32 in common/row_layout.h's order (bit for bit the oracle's and the fused op's).
// x, y: [.., H] one dtype (bf16/f16/f32); w: [H] bf16/f16/f32.
Status LaunchRmsNorm(const DeviceTensor& x, const DeviceTensor& w, float eps, float weight_bias,
                     const DeviceTensor& y, cudaStream_t stream);
// h = round(x + residual) (f32 add) -> residual_out, then RMSNorm of the rounded h -> y.
Status LaunchFusedAddRmsNorm(const DeviceTensor& x, const DeviceTensor& residual,
                             const DeviceTensor& w, float eps, float weight_bias,
                             const DeviceTensor& y, const DeviceTensor& residual_out,
                             cudaStream_t stream);

// ---------------------------------------------------------------- FP8 quantization

// q = fp8(y * (1.0f / scale)), the reciprocal taken once in f32, or fp8(y / scale) when
// `divides` (QuantParams::Divides: the form the graph wrote). scale: f32, one element (device
// memory). q: f8e4m3, y's shape.
Status LaunchQuantFp8Tensor(const DeviceTensor& y, const DeviceTensor& scale, bool divides,
                            const DeviceTensor& q, cudaStream_t stream);

// Per row (token) or per group_size columns (params.mode kFp8Token or kFp8Group), bit for bit
// cpu::QuantFp8Dynamic: amax = max |y| (a NaN wins), s = max(amax, 1e-10f) / 448.0f or
// max(amax / 448, 1 / (448 * 512)) (scale_floor_after_div; rounded up to a power of two for
// ue8m0), q = fp8(y / s), or fp8(y * (1 / s)) where the form multiplies (scale_op_swapped).
// s: f32 [T, G] (row) or [G, pad4(T)] (col; the padding is written as 0).
Status LaunchQuantFp8Dynamic(const DeviceTensor& y, const QuantParams& params,
                             const DeviceTensor& q, const DeviceTensor& s, cudaStream_t stream);

// ---------------------------------------------------------------- GEMMs

// What a GEMM needs besides its operands: this device's cuBLASLt handle and a workspace.
struct GemmContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// y[M, N] = a[M, K] x b[K, N] (row-major), cuBLASLt with f32 accumulation (f32 inputs: full
// f32, never TF32). a, b, y: one dtype, bf16, f16 or f32.
Status LaunchMatmul(const GemmContext& ctx, const DeviceTensor& a, const DeviceTensor& b,
                    const DeviceTensor& y, cudaStream_t stream);

// How the activation scale s of scaled_matmul maps onto q [M, K].
using ActScaleLayout = tpfuse::ActScaleLayout;

// Scratch bytes LaunchScaledMatmul needs for q [M, K] and w [K, N].
size_t ScaledMatmulScratchBytes(int64_t m, int64_t k, int64_t n);

// y[M, N] = (q * s) x (w * ws), q, w f8e4m3; ws one element or blocks [K / bk, N / bn].
// Dequantizes q and w to f32 (q * s in f32: exact for power-of-two scales), runs an f32
// cuBLASLt GEMM into f32 and rounds once to y's dtype (bf16 or f16 or f32).
// NOTE: this is the executor's correctness path, not a fast FP8 GEMM: f32 keeps the
// dequantized operands exact, so the result differs from the oracle's (double) only by the
// order of the sum. `scratch` must hold ScaledMatmulScratchBytes and be 16-byte aligned.
Status LaunchScaledMatmul(const GemmContext& ctx, const DeviceTensor& q, const DeviceTensor& s,
                          ActScaleLayout s_layout, const DeviceTensor& w, const DeviceTensor& ws,
                          const DeviceTensor& y, void* scratch, cudaStream_t stream);

}  // namespace tpfuse::cuda
