#include "common/cuda_limits.h"

namespace tpfuse::cuda_limits {

std::vector<int> GroupSizes() {
  std::vector<int> sizes;
  for (int g = kMinGroupSize; g <= kMaxGroupSize; g *= 2) sizes.push_back(g);
  return sizes;
}

Status ValidateForCudaKernels(const AllreduceRmsnormSpec& spec, int world_size) {
  TPFUSE_RETURN_IF_ERROR(spec.Validate());
  if (world_size < 1 || world_size > kMaxWorldSize)
    return InvalidArgument("world size ", world_size, " is outside the fused kernels' range 1..",
                           kMaxWorldSize);
  if (spec.hidden % kHiddenMultiple != 0)
    return InvalidArgument("hidden ", spec.hidden, " is not a multiple of ", kHiddenMultiple);
  if (spec.hidden > kMaxHidden)
    return InvalidArgument("hidden ", spec.hidden, " is over the fused kernel's limit of ",
                           kMaxHidden);
  if (spec.quant == QuantMode::kFp8Group) {
    const int g = spec.group_size;
    const bool power_of_two_vectors = g % kRowVecElems == 0 && ((g / kRowVecElems) & (g / kRowVecElems - 1)) == 0;
    if (g < kMinGroupSize || g > kMaxGroupSize || !power_of_two_vectors)
      return InvalidArgument("group_size ", g, " must be ", kMinGroupSize,
                             " times a power of two up to ", kMaxGroupSize);
  }
  return Status::Ok();
}

}  // namespace tpfuse::cuda_limits

namespace tpfuse {

FusionCapabilities CudaFusionCapabilities() {
  FusionCapabilities caps;
  caps.backend = "cuda";
  for (int n = 1; n <= cuda_limits::kMaxWorldSize; ++n) caps.world_sizes.push_back(n);
  caps.act_dtypes = {DType::kBF16, DType::kF16};
  caps.weight_dtypes = {DType::kBF16, DType::kF16, DType::kF32};
  caps.quant_modes = {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token,
                      QuantMode::kFp8Group};
  caps.group_sizes = cuda_limits::GroupSizes();
  caps.hidden_multiple = cuda_limits::kHiddenMultiple;
  caps.max_hidden = cuda_limits::kMaxHidden;
  // One-shot and two-shot do not run the norm before the residual add; at N >= 2 the all_reduce
  // fuses with that norm and the residual add with the next (docs/architecture.md).
  caps.pre_residual_norm_world_sizes = {1};
  return caps;
}

}  // namespace tpfuse
