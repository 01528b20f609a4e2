// The reciprocal of every f32 dynamic FP8 scale a 16-bit amax gives, on the device: the
// epilogue's branch-free DynamicScaleReciprocal against __frcp_rn.
#pragma once

#include <cstdint>

namespace tpfuse::testing {

struct ScaleReciprocalReport {
  unsigned long long checked = 0;     // scales compared (every 16-bit pattern as an amax, bf16 and f16)
  unsigned long long nan_scales = 0;  // scales that are NaN (amax NaN): compared as NaN only
  unsigned long long inf_scales = 0;  // scales that are inf (amax inf): reciprocal +0, bitwise
  unsigned long long mismatches = 0;  // scales whose reciprocals differ
  uint32_t first_scale_bits = 0;      // the first mismatching scale's bits (when mismatches > 0)
  uint32_t first_got_bits = 0;
  uint32_t first_want_bits = 0;
};

// Runs the comparison on the current device and returns its report; false on a CUDA error.
bool CompareDynamicScaleReciprocals(ScaleReciprocalReport* report);

}  // namespace tpfuse::testing
