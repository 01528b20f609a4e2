// The unfused op kernels (backends/cuda/unfused_ops.h) against the CPU reference ops, op by op:
// bitwise where the arithmetic is the same operation for operation, Contract 3's tolerance where
// only the order of a sum differs (mean, RMSNorm) and the GEMM class for GEMMs. Every launch
// writes into outputs poisoned with 0xFF and every element is checked for having been written;
// inputs are fresh random values (the seed is printed with any failure); shapes come from the
// shared list, plus one hidden size that is not a multiple of 8 for the element-by-element paths.
#include "backends/cuda/unfused_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backends/cpu/reference_ops.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "common/numerics.h"
#include "common/tolerance.h"
#include "support/cuda_harness.h"
#include "support/shapes.h"

namespace tpfuse::testing {
namespace {

using cuda::DeviceTensor;

#define TPFUSE_ASSERT_OK(expr)                                            \
  do {                                                                    \
    const ::tpfuse::Status tpfuse_s_ = (expr);                            \
    ASSERT_TRUE(tpfuse_s_.ok()) << #expr << ": " << tpfuse_s_.ToString(); \
  } while (0)

// A hidden size that is not a multiple of 8: every kernel's element-by-element path.
constexpr int64_t kOddHidden = 13;
constexpr DType kActDTypes[] = {DType::kBF16, DType::kF16, DType::kF32};
constexpr uint8_t kPoison = 0xFF;  // NaN in every float dtype

// ---------------------------------------------------------------- inputs and device copies

class Rng {
 public:
  Rng() : seed_(std::random_device{}()), gen_(seed_) {}
  uint32_t seed() const { return seed_; }
  float Normal() { return normal_(gen_); }
  float Uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen_); }
  uint32_t Bits() { return gen_(); }

 private:
  uint32_t seed_;
  std::mt19937 gen_;
  std::normal_distribution<float> normal_{0.0f, 1.0f};
};

// normal(0, 1) rounded to the dtype (f8e4m3: random non-NaN codes; i32: small integers).
HostTensor RandomTensor(Rng& rng, DType dtype, std::vector<int64_t> shape) {
  HostTensor t(dtype, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::kF8E4M3) {
      uint8_t code = uint8_t(rng.Bits());
      if ((code & 0x7F) == 0x7F) code &= 0xFE;
      t.data_as<uint8_t>()[i] = code;
    } else if (dtype == DType::kI32) {
      t.data_as<int32_t>()[i] = int32_t(rng.Bits() % 2001) - 1000;
    } else {
      t.SetF32(i, rng.Normal());
    }
  }
  return t;
}

// Uniform magnitudes in [lo, hi] with random signs (divisors and scales far from 0).
HostTensor RandomAwayFromZero(Rng& rng, DType dtype, std::vector<int64_t> shape, float lo, float hi,
                              bool positive = false) {
  HostTensor t(dtype, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = rng.Uniform(lo, hi);
    t.SetF32(i, positive || (rng.Bits() & 1) ? v : -v);
  }
  return t;
}

// A device copy of a host tensor, or a poisoned output of a dtype and shape.
struct DeviceCopy {
  cuda::DeviceBuffer buffer;
  DeviceTensor tensor;
};

// Copies on `stream`, the stream the kernels run on (a copy on the legacy default stream would
// not be ordered before them: the test streams are non-blocking).
StatusOr<DeviceCopy> Upload(const HostTensor& host, cudaStream_t stream) {
  DeviceCopy d;
  TPFUSE_ASSIGN_OR_RETURN(d.buffer,
                          cuda::DeviceBuffer::Allocate(std::max<size_t>(host.nbytes(), 16)));
  if (host.nbytes() > 0)
    TPFUSE_CUDA_CHECK(cudaMemcpyAsync(d.buffer.get(), host.data(), host.nbytes(),
                                      cudaMemcpyHostToDevice, stream));
  // Pageable host memory is staged before cudaMemcpyAsync returns, so `host` may go now.
  d.tensor = DeviceTensor{d.buffer.get(), host.dtype(), host.shape()};
  return d;
}

StatusOr<DeviceCopy> Poisoned(DType dtype, std::vector<int64_t> shape, cudaStream_t stream) {
  HostTensor host(dtype, std::move(shape));
  host.FillBytes(kPoison);
  return Upload(host, stream);
}

StatusOr<HostTensor> Download(const DeviceCopy& d, cudaStream_t stream) {
  TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  TPFUSE_CUDA_CHECK(cudaGetLastError());
  HostTensor host(d.tensor.dtype, d.tensor.shape);
  if (host.nbytes() > 0)
    TPFUSE_CUDA_CHECK(
        cudaMemcpy(host.data(), d.buffer.get(), host.nbytes(), cudaMemcpyDeviceToHost));
  return host;
}

// ---------------------------------------------------------------- checks

// Every element of `got` was written: none still holds the poison where the oracle's does not.
void ExpectWritten(const HostTensor& got, const HostTensor& ref, const std::string& what) {
  if (got.dtype() != ref.dtype() || got.numel() != ref.numel())
    return;  // the comparison reports it
  const int size = DTypeSize(got.dtype());
  const auto* g = static_cast<const uint8_t*>(got.data());
  const auto* r = static_cast<const uint8_t*>(ref.data());
  int64_t unwritten = 0, first = -1;
  for (int64_t i = 0; i < got.numel(); ++i) {
    bool g_poison = true, r_poison = true;
    for (int b = 0; b < size; ++b) {
      g_poison = g_poison && g[i * size + b] == kPoison;
      r_poison = r_poison && r[i * size + b] == kPoison;
    }
    if (g_poison && !r_poison) {
      if (first < 0) first = i;
      ++unwritten;
    }
  }
  EXPECT_EQ(unwritten, 0) << what << ": " << unwritten << " of " << got.numel()
                          << " elements never written (first at flat index " << first << ")";
}

enum class Check { kExact, kExactAnyNaN, kHalf, kGemm };

// Compares `got` with the oracle's `ref` (and checks it was fully written).
void ExpectMatches(const HostTensor& got, const HostTensor& ref, Check check,
                   const std::string& what, double ulps = tolerance::kHalfUlps) {
  ExpectWritten(got, ref, what);
  CompareResult result;
  switch (check) {
    case Check::kExact: result = CompareExact(got, ref); break;
    case Check::kExactAnyNaN: result = CompareExact(got, ref, /*nan_is_nan=*/true); break;
    case Check::kHalf: result = CompareHalf(got, ref, ulps); break;
    case Check::kGemm: result = CompareGemm(got, ref); break;
  }
  EXPECT_TRUE(result.ok) << what << ": " << result.summary;
}

std::string Shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The fixture: one GPU, a stream, a fresh generator per test.
class UnfusedOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TPFUSE_REQUIRE_GPUS(1);
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    StatusOr<cuda::Stream> stream = cuda::Stream::Create();
    ASSERT_TRUE(stream.ok()) << stream.status().ToString();
    stream_ = std::move(stream).value();
    RecordProperty("seed", int(rng_.seed()));
  }

  cudaStream_t stream() const { return stream_.get(); }

  Rng rng_;
  cuda::Stream stream_;
};

// Every shape of the shared list.
class UnfusedShapesTest : public UnfusedOpsTest,
                          public ::testing::WithParamInterface<std::tuple<int64_t, int64_t>> {
 protected:
  int64_t tokens() const { return std::get<0>(GetParam()); }
  int64_t hidden() const { return std::get<1>(GetParam()); }
};

// ---------------------------------------------------------------- runners shared by the tests

const char* BinaryName(cuda::BinaryOpKind op) {
  switch (op) {
    case cuda::BinaryOpKind::kAdd: return "add";
    case cuda::BinaryOpKind::kSub: return "sub";
    case cuda::BinaryOpKind::kMul: return "mul";
    case cuda::BinaryOpKind::kDiv: return "div";
  }
  return "?";
}

cpu::BinaryOp ToCpu(cuda::BinaryOpKind op) {
  switch (op) {
    case cuda::BinaryOpKind::kAdd: return cpu::BinaryOp::kAdd;
    case cuda::BinaryOpKind::kSub: return cpu::BinaryOp::kSub;
    case cuda::BinaryOpKind::kMul: return cpu::BinaryOp::kMul;
    case cuda::BinaryOpKind::kDiv: return cpu::BinaryOp::kDiv;
  }
  return cpu::BinaryOp::kAdd;
}

constexpr cuda::BinaryOpKind kBinaryOps[] = {cuda::BinaryOpKind::kAdd, cuda::BinaryOpKind::kSub,
                                             cuda::BinaryOpKind::kMul, cuda::BinaryOpKind::kDiv};

// a (op) b for every op on the GPU and the CPU, bitwise. The divisor side b stays away from
// 0, so no 0 / 0 makes a NaN whose bits the backends spell differently.
void CheckBinaryOps(Rng& rng, cudaStream_t stream, DType a_dtype, std::vector<int64_t> a_shape,
                    DType b_dtype, std::vector<int64_t> b_shape, DType out_dtype,
                    const std::vector<cuda::BinaryOpKind>& ops) {
  const HostTensor a = RandomTensor(rng, a_dtype, a_shape);
  const HostTensor b = RandomAwayFromZero(rng, b_dtype, b_shape, 0.5f, 2.0f);
  StatusOr<DeviceCopy> da = Upload(a, stream), db = Upload(b, stream);
  ASSERT_TRUE(da.ok() && db.ok());
  for (cuda::BinaryOpKind op : ops) {
    const std::string what =
        StrCat(BinaryName(op), " ", DTypeName(a_dtype), Shape(a_shape), " x ", DTypeName(b_dtype),
               Shape(b_shape), " -> ", DTypeName(out_dtype));
    SCOPED_TRACE(what);
    StatusOr<HostTensor> ref = cpu::Binary(ToCpu(op), a, b, out_dtype);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    StatusOr<DeviceCopy> dy = Poisoned(out_dtype, ref->shape(), stream);
    ASSERT_TRUE(dy.ok()) << dy.status().ToString();
    TPFUSE_ASSERT_OK(cuda::LaunchBinary(op, da->tensor, db->tensor, dy->tensor, stream));
    StatusOr<HostTensor> got = Download(*dy, stream);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ExpectMatches(*got, *ref, Check::kExact, what);
  }
}

// ---------------------------------------------------------------- elementwise

TEST_P(UnfusedShapesTest, BinaryOpsWithEveryBroadcastMatchExactly) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  const int64_t t = tokens(), h = hidden();
  // Contract 2's forms, then NumPy's that the backend also runs: a 1 in any dim of a rank-2
  // operand ([1, H] along the rows, the outer [T, 1] x [1, H]) and one element of higher rank.
  const std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> broadcasts = {
      {{t, h}, {t, h}}, {{t, h}, {h}},    {{h}, {t, h}},    {{t, h}, {t, 1}},
      {{t, 1}, {t, h}}, {{t, h}, {}},     {{}, {t, h}},     {{t, h}, {1, h}},
      {{1, h}, {t, h}}, {{t, 1}, {1, h}}, {{1, 1, 1}, {t, h}},
  };
  const std::vector<cuda::BinaryOpKind> all_ops(std::begin(kBinaryOps), std::end(kBinaryOps));
  for (DType dtype : kActDTypes) {
    for (const auto& [a_shape, b_shape] : broadcasts) {
      CheckBinaryOps(rng_, stream(), dtype, a_shape, dtype, b_shape, dtype, all_ops);
    }
  }
  // Mixed dtypes compute in f32 (the IR's promotion).
  const std::pair<DType, DType> mixed[] = {{DType::kBF16, DType::kF32},
                                           {DType::kF32, DType::kF16},
                                           {DType::kBF16, DType::kF16},
                                           {DType::kF16, DType::kBF16}};
  for (const auto& [a_dtype, b_dtype] : mixed) {
    CheckBinaryOps(rng_, stream(), a_dtype, {t, h}, b_dtype, {h}, DType::kF32,
                   {cuda::BinaryOpKind::kMul});
    CheckBinaryOps(rng_, stream(), a_dtype, {t, h}, b_dtype, {t, h}, DType::kF32,
                   {cuda::BinaryOpKind::kAdd});
    CheckBinaryOps(rng_, stream(), a_dtype, {t, h}, b_dtype, {}, DType::kF32,
                   {cuda::BinaryOpKind::kDiv});
  }
}

TEST_P(UnfusedShapesTest, ScalarAndUnaryOpsMatchTheOracle) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  const std::vector<int64_t> shape = {tokens(), hidden()};
  for (DType dtype : kActDTypes) {
    SCOPED_TRACE(DTypeName(dtype));
    const HostTensor x = RandomTensor(rng_, dtype, shape);
    const HostTensor positive = RandomAwayFromZero(rng_, dtype, shape, 0.01f, 4.0f, true);
    StatusOr<DeviceCopy> dx = Upload(x, stream()), dpos = Upload(positive, stream());
    ASSERT_TRUE(dx.ok() && dpos.ok());

    // Runs `launch` into a poisoned output and compares with `ref`.
    const auto check = [&](const std::string& what, const HostTensor& ref, Check how, double ulps,
                           const std::function<Status(const DeviceTensor&)>& launch) {
      SCOPED_TRACE(what);
      StatusOr<DeviceCopy> dy = Poisoned(ref.dtype(), ref.shape(), stream());
      ASSERT_TRUE(dy.ok()) << dy.status().ToString();
      TPFUSE_ASSERT_OK(launch(dy->tensor));
      StatusOr<HostTensor> got = Download(*dy, stream());
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      ExpectMatches(*got, ref, how, what, ulps);
    };

    for (cuda::BinaryOpKind op : kBinaryOps) {
      const float scalar = op == cuda::BinaryOpKind::kDiv ? 0.37f : 1.0e-6f * 3.0f + 0.25f;
      check(StrCat(BinaryName(op), " scalar"), cpu::BinaryScalar(ToCpu(op), x, scalar, dtype),
            Check::kExact, 0, [&](const DeviceTensor& y) {
              return cuda::LaunchBinaryScalar(op, dx->tensor, scalar, y, stream());
            });
    }
    check("rsqrt", cpu::Rsqrt(positive, dtype), Check::kExact, 0,
          [&](const DeviceTensor& y) { return cuda::LaunchRsqrt(dpos->tensor, y, stream()); });
    // Exponents 2, 3, 1, 0.5, -0.5, -1 and -2 are the oracle's special cases (IEEE steps);
    // other exponents are powf, whose last-bit rounding differs between libm and CUDA (a few
    // f32 ulps; 1 ulp after rounding to 16 bits).
    for (float e : {2.0f, 3.0f, 1.0f, 0.5f, -0.5f, -1.0f, -2.0f, -1.5f, 2.5f}) {
      const bool exact = e != -1.5f && e != 2.5f;
      const bool any_sign = e == 2.0f || e == 3.0f || e == 1.0f || e == -1.0f || e == -2.0f;
      const HostTensor& in = any_sign ? x : positive;
      const DeviceTensor& din = any_sign ? dx->tensor : dpos->tensor;
      check(StrCat("pow ", e), cpu::Pow(in, e, dtype), exact ? Check::kExact : Check::kHalf,
            dtype == DType::kF32 ? 4.0 : 1.0,
            [&](const DeviceTensor& y) { return cuda::LaunchPow(din, e, y, stream()); });
    }
    constexpr float kInf = std::numeric_limits<float>::infinity();
    for (auto [lo, hi] : {std::pair{-0.5f, 0.75f}, std::pair{-448.0f, 448.0f},
                          std::pair{0.0f, kInf}, std::pair{-kInf, -0.25f}}) {
      check(StrCat("clamp [", lo, ", ", hi, "]"), cpu::Clamp(x, lo, hi, dtype), Check::kExact, 0,
            [&](const DeviceTensor& y) {
              return cuda::LaunchClamp(dx->tensor, lo, hi, y, stream());
            });
    }
  }
}

TEST_P(UnfusedShapesTest, CastsBetweenEveryDTypeMatchExactly) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  const std::vector<int64_t> shape = {tokens(), hidden()};
  const DType from[] = {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3, DType::kI32};
  const DType to[] = {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3};
  for (DType src : from) {
    HostTensor x = RandomTensor(rng_, src, shape);
    if (IsFloatType(src) && src != DType::kF8E4M3) {
      // Values over the FP8 range too: the cast saturates them to +-448.
      for (int64_t i = 0; i < x.numel(); i += 7) x.SetF32(i, x.GetF32(i) * 300.0f);
    }
    StatusOr<DeviceCopy> dx = Upload(x, stream());
    ASSERT_TRUE(dx.ok()) << dx.status().ToString();
    for (DType dst : to) {
      const std::string what = StrCat("cast ", DTypeName(src), " -> ", DTypeName(dst));
      SCOPED_TRACE(what);
      const HostTensor ref = cpu::Cast(x, dst);
      StatusOr<DeviceCopy> dy = Poisoned(dst, shape, stream());
      ASSERT_TRUE(dy.ok());
      TPFUSE_ASSERT_OK(cuda::LaunchCast(dx->tensor, dy->tensor, stream()));
      StatusOr<HostTensor> got = Download(*dy, stream());
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      ExpectMatches(*got, ref, Check::kExact, what);
    }
  }
}

// ---------------------------------------------------------------- reductions and norms

TEST_P(UnfusedShapesTest, MeanMatchesWithinOneUlp) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  for (DType dtype : kActDTypes) {
    const HostTensor x = RandomTensor(rng_, dtype, {tokens(), hidden()});
    StatusOr<HostTensor> ref = cpu::Mean(x, -1, /*keepdim=*/true, dtype);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    StatusOr<DeviceCopy> dx = Upload(x, stream()), dy = Poisoned(dtype, ref->shape(), stream());
    ASSERT_TRUE(dx.ok() && dy.ok());
    TPFUSE_ASSERT_OK(cuda::LaunchMean(dx->tensor, dy->tensor, stream()));
    StatusOr<HostTensor> got = Download(*dy, stream());
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ExpectMatches(*got, *ref, Check::kHalf, StrCat("mean ", DTypeName(dtype)));
  }
}

TEST_P(UnfusedShapesTest, RmsNormMatchesWithinOneUlp) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  const std::vector<int64_t> shape = {tokens(), hidden()};
  for (DType act : kActDTypes) {
    for (DType wdt : kActDTypes) {
      for (float weight_bias : {0.0f, 1.0f}) {
        const std::string what = StrCat("rms_norm act ", DTypeName(act), " w ", DTypeName(wdt),
                                        " weight_bias ", weight_bias);
        SCOPED_TRACE(what);
        const HostTensor x = RandomTensor(rng_, act, shape);
        const HostTensor w = RandomAwayFromZero(rng_, wdt, {hidden()}, 0.5f, 1.5f, true);
        const float eps = 1e-6f;
        StatusOr<HostTensor> ref = cpu::RmsNorm(x, w, eps, weight_bias, act);
        ASSERT_TRUE(ref.ok()) << ref.status().ToString();
        StatusOr<DeviceCopy> dx = Upload(x, stream()), dw = Upload(w, stream()),
                             dy = Poisoned(act, shape, stream());
        ASSERT_TRUE(dx.ok() && dw.ok() && dy.ok());
        TPFUSE_ASSERT_OK(
            cuda::LaunchRmsNorm(dx->tensor, dw->tensor, eps, weight_bias, dy->tensor, stream()));
        StatusOr<HostTensor> got = Download(*dy, stream());
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        // f32 outputs: r may differ from the oracle's by an ulp when the double sums differ
        // in their last bit, which moves y by up to 2 f32 ulps.
        ExpectMatches(*got, *ref, Check::kHalf, what, act == DType::kF32 ? 2.0 : 1.0);
      }
    }
  }
}

TEST_P(UnfusedShapesTest, FusedAddRmsNormMatches) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  const std::vector<int64_t> shape = {tokens(), hidden()};
  for (DType act : kActDTypes) {
    for (DType wdt : {act, DType::kF32}) {
      const std::string what =
          StrCat("fused_add_rms_norm act ", DTypeName(act), " w ", DTypeName(wdt));
      SCOPED_TRACE(what);
      const HostTensor x = RandomTensor(rng_, act, shape);
      const HostTensor res = RandomTensor(rng_, act, shape);
      const HostTensor w = RandomAwayFromZero(rng_, wdt, {hidden()}, 0.5f, 1.5f, true);
      StatusOr<cpu::AddRmsNormResult> ref = cpu::FusedAddRmsNorm(x, res, w, 1e-5f, 0.0f, act, act);
      ASSERT_TRUE(ref.ok()) << ref.status().ToString();
      StatusOr<DeviceCopy> dx = Upload(x, stream()), dres = Upload(res, stream()),
                           dw = Upload(w, stream());
      StatusOr<DeviceCopy> dy = Poisoned(act, shape, stream()), dh = Poisoned(act, shape, stream());
      ASSERT_TRUE(dx.ok() && dres.ok() && dw.ok() && dy.ok() && dh.ok());
      TPFUSE_ASSERT_OK(cuda::LaunchFusedAddRmsNorm(dx->tensor, dres->tensor, dw->tensor, 1e-5f,
                                                   0.0f, dy->tensor, dh->tensor, stream()));
      StatusOr<HostTensor> y = Download(*dy, stream()), h = Download(*dh, stream());
      ASSERT_TRUE(y.ok() && h.ok());
      // h is one f32 add and one rounding on both sides: bitwise.
      ExpectMatches(*h, ref->residual_out, Check::kExact, what + " residual_out");
      ExpectMatches(*y, ref->y, Check::kHalf, what + " y", act == DType::kF32 ? 2.0 : 1.0);
    }
  }
}

// ---------------------------------------------------------------- FP8 quantization

TEST_P(UnfusedShapesTest, QuantFp8MatchesExactly) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  const std::vector<int64_t> shape = {tokens(), hidden()};
  for (DType dtype : kActDTypes) {
    HostTensor y = RandomTensor(rng_, dtype, shape);
    // A spread of magnitudes, so that scales differ by group and values saturate in tensor mode.
    for (int64_t i = 0; i < y.numel(); i += 5) y.SetF32(i, y.GetF32(i) * float(1 + (i / 5) % 9));
    StatusOr<DeviceCopy> dy = Upload(y, stream());
    ASSERT_TRUE(dy.ok());

    // Static (per-tensor) scale, by the reciprocal (the default) and by division.
    for (bool divides : {false, true}) {
      const std::string what = StrCat("quant_fp8 tensor ", DTypeName(dtype), divides ? " y / scale" : "");
      SCOPED_TRACE(what);
      HostTensor scale(DType::kF32, {});
      scale.SetF32(0, rng_.Uniform(0.005f, 0.02f));
      StatusOr<HostTensor> ref = cpu::QuantFp8Tensor(y, scale, divides);
      ASSERT_TRUE(ref.ok()) << ref.status().ToString();
      StatusOr<DeviceCopy> ds = Upload(scale, stream()),
                           dq = Poisoned(DType::kF8E4M3, shape, stream());
      ASSERT_TRUE(ds.ok() && dq.ok());
      TPFUSE_ASSERT_OK(cuda::LaunchQuantFp8Tensor(dy->tensor, ds->tensor, divides, dq->tensor, stream()));
      StatusOr<HostTensor> got = Download(*dq, stream());
      ASSERT_TRUE(got.ok());
      ExpectMatches(*got, *ref, Check::kExact, what);
    }

    // Dynamic: per token, per group of 128 and of 64, row and column layouts, f32 and ue8m0;
    // each in these legs:
    //   - plain;
    //   - with its floor of vLLM's kernels (after the division for f32 scales, ue8m0 of max(s,
    //     1e-10)) on y scaled by 2^-40 (f16: all zeros) with row 0 zero, where the floors
    //     decide: every amax lies below 448 * 2^-34;
    //   - ue8m0 only: vLLM's QuantFP8 UE8M0 form, floored after the rounding (scale_floor_after_div
    //     with ue8m0) on y scaled by 2^-12 with row 0 zero, whose amaxes lie about the floor's
    //     448 * 2^-18: scales of the floor 1 / (448 * 512) (no power of two: divided by) and of
    //     powers of two, by division and by the reciprocal;
    //   - multiplied by the scale's reciprocal (scale_op_swapped: y * (1 / s));
    //   - with inf and NaN in rows 1-3 (a group with +inf, one with a NaN, one with -inf and a
    //     NaN), whose scales are inf and NaN as torch's forms give them: bitwise but for NaN
    //     payloads (the GPU's NaN is canonical); by division and by the reciprocal.
    HostTensor tiny = y;
    for (int64_t i = 0; i < tiny.numel(); ++i)
      tiny.SetF32(i, i < hidden() ? 0.0f : y.GetF32(i) * 0x1p-40f);
    HostTensor near = y;
    for (int64_t i = 0; i < near.numel(); ++i)
      near.SetF32(i, i < hidden() ? 0.0f : y.GetF32(i) * 0x1p-12f);
    HostTensor odd = y;
    const auto put = [&](int64_t row, int64_t col, float v) {
      if (row < tokens()) odd.SetF32(row * hidden() + col, v);
    };
    put(1, 3, INFINITY);
    put(2, hidden() - 1, std::numeric_limits<float>::quiet_NaN());
    put(3, 0, -INFINITY);
    put(3, hidden() / 2, std::numeric_limits<float>::quiet_NaN());
    StatusOr<DeviceCopy> dtiny = Upload(tiny, stream()), dodd = Upload(odd, stream()),
                         dnear = Upload(near, stream());
    ASSERT_TRUE(dtiny.ok() && dodd.ok() && dnear.ok());
    struct Mode {
      QuantMode mode;
      int64_t group;
    };
    enum class Leg {
      kPlain, kFloors, kFloorAfterRounding, kFloorAfterRoundingReciprocal, kReciprocal,
      kNonFinite, kNonFiniteReciprocal
    };
    for (Mode m : {Mode{QuantMode::kFp8Token, 0}, Mode{QuantMode::kFp8Group, 128},
                   Mode{QuantMode::kFp8Group, 64}}) {
      if (m.mode == QuantMode::kFp8Group && hidden() % m.group != 0) continue;
      for (ScaleLayout layout : {ScaleLayout::kRow, ScaleLayout::kCol}) {
        for (ScaleFormat format : {ScaleFormat::kF32, ScaleFormat::kUe8m0})
        for (Leg leg : {Leg::kPlain, Leg::kFloors, Leg::kFloorAfterRounding,
                        Leg::kFloorAfterRoundingReciprocal, Leg::kReciprocal, Leg::kNonFinite,
                        Leg::kNonFiniteReciprocal}) {
          const char* leg_name[] = {"", " vLLM's floor", " floored after the rounding",
                                    " floored after the rounding, y * (1 / s)", " y * (1 / s)",
                                    " inf and NaN", " inf and NaN, y * (1 / s)"};
          const bool non_finite = leg == Leg::kNonFinite || leg == Leg::kNonFiniteReciprocal;
          const bool after_rounding =
              leg == Leg::kFloorAfterRounding || leg == Leg::kFloorAfterRoundingReciprocal;
          if (after_rounding && format != ScaleFormat::kUe8m0) continue;
          const std::string what =
              StrCat("quant_fp8 ", QuantModeName(m.mode), " group ", m.group, " ",
                     ScaleLayoutName(layout), " ", ScaleFormatName(format), " ", DTypeName(dtype),
                     leg_name[int(leg)]);
          SCOPED_TRACE(what);
          QuantParams config{m.mode, int(m.group), layout, format};
          config.scale_floor_after_div =
              (leg == Leg::kFloors && format == ScaleFormat::kF32) || after_rounding;
          config.ue8m0_floor = leg == Leg::kFloors && format == ScaleFormat::kUe8m0;
          config.scale_op_swapped = leg == Leg::kReciprocal || leg == Leg::kNonFiniteReciprocal ||
                                    leg == Leg::kFloorAfterRoundingReciprocal;
          const HostTensor& in = leg == Leg::kFloors ? tiny : after_rounding ? near : non_finite ? odd : y;
          const cuda::DeviceTensor& din = leg == Leg::kFloors ? dtiny->tensor
                                          : after_rounding    ? dnear->tensor
                                          : non_finite        ? dodd->tensor
                                                              : dy->tensor;
          StatusOr<cpu::DynamicQuantResult> ref = cpu::QuantFp8Dynamic(in, config);
          ASSERT_TRUE(ref.ok()) << ref.status().ToString();
          StatusOr<DeviceCopy> dq = Poisoned(DType::kF8E4M3, shape, stream());
          StatusOr<DeviceCopy> ds = Poisoned(DType::kF32, ref->s.shape(), stream());
          ASSERT_TRUE(dq.ok() && ds.ok());
          TPFUSE_ASSERT_OK(
              cuda::LaunchQuantFp8Dynamic(din, config, dq->tensor, ds->tensor, stream()));
          StatusOr<HostTensor> q = Download(*dq, stream()), s = Download(*ds, stream());
          ASSERT_TRUE(q.ok() && s.ok());
          // amax is exact in any order and the rest is the same operations: bitwise, scales
          // (and the column layout's zero padding) included.
          const Check check = non_finite ? Check::kExactAnyNaN : Check::kExact;
          ExpectMatches(*s, ref->s, check, what + " s");
          ExpectMatches(*q, ref->q, check, what + " q");
          if (non_finite && tokens() > 3 && m.mode == QuantMode::kFp8Token) {
            // The rows' scales as torch gives them (row t's at index t in both layouts): inf
            // for the row with +inf, NaN for the rows with a NaN.
            EXPECT_EQ(ref->s.GetF32(1), INFINITY) << what;
            EXPECT_TRUE(std::isnan(ref->s.GetF32(2))) << what;
            EXPECT_TRUE(std::isnan(ref->s.GetF32(3))) << what;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(SharedShapes, UnfusedShapesTest,
                         ::testing::Combine(::testing::ValuesIn(kTokenCounts),
                                            ::testing::ValuesIn(kHiddenSizes)),
                         [](const ::testing::TestParamInfo<std::tuple<int64_t, int64_t>>& info) {
                           return StrCat("T", std::get<0>(info.param), "_H",
                                         std::get<1>(info.param));
                         });

// A hidden size that is not a multiple of 8 (every kernel's scalar path) and T = 5, whose
// column-major scales have 3 rows of padding.
INSTANTIATE_TEST_SUITE_P(OddHidden, UnfusedShapesTest,
                         ::testing::Values(std::make_tuple(int64_t{5}, kOddHidden)),
                         [](const ::testing::TestParamInfo<std::tuple<int64_t, int64_t>>& info) {
                           return StrCat("T", std::get<0>(info.param), "_H",
                                         std::get<1>(info.param));
                         });

TEST_F(UnfusedOpsTest, RsqrtAndClampKeepSpecialValues) {
  // 0 -> inf, -0 -> -inf, inf -> 0, negative and NaN -> NaN (any NaN: the backends spell NaN
  // payloads differently, which CompareHalf allows).
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::infinity(),
                            -1.0f,
                            std::numeric_limits<float>::quiet_NaN(),
                            1e-30f,
                            4.0f,
                            0.25f};
  for (DType dtype : kActDTypes) {
    HostTensor x(dtype, {1, int64_t(std::size(specials))});
    for (size_t i = 0; i < std::size(specials); ++i) x.SetF32(int64_t(i), specials[i]);
    StatusOr<DeviceCopy> dx = Upload(x, stream()), dy = Poisoned(dtype, x.shape(), stream()),
                         dc = Poisoned(dtype, x.shape(), stream());
    ASSERT_TRUE(dx.ok() && dy.ok() && dc.ok());
    TPFUSE_ASSERT_OK(cuda::LaunchRsqrt(dx->tensor, dy->tensor, stream()));
    TPFUSE_ASSERT_OK(cuda::LaunchClamp(dx->tensor, -0.5f, 0.5f, dc->tensor, stream()));
    StatusOr<HostTensor> y = Download(*dy, stream()), c = Download(*dc, stream());
    ASSERT_TRUE(y.ok() && c.ok());
    const CompareResult ry = CompareHalf(*y, cpu::Rsqrt(x, dtype), 0.0);
    EXPECT_TRUE(ry.ok) << "rsqrt " << DTypeName(dtype) << ": " << ry.summary;
    const CompareResult rc = CompareHalf(*c, cpu::Clamp(x, -0.5f, 0.5f, dtype), 0.0);
    EXPECT_TRUE(rc.ok) << "clamp " << DTypeName(dtype) << ": " << rc.summary;
  }
}

// ---------------------------------------------------------------- GEMMs

class GemmTest : public UnfusedOpsTest {
 protected:
  void SetUp() override {
    UnfusedOpsTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_EQ(cublasLtCreate(&handle_), CUBLAS_STATUS_SUCCESS);
    StatusOr<cuda::DeviceBuffer> ws = cuda::DeviceBuffer::Allocate(size_t(32) << 20);
    ASSERT_TRUE(ws.ok());
    workspace_ = std::move(ws).value();
  }
  void TearDown() override {
    if (handle_ != nullptr) cublasLtDestroy(handle_);
  }
  cuda::GemmContext ctx() const { return {handle_, workspace_.get(), workspace_.size()}; }

  cublasLtHandle_t handle_ = nullptr;
  cuda::DeviceBuffer workspace_;
};

// [M, K] x [K, N] for M in the shared token list (CPU GEMMs in double bound the sizes).
TEST_F(GemmTest, MatmulMatchesWithinTheGemmTolerance) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  struct Dims {
    int64_t k, n;
  };
  for (int64_t m : kTokenCounts) {
    for (Dims d : {Dims{128, 256}, Dims{2880, 136}, Dims{kOddHidden, 24}}) {
      if (m == 1000 && d.k > 128) continue;
      for (DType dtype : kActDTypes) {
        const std::string what =
            StrCat("matmul ", DTypeName(dtype), " [", m, ", ", d.k, "] x [", d.k, ", ", d.n, "]");
        SCOPED_TRACE(what);
        const HostTensor a = RandomTensor(rng_, dtype, {m, d.k});
        const HostTensor b = RandomTensor(rng_, dtype, {d.k, d.n});
        StatusOr<HostTensor> ref = cpu::Matmul(a, b, dtype);
        ASSERT_TRUE(ref.ok()) << ref.status().ToString();
        StatusOr<DeviceCopy> da = Upload(a, stream()), db = Upload(b, stream()),
                             dy = Poisoned(dtype, {m, d.n}, stream());
        ASSERT_TRUE(da.ok() && db.ok() && dy.ok());
        TPFUSE_ASSERT_OK(cuda::LaunchMatmul(ctx(), da->tensor, db->tensor, dy->tensor, stream()));
        StatusOr<HostTensor> got = Download(*dy, stream());
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        ExpectMatches(*got, *ref, Check::kGemm, what);
      }
    }
  }
}

TEST_F(GemmTest, ScaledMatmulMatchesWithinTheGemmTolerance) {
  SCOPED_TRACE(StrCat("seed ", rng_.seed()));
  constexpr int64_t k = 512, n = 256, group = 128;
  for (int64_t m : {int64_t{1}, int64_t{3}, int64_t{19}, int64_t{128}}) {
    const HostTensor q = RandomTensor(rng_, DType::kF8E4M3, {m, k});
    const HostTensor w = RandomTensor(rng_, DType::kF8E4M3, {k, n});
    struct Case {
      cpu::ActScaleLayout cpu_layout;
      cuda::ActScaleLayout cuda_layout;
      std::vector<int64_t> s_shape;
    };
    const Case cases[] = {
        {cpu::ActScaleLayout::kPerTensor, cuda::ActScaleLayout::kPerTensor, {}},
        {cpu::ActScaleLayout::kPerToken, cuda::ActScaleLayout::kPerToken, {m, 1}},
        {cpu::ActScaleLayout::kPerGroupRow, cuda::ActScaleLayout::kPerGroupRow, {m, k / group}},
        {cpu::ActScaleLayout::kPerGroupCol,
         cuda::ActScaleLayout::kPerGroupCol,
         {k / group, PaddedScaleTokens(m)}},
    };
    const std::vector<std::vector<int64_t>> ws_shapes = {{}, {k / 128, n / 128}};
    for (const Case& c : cases) {
      for (const std::vector<int64_t>& ws_shape : ws_shapes) {
        const std::string what =
            StrCat("scaled_matmul M ", m, " s ", cpu::ActScaleLayoutName(c.cpu_layout), " ws ",
                   Shape(ws_shape));
        SCOPED_TRACE(what);
        const HostTensor s = RandomAwayFromZero(rng_, DType::kF32, c.s_shape, 0.002f, 0.008f, true);
        const HostTensor ws = RandomAwayFromZero(rng_, DType::kF32, ws_shape, 0.002f, 0.008f, true);
        StatusOr<HostTensor> ref = cpu::ScaledMatmul(q, s, c.cpu_layout, w, ws, DType::kBF16);
        ASSERT_TRUE(ref.ok()) << ref.status().ToString();
        StatusOr<DeviceCopy> dq = Upload(q, stream()), ds = Upload(s, stream()),
                             dw = Upload(w, stream()), dws = Upload(ws, stream());
        StatusOr<DeviceCopy> dy = Poisoned(DType::kBF16, {m, n}, stream());
        StatusOr<cuda::DeviceBuffer> scratch =
            cuda::DeviceBuffer::Allocate(cuda::ScaledMatmulScratchBytes(m, k, n));
        ASSERT_TRUE(dq.ok() && ds.ok() && dw.ok() && dws.ok() && dy.ok() && scratch.ok());
        TPFUSE_ASSERT_OK(cuda::LaunchScaledMatmul(ctx(), dq->tensor, ds->tensor, c.cuda_layout,
                                                  dw->tensor, dws->tensor, dy->tensor,
                                                  scratch->get(), stream()));
        StatusOr<HostTensor> got = Download(*dy, stream());
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        ExpectMatches(*got, *ref, Check::kGemm, what);
      }
    }
  }
}

// ---------------------------------------------------------------- validation (no GPU needed)

// Launchers reject bad arguments before touching the GPU, with a message naming the problem.
TEST(UnfusedOpsValidation, ErrorsNameTheProblem) {
  // Never dereferenced: every call below fails validation first.
  void* fake = reinterpret_cast<void*>(uintptr_t{0x1000});
  const DeviceTensor a{fake, DType::kBF16, {3, 64}};
  const DeviceTensor row{fake, DType::kBF16, {64}};
  const DeviceTensor bad_row{fake, DType::kBF16, {32}};
  const DeviceTensor f8{fake, DType::kF8E4M3, {3, 64}};
  const DeviceTensor i32{fake, DType::kI32, {3, 64}};
  const DeviceTensor null_t{nullptr, DType::kBF16, {3, 64}};
  const auto expect_error = [](const Status& s, StatusCode code, const std::string& words) {
    EXPECT_EQ(s.code(), code) << s.ToString();
    EXPECT_NE(s.message().find(words), std::string::npos)
        << "'" << words << "' not in: " << s.message();
  };
  expect_error(cuda::LaunchBinary(cuda::BinaryOpKind::kAdd, a, bad_row, a, nullptr),
               StatusCode::kInvalidArgument, "do not broadcast");
  expect_error(cuda::LaunchBinary(cuda::BinaryOpKind::kMul, a, row, row, nullptr),
               StatusCode::kInvalidArgument, "is not the broadcast");
  // NumPy's rule allows [2, 3, 64] x [3, 64]; the backend names what it does not run.
  const DeviceTensor rank3{fake, DType::kBF16, {2, 3, 64}};
  expect_error(cuda::LaunchBinary(cuda::BinaryOpKind::kAdd, rank3, a, rank3, nullptr),
               StatusCode::kUnimplemented, "partially along the leading dims");
  expect_error(cuda::LaunchBinary(cuda::BinaryOpKind::kSub, a, f8, a, nullptr),
               StatusCode::kInvalidArgument, "b must be bf16, f16 or f32");
  expect_error(cuda::LaunchBinary(cuda::BinaryOpKind::kDiv, a, a,
                                  DeviceTensor{fake, DType::kF16, {3, 64}}, nullptr),
               StatusCode::kUnimplemented, "dtypes");
  expect_error(cuda::LaunchBinary(cuda::BinaryOpKind::kAdd, null_t, a, a, nullptr),
               StatusCode::kInvalidArgument, "null device pointer");
  expect_error(cuda::LaunchRsqrt(a, DeviceTensor{fake, DType::kF32, {3, 64}}, nullptr),
               StatusCode::kInvalidArgument, "must have x's dtype");
  expect_error(cuda::LaunchClamp(a, 1.0f, -1.0f, a, nullptr), StatusCode::kInvalidArgument,
               "greater than max");
  expect_error(cuda::LaunchCast(a, i32, nullptr), StatusCode::kInvalidArgument, "y must be");
  expect_error(cuda::LaunchCast(a, row, nullptr), StatusCode::kInvalidArgument, "does not match");
  expect_error(cuda::LaunchMean(a, DeviceTensor{fake, DType::kBF16, {3, 2}}, nullptr),
               StatusCode::kInvalidArgument, "one element per row");
  expect_error(cuda::LaunchRmsNorm(a, bad_row, 1e-6f, 0.0f, a, nullptr),
               StatusCode::kInvalidArgument, "does not match the hidden dim");
  expect_error(cuda::LaunchFusedAddRmsNorm(a, DeviceTensor{fake, DType::kBF16, {2, 64}}, row, 1e-6f,
                                           0.0f, a, a, nullptr),
               StatusCode::kInvalidArgument, "residual");
  expect_error(cuda::LaunchQuantFp8Tensor(a, DeviceTensor{fake, DType::kF32, {2}}, false, f8, nullptr),
               StatusCode::kInvalidArgument, "one element");
  expect_error(cuda::LaunchQuantFp8Dynamic(
                   a, {QuantMode::kFp8Group, 48, ScaleLayout::kRow, ScaleFormat::kF32}, f8,
                   DeviceTensor{fake, DType::kF32, {3, 1}}, nullptr),
               StatusCode::kInvalidArgument, "does not divide");
  expect_error(cuda::LaunchQuantFp8Dynamic(
                   a, {QuantMode::kFp8Group, 32, ScaleLayout::kCol, ScaleFormat::kF32}, f8,
                   DeviceTensor{fake, DType::kF32, {2, 3}}, nullptr),
               StatusCode::kInvalidArgument, "expected f32[2, 4]");
  expect_error(cuda::LaunchMatmul({}, a, DeviceTensor{fake, DType::kBF16, {32, 8}}, a, nullptr),
               StatusCode::kInvalidArgument, "expected a [M, K] and b [K, N]");
  expect_error(cuda::LaunchScaledMatmul({}, f8, DeviceTensor{fake, DType::kF32, {3, 3}},
                                        cuda::ActScaleLayout::kPerGroupRow,
                                        DeviceTensor{fake, DType::kF8E4M3, {64, 16}},
                                        DeviceTensor{fake, DType::kF32, {}},
                                        DeviceTensor{fake, DType::kBF16, {3, 16}}, fake, nullptr),
               StatusCode::kInvalidArgument, "does not fit q");
}

}  // namespace
}  // namespace tpfuse::testing
