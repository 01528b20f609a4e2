// Launchers of the FP8 kernels (kernels/quant.cuh).
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/kernels/quant.cuh"
#include "backends/cuda/launch/unfused_launch.h"
#include "backends/cuda/unfused_ops.h"

namespace tpfuse::cuda {

using namespace unfused;  // NOLINT: the kernels and helpers of this file's family

Status LaunchQuantFp8Tensor(const DeviceTensor& y, const DeviceTensor& scale, bool divides,
                            const DeviceTensor& q, cudaStream_t stream) {
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic("quant_fp8", "y", y));
  TPFUSE_RETURN_IF_ERROR(CheckTensor("quant_fp8", "scale", scale));
  TPFUSE_RETURN_IF_ERROR(CheckTensor("quant_fp8", "q", q));
  if (scale.dtype != DType::kF32 || scale.numel() != 1)
    return InvalidArgument("quant_fp8: the static scale must be f32 with one element, got ",
                           scale.ToString());
  if (q.dtype != DType::kF8E4M3) return InvalidArgument("quant_fp8: q must be f8e4m3, got ", q.ToString());
  TPFUSE_RETURN_IF_ERROR(CheckSameShape("quant_fp8", "y", y, "q", q));
  QuantTensorParams p;
  p.x = y.data;
  p.scale = static_cast<const float*>(scale.data);
  p.q = q.data;
  p.n = y.numel();
  p.divides = divides;
  if (p.n == 0) return Status::Ok();
  p.vec = VecAligned(y.data, DTypeSize(y.dtype)) && VecAligned(q.data, 1);
  const unsigned grid = GridFor((p.n + kVec - 1) / kVec, kElementwiseThreads);
  switch (y.dtype) {
    case DType::kBF16: QuantFp8TensorKernel<Bf16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DType::kF16: QuantFp8TensorKernel<F16><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    case DType::kF32: QuantFp8TensorKernel<float><<<grid, kElementwiseThreads, 0, stream>>>(p); break;
    default: return Internal("quant_fp8: unhandled dtype ", DTypeName(y.dtype));
  }
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

Status LaunchQuantFp8Dynamic(const DeviceTensor& y, const QuantParams& params,
                             const DeviceTensor& q, const DeviceTensor& s, cudaStream_t stream) {
  TPFUSE_RETURN_IF_ERROR(CheckArithmetic("quant_fp8", "y", y));
  TPFUSE_RETURN_IF_ERROR(CheckTensor("quant_fp8", "q", q));
  TPFUSE_RETURN_IF_ERROR(CheckTensor("quant_fp8", "s", s));
  if (y.rank() < 1) return InvalidArgument("quant_fp8: y must have rank >= 1, got ", y.ToString());
  if (q.dtype != DType::kF8E4M3) return InvalidArgument("quant_fp8: q must be f8e4m3, got ", q.ToString());
  TPFUSE_RETURN_IF_ERROR(CheckSameShape("quant_fp8", "y", y, "q", q));
  const int64_t cols = y.cols(), rows = y.rows();
  if (cols == 0) return InvalidArgument("quant_fp8: the last dim of ", y.ToString(), " is empty");
  int64_t group = cols;
  if (params.mode == QuantMode::kFp8Group) {
    group = params.group_size;
    if (group <= 0 || cols % group != 0)
      return InvalidArgument("quant_fp8: group_size ", group, " does not divide the last dim of ",
                             y.ToString());
  } else if (params.mode != QuantMode::kFp8Token) {
    return InvalidArgument("quant_fp8: dynamic quantization needs mode token or group, got ",
                           QuantModeName(params.mode));
  }
  TPFUSE_RETURN_IF_ERROR(params.Validate());
  const int64_t groups = cols / group;
  const bool col_major = params.layout == ScaleLayout::kCol;
  const int64_t rows_padded = PaddedScaleTokens(rows);
  const std::vector<int64_t> s_shape =
      col_major ? std::vector<int64_t>{groups, rows_padded} : std::vector<int64_t>{rows, groups};
  if (s.dtype != DType::kF32 || s.shape != s_shape) {
    DeviceTensor expected{nullptr, DType::kF32, s_shape};
    return InvalidArgument("quant_fp8: s is ", s.ToString(), ", expected ", expected.ToString(),
                           " (", ScaleLayoutName(params.layout), " layout)");
  }
  const int64_t grid_rows = col_major ? rows_padded : rows;
  TPFUSE_RETURN_IF_ERROR(CheckRowGrid("quant_fp8", grid_rows));
  if (grid_rows == 0) return Status::Ok();

  QuantDynamicParams p;
  p.x = y.data;
  p.q = q.data;
  p.s = static_cast<float*>(s.data);
  p.rows = rows;
  p.cols = cols;
  p.group_size = group;
  p.groups = groups;
  p.rows_padded = rows_padded;
  p.col_major = col_major;
  p.ue8m0 = params.format == ScaleFormat::kUe8m0;
  p.floor_after_div = params.scale_floor_after_div;
  p.ue8m0_floor = params.ue8m0_floor;
  p.divides = params.Divides();
  p.vec = group % kVec == 0 && VecAligned(y.data, DTypeSize(y.dtype)) && VecAligned(q.data, 1);
  // Per token: the block shares the row. Per group: a warp per group, up to 8 warps.
  const int threads = groups == 1 ? RowBlockThreads(cols) : 32 * int(std::min<int64_t>(groups, 8));
  const unsigned grid = unsigned(grid_rows);
  switch (y.dtype) {
    case DType::kBF16: QuantFp8DynamicKernel<Bf16><<<grid, threads, 0, stream>>>(p); break;
    case DType::kF16: QuantFp8DynamicKernel<F16><<<grid, threads, 0, stream>>>(p); break;
    case DType::kF32: QuantFp8DynamicKernel<float><<<grid, threads, 0, stream>>>(p); break;
    default: return Internal("quant_fp8: unhandled dtype ", DTypeName(y.dtype));
  }
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

namespace unfused {

Status LaunchDequantFp8(const char* name, const DeviceTensor& q, const DeviceTensor& s,
                        const Fp8ScaleBlocks& blocks, float* out, cudaStream_t stream) {
  TPFUSE_RETURN_IF_ERROR(CheckTensor(name, "FP8 operand", q));
  TPFUSE_RETURN_IF_ERROR(CheckTensor(name, "scale", s));
  if (q.dtype != DType::kF8E4M3 || q.rank() != 2)
    return InvalidArgument(name, ": expected an f8e4m3 matrix, got ", q.ToString());
  if (s.dtype != DType::kF32) return InvalidArgument(name, ": scales must be f32, got ", s.ToString());
  const int64_t rows = q.shape[0], cols = q.shape[1];
  if (blocks.block_rows <= 0 || blocks.block_cols <= 0 || blocks.row_stride < 0 ||
      blocks.col_stride < 0)
    return Internal(name, ": bad scale blocks");
  if (rows == 0 || cols == 0) return Status::Ok();
  const int64_t last = ((rows - 1) / blocks.block_rows) * blocks.row_stride +
                       ((cols - 1) / blocks.block_cols) * blocks.col_stride;
  if (last >= s.numel())
    return InvalidArgument(name, ": scale ", s.ToString(), " is too small for ", q.ToString());
  DequantParams p;
  p.q = q.data;
  p.s = static_cast<const float*>(s.data);
  p.out = out;
  p.rows = rows;
  p.cols = cols;
  p.block_rows = blocks.block_rows;
  p.block_cols = blocks.block_cols;
  p.row_stride = blocks.row_stride;
  p.col_stride = blocks.col_stride;
  p.vec = cols % kVec == 0 && VecAligned(q.data, 1) && VecAligned(out, 4);
  const unsigned grid = GridFor((rows * cols + kVec - 1) / kVec, kElementwiseThreads);
  DequantFp8Kernel<<<grid, kElementwiseThreads, 0, stream>>>(p);
  TPFUSE_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace unfused
}  // namespace tpfuse::cuda
