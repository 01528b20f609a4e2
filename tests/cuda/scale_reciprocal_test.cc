// The epilogue kernels take the reciprocal of an f32 dynamic FP8 scale without __frcp_rn's
// branch to its slow path (DynamicScaleReciprocal): it must give __frcp_rn's bits for every
// scale a 16-bit amax can produce.
#include <gtest/gtest.h>

#include "cuda/scale_reciprocal_kernels.h"
#include "support/cuda_harness.h"

namespace tpfuse::testing {
namespace {

TEST(ScaleReciprocalTest, ScaleReciprocalIsFrcpRn) {
  TPFUSE_REQUIRE_GPUS(1);
  ScaleReciprocalReport report;
  ASSERT_TRUE(CompareDynamicScaleReciprocals(&report));
  // Every bf16 and f16 pattern: the infinities (two per dtype) give inf scales, whose
  // reciprocal is +0; the NaNs (2 x 127 bf16, 2 x 1023 f16) give NaN scales, as torch's amax.
  EXPECT_EQ(report.checked, 2u * 65536u);
  EXPECT_EQ(report.inf_scales, 4u);
  EXPECT_EQ(report.nan_scales, 2u * 127u + 2u * 1023u);
  EXPECT_EQ(report.mismatches, 0u) << std::hex << "first: scale 0x" << report.first_scale_bits << " got 0x"
                                   << report.first_got_bits << " want 0x" << report.first_want_bits;
}

}  // namespace
}  // namespace tpfuse::testing
