// Elementwise kernels of the unfused ops: unary maps (rsqrt, pow, clamp, scalar arithmetic),
// dtype casts, and broadcasting binary arithmetic. Each thread owns 8 consecutive elements per
// step of a grid-stride loop; aligned full chunks move as one vector, the rest element by element.
#pragma once

#include <cstdint>

#include "backends/cuda/kernels/unfused_common.cuh"
#include "backends/cuda/unfused_ops.h"

namespace tpfuse::cuda::unfused {

// ---------------------------------------------------------------- unary maps

enum class UnaryOp : uint8_t {
  kRsqrt,      // 1 / sqrt(x)
  kSquare,     // pow 2: x * x
  kSqrt,       // pow 0.5
  kCube,       // pow 3: x * x * x
  kReciprocal, // pow -1: 1 / x
  kInvSquare,  // pow -2: 1 / (x * x)
  kPow,        // powf(x, a)
  kClamp,      // [a, b]
  kAddScalar,  // x + a
  kSubScalar,  // x - a
  kMulScalar,  // x * a
  kDivScalar,  // x / a
  kCopy,       // pow 1
};

struct UnaryParams {
  const void* x = nullptr;  // [n] T
  void* y = nullptr;        // [n] T
  int64_t n = 0;
  UnaryOp op = UnaryOp::kCopy;
  float a = 0.0f;
  float b = 0.0f;
  bool vec = false;  // x and y are aligned for 8-element vectors
};

// The oracle's arithmetic, one IEEE operation at a time (see unfused_common.cuh).
__device__ __forceinline__ float ApplyUnary(UnaryOp op, float v, float a, float b) {
  switch (op) {
    case UnaryOp::kRsqrt: return __fdiv_rn(1.0f, __fsqrt_rn(v));
    case UnaryOp::kSquare: return __fmul_rn(v, v);
    case UnaryOp::kSqrt: return __fsqrt_rn(v);
    case UnaryOp::kCube: return __fmul_rn(__fmul_rn(v, v), v);
    case UnaryOp::kReciprocal: return __fdiv_rn(1.0f, v);
    case UnaryOp::kInvSquare: return __fdiv_rn(1.0f, __fmul_rn(v, v));
    case UnaryOp::kPow: return powf(v, a);
    // NOTE: comparisons, not fminf/fmaxf, so that NaN stays NaN as in the oracle.
    case UnaryOp::kClamp: return v < a ? a : (v > b ? b : v);
    case UnaryOp::kAddScalar: return __fadd_rn(v, a);
    case UnaryOp::kSubScalar: return __fsub_rn(v, a);
    case UnaryOp::kMulScalar: return __fmul_rn(v, a);
    case UnaryOp::kDivScalar: return __fdiv_rn(v, a);
    case UnaryOp::kCopy: return v;
  }
  return v;
}

// UnaryKernel: y[i] = op(x[i]).
//   Grid: 1D, grid-stride; block: 1D. Thread owns chunks of 8 elements.
//   Shared memory: none. Synchronization: none.
//   Preconditions: p.vec only if x and y are aligned to alignof(Vec8<T>).
template <typename T>
__global__ void UnaryKernel(UnaryParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t chunks = (p.n + kVec - 1) / kVec;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    const int64_t base = c * kVec;
    if (p.vec && base + kVec <= p.n) {
      float f[kVec];
      VecLoad(x + base, f);
#pragma unroll
      for (int i = 0; i < kVec; ++i) f[i] = ApplyUnary(p.op, f[i], p.a, p.b);
      VecStore(y + base, f);
    } else {
      for (int64_t i = base; i < p.n && i < base + kVec; ++i)
        y[i] = EncodeF<T>(ApplyUnary(p.op, LoadF(x + i), p.a, p.b));
    }
  }
}

// ---------------------------------------------------------------- casts

struct CastParams {
  const void* x = nullptr;  // [n] TIn
  void* y = nullptr;        // [n] TOut
  int64_t n = 0;
  bool vec = false;
};

// CastKernel: y[i] = round_TOut(float(x[i])). Same grid and preconditions as UnaryKernel.
template <typename TIn, typename TOut>
__global__ void CastKernel(CastParams p) {
  const TIn* x = static_cast<const TIn*>(p.x);
  TOut* y = static_cast<TOut*>(p.y);
  const int64_t chunks = (p.n + kVec - 1) / kVec;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    const int64_t base = c * kVec;
    if (p.vec && base + kVec <= p.n) {
      float f[kVec];
      VecLoad(x + base, f);
      VecStore(y + base, f);
    } else {
      for (int64_t i = base; i < p.n && i < base + kVec; ++i) y[i] = EncodeF<TOut>(LoadF(x + i));
    }
  }
}

// ---------------------------------------------------------------- binary arithmetic

// One operand of a broadcasting binary op, addressed through y's [rows, cols] view: element
// (r, c) of the operand is data[r * row_stride + c * col_stride]. A full operand has
// (cols, 1), a row vector [H] (0, 1), a column [T, 1] (1, 0), a scalar (0, 0).
struct BinaryOperand {
  const void* data = nullptr;
  int64_t row_stride = 0;
  int64_t col_stride = 0;
};

struct BinaryParams {
  BinaryOperand a;
  BinaryOperand b;
  void* y = nullptr;  // [rows, cols] TOut
  int64_t rows = 0;
  int64_t cols = 0;
  BinaryOpKind op = BinaryOpKind::kAdd;
  bool vec = false;  // cols % 8 == 0 and every pointer aligned for 8-element vectors
};

__device__ __forceinline__ float ApplyBinary(BinaryOpKind op, float a, float b) {
  switch (op) {
    case BinaryOpKind::kAdd: return __fadd_rn(a, b);
    case BinaryOpKind::kSub: return __fsub_rn(a, b);
    case BinaryOpKind::kMul: return __fmul_rn(a, b);
    case BinaryOpKind::kDiv: return __fdiv_rn(a, b);
  }
  return a;
}

// Eight consecutive columns of an operand starting at (r, c), c a multiple of 8: a vector when
// the operand is contiguous along the row, else one element repeated.
template <typename T>
__device__ __forceinline__ void LoadOperand8(const BinaryOperand& op, int64_t r, int64_t c,
                                             float (&f)[kVec]) {
  const T* data = static_cast<const T*>(op.data);
  if (op.col_stride == 1) {
    VecLoad(data + r * op.row_stride + c, f);
  } else {
    const float v = LoadF(data + r * op.row_stride);
#pragma unroll
    for (int i = 0; i < kVec; ++i) f[i] = v;
  }
}

// BinaryKernel: y[r, c] = a(r, c) (op) b(r, c).
//   Grid: 1D, grid-stride; block: 1D. Thread owns chunks of 8 elements; with p.vec a chunk
//   lies inside one row.
//   Shared memory: none. Synchronization: none.
//   Preconditions: p.vec only if cols % 8 == 0 and a, b, y are aligned to their Vec8.
template <typename TA, typename TB, typename TOut>
__global__ void BinaryKernel(BinaryParams p) {
  TOut* y = static_cast<TOut*>(p.y);
  const int64_t n = p.rows * p.cols;
  const int64_t chunks = (n + kVec - 1) / kVec;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; ch < chunks; ch += stride) {
    const int64_t base = ch * kVec;
    if (p.vec) {
      const int64_t r = base / p.cols, c = base % p.cols;
      float fa[kVec], fb[kVec];
      LoadOperand8<TA>(p.a, r, c, fa);
      LoadOperand8<TB>(p.b, r, c, fb);
#pragma unroll
      for (int i = 0; i < kVec; ++i) fa[i] = ApplyBinary(p.op, fa[i], fb[i]);
      VecStore(y + base, fa);
    } else {
      const TA* a = static_cast<const TA*>(p.a.data);
      const TB* b = static_cast<const TB*>(p.b.data);
      for (int64_t i = base; i < n && i < base + kVec; ++i) {
        const int64_t r = i / p.cols, c = i % p.cols;
        const float va = LoadF(a + r * p.a.row_stride + c * p.a.col_stride);
        const float vb = LoadF(b + r * p.b.row_stride + c * p.b.col_stride);
        y[i] = EncodeF<TOut>(ApplyBinary(p.op, va, vb));
      }
    }
  }
}

}  // namespace tpfuse::cuda::unfused
