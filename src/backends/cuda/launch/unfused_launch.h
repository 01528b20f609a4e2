// Host helpers shared by the unfused op launchers (launch/{elementwise,norm,quant,matmul}.cu):
// argument checks that name the operand, grid sizing, and the dtype keys of the flat switches.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "backends/cuda/unfused_ops.h"
#include "tpfuse/status.h"

namespace tpfuse::cuda::unfused {

// A key for a flat switch over several dtypes: DTypeKey(a, b, y).
constexpr uint32_t DTypeKey(DType a) { return uint32_t(a) + 1; }
constexpr uint32_t DTypeKey(DType a, DType b) { return DTypeKey(a) * 8 + DTypeKey(b); }
constexpr uint32_t DTypeKey(DType a, DType b, DType c) { return DTypeKey(a, b) * 8 + DTypeKey(c); }

// Threads per block of the grid-stride elementwise kernels.
inline constexpr int kElementwiseThreads = 256;

// Blocks for a grid-stride loop over `work_items` items at `threads` per block: enough to cover
// the work, capped (the loop takes the rest) and at least 1.
inline unsigned GridFor(int64_t work_items, int threads) {
  constexpr int64_t kMaxBlocks = 8192;
  const int64_t blocks = (work_items + threads - 1) / threads;
  return unsigned(std::clamp<int64_t>(blocks, 1, kMaxBlocks));
}

// `t` has a non-null pointer (unless it is empty) and one of the allowed dtypes.
inline Status CheckTensor(const char* op, const char* what, const DeviceTensor& t) {
  if (t.data == nullptr && t.numel() > 0)
    return InvalidArgument(op, ": ", what, " ", t.ToString(), " has a null device pointer");
  for (int64_t d : t.shape) {
    if (d < 0) return InvalidArgument(op, ": ", what, " ", t.ToString(), " has a negative dim");
  }
  return Status::Ok();
}

inline bool IsArithmeticType(DType d) { return IsHalfType(d) || d == DType::kF32; }

inline Status CheckArithmetic(const char* op, const char* what, const DeviceTensor& t) {
  TPFUSE_RETURN_IF_ERROR(CheckTensor(op, what, t));
  if (!IsArithmeticType(t.dtype))
    return InvalidArgument(op, ": ", what, " must be bf16, f16 or f32, got ", t.ToString());
  return Status::Ok();
}

inline Status CheckSameShape(const char* op, const char* what_a, const DeviceTensor& a,
                             const char* what_b, const DeviceTensor& b) {
  if (a.shape != b.shape)
    return InvalidArgument(op, ": ", what_b, " ", b.ToString(), " does not match ", what_a, " ",
                           a.ToString());
  return Status::Ok();
}

// Rows cannot exceed the grid's x limit when a kernel gives one block to a row.
inline Status CheckRowGrid(const char* op, int64_t rows) {
  if (rows > int64_t(INT32_MAX))
    return OutOfRange(op, ": ", rows, " rows exceed the grid limit");
  return Status::Ok();
}

// How the scales of an FP8 matrix [rows, cols] map onto it: element (r, c) takes
// s[(r / block_rows) * row_stride + (c / block_cols) * col_stride].
struct Fp8ScaleBlocks {
  int64_t block_rows = 1;
  int64_t block_cols = 1;
  int64_t row_stride = 0;
  int64_t col_stride = 0;
};

// out[rows, cols] (f32, 16-byte aligned) = float(q) * scale (launch/quant.cu). Checks that
// every scale index lies inside s.
Status LaunchDequantFp8(const char* name, const DeviceTensor& q, const DeviceTensor& s,
                        const Fp8ScaleBlocks& blocks, float* out, cudaStream_t stream);

}  // namespace tpfuse::cuda::unfused
