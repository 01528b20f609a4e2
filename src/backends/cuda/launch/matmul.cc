// The GEMMs of the unfused ops through cuBLASLt: matmul, and scaled_matmul by dequantizing to
// f32 first (see unfused_ops.h for why).
//
// Row-major [M, K] x [K, N] = [M, N] is computed as the column-major product
// y^T[N, M] = b^T[N, K] x a^T[K, M]: a row-major matrix is its transpose in column-major order,
// so no operand is transposed and no copy is made.
#include <cublasLt.h>

#include <cstdint>

#include "backends/cuda/cuda_check.h"
#include "backends/cuda/launch/unfused_launch.h"
#include "backends/cuda/unfused_ops.h"

namespace tpfuse::cuda {
namespace {

using unfused::CheckTensor;

Status CublasStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return Status(StatusCode::kCudaError, StrCat(what, " failed: ", cublasLtGetStatusName(status),
                                               " (", cublasLtGetStatusString(status), ")"));
}

#define TPFUSE_CUBLAS_CHECK_(expr) TPFUSE_RETURN_IF_ERROR(CublasStatus((expr), #expr))

// cuBLASLt descriptors, destroyed in reverse order of creation.
struct GemmDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~GemmDescriptors() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

cudaDataType_t CudaType(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

// y[M, N] = a[M, K] x b[K, N], row-major, all of `dtype`, f32 accumulation.
Status RowMajorGemm(const GemmContext& ctx, DType dtype, const void* a, const void* b, void* y,
                    int64_t m, int64_t k, int64_t n, cudaStream_t stream) {
  if (ctx.handle == nullptr) return InvalidArgument("matmul: no cuBLASLt handle");
  const cudaDataType_t type = CudaType(dtype);
  GemmDescriptors d;
  // NOTE: CUBLAS_COMPUTE_32F, never the _FAST_TF32 variant: f32 GEMMs stay f32 so results
  // differ from the oracle only by the order of the sum.
  TPFUSE_CUBLAS_CHECK_(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t no_trans = CUBLAS_OP_N;
  TPFUSE_CUBLAS_CHECK_(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &no_trans,
                                                      sizeof(no_trans)));
  TPFUSE_CUBLAS_CHECK_(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans,
                                                      sizeof(no_trans)));
  // Column-major views: "A" = b^T [N, K] (ld N), "B" = a^T [K, M] (ld K), "C" = y^T [N, M].
  TPFUSE_CUBLAS_CHECK_(cublasLtMatrixLayoutCreate(&d.a, type, uint64_t(n), uint64_t(k), n));
  TPFUSE_CUBLAS_CHECK_(cublasLtMatrixLayoutCreate(&d.b, type, uint64_t(k), uint64_t(m), k));
  TPFUSE_CUBLAS_CHECK_(cublasLtMatrixLayoutCreate(&d.c, type, uint64_t(n), uint64_t(m), n));
  TPFUSE_CUBLAS_CHECK_(cublasLtMatmulPreferenceCreate(&d.pref));
  const uint64_t workspace_bytes = ctx.workspace ? ctx.workspace_bytes : 0;
  TPFUSE_CUBLAS_CHECK_(cublasLtMatmulPreferenceSetAttribute(
      d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes)));
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  TPFUSE_CUBLAS_CHECK_(cublasLtMatmulAlgoGetHeuristic(ctx.handle, d.op, d.a, d.b, d.c, d.c, d.pref,
                                                      1, &heuristic, &found));
  if (found == 0)
    return Unimplemented("matmul: cuBLASLt has no algorithm for ", DTypeName(dtype), " [", m, ", ",
                         k, "] x [", k, ", ", n, "]");
  const float alpha = 1.0f, beta = 0.0f;
  TPFUSE_CUBLAS_CHECK_(cublasLtMatmul(ctx.handle, d.op, &alpha, b, d.a, a, d.b, &beta, y, d.c, y,
                                      d.c, &heuristic.algo, ctx.workspace, workspace_bytes, stream));
  return Status::Ok();
}

size_t AlignUp16(size_t n) { return (n + 15) / 16 * 16; }

}  // namespace

Status LaunchMatmul(const GemmContext& ctx, const DeviceTensor& a, const DeviceTensor& b,
                    const DeviceTensor& y, cudaStream_t stream) {
  TPFUSE_RETURN_IF_ERROR(CheckTensor("matmul", "a", a));
  TPFUSE_RETURN_IF_ERROR(CheckTensor("matmul", "b", b));
  TPFUSE_RETURN_IF_ERROR(CheckTensor("matmul", "y", y));
  if (!unfused::IsArithmeticType(a.dtype) || b.dtype != a.dtype || y.dtype != a.dtype)
    return InvalidArgument("matmul: a, b and y must share one dtype of bf16, f16 or f32, got ",
                           a.ToString(), ", ", b.ToString(), ", ", y.ToString());
  if (a.rank() != 2 || b.rank() != 2 || a.shape[1] != b.shape[0])
    return InvalidArgument("matmul: expected a [M, K] and b [K, N], got ", a.ToString(), " and ",
                           b.ToString());
  const int64_t m = a.shape[0], k = a.shape[1], n = b.shape[1];
  if (y.shape != std::vector<int64_t>{m, n})
    return InvalidArgument("matmul: y ", y.ToString(), " is not [", m, ", ", n, "]");
  if (m == 0 || n == 0) return Status::Ok();
  if (k == 0) {
    TPFUSE_CUDA_CHECK(cudaMemsetAsync(y.data, 0, y.nbytes(), stream));
    return Status::Ok();
  }
  return RowMajorGemm(ctx, a.dtype, a.data, b.data, y.data, m, k, n, stream);
}

size_t ScaledMatmulScratchBytes(int64_t m, int64_t k, int64_t n) {
  return AlignUp16(size_t(m * k) * 4) + AlignUp16(size_t(k * n) * 4) + AlignUp16(size_t(m * n) * 4);
}

Status LaunchScaledMatmul(const GemmContext& ctx, const DeviceTensor& q, const DeviceTensor& s,
                          ActScaleLayout s_layout, const DeviceTensor& w, const DeviceTensor& ws,
                          const DeviceTensor& y, void* scratch, cudaStream_t stream) {
  const char* name = "scaled_matmul";
  TPFUSE_RETURN_IF_ERROR(CheckTensor(name, "y", y));
  if (q.dtype != DType::kF8E4M3 || q.rank() != 2)
    return InvalidArgument(name, ": q must be f8e4m3 [M, K], got ", q.ToString());
  if (w.dtype != DType::kF8E4M3 || w.rank() != 2)
    return InvalidArgument(name, ": w must be f8e4m3 [K, N], got ", w.ToString());
  if (s.dtype != DType::kF32 || ws.dtype != DType::kF32)
    return InvalidArgument(name, ": scales must be f32, got s ", s.ToString(), " and ws ",
                           ws.ToString());
  const int64_t m = q.shape[0], k = q.shape[1], n = w.shape[1];
  if (w.shape[0] != k)
    return InvalidArgument(name, ": inner dims differ: q ", q.ToString(), ", w ", w.ToString());
  if (!unfused::IsArithmeticType(y.dtype) || y.shape != std::vector<int64_t>{m, n})
    return InvalidArgument(name, ": y ", y.ToString(), " is not a bf16, f16 or f32 [", m, ", ", n,
                           "]");
  if (scratch == nullptr || reinterpret_cast<uintptr_t>(scratch) % 16 != 0)
    return InvalidArgument(name, ": scratch must be a 16-byte aligned device buffer");

  // Where q's scales are: (r / block_rows) * row_stride + (c / block_cols) * col_stride.
  unfused::Fp8ScaleBlocks q_blocks;
  const auto bad_s = [&] {
    return InvalidArgument(name, ": scale s ", s.ToString(), " does not fit q ", q.ToString());
  };
  switch (s_layout) {
    case ActScaleLayout::kPerTensor:
      if (s.numel() != 1) return bad_s();
      break;
    case ActScaleLayout::kPerToken:
      if (s.numel() != m) return bad_s();
      q_blocks.row_stride = 1;
      break;
    case ActScaleLayout::kPerGroupRow:
      if (s.rank() != 2 || s.shape[0] != m || s.shape[1] <= 0 || k % s.shape[1] != 0) return bad_s();
      q_blocks.block_cols = k / s.shape[1];
      q_blocks.row_stride = s.shape[1];
      q_blocks.col_stride = 1;
      break;
    case ActScaleLayout::kPerGroupCol:
      if (s.rank() != 2 || s.shape[1] < m || s.shape[0] <= 0 || k % s.shape[0] != 0) return bad_s();
      q_blocks.block_cols = k / s.shape[0];
      q_blocks.row_stride = 1;
      q_blocks.col_stride = s.shape[1];
      break;
  }
  // w's scales: one, or blocks [K / bk, N / bn].
  unfused::Fp8ScaleBlocks w_blocks;
  if (ws.numel() != 1) {
    if (ws.rank() != 2 || ws.shape[0] <= 0 || ws.shape[1] <= 0 || k % ws.shape[0] != 0 ||
        n % ws.shape[1] != 0)
      return InvalidArgument(name, ": weight scale ws ", ws.ToString(),
                             " is neither one element nor blocks dividing w ", w.ToString());
    w_blocks.block_rows = k / ws.shape[0];
    w_blocks.block_cols = n / ws.shape[1];
    w_blocks.row_stride = ws.shape[1];
    w_blocks.col_stride = 1;
  }
  if (m == 0 || n == 0) return Status::Ok();

  char* base = static_cast<char*>(scratch);
  float* qf = reinterpret_cast<float*>(base);                                    // [M, K]
  float* wf = reinterpret_cast<float*>(base + AlignUp16(size_t(m * k) * 4));      // [K, N]
  float* yf = reinterpret_cast<float*>(base + AlignUp16(size_t(m * k) * 4) +
                                       AlignUp16(size_t(k * n) * 4));             // [M, N]
  TPFUSE_RETURN_IF_ERROR(unfused::LaunchDequantFp8(name, q, s, q_blocks, qf, stream));
  TPFUSE_RETURN_IF_ERROR(unfused::LaunchDequantFp8(name, w, ws, w_blocks, wf, stream));
  float* out = y.dtype == DType::kF32 ? static_cast<float*>(y.data) : yf;
  if (k == 0) {
    TPFUSE_CUDA_CHECK(cudaMemsetAsync(out, 0, size_t(m * n) * 4, stream));
  } else {
    TPFUSE_RETURN_IF_ERROR(RowMajorGemm(ctx, DType::kF32, qf, wf, out, m, k, n, stream));
  }
  if (y.dtype == DType::kF32) return Status::Ok();
  // One rounding of the f32 result to y's dtype.
  return LaunchCast(DeviceTensor{yf, DType::kF32, {m, n}}, y, stream);
}

}  // namespace tpfuse::cuda
