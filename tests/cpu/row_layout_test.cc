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

// For every row the kernels take: a split divides the row's warps into equal blocks within the
// limits; rows that fit one block are not split.
TEST(RowLayoutTest, ClusterBlocksSplitEveryRowEvenlyWithinTheLimits) {
  int split = 0, unsplit = 0;
  for (int64_t hidden = kRowVecElems; hidden <= kMaxRowHidden; hidden += kRowVecElems) {
    const RowLayout l = MakeRowLayout(hidden);
    const int c = RowClusterBlocks(l, 8, 64);
    ASSERT_GE(c, 1) << "H " << hidden;
    if (l.threads <= 64) ASSERT_EQ(c, 1) << "H " << hidden;
    if (c == 1) {
      ++unsplit;
      continue;
    }
    ++split;
    ASSERT_LE(c, 8) << "H " << hidden;
    ASSERT_EQ(l.threads % (32 * c), 0) << "H " << hidden << " blocks " << c;
    ASSERT_LE(l.threads / c, 64) << "H " << hidden << " blocks " << c;
  }
  EXPECT_GT(split, 0);
  EXPECT_GT(unsplit, 0);
}

}  // namespace
}  // namespace tpfuse
