// Small host tensors from values and back, for tests that state their inputs and expectations
// element by element.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "common/tensor.h"

namespace tpfuse::testing {

// A tensor of `shape` holding `values` (rounded to `dtype`); the count must match the shape.
inline HostTensor MakeTensor(DType dtype, std::vector<int64_t> shape,
                             const std::vector<float>& values) {
  HostTensor t(dtype, std::move(shape));
  EXPECT_EQ(size_t(t.numel()), values.size());
  for (size_t i = 0; i < values.size() && int64_t(i) < t.numel(); ++i)
    t.SetF32(int64_t(i), values[i]);
  return t;
}

// Every element as f32.
inline std::vector<float> TensorValues(const HostTensor& t) {
  std::vector<float> v;
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t.GetF32(i));
  return v;
}

}  // namespace tpfuse::testing
