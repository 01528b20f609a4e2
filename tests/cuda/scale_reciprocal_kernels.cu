#include "cuda/scale_reciprocal_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backends/cuda/kernels/allreduce_rmsnorm.cuh"

namespace tpfuse::testing {
namespace {

// Thread i: 16-bit pattern i & 0xFFFF, as bf16 (i < 2^16) or f16; its magnitude is the amax.
__global__ void CompareKernel(ScaleReciprocalReport* report) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= 2u * 65536u) return;
  const uint16_t bits = uint16_t(i & 0xFFFFu);
  const float value = i < 65536u ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
  const float amax = fabsf(value);
  cuda::FusedKernelParams p{};
  p.scale_ue8m0 = false;  // f32 scales: the ones the kernels take DynamicScaleReciprocal of
  p.quant_divides = true;
  cuda::ScaleStep step;
  const float scale = cuda::DynamicScale<cuda::RuntimeRecipe, QuantMode::kFp8Group>(p, amax, step);
  const float got = cuda::DynamicScaleReciprocal(scale), want = __frcp_rn(scale);
  atomicAdd(&report->checked, 1ull);
  if (isinf(scale)) atomicAdd(&report->inf_scales, 1ull);
  if (isnan(scale)) {
    atomicAdd(&report->nan_scales, 1ull);
    if (isnan(got) && isnan(want)) return;
  } else if (__float_as_uint(got) == __float_as_uint(want)) {
    return;
  }
  if (atomicAdd(&report->mismatches, 1ull) == 0) {
    report->first_scale_bits = __float_as_uint(scale);
    report->first_got_bits = __float_as_uint(got);
    report->first_want_bits = __float_as_uint(want);
  }
}

}  // namespace

bool CompareDynamicScaleReciprocals(ScaleReciprocalReport* report) {
  ScaleReciprocalReport* device = nullptr;
  if (cudaMalloc(&device, sizeof(*device)) != cudaSuccess) return false;
  bool ok = cudaMemset(device, 0, sizeof(*device)) == cudaSuccess;
  if (ok) {
    CompareKernel<<<2 * 65536 / 256, 256>>>(device);
    ok = cudaGetLastError() == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess &&
         cudaMemcpy(report, device, sizeof(*report), cudaMemcpyDeviceToHost) == cudaSuccess;
  }
  cudaFree(device);
  return ok;
}

}  // namespace tpfuse::testing
