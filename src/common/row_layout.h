// How one row of H activations is laid out over the threads of one block, and the one order in
// which a row's values are summed (the sum of squares of RMSNorm, and the `mean` op). The CUDA
// kernels and the CPU oracle both follow it, so that on every backend a row's sum of squares is
// the same float (DESIGN.md Contract 3: "the sum of squares has one order, fixed by H").
//
// The order, for a row of n values e[0..n) with n % 8 == 0 (one 16-byte vector = 8 values):
//   1. thread t of `threads` owns vectors t, t + threads, ..., t + (vecs_per_thread - 1) threads
//      (those < n / 8) and sums its values in that order, vector by vector, element by element,
//      starting from +0.0f: s = s + e (one f32 rounding per add; the squares are rounded f32
//      products, never fused multiply-adds);
//   2. each warp of 32 threads reduces by xor butterfly: for offset 16, 8, 4, 2, 1 every lane
//      computes s = s + s[lane ^ offset]; lane 0's value is the warp's sum;
//   3. the warps' sums are added in warp order: total = w0 + w1 + ... (starting from w0).
// Rows whose length is not a multiple of 8 (only the unfused ops meet them) are summed
// sequentially from +0.0f.
//
// NOTE: changing MakeRowLayout changes results in the last bits on every backend at once (the
// CPU follows this function); it must stay a function of H alone.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TPFUSE_HOST_DEVICE __host__ __device__
#else
#define TPFUSE_HOST_DEVICE
#endif

namespace tpfuse {

// Elements of one 16-byte vector of 16-bit activations.
inline constexpr int kRowVecElems = 8;
// Threads of one row's block at most, and vectors one thread may own at most: H <= 512 * 4 * 8.
// Many threads per row keep each thread's serial work short: at small T a row's latency is the
// longest thread's chain of dependent instructions (docs/kernels.md).
inline constexpr int kMaxRowThreads = 512;
inline constexpr int kMaxRowVecsPerThread = 4;
inline constexpr int64_t kMaxRowHidden = int64_t{kMaxRowThreads} * kMaxRowVecsPerThread * kRowVecElems;

struct RowLayout {
  int threads = 0;          // a multiple of 32
  int vecs_per_thread = 0;  // 1, 2 or 4
  int vecs = 0;             // H / 8
};

// Rows of at least this many vectors (H >= 2048) give each thread two vectors or more: at large
// T the bytes a block has in flight per thread keep HBM busy (measured: one vector per thread
// at H 4096 ran at 1.3-1.9 x the copy roofline, two at 1.2-1.4 x).
inline constexpr int kRowVecsForTwoPerThread = 256;

// The layout of a row of `hidden` elements (hidden % 8 == 0, hidden <= kMaxRowHidden): the
// fewest vectors per thread (two or more from kRowVecsForTwoPerThread vectors) that keep the
// block at kMaxRowThreads or below.
TPFUSE_HOST_DEVICE constexpr RowLayout MakeRowLayout(int64_t hidden) {
  RowLayout l;
  l.vecs = int(hidden / kRowVecElems);
  l.vecs_per_thread = l.vecs >= kRowVecsForTwoPerThread ? 2 : 1;
  while (l.vecs_per_thread < kMaxRowVecsPerThread && l.vecs_per_thread * kMaxRowThreads < l.vecs)
    l.vecs_per_thread *= 2;
  const int threads = (l.vecs + l.vecs_per_thread - 1) / l.vecs_per_thread;
  l.threads = (threads + 31) / 32 * 32;
  return l;
}

// Blocks of a thread block cluster that splits a row's threads (the CUDA epilogue at small T:
// row thread t = rank * threads / blocks + its index in the block, so the layout, and with it
// the sum order, stays the row's): the fewest, from 2 up to `max_blocks`, that divide the row's
// warps and leave each block at most `max_block_threads` threads; 1 where none does, and for
// rows that already fit one such block (nothing to split). Pure arithmetic on the layout, kept
// here beside it so the CPU tests check it.
TPFUSE_HOST_DEVICE constexpr int RowClusterBlocks(const RowLayout& l, int max_blocks, int max_block_threads) {
  const int warps = l.threads / 32;
  if (l.threads <= max_block_threads) return 1;
  for (int c = 2; c <= max_blocks; ++c)
    if (warps % c == 0 && warps / c * 32 <= max_block_threads) return c;
  return 1;
}

// Whether the kernels' row layout covers a row of `hidden` elements.
TPFUSE_HOST_DEVICE constexpr bool HasRowLayout(int64_t hidden) {
  return hidden > 0 && hidden % kRowVecElems == 0 && hidden <= kMaxRowHidden;
}

// Sum of values[0..n) in the order above (the kernels' order when HasRowLayout(n), else
// sequential). Host only; the kernels implement the same order with shuffles.
float RowSumInKernelOrder(const float* values, int64_t n);

}  // namespace tpfuse
