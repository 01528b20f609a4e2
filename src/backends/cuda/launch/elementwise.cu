// Launchers of the elementwise kernels (kernels/elementwise.cuh): validation, broadcasting,
// the dtype switch, the launch and its check.
#include <cmath>
#include <vector>

#include "backends/cuda/cuda_check.h"
#include "backends/cuda/kernels/elementwise.cuh"
#include "backends/cuda/launch/unfused_launch.h"
#include "backends/cuda/unfused_ops.h"

namespace tpfuse::cuda {
namespace unfused {
namespace {

const char* BinaryOpName(BinaryOpKind op) {
  switch (op) {
    case BinaryOpKind::kAdd: return "add";
    case BinaryOpKind::kSub: return "sub";
    case BinaryOpKind::kMul: return "mul";
    case BinaryOpKind::kDiv: return "div";
  }
  return "?";
}

// Launches UnaryKernel<T> for a same-dtype map x -> y.
Status LaunchUnaryMap(const char* name, const DeviceTensor& x, const DeviceTensor& y, UnaryOp op,
                      float a, float b, cudaStream_t stream) {
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "x", x));
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "y", y));
  TPFUSE_RETURN_IF_ERROR(CheckSameShape(name, "x", x, "y", y));
  if (x.dtype != y.dtype)
    return InvalidArgument(name, ": y ", y.ToString(), " must have x's dtype (x ", x.ToString(),
                           ")");
  UnaryParams p;
  p.x = x.data;
  p.y = y.data;
  p.n = x.numel();
  p.op = op;
  p.a = a;
  p.b = b;
  if (p.n == 0) return Status::Ok();
  const int elem = DTypeSize(x.dtype);
  p.vec = VecAligned(x.data, elem) && VecAligned(y.data, elem);
  const unsigned grid = GridFor((p.n + kVec - 1) / kVec, kElementwiseThreads);
  switch (x.dtype) {
    case DType::kBF16: UnaryKernel<Bf16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DType::kF16: UnaryKernel<F16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DType::kF32: UnaryKernel<float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    default: return Internal(name, ": unhandled dtype ", DTypeName(x.dtype));
  }
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

// The NumPy broadcast of two shapes, or an error.
StatusOr<std::vector<int64_t>> BroadcastShape(const char* name, const DeviceTensor& a,
                                              const DeviceTensor& b) {
  const int rank = std::max(a.rank(), b.rank());
  std::vector<int64_t> out(size_t(rank), 1);
  for (int i = 0; i < rank; ++i) {
    const int ai = i - (rank - a.rank()), bi = i - (rank - b.rank());
    const int64_t ad = ai >= 0 ? a.shape[size_t(ai)] : 1;
    const int64_t bd = bi >= 0 ? b.shape[size_t(bi)] : 1;
    if (ad != bd && ad != 1 && bd != 1)
      return InvalidArgument(name, ": shapes ", a.ToString(), " and ", b.ToString(),
                             " do not broadcast");
    out[size_t(i)] = ad == 1 ? bd : ad;
  }
  return out;
}

// How operand `t` is addressed through y's [rows, cols] view.
StatusOr<BinaryOperand> ResolveOperand(const char* name, const char* what, const DeviceTensor& t,
                                       const DeviceTensor& y) {
  BinaryOperand op;
  op.data = t.data;
  if (t.numel() == 1) return op;  // scalar: (0, 0)
  const int64_t cols = y.cols();
  const int64_t t_last = t.rank() == 0 ? 1 : t.shape.back();
  if (t_last == cols) {
    op.col_stride = 1;
  } else if (t_last != 1) {
    return InvalidArgument(name, ": ", what, " ", t.ToString(), " does not broadcast to y ",
                           y.ToString());
  }
  // Leading dims: all 1 (broadcast along rows) or equal to y's (one row of t per row of y).
  const int64_t t_rows = t.rows();
  if (t_rows == 1) return op;
  bool same_leading = t.rank() <= y.rank();
  for (int i = 0; same_leading && i + 1 < t.rank(); ++i) {
    const int yi = i + (y.rank() - t.rank());
    same_leading = t.shape[size_t(i)] == y.shape[size_t(yi)];
  }
  if (!same_leading || t_rows != y.rows())
    return Unimplemented(name, ": broadcasting ", what, " ", t.ToString(), " to y ", y.ToString(),
                         " partially along the leading dims is not supported");
  op.row_stride = op.col_stride == 1 ? cols : 1;
  return op;
}

}  // namespace
}  // namespace unfused

using namespace unfused;  // NOLINT: the kernels and helpers of this file's family

Status LaunchBinary(BinaryOpKind op, const DeviceTensor& a, const DeviceTensor& b,
                    const DeviceTensor& y, cudaStream_t stream) {
  const char* name = BinaryOpName(op);
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "a", a));
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "b", b));
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "y", y));
  TPFUSE_ASSIGN_OR_RETURN(std::vector<int64_t> shape, BroadcastShape(name, a, b));
  if (shape != y.shape)
    return InvalidArgument(name, ": y ", y.ToString(), " is not the broadcast of a ", a.ToString(),
                           " and b ", b.ToString());
  BinaryParams p;
  TPFUSE_ASSIGN_OR_RETURN(p.a, ResolveOperand(name, "a", a, y));
  TPFUSE_ASSIGN_OR_RETURN(p.b, ResolveOperand(name, "b", b, y));
  p.y = y.data;
  p.rows = y.rows();
  p.cols = y.cols();
  p.op = op;
  if (y.numel() == 0) return Status::Ok();
  p.vec = p.cols % kVec == 0 && VecAligned(a.data, DTypeSize(a.dtype)) &&
          VecAligned(b.data, DTypeSize(b.dtype)) && VecAligned(y.data, DTypeSize(y.dtype));
  const unsigned grid = GridFor((y.numel() + kVec - 1) / kVec, kElementwiseThreads);
  constexpr DType kB = DType::kBF16, kH = DType::kF16, kF = DType::kF32;
  switch (DTypeKey(a.dtype, b.dtype, y.dtype)) {
    case DTypeKey(kB, kB, kB): BinaryKernel<Bf16, Bf16, Bf16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kH, kH, kH): BinaryKernel<F16, F16, F16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kF, kF, kF): BinaryKernel<float, float, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kB, kH, kF): BinaryKernel<Bf16, F16, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kH, kB, kF): BinaryKernel<F16, Bf16, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kB, kF, kF): BinaryKernel<Bf16, float, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kF, kB, kF): BinaryKernel<float, Bf16, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kH, kF, kF): BinaryKernel<F16, float, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kF, kH, kF): BinaryKernel<float, F16, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    default:
      return Unimplemented(name, ": dtypes a ", a.ToString(), ", b ", b.ToString(), " -> y ",
                           y.ToString(), " (one dtype throughout, or mixed inputs with y f32)");
  }
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

Status LaunchBinaryScalar(BinaryOpKind op, const DeviceTensor& a, float scalar,
                          const DeviceTensor& y, cudaStream_t stream) {
  UnaryOp unary = UnaryOp::kAddScalar;
  switch (op) {
    case BinaryOpKind::kAdd: unary = UnaryOp::kAddScalar; break;
    case BinaryOpKind::kSub: unary = UnaryOp::kSubScalar; break;
    case BinaryOpKind::kMul: unary = UnaryOp::kMulScalar; break;
    case BinaryOpKind::kDiv: unary = UnaryOp::kDivScalar; break;
  }
  return LaunchUnaryMap(BinaryOpName(op), a, y, unary, scalar, 0.0f, stream);
}

Status LaunchPow(const DeviceTensor& x, float exponent, const DeviceTensor& y,
                 cudaStream_t stream) {
  // The oracle's special cases (PyTorch's, each IEEE-rounded step by step), then powf.
  UnaryOp op = UnaryOp::kPow;
  if (exponent == 2.0f) op = UnaryOp::kSquare;
  else if (exponent == 3.0f) op = UnaryOp::kCube;
  else if (exponent == 1.0f) op = UnaryOp::kCopy;
  else if (exponent == 0.5f) op = UnaryOp::kSqrt;
  else if (exponent == -0.5f) op = UnaryOp::kRsqrt;
  else if (exponent == -1.0f) op = UnaryOp::kReciprocal;
  else if (exponent == -2.0f) op = UnaryOp::kInvSquare;
  return LaunchUnaryMap("pow", x, y, op, exponent, 0.0f, stream);
}

Status LaunchRsqrt(const DeviceTensor& x, const DeviceTensor& y, cudaStream_t stream) {
  return LaunchUnaryMap("rsqrt", x, y, UnaryOp::kRsqrt, 0.0f, 0.0f, stream);
}

Status LaunchClamp(const DeviceTensor& x, float lo, float hi, const DeviceTensor& y,
                   cudaStream_t stream) {
  if (lo > hi) return InvalidArgument("clamp: min ", lo, " is greater than max ", hi);
  return LaunchUnaryMap("clamp", x, y, UnaryOp::kClamp, lo, hi, stream);
}

Status LaunchCast(const DeviceTensor& x, const DeviceTensor& y, cudaStream_t stream) {
  TPFUSE_RETURN_IF_ERROR(CheckTensor("cast", "x", x));
  TPFUSE_RETURN_IF_ERROR(CheckTensor("cast", "y", y));
  TPFUSE_RETURN_IF_ERROR(CheckSameShape("cast", "x", x, "y", y));
  if (y.dtype == DType::kI32)
    return InvalidArgument("cast: y must be f32, bf16, f16 or f8e4m3, got ", y.ToString());
  const int64_t n = x.numel();
  if (n == 0) return Status::Ok();
  if (x.dtype == y.dtype) {
    // Decoding and re-encoding in the same dtype is the identity.
    TPFUSE_CUDA_CHECK(cudaMemcpyAsync(y.data, x.data, x.nbytes(), cudaMemcpyDeviceToDevice, stream));
    return Status::Ok();
  }
  CastParams p;
  p.x = x.data;
  p.y = y.data;
  p.n = n;
  p.vec = VecAligned(x.data, DTypeSize(x.dtype)) && VecAligned(y.data, DTypeSize(y.dtype));
  const unsigned grid = GridFor((n + kVec - 1) / kVec, kElementwiseThreads);
  constexpr DType kB = DType::kBF16, kH = DType::kF16, kF = DType::kF32, k8 = DType::kF8E4M3,
                  kI = DType::kI32;
  switch (DTypeKey(x.dtype, y.dtype)) {
    case DTypeKey(kB, kH): CastKernel<Bf16, F16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kB, kF): CastKernel<Bf16, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kB, k8): CastKernel<Bf16, Fp8><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kH, kB): CastKernel<F16, Bf16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kH, kF): CastKernel<F16, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kH, k8): CastKernel<F16, Fp8><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kF, kB): CastKernel<float, Bf16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kF, kH): CastKernel<float, F16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kF, k8): CastKernel<float, Fp8><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(k8, kB): CastKernel<Fp8, Bf16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(k8, kH): CastKernel<Fp8, F16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(k8, kF): CastKernel<Fp8, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kI, kB): CastKernel<int32_t, Bf16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kI, kH): CastKernel<int32_t, F16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kI, kF): CastKernel<int32_t, float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DTypeKey(kI, k8): CastKernel<int32_t, Fp8><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    default:
      return Unimplemented("cast: ", x.ToString(), " -> ", y.ToString());
  }
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace tpfuse::cuda
