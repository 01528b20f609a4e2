#include "common/tolerance.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>

#include "common/numerics.h"
#include "tpfuse/status.h"

namespace tpfuse {
namespace {

// Accumulates per-element verdicts into a CompareResult.
class Checker {
 public:
  explicit Checker(const HostTensor& ref)
      : last_dim_(ref.rank() == 0 ? 1 : std::max<int64_t>(1, ref.dim(ref.rank() - 1))) {}

  // `unit` is the error unit for max_ulp_err (an ulp, or |ref| for relative errors).
  void Add(int64_t index, double got, double ref, double bound, double unit) {
    ++result_.checked;
    bool ok;
    if (std::isnan(got) || std::isnan(ref)) {
      ok = std::isnan(got) && std::isnan(ref);
    } else if (std::isinf(got) || std::isinf(ref)) {
      ok = got == ref;
    } else {
      const double err = std::fabs(got - ref);
      ok = err <= bound;
      result_.max_abs_err = std::max(result_.max_abs_err, err);
      if (err > 0.0) {
        const double in_units = unit > 0.0 ? err / unit : std::numeric_limits<double>::infinity();
        result_.max_ulp_err = std::max(result_.max_ulp_err, in_units);
      }
    }
    if (!ok) AddMismatch(index, got, ref);
  }

  // An element whose verdict is decided elsewhere (bitwise comparison).
  void AddVerdict(int64_t index, bool ok, double got, double ref) {
    ++result_.checked;
    const double err = std::fabs(got - ref);
    if (std::isfinite(err)) result_.max_abs_err = std::max(result_.max_abs_err, err);
    if (!ok) AddMismatch(index, got, ref);
  }

  void AddMismatch(int64_t index, double got, double ref) {
    ++result_.mismatches;
    if (int(result_.first_mismatches.size()) < CompareResult::kMaxReported)
      result_.first_mismatches.push_back(
          Mismatch{index, index / last_dim_, index % last_dim_, got, ref});
  }

  CompareResult Finish(std::string_view what) {
    result_.ok = result_.mismatches == 0;
    std::ostringstream os;
    os.precision(6);
    if (result_.ok) os << "ok";
    else os << "FAIL: " << result_.mismatches << " of " << result_.checked << " mismatch";
    os << " (" << what << ", " << result_.checked << " checked, max_abs_err "
       << result_.max_abs_err << ", max_err_units " << result_.max_ulp_err << ")";
    for (size_t i = 0; i < result_.first_mismatches.size(); ++i) {
      const Mismatch& m = result_.first_mismatches[i];
      os << (i ? "; " : ": first at ") << "[" << m.index << "] (row " << m.row << ", col "
         << m.col << ") got " << m.got << " ref " << m.ref;
    }
    result_.summary = os.str();
    return result_;
  }

 private:
  int64_t last_dim_;
  CompareResult result_;
};

CompareResult Failed(std::string summary) {
  CompareResult r;
  r.ok = false;
  r.summary = "FAIL: " + std::move(summary);
  return r;
}

// Same dtype and shape, or a failed result naming the difference.
bool SameType(const HostTensor& got, const HostTensor& ref, const char* what,
              CompareResult* failure) {
  if (got.dtype() == ref.dtype() && got.shape() == ref.shape()) return true;
  *failure = Failed(StrCat(what, ": got ", got.TypeString(), " but the reference is ",
                           ref.TypeString()));
  return false;
}

bool HasUlp(DType dtype) { return dtype != DType::kI32; }

}  // namespace

std::string_view ToleranceClassName(ToleranceClass cls) {
  switch (cls) {
    case ToleranceClass::kHalf: return "half-1ulp";
    case ToleranceClass::kFp8Dequantized: return "fp8-dequant";
    case ToleranceClass::kScale: return "scale-2^-7";
    case ToleranceClass::kGemm: return "gemm";
    case ToleranceClass::kAfterGemm: return "after-gemm";
    case ToleranceClass::kExact: return "exact";
  }
  return "?";
}

CompareResult CompareHalf(const HostTensor& got, const HostTensor& ref, double max_ulps) {
  CompareResult failure;
  if (!SameType(got, ref, "half", &failure)) return failure;
  if (!HasUlp(ref.dtype())) return Failed("half: i32 has no ulp; compare it exactly");
  Checker checker(ref);
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double g = got.GetF32(i), r = ref.GetF32(i);
    const double ulp = UlpOf(ref.dtype(), r);
    checker.Add(i, g, r, max_ulps * ulp, ulp);
  }
  return checker.Finish(StrCat(DTypeName(ref.dtype()), " within ", max_ulps, " ulp"));
}

CompareResult CompareExact(const HostTensor& got, const HostTensor& ref, bool nan_is_nan) {
  CompareResult failure;
  if (!SameType(got, ref, "exact", &failure)) return failure;
  Checker checker(ref);
  const size_t size = size_t(DTypeSize(ref.dtype()));
  const auto* gb = static_cast<const std::byte*>(got.data());
  const auto* rb = static_cast<const std::byte*>(ref.data());
  for (int64_t i = 0; i < ref.numel(); ++i) {
    // NOTE: bitwise, so -0 vs +0 and different NaN payloads are mismatches too.
    const float g = got.GetF32(i), r = ref.GetF32(i);
    const bool equal = std::memcmp(gb + size_t(i) * size, rb + size_t(i) * size, size) == 0 ||
                       (nan_is_nan && std::isnan(g) && std::isnan(r));
    checker.AddVerdict(i, equal, g, r);
  }
  return checker.Finish(nan_is_nan ? "bitwise (any NaN for a NaN)" : "bitwise");
}

CompareResult CompareScales(const HostTensor& got, const HostTensor& ref, double rel) {
  CompareResult failure;
  if (!SameType(got, ref, "scales", &failure)) return failure;
  Checker checker(ref);
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double g = got.GetF32(i), r = ref.GetF32(i);
    checker.Add(i, g, r, rel * std::fabs(r), std::fabs(r));
  }
  return checker.Finish(StrCat("relative ", rel));
}

CompareResult CompareGemm(const HostTensor& got, const HostTensor& ref) {
  CompareResult failure;
  if (!SameType(got, ref, "gemm", &failure)) return failure;
  if (!HasUlp(ref.dtype())) return Failed("gemm: i32 has no ulp; compare it exactly");
  Checker checker(ref);
  const int64_t cols = ref.rank() == 0 ? 1 : ref.dim(ref.rank() - 1);
  if (cols == 0) return checker.Finish("gemm");
  for (int64_t row = 0; row < ref.numel() / cols; ++row) {
    double row_max = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double r = std::fabs(double(ref.GetF32(row * cols + c)));
      if (std::isfinite(r)) row_max = std::max(row_max, r);
    }
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = row * cols + c;
      const double g = got.GetF32(i), r = ref.GetF32(i);
      const double ulp = UlpOf(ref.dtype(), r);
      checker.Add(i, g, r, tolerance::kGemmUlps * ulp + tolerance::kGemmRowRel * row_max, ulp);
    }
  }
  return checker.Finish(StrCat(DTypeName(ref.dtype()), " within ", tolerance::kGemmUlps,
                               " ulp + 2^-7 row max"));
}

CompareResult CompareFp8Dequantized(const HostTensor& q, const HostTensor& s,
                                    const HostTensor& q_ref, const HostTensor& s_ref,
                                    const Fp8ScaleMap& map) {
  CompareResult failure;
  if (!SameType(q, q_ref, "fp8", &failure)) return failure;
  if (q_ref.dtype() != DType::kF8E4M3)
    return Failed(StrCat("fp8: q is ", q_ref.TypeString(), ", expected f8e4m3"));
  const int64_t cols = q_ref.rank() == 0 ? 1 : q_ref.dim(q_ref.rank() - 1);
  const int64_t rows = cols == 0 ? 0 : q_ref.numel() / cols;

  // Element (row, col) -> index into the scale tensors.
  std::function<int64_t(int64_t, int64_t)> scale_index;
  if (map.kind != Fp8ScaleMap::Kind::kCodeStep) {
    if (!SameType(s, s_ref, "fp8 scales", &failure)) return failure;
    if (s_ref.dtype() != DType::kF32)
      return Failed(StrCat("fp8: scales are ", s_ref.TypeString(), ", expected f32"));
    const int64_t n = s_ref.numel();
    switch (map.kind) {
      case Fp8ScaleMap::Kind::kTensor:
        if (n != 1) return Failed(StrCat("fp8: a per-tensor scale has one element, got ",
                                         s_ref.TypeString()));
        scale_index = [](int64_t, int64_t) { return int64_t{0}; };
        break;
      case Fp8ScaleMap::Kind::kToken:
        if (n < rows) return Failed(StrCat("fp8: per-token scales ", s_ref.TypeString(),
                                           " have fewer than ", rows, " rows"));
        scale_index = [](int64_t row, int64_t) { return row; };
        break;
      case Fp8ScaleMap::Kind::kGroup: {
        const int64_t g = map.group_size;
        if (g <= 0 || cols % g != 0)
          return Failed(StrCat("fp8: group_size ", g, " does not divide ", cols));
        const int64_t groups = cols / g;
        if (!map.col_major) {
          if (n != rows * groups)
            return Failed(StrCat("fp8: row-major group scales ", s_ref.TypeString(),
                                 " do not hold [", rows, ", ", groups, "]"));
          scale_index = [=](int64_t row, int64_t col) { return row * groups + col / g; };
        } else {
          if (groups == 0 || n % groups != 0 || n / groups < rows)
            return Failed(StrCat("fp8: column-major group scales ", s_ref.TypeString(),
                                 " do not hold [", groups, ", >= ", rows, "]"));
          const int64_t padded = n / groups;
          scale_index = [=](int64_t row, int64_t col) { return (col / g) * padded + row; };
        }
        break;
      }
      case Fp8ScaleMap::Kind::kCodeStep: break;
    }
  }

  Checker checker(q_ref);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t col = 0; col < cols; ++col) {
      const int64_t i = row * cols + col;
      double sg = 1.0, sr = 1.0;
      if (scale_index) {
        const int64_t si = scale_index(row, col);
        sg = s.GetF32(si);
        sr = s_ref.GetF32(si);
      }
      const double qg = q.GetF32(i), qr = q_ref.GetF32(i);
      const double deq_got = qg * sg, deq_ref = qr * sr;
      const double smax = std::max(std::fabs(sg), std::fabs(sr));
      const double ulp = UlpOf(DType::kF8E4M3, qr) * smax;
      const double slack = tolerance::kFp8F32SlackUlps *
                           UlpOf(DType::kF32, std::max(std::fabs(deq_got), std::fabs(deq_ref)));
      const double bound = tolerance::kFp8Ulps * ulp + std::fabs(qr) * std::fabs(sg - sr) + slack;
      // NaN codes must match NaN codes; a NaN scale makes the element NaN on that side.
      checker.Add(i, std::isnan(qg) ? qg : deq_got, std::isnan(qr) ? qr : deq_ref, bound, ulp);
    }
  }
  std::string_view how = map.kind == Fp8ScaleMap::Kind::kCodeStep ? "+-1 code step, unscaled"
                                                                    : "dequantized, 1 fp8 ulp";
  return checker.Finish(StrCat("fp8 ", how));
}

CompareResult CompareFp8Codes(const HostTensor& q, const HostTensor& q_ref) {
  return CompareFp8Dequantized(q, HostTensor(), q_ref, HostTensor(), Fp8ScaleMap::CodeStep());
}

}  // namespace tpfuse
