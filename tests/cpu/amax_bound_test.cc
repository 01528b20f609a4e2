// AmaxFromBound (common/amax_bound.h) against the amax itself. Rows of u (16-bit, or f32 as the
// norm_input_f32 recipe reads it) and weights (16-bit or f32) over many magnitudes, r = 1/rms as
// the kernels compute it, y = round16(fl(fl(u r) w')) in f32 arithmetic as the kernels compute
// it: wherever the bound decides, it must give max |y| bit for bit; it must decide nearly every
// ordinary row (else the kernels pay for it and gain nothing); and it must decide nothing where
// its guards say so (a weight above the limit, tiny rows, a c on a rounding boundary).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/amax_bound.h"
#include "common/numerics.h"

namespace tpfuse {
namespace {

bool SameBits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

struct Row {
  std::vector<float> u, w;
  float eps = 1e-6f;
};

// r = 1 / sqrt(mean(u^2) + eps), each step correctly rounded as the kernels do it.
float Rstd(const Row& row) {
  float sum = 0.0f;
  for (float v : row.u) sum += v * v;
  return 1.0f / std::sqrt(sum / float(row.u.size()) + row.eps);
}

// max |y_i|, a NaN y winning (as the kernels' maxima and torch's amax).
float AmaxOfY(const Row& row, float r, DType act) {
  float amax = 0.0f;
  for (size_t i = 0; i < row.u.size(); ++i) {
    const float n = row.u[i] * r;
    const float y = RoundTo(act, n * row.w[i]);
    amax = MaxOfMagnitudes(amax, std::fabs(y));  // a NaN wins, as in the kernels
  }
  return amax;
}

float BoundOf(const Row& row) { return AmaxBoundOf(row.u.data(), row.w.data(), int(row.u.size()), 0.0f); }

float Decide(const Row& row, float r, DType act) {
  return AmaxFromBound(BoundOf(row), r, [act](float x) { return RoundTo(act, x); });
}

struct Tally {
  int64_t rows = 0, decided = 0;
};

// Checks one row; returns false (with a message) where the bound decides wrongly.
::testing::AssertionResult CheckRow(const Row& row, DType act, Tally& tally) {
  const float r = Rstd(row);
  const float amax = AmaxOfY(row, r, act);
  const float decided = Decide(row, r, act);
  ++tally.rows;
  if (decided < 0.0f) return ::testing::AssertionSuccess();
  ++tally.decided;
  if (SameBits(decided, amax)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "bound " << decided << " amax " << amax << " r " << r << " m "
                                       << BoundOf(row);
}

struct RowMaker {
  std::mt19937_64 rng;
  DType act, wdtype;
  bool u_f32;  // the norm reads f32 h (norm_input_f32)

  Row Make(int h, int u_exp, int w_exp, float eps) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> pick(0, 99);
    Row row;
    row.eps = eps;
    row.u.resize(size_t(h));
    row.w.resize(size_t(h));
    for (int i = 0; i < h; ++i) {
      float u = std::ldexp(normal(rng), u_exp);
      if (pick(rng) == 0) u *= 40.0f;  // outliers
      if (pick(rng) < 3) u = 0.0f;
      row.u[size_t(i)] = u_f32 ? u : RoundTo(act, u);
      const float w = std::ldexp(1.0f + 0.2f * normal(rng), w_exp);
      row.w[size_t(i)] = RoundTo(wdtype, pick(rng) < 2 ? -w : w);
    }
    return row;
  }
};

// Every dtype combination over magnitudes from the 16-bit subnormals to near overflow, and eps
// from 0 to 1e-2: the bound is never wrong.
TEST(AmaxBoundTest, NeverWrongAcrossDtypesAndMagnitudes) {
  struct Dtypes { DType act, w; bool u_f32; };
  const Dtypes combos[] = {{DType::kBF16, DType::kBF16, false}, {DType::kF16, DType::kF16, false},
                           {DType::kBF16, DType::kF32, false},  {DType::kF16, DType::kF32, false},
                           {DType::kBF16, DType::kBF16, true},  {DType::kF16, DType::kBF16, true}};
  for (const Dtypes& d : combos) {
    RowMaker maker{std::mt19937_64(uint64_t(d.act) * 31 + uint64_t(d.w) * 7 + d.u_f32), d.act, d.w, d.u_f32};
    const bool f16 = d.act == DType::kF16;
    const std::vector<int> u_exps = f16 ? std::vector<int>{-24, -14, -5, 0, 8, 14}
                                        : std::vector<int>{-133, -120, -70, -20, 0, 20, 60, 100, 126};
    Tally tally;
    for (int u_exp : u_exps)
      for (int w_exp : {-60, -20, -3, 0, 5, 30, 39, 41})
        for (float eps : {0.0f, 1e-12f, 1e-6f, 1e-2f})
          for (int h : {8, 96, 1024})
            for (int rep = 0; rep < 6; ++rep) {
              const Row row = maker.Make(h, u_exp, w_exp, eps);
              ASSERT_TRUE(CheckRow(row, d.act, tally))
                  << DTypeName(d.act) << " w " << DTypeName(d.w) << (d.u_f32 ? " u f32" : "") << " u 2^" << u_exp
                  << " w 2^" << w_exp << " eps " << eps << " H " << h;
            }
    EXPECT_GT(tally.decided, tally.rows / 3) << DTypeName(d.act) << ": the guards admit too few rows to matter";
  }
}

// Ordinary rows (activations near 1, weights from 2^-10 to 2^10, eps 1e-6): the bound decides
// all but about one row in 2^11 (bf16) or 2^8 (f16); a bound that rarely decided would cost the
// kernels its products and save them nothing.
TEST(AmaxBoundTest, DecidesNearlyEveryOrdinaryRow) {
  for (DType act : {DType::kBF16, DType::kF16}) {
    RowMaker maker{std::mt19937_64(7 + uint64_t(act)), act, act, false};
    Tally tally;
    for (int rep = 0; rep < 4000; ++rep) {
      const Row row = maker.Make(512, rep % 7 - 3, rep % 21 - 10, 1e-6f);
      ASSERT_TRUE(CheckRow(row, act, tally)) << DTypeName(act) << " row " << rep;
    }
    const double undecided = 1.0 - double(tally.decided) / double(tally.rows);
    EXPECT_LT(undecided, act == DType::kBF16 ? 0.003 : 0.02) << DTypeName(act) << ": " << tally.rows - tally.decided
                                                             << " of " << tally.rows << " rows undecided";
  }
}

// A row whose maximum lies just below a 16-bit rounding boundary: u has mean square exactly 1
// (four 1.5s, five 0s, the rest +-1), so r = 1 / sqrt(1 + 1e-6) = 1 - 2^-21, and the 1.5s meet
// weights 1 + 1 ulp: 1.5 (1 + ulp) is the midpoint between two 16-bit neighbours, and y rounds
// down. The bound's interval straddles the midpoint: it must not decide (its upper end would
// give the larger neighbour). The same row with eps 1e-2 moves c away from the boundary: decided.
TEST(AmaxBoundTest, UndecidedNextToARoundingBoundary) {
  for (DType act : {DType::kBF16, DType::kF16}) {
    const float ulp = act == DType::kBF16 ? 0x1p-7f : 0x1p-10f;
    Row row;
    for (int i = 0; i < 256; ++i) {
      row.u.push_back(i < 4 ? 1.5f : i < 9 ? 0.0f : (i % 2 ? 1.0f : -1.0f));
      row.w.push_back(i < 4 ? 1.0f + ulp : 1.0f);
    }
    row.eps = 1e-6f;
    const float r = Rstd(row);
    EXPECT_EQ(r, 1.0f - 0x1p-21f);
    EXPECT_EQ(AmaxOfY(row, r, act), 1.5f + ulp) << "y rounds down from the midpoint";
    EXPECT_LT(Decide(row, r, act), 0.0f) << DTypeName(act);
    row.eps = 1e-2f;
    Tally tally;
    EXPECT_TRUE(CheckRow(row, act, tally));
    EXPECT_EQ(tally.decided, 1) << DTypeName(act);
  }
}

// The guards: a weight above kAmaxBoundWeightLimit anywhere in the row, a row whose c is below
// 2^-60, a zero row; a NaN weight makes the bound NaN, which decides nothing.
TEST(AmaxBoundTest, GuardsAndNaN) {
  Row row;
  for (int i = 0; i < 64; ++i) {
    row.u.push_back(RoundTo(DType::kBF16, 0.25f + 0.01f * float(i)));
    row.w.push_back(1.0f);
  }
  const float r = Rstd(row);
  Tally tally;
  ASSERT_TRUE(CheckRow(row, DType::kBF16, tally));
  ASSERT_EQ(tally.decided, 1);

  Row heavy = row;
  heavy.w[5] = 0x1p41f;
  EXPECT_EQ(BoundOf(heavy), INFINITY);
  EXPECT_LT(Decide(heavy, Rstd(heavy), DType::kBF16), 0.0f);
  heavy.w[5] = kAmaxBoundWeightLimit;  // at the limit: still bounded
  EXPECT_TRUE(CheckRow(heavy, DType::kBF16, tally));

  Row tiny = row;
  for (float& u : tiny.u) u = std::ldexp(u, -100);
  EXPECT_LT(Decide(tiny, Rstd(tiny), DType::kBF16), 0.0f) << "c below 2^-60";

  Row zero = row;
  for (float& u : zero.u) u = 0.0f;
  EXPECT_LT(Decide(zero, Rstd(zero), DType::kBF16), 0.0f);

  // A NaN product makes the bound NaN, which decides nothing: the kernels take the amax itself,
  // which is NaN as torch's.
  Row nan = row;
  nan.w[3] = NAN;
  EXPECT_TRUE(std::isnan(BoundOf(nan)));
  EXPECT_LT(Decide(nan, r, DType::kBF16), 0.0f);
  EXPECT_TRUE(std::isnan(AmaxOfY(nan, r, DType::kBF16)));
}

}  // namespace
}  // namespace tpfuse
