// The row layout shared by the CUDA kernels and the CPU oracle (common/row_layout.h), and the
// cluster split of a row that the CUDA epilogue uses at small T.
#include <gtest/gtest.h>

#include "common/row_layout.h"

namespace tpfuse {
namespace {

TEST(RowLayoutTest, CommonHiddenSizes) {
  struct Case {
    int64_t hidden;
    int threads, vecs_per_thread;
  };
  for (const Case& c : {Case{128, 32, 1}, Case{2040, 256, 1}, Case{2048, 128, 2}, Case{2880, 192, 2},
                        Case{4096, 256, 2}, Case{5120, 320, 2}, Case{7168, 448, 2}, Case{8192, 512, 2},
                        Case{16384, 512, 4}}) {
    const RowLayout l = MakeRowLayout(c.hidden);
    EXPECT_EQ(l.threads, c.threads) << "H " << c.hidden;
    EXPECT_EQ(l.vecs_per_thread, c.vecs_per_thread) << "H " << c.hidden;
    EXPECT_EQ(l.vecs, c.hidden / kRowVecElems) << "H " << c.hidden;
  }
}

TEST(RowLayoutTest, ClusterBlocksOfCommonHiddenSizes) {
  const struct {
    int64_t hidden;
    int blocks;
  } cases[] = {{128, 1}, {2048, 2}, {2880, 3}, {4096, 4}, {5120, 5}, {6400, 1}, {7168, 7}, {8192, 8}, {16384, 8}};
  for (const auto& c : cases)
    EXPECT_EQ(RowClusterBlocks(MakeRowLayout(c.hidden), 8, 64), c.blocks) << "H " << c.hidden;
}

// For every row the kernels take: a split divides the row's warps into blocks within the
// limits, and is the fewest blocks that do; no split where none exists or nothing is to split.
TEST(RowLayoutTest, ClusterBlocksSplitEveryRowEvenlyWithinTheLimits) {
  for (int64_t hidden = kRowVecElems; hidden <= kMaxRowHidden; hidden += kRowVecElems) {
    const RowLayout l = MakeRowLayout(hidden);
    const int warps = l.threads / 32;
    for (int max_blocks : {4, 8})
      for (int max_threads : {64, 128}) {
        const int c = RowClusterBlocks(l, max_blocks, max_threads);
        auto fits = [&](int b) { return warps % b == 0 && warps / b * 32 <= max_threads; };
        if (l.threads <= max_threads) {
          ASSERT_EQ(c, 1) << "H " << hidden;
          continue;
        }
        int fewest = 1;
        for (int b = max_blocks; b >= 2; --b)
          if (fits(b)) fewest = b;
        ASSERT_EQ(c, fewest) << "H " << hidden << " max_blocks " << max_blocks << " max_threads " << max_threads;
        if (c > 1) ASSERT_TRUE(fits(c) && c <= max_blocks) << "H " << hidden;
      }
  }
}

}  // namespace
}  // namespace tpfuse
