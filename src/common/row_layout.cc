#include "common/row_layout.h"

#include <cstddef>
#include <vector>

namespace tpfuse {

float RowSumInKernelOrder(const float* values, int64_t n) {
  if (!HasRowLayout(n)) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s = s + values[i];
    return s;
  }
  const RowLayout l = MakeRowLayout(n);
  // 1. per thread: its vectors in order, each vector's elements in order
  std::vector<float> lane(static_cast<std::size_t>(l.threads), 0.0f);
  for (int t = 0; t < l.threads; ++t) {
    float s = 0.0f;
    for (int k = 0; k < l.vecs_per_thread; ++k) {
      const int v = t + k * l.threads;
      if (v >= l.vecs) continue;
      for (int i = 0; i < kRowVecElems; ++i) s = s + values[int64_t(v) * kRowVecElems + i];
    }
    lane[std::size_t(t)] = s;
  }
  // 2. xor butterfly in each warp; 3. warps in order
  float total = 0.0f;
  for (int w = 0; w < l.threads / 32; ++w) {
    float v[32];
    for (int i = 0; i < 32; ++i) v[i] = lane[std::size_t(w * 32 + i)];
    for (int offset = 16; offset > 0; offset >>= 1) {
      float next[32];
      for (int i = 0; i < 32; ++i) next[i] = v[i] + v[i ^ offset];
      for (int i = 0; i < 32; ++i) v[i] = next[i];
    }
    total = w == 0 ? v[0] : total + v[0];
  }
  return total;
}

}  // namespace tpfuse
