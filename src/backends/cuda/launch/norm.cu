// Launchers of the row-reduction kernels (kernels/norm.cuh).
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/kernels/norm.cuh"
#include "backends/cuda/launch/unfused_launch.h"
#include "backends/cuda/unfused_ops.h"

namespace tpfuse::cuda {

using namespace unfused;  // NOLINT: the kernels and helpers of this file's family

Status LaunchMean(const DeviceTensor& x, const DeviceTensor& y, cudaStream_t stream) {
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic("mean", "x", x));
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic("mean", "y", y));
  if (x.rank() < 1) return InvalidArgument("mean: x must have rank >= 1, got ", x.ToString());
  if (x.cols() == 0) return InvalidArgument("mean: the last dim of ", x.ToString(), " is empty");
  if (y.dtype != x.dtype || y.numel() != x.rows())
    return InvalidArgument("mean: y ", y.ToString(), " must have x's dtype and one element per row of x ",
                           x.ToString());
  TPFUSE_RETURN_IF_ERROR(CheckRowGrid("mean", x.rows()));
  if (x.rows() == 0) return Status::Ok();
  MeanParams p;
  p.x = x.data;
  p.y = y.data;
  p.cols = x.cols();
  p.vec = p.cols % kVec == 0 && VecAligned(x.data, DTypeSize(x.dtype));
  const unsigned grid = unsigned(x.rows());
  const int threads = RowReductionThreads(p.cols);
  switch (x.dtype) {
    case DType::kBF16: MeanKernel<Bf16><<<grid, threads, 0, stream>>>(p); break;
    case DType::kF16: MeanKernel<F16><<<grid, threads, 0, stream>>>(p); break;
    case DType::kF32: MeanKernel<float><<<grid, threads, 0, stream>>>(p); break;
    default: return Internal("mean: unhandled dtype ", DTypeName(x.dtype));
  }
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

namespace {

// Shared by rms_norm and fused_add_rms_norm: residual / residual_out null for rms_norm.
Status LaunchNorm(const char* name, const DeviceTensor& x, const DeviceTensor* residual,
                  const DeviceTensor& w, float eps, float weight_bias, const DeviceTensor& y,
                  const DeviceTensor* residual_out, cudaStream_t stream) {
  const bool has_residual = residual != nullptr;
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "x", x));
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "weight w", w));
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "y", y));
  if (x.rank() < 1) return InvalidArgument(name, ": x must have rank >= 1, got ", x.ToString());
  if (x.cols() == 0) return InvalidArgument(name, ": the last dim of ", x.ToString(), " is empty");
  if (w.rank() != 1 || w.shape[0] != x.cols())
    return InvalidArgument(name, ": weight ", w.ToString(), " does not match the hidden dim of ",
                           x.ToString());
  TPFUSE_RETURN_IF_ERROR(CheckSameShape(name, "x", x, "y", y));
  if (y.dtype != x.dtype)
    return InvalidArgument(name, ": y ", y.ToString(), " must have x's dtype (x ", x.ToString(), ")");
  if (has_residual) {
    TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "residual", *residual));
    TPFUSE_RETURN_IF_ERROR(CheckArithmetic(name, "residual_out", *residual_out));
    if (residual->shape != x.shape || residual->dtype != x.dtype)
      return InvalidArgument(name, ": residual ", residual->ToString(), " does not match x ",
                             x.ToString());
    if (residual_out->shape != x.shape || residual_out->dtype != x.dtype)
      return InvalidArgument(name, ": residual_out ", residual_out->ToString(),
                             " does not match x ", x.ToString());
  }
  if (!(eps >= 0.0f)) return InvalidArgument(name, ": eps must be >= 0, got ", eps);
  TPFUSE_RETURN_IF_ERROR(CheckRowGrid(name, x.rows()));
  if (x.rows() == 0) return Status::Ok();

  RmsNormParams p;
  p.x = x.data;
  p.residual = has_residual ? residual->data : nullptr;
  p.w = w.data;
  p.weight_type = w.dtype == DType::kBF16  ? WeightType::kBf16
                  : w.dtype == DType::kF16 ? WeightType::kF16
                                           : WeightType::kF32;
  p.y = y.data;
  p.residual_out = has_residual ? residual_out->data : nullptr;
  p.cols = x.cols();
  p.eps = eps;
  p.weight_bias = weight_bias;
  const int elem = DTypeSize(x.dtype);
  p.vec = p.cols % kVec == 0 && VecAligned(x.data, elem) && VecAligned(y.data, elem) &&
          VecAligned(w.data, DTypeSize(w.dtype)) &&
          (!has_residual || (VecAligned(residual->data, elem) && VecAligned(residual_out->data, elem)));
  const unsigned grid = unsigned(x.rows());
  const int threads = RowReductionThreads(p.cols);
  switch (DTypeKey(x.dtype) * 2 + uint32_t(has_residual)) {
    case DTypeKey(DType::kBF16) * 2 + 0: RmsNormKernel<Bf16, false><<<grid, threads, 0, stream>>>(p); break;
    case DTypeKey(DType::kBF16) * 2 + 1: RmsNormKernel<Bf16, true><<<grid, threads, 0, stream>>>(p); break;
    case DTypeKey(DType::kF16) * 2 + 0: RmsNormKernel<F16, false><<<grid, threads, 0, stream>>>(p); break;
    case DTypeKey(DType::kF16) * 2 + 1: RmsNormKernel<F16, true><<<grid, threads, 0, stream>>>(p); break;
    case DTypeKey(DType::kF32) * 2 + 0: RmsNormKernel<float, false><<<grid, threads, 0, stream>>>(p); break;
    case DTypeKey(DType::kF32) * 2 + 1: RmsNormKernel<float, true><<<grid, threads, 0, stream>>>(p); break;
    default: return Internal(name, ": unhandled dtype ", DTypeName(x.dtype));
  }
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace

Status LaunchRmsNorm(const DeviceTensor& x, const DeviceTensor& w, float eps, float weight_bias,
                     const DeviceTensor& y, cudaStream_t stream) {
  return LaunchNorm("rms_norm", x, nullptr, w, eps, weight_bias, y, nullptr, stream);
}

Status LaunchFusedAddRmsNorm(const DeviceTensor& x, const DeviceTensor& residual,
                             const DeviceTensor& w, float eps, float weight_bias,
                             const DeviceTensor& y, const DeviceTensor& residual_out,
                             cudaStream_t stream) {
  return LaunchNorm("fused_add_rms_norm", x, &residual, w, eps, weight_bias, y, &residual_out,
                    stream);
}

}  // namespace tpfuse::cuda
