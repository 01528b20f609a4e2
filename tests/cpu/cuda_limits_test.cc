// The CUDA backend's fusion capabilities against the launcher's own limits: every spec the
// capabilities allow passes ValidateForCudaKernels, every spec just outside a limit (group size,
// hidden, world size) is refused by both, and over a sweep the two give the same answer.
#include "common/cuda_limits.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tpfuse/fused_op.h"

namespace tpfuse {
namespace {

using cuda_limits::ValidateForCudaKernels;

AllreduceRmsnormSpec Spec(int64_t hidden, QuantMode quant, int group_size = 128) {
  AllreduceRmsnormSpec spec;
  spec.hidden = hidden;
  spec.has_residual = true;
  spec.quant = quant;
  spec.group_size = group_size;
  spec.emit.residual = true;
  spec.emit.norm = quant == QuantMode::kNone;
  spec.emit.quant = quant != QuantMode::kNone;
  return spec;
}

// Both answers for one spec, for one EXPECT with a readable failure.
std::string Answers(const AllreduceRmsnormSpec& spec, int world_size) {
  const std::string caps = CudaFusionCapabilities().WhyUnsupported(spec, world_size);
  const Status kernels = ValidateForCudaKernels(spec, world_size);
  return "capabilities: " + (caps.empty() ? std::string("allowed") : caps) +
         "; kernels: " + (kernels.ok() ? std::string("ok") : kernels.message());
}

bool Allowed(const AllreduceRmsnormSpec& spec, int world_size) {
  return CudaFusionCapabilities().WhyUnsupported(spec, world_size).empty();
}

bool Validates(const AllreduceRmsnormSpec& spec, int world_size) {
  return ValidateForCudaKernels(spec, world_size).ok();
}

TEST(CudaLimitsTest, EveryAllowedGroupSizeValidates) {
  const FusionCapabilities caps = CudaFusionCapabilities();
  ASSERT_FALSE(caps.group_sizes.empty());
  EXPECT_EQ(caps.group_sizes.front(), cuda_limits::kMinGroupSize);
  EXPECT_EQ(caps.group_sizes.back(), cuda_limits::kMaxGroupSize);
  for (int g : caps.group_sizes) {
    const AllreduceRmsnormSpec spec = Spec(4096, QuantMode::kFp8Group, g);
    ASSERT_TRUE(spec.Validate().ok()) << g;
    EXPECT_TRUE(Validates(spec, 2)) << "group " << g << ": " << Answers(spec, 2);
  }
}

TEST(CudaLimitsTest, GroupSizesJustOutsideAreRefusedByBoth) {
  // Half the smallest, twice the largest, and a multiple of a vector that is not a power of two
  // vectors; every one divides H so that spec.Validate() alone accepts it.
  const int64_t hidden = 3 * 2 * cuda_limits::kMaxGroupSize;  // 1536: divisible by all below
  for (int g : {cuda_limits::kMinGroupSize / 2, 2 * cuda_limits::kMaxGroupSize,
                3 * cuda_limits::kMinGroupSize}) {
    const AllreduceRmsnormSpec spec = Spec(hidden, QuantMode::kFp8Group, g);
    ASSERT_TRUE(spec.Validate().ok()) << g << ": " << spec.Validate().ToString();
    EXPECT_FALSE(Allowed(spec, 2)) << "group " << g << ": " << Answers(spec, 2);
    EXPECT_FALSE(Validates(spec, 2)) << "group " << g << ": " << Answers(spec, 2);
  }
}

TEST(CudaLimitsTest, HiddenLimits) {
  const int64_t max_hidden = CudaFusionCapabilities().max_hidden;
  ASSERT_EQ(max_hidden, cuda_limits::kMaxHidden);
  const int64_t multiple = CudaFusionCapabilities().hidden_multiple;
  for (QuantMode quant : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token}) {
    for (int64_t h : {multiple, max_hidden}) {
      const AllreduceRmsnormSpec spec = Spec(h, quant);
      EXPECT_TRUE(Allowed(spec, 2)) << h << " " << QuantModeName(quant) << ": " << Answers(spec, 2);
      EXPECT_TRUE(Validates(spec, 2)) << h << " " << QuantModeName(quant) << ": " << Answers(spec, 2);
    }
    for (int64_t h : {max_hidden + multiple, multiple + multiple / 2, multiple / 2}) {
      const AllreduceRmsnormSpec spec = Spec(h, quant);
      EXPECT_FALSE(Allowed(spec, 2)) << h << " " << QuantModeName(quant) << ": " << Answers(spec, 2);
      EXPECT_FALSE(Validates(spec, 2)) << h << " " << QuantModeName(quant) << ": " << Answers(spec, 2);
    }
  }
}

TEST(CudaLimitsTest, WorldSizeLimits) {
  const FusionCapabilities caps = CudaFusionCapabilities();
  const AllreduceRmsnormSpec spec = Spec(4096, QuantMode::kFp8Tensor);
  for (int n : caps.world_sizes) EXPECT_TRUE(Validates(spec, n)) << n << ": " << Answers(spec, n);
  for (int n : {0, cuda_limits::kMaxWorldSize + 1}) {
    EXPECT_FALSE(Allowed(spec, n)) << n << ": " << Answers(spec, n);
    EXPECT_FALSE(Validates(spec, n)) << n << ": " << Answers(spec, n);
  }
}

// Two all_reduces summed in one op: the capabilities allow it at every world size, and so do
// the kernels.
TEST(CudaLimitsTest, TwoSummedAllReducesAreAllowedByBoth) {
  AllreduceRmsnormSpec spec = Spec(4096, QuantMode::kFp8Tensor);
  spec.second_sum = true;
  ASSERT_TRUE(spec.Validate().ok()) << spec.Validate().ToString();
  for (int n : CudaFusionCapabilities().world_sizes) {
    EXPECT_TRUE(Allowed(spec, n)) << n << ": " << Answers(spec, n);
    EXPECT_TRUE(Validates(spec, n)) << n << ": " << Answers(spec, n);
  }
}

// Over every combination of a sweep, for specs spec.Validate() accepts: the capabilities allow
// exactly what the kernels validate.
TEST(CudaLimitsTest, CapabilitiesAndKernelsAgreeOverASweep) {
  const std::vector<int64_t> hiddens = {4,    8,    128,  1000, 1536, 2880, 4096, 4100,
                                        7168, 8192, cuda_limits::kMaxHidden,
                                        cuda_limits::kMaxHidden + 8, 2 * cuda_limits::kMaxHidden};
  const std::vector<int> groups = {4, 8, 16, 24, 32, 64, 96, 128, 256, 384, 512};
  int checked = 0;
  for (int n = -1; n <= cuda_limits::kMaxWorldSize + 2; ++n) {
    for (DType act : {DType::kBF16, DType::kF16}) {
      for (DType weight : {DType::kBF16, DType::kF16, DType::kF32}) {
        for (QuantMode quant : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token,
                                QuantMode::kFp8Group}) {
          for (int64_t h : hiddens) {
            for (int g : groups) {
              if (quant != QuantMode::kFp8Group && g != 128) continue;
              AllreduceRmsnormSpec spec = Spec(h, quant, g);
              spec.act_dtype = act;
              spec.weight_dtype = weight;
              if (!spec.Validate().ok()) continue;
              ++checked;
              EXPECT_EQ(Allowed(spec, n), Validates(spec, n))
                  << spec.ToString() << " at world size " << n << ": " << Answers(spec, n);
            }
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 1000);
}

}  // namespace
}  // namespace tpfuse
