#include "backends/cpu/reference_ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>

#include "common/numerics.h"
#include "common/quotient.h"
#include "common/row_layout.h"

namespace tpfuse::cpu {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Decodes elements [begin, begin + n) of t into out: the same values as HostTensor::GetF32,
// with the dtype switch hoisted out of the loop (GEMM weights are the bulk of a model graph).
void DecodeRange(const HostTensor& t, int64_t begin, int64_t n, float* out) {
  switch (t.dtype()) {
    case DType::kBF16: {
      const uint16_t* p = t.data_as<uint16_t>() + begin;
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t u = uint32_t(p[i]) << 16;
        std::memcpy(&out[i], &u, 4);
      }
      return;
    }
    case DType::kF8E4M3: {
      static const std::array<float, 256> table = [] {
        std::array<float, 256> v{};
        for (int c = 0; c < 256; ++c) v[size_t(c)] = Fp8E4M3ToFloat(uint8_t(c));
        return v;
      }();
      const uint8_t* p = t.data_as<uint8_t>() + begin;
      for (int64_t i = 0; i < n; ++i) out[i] = table[p[i]];
      return;
    }
    case DType::kF32: std::memcpy(out, t.data_as<float>() + begin, size_t(n) * 4); return;
    case DType::kF16:
    case DType::kI32:
      for (int64_t i = 0; i < n; ++i) out[i] = t.GetF32(begin + i);
      return;
  }
}

std::vector<float> Decode(const HostTensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  DecodeRange(t, 0, t.numel(), v.data());
  return v;
}

int64_t LastDim(const HostTensor& t) { return t.rank() == 0 ? 1 : t.dim(t.rank() - 1); }

HostTensor Unary(const HostTensor& x, DType out_dtype, const std::function<float(float)>& f) {
  HostTensor y(out_dtype, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) y.SetF32(i, f(x.GetF32(i)));
  return y;
}

float ApplyBinary(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::kAdd: return a + b;
    case BinaryOp::kSub: return a - b;
    case BinaryOp::kMul: return a * b;
    case BinaryOp::kDiv: return a / b;
  }
  return 0.0f;
}

// The one RMSNorm row loop (Contract 3 step 3), in the CUDA kernels' order and roundings
// (RowEpilogue in kernels/allreduce_rmsnorm.cuh). h holds rows x H values of the norm's input;
// y receives the result, rounded to y's dtype (f32 under rounding norm_out_f32: unrounded);
// under weight_after_round n rounds to `act_dtype` first.
// NOTE: every RMSNorm on the CPU goes through here, so the unfused and fused forms agree bit for
// bit. The product order (h * r) * w' is part of the contract: GPUs follow it. The squares are
// rounded f32 products summed with separate adds (the build turns off FMA contraction).
void RmsNormRows(const std::vector<float>& h, int64_t rows, int64_t hidden, const HostTensor& w,
                 float eps, float weight_bias, const RoundingRecipe& recipe, DType act_dtype, HostTensor& y) {
  std::vector<float> wb(static_cast<size_t>(hidden));
  DecodeRange(w, 0, hidden, wb.data());
  if (weight_bias != 0.0f) {
    for (float& v : wb) {
      v = v + weight_bias;
      if (recipe.weight_bias_in_weight_dtype) v = RoundTo(w.dtype(), v);
    }
  }
  std::vector<float> squares(static_cast<size_t>(hidden));
  for (int64_t t = 0; t < rows; ++t) {
    const float* row = h.data() + t * hidden;
    for (int64_t c = 0; c < hidden; ++c) squares[size_t(c)] = row[c] * row[c];
    const float sum_sq = RowSumInKernelOrder(squares.data(), hidden);
    const float r = 1.0f / std::sqrt(sum_sq / float(hidden) + eps);
    for (int64_t c = 0; c < hidden; ++c) {
      float n = row[c] * r;
      if (recipe.weight_after_round) n = RoundTo(act_dtype, n);
      y.SetF32(t * hidden + c, n * wb[size_t(c)]);
    }
  }
}

Status CheckNormWeight(const HostTensor& x, const HostTensor& w) {
  if (x.rank() < 1) return InvalidArgument("x must have rank >= 1, got ", x.TypeString());
  if (!(IsHalfType(w.dtype()) || w.dtype() == DType::kF32))
    return InvalidArgument("norm weight w must be bf16, f16 or f32, got ", w.TypeString());
  if (w.numel() != LastDim(x))
    return InvalidArgument("norm weight w ", w.TypeString(), " does not match the last dim of x ",
                           x.TypeString());
  return Status::Ok();
}

Status CheckFloat(const HostTensor& t, const char* what) {
  if (!IsFloatType(t.dtype()))
    return InvalidArgument(what, " must be a floating type, got ", t.TypeString());
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------- elementwise

std::string_view BinaryOpName(BinaryOp op) {
  switch (op) {
    case BinaryOp::kAdd: return "add";
    case BinaryOp::kSub: return "sub";
    case BinaryOp::kMul: return "mul";
    case BinaryOp::kDiv: return "div";
  }
  return "?";
}

StatusOr<HostTensor> Binary(BinaryOp op, const HostTensor& a, const HostTensor& b,
                            DType out_dtype) {
  // Fast path: same shape.
  if (a.shape() == b.shape()) {
    HostTensor y(out_dtype, a.shape());
    for (int64_t i = 0; i < a.numel(); ++i) y.SetF32(i, ApplyBinary(op, a.GetF32(i), b.GetF32(i)));
    return y;
  }
  // NumPy broadcasting: align on the right; a dim of 1 stretches.
  const int rank = std::max(a.rank(), b.rank());
  const size_t n = static_cast<size_t>(rank);
  std::vector<int64_t> out_shape(n), a_stride(n, 0), b_stride(n, 0);
  int64_t as = 1, bs = 1;
  for (int i = rank - 1; i >= 0; --i) {
    const int ai = i - (rank - a.rank()), bi = i - (rank - b.rank());
    const int64_t ad = ai >= 0 ? a.dim(ai) : 1, bd = bi >= 0 ? b.dim(bi) : 1;
    if (ad != bd && ad != 1 && bd != 1)
      return InvalidArgument(BinaryOpName(op), ": shapes ", a.TypeString(), " and ",
                             b.TypeString(), " do not broadcast");
    out_shape[size_t(i)] = std::max(ad, bd);
    if (ad == 0 || bd == 0) out_shape[size_t(i)] = 0;
    a_stride[size_t(i)] = ad == 1 ? 0 : as;
    b_stride[size_t(i)] = bd == 1 ? 0 : bs;
    as *= ad;
    bs *= bd;
  }
  HostTensor y(out_dtype, out_shape);
  const std::vector<float> av = Decode(a), bv = Decode(b);
  std::vector<int64_t> idx(n, 0);
  int64_t ao = 0, bo = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    y.SetF32(i, ApplyBinary(op, av[size_t(ao)], bv[size_t(bo)]));
    // Advance the multi-index (last dim fastest), keeping the operand offsets in step.
    for (int d = rank - 1; d >= 0; --d) {
      ++idx[size_t(d)];
      ao += a_stride[size_t(d)];
      bo += b_stride[size_t(d)];
      if (idx[size_t(d)] < out_shape[size_t(d)]) break;
      ao -= a_stride[size_t(d)] * idx[size_t(d)];
      bo -= b_stride[size_t(d)] * idx[size_t(d)];
      idx[size_t(d)] = 0;
    }
  }
  return y;
}

HostTensor BinaryScalar(BinaryOp op, const HostTensor& a, float scalar, DType out_dtype) {
  return Unary(a, out_dtype, [&](float x) { return ApplyBinary(op, x, scalar); });
}

HostTensor Pow(const HostTensor& x, float exponent, DType out_dtype) {
  if (exponent == 2.0f) return Unary(x, out_dtype, [](float v) { return v * v; });
  if (exponent == 3.0f) return Unary(x, out_dtype, [](float v) { return v * v * v; });
  if (exponent == 1.0f) return Unary(x, out_dtype, [](float v) { return v; });
  if (exponent == 0.5f) return Unary(x, out_dtype, [](float v) { return std::sqrt(v); });
  if (exponent == -0.5f) return Unary(x, out_dtype, [](float v) { return 1.0f / std::sqrt(v); });
  if (exponent == -1.0f) return Unary(x, out_dtype, [](float v) { return 1.0f / v; });
  if (exponent == -2.0f) return Unary(x, out_dtype, [](float v) { return 1.0f / (v * v); });
  return Unary(x, out_dtype, [&](float v) { return std::pow(v, exponent); });
}

std::string_view UnaryOpName(UnaryOp op) {
  switch (op) {
    case UnaryOp::kSqrt: return "sqrt";
    case UnaryOp::kAbs: return "abs";
    case UnaryOp::kNeg: return "neg";
    case UnaryOp::kReciprocal: return "reciprocal";
    case UnaryOp::kLog2: return "log2";
    case UnaryOp::kExp2: return "exp2";
    case UnaryOp::kCeil: return "ceil";
  }
  return "?";
}

HostTensor Unary(UnaryOp op, const HostTensor& x, DType out_dtype) {
  switch (op) {
    case UnaryOp::kSqrt: return Unary(x, out_dtype, [](float v) { return std::sqrt(v); });
    case UnaryOp::kAbs: return Unary(x, out_dtype, [](float v) { return std::fabs(v); });
    case UnaryOp::kNeg: return Unary(x, out_dtype, [](float v) { return -v; });
    case UnaryOp::kReciprocal: return Unary(x, out_dtype, [](float v) { return 1.0f / v; });
    case UnaryOp::kLog2: return Unary(x, out_dtype, [](float v) { return std::log2(v); });
    case UnaryOp::kExp2: return Unary(x, out_dtype, [](float v) { return std::exp2(v); });
    case UnaryOp::kCeil: return Unary(x, out_dtype, [](float v) { return std::ceil(v); });
  }
  return HostTensor(out_dtype, x.shape());
}

HostTensor Rsqrt(const HostTensor& x, DType out_dtype) {
  return Unary(x, out_dtype, [](float v) { return 1.0f / std::sqrt(v); });
}

HostTensor Clamp(const HostTensor& x, float lo, float hi, DType out_dtype) {
  return Unary(x, out_dtype, [&](float v) { return v < lo ? lo : (v > hi ? hi : v); });
}

HostTensor Cast(const HostTensor& x, DType out_dtype) {
  return Unary(x, out_dtype, [](float v) { return v; });
}

StatusOr<HostTensor> View(const HostTensor& x, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != x.numel())
    return InvalidArgument("view: ", x.TypeString(), " has ", x.numel(),
                           " elements, shape ", ShapeString(shape), " has ", n);
  return x.Reshaped(shape);
}

namespace {

// Shape of a reduction over the last dim, after checking the dim.
StatusOr<std::vector<int64_t>> LastDimReductionShape(std::string_view op, const HostTensor& x,
                                                     int64_t dim, bool keepdim) {
  if (x.rank() < 1) return InvalidArgument(op, ": x must have rank >= 1, got ", x.TypeString());
  if (dim != -1 && dim != x.rank() - 1)
    return Unimplemented(op, ": only the last dim is supported, got dim = ", dim, " for ",
                         x.TypeString());
  if (LastDim(x) == 0) return InvalidArgument(op, ": the last dim of ", x.TypeString(), " is empty");
  std::vector<int64_t> shape = x.shape();
  if (keepdim) shape.back() = 1;
  else shape.pop_back();
  return shape;
}

}  // namespace

namespace {

// y[row] = reduce(the row's values decoded to f32, cols), over the last dim.
template <typename Reduce>
StatusOr<HostTensor> ReduceLastDim(const char* op, const HostTensor& x, int64_t dim, bool keepdim,
                                   DType out_dtype, Reduce reduce) {
  TPFUSE_ASSIGN_OR_RETURN(std::vector<int64_t> shape, LastDimReductionShape(op, x, dim, keepdim));
  const int64_t cols = LastDim(x);
  HostTensor y(out_dtype, shape);
  const int64_t rows = x.numel() / cols;
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t t = 0; t < rows; ++t) {
    DecodeRange(x, t * cols, cols, row.data());
    y.SetF32(t, reduce(row.data(), cols));
  }
  return y;
}

}  // namespace

StatusOr<HostTensor> Mean(const HostTensor& x, int64_t dim, bool keepdim, DType out_dtype) {
  return ReduceLastDim("mean", x, dim, keepdim, out_dtype, [](const float* row, int64_t cols) {
    return RowSumInKernelOrder(row, cols) / float(cols);
  });
}

StatusOr<HostTensor> Amax(const HostTensor& x, int64_t dim, bool keepdim, DType out_dtype) {
  return ReduceLastDim("amax", x, dim, keepdim, out_dtype, [](const float* row, int64_t cols) {
    float m = row[0];
    for (int64_t c = 1; c < cols; ++c) {
      const float v = row[c];
      if (!std::isnan(m) && (std::isnan(v) || v > m)) m = v;
    }
    return m;
  });
}

// ---------------------------------------------------------------- RMSNorm

StatusOr<HostTensor> RmsNorm(const HostTensor& x, const HostTensor& w, float eps,
                             float weight_bias, DType out_dtype) {
  TPFUSE_RETURN_IF_ERROR(CheckNormWeight(x, w).WithContext("rms_norm"));
  const int64_t hidden = LastDim(x);
  HostTensor y(out_dtype, x.shape());
  RmsNormRows(Decode(x), hidden == 0 ? 0 : x.numel() / hidden, hidden, w, eps, weight_bias,
              RoundingRecipe{}, out_dtype, y);
  return y;
}

StatusOr<AddRmsNormResult> FusedAddRmsNorm(const HostTensor& x, const HostTensor& residual,
                                           const HostTensor& w, float eps, float weight_bias,
                                           DType out_dtype, DType residual_dtype) {
  TPFUSE_RETURN_IF_ERROR(CheckNormWeight(x, w).WithContext("fused_add_rms_norm"));
  if (residual.shape() != x.shape())
    return InvalidArgument("fused_add_rms_norm: residual ", residual.TypeString(),
                           " does not match x ", x.TypeString());
  const int64_t hidden = LastDim(x);
  AddRmsNormResult out{HostTensor(out_dtype, x.shape()), HostTensor(residual_dtype, x.shape())};
  std::vector<float> h(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) {
    out.residual_out.SetF32(i, x.GetF32(i) + residual.GetF32(i));
    h[size_t(i)] = out.residual_out.GetF32(i);  // the norm reads the rounded h
  }
  RmsNormRows(h, hidden == 0 ? 0 : x.numel() / hidden, hidden, w, eps, weight_bias,
              RoundingRecipe{}, out_dtype, out.y);
  return out;
}

// ---------------------------------------------------------------- FP8 quantization

StatusOr<HostTensor> QuantFp8Tensor(const HostTensor& y, const HostTensor& scale, bool divides) {
  TPFUSE_RETURN_IF_ERROR(CheckFloat(y, "quant_fp8: y"));
  if (scale.dtype() != DType::kF32 || scale.numel() != 1)
    return InvalidArgument("quant_fp8: the static scale must be f32 with one element, got ",
                           scale.TypeString());
  const float s = scale.GetF32(0);
  const float inv = 1.0f / s;
  HostTensor q(DType::kF8E4M3, y.shape());
  for (int64_t i = 0; i < y.numel(); ++i) {
    const float v = y.GetF32(i);
    q.SetF32(i, divides ? v / s : v * inv);
  }
  return q;
}

StatusOr<DynamicQuantResult> QuantFp8Dynamic(const HostTensor& y,
                                             const DynamicQuantConfig& config) {
  TPFUSE_RETURN_IF_ERROR(CheckFloat(y, "quant_fp8: y"));
  if (y.rank() < 1) return InvalidArgument("quant_fp8: y must have rank >= 1, got ", y.TypeString());
  TPFUSE_RETURN_IF_ERROR(config.Validate());
  const int64_t hidden = LastDim(y);
  int64_t group = hidden;
  if (config.mode == QuantMode::kFp8Group) {
    group = config.group_size;
    if (group <= 0 || hidden % group != 0)
      return InvalidArgument("quant_fp8: group_size ", group, " does not divide the last dim of ",
                             y.TypeString());
  } else if (config.mode != QuantMode::kFp8Token) {
    return InvalidArgument("quant_fp8: dynamic quantization needs mode token or group, got ",
                           QuantModeName(config.mode));
  }
  if (hidden == 0) return InvalidArgument("quant_fp8: the last dim of ", y.TypeString(), " is empty");
  const int64_t rows = y.numel() / hidden;
  const int64_t groups = hidden / group;
  const int64_t padded = PaddedScaleTokens(rows);
  const bool ue8m0 = config.format == ScaleFormat::kUe8m0;
  // Dividing by a power of two (ue8m0) is multiplying by its exact reciprocal; floored after the
  // rounding (scale_floor_after_div), a ue8m0 scale may be the floor, no power of two.
  const bool divide = config.Divides() && (!ue8m0 || config.scale_floor_after_div);
  DynamicQuantResult out;
  out.q = HostTensor(DType::kF8E4M3, y.shape());
  out.s = config.layout == ScaleLayout::kRow ? HostTensor(DType::kF32, {rows, groups})
                                             : HostTensor(DType::kF32, {groups, padded});
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t base = t * hidden + g * group;
      float amax = 0.0f;
      for (int64_t c = 0; c < group; ++c) amax = MaxOfMagnitudes(amax, std::fabs(y.GetF32(base + c)));
      const float s = DynamicScaleOf(amax, config.scale_floor_after_div, ue8m0, config.ue8m0_floor);
      const float inv = 1.0f / s;
      // An inf or NaN scale (an inf or NaN in the group) takes the form's own step, as the
      // graph wrote it: y / inf is +-0, or NaN for y = inf; y / NaN is NaN.
      const bool finite = std::isfinite(s);
      for (int64_t c = 0; c < group; ++c) {
        const float v = y.GetF32(base + c);
        float q;
        if (!finite) q = config.Divides() ? v / s : v * inv;
        else q = divide ? QuotientByReciprocal(v, s, inv) : v * inv;
        out.q.SetF32(base + c, q);
      }
      out.s.SetF32(config.layout == ScaleLayout::kRow ? t * groups + g : g * padded + t, s);
    }
  }
  return out;
}

// ---------------------------------------------------------------- GEMMs

namespace {

// acc[T, N] += a_row-major[T, K] x b rows produced one k at a time; b_row(k, buf) fills buf[N].
void AccumulateGemm(const std::vector<double>& a, int64_t rows, int64_t k_dim, int64_t n_dim,
                    const std::function<void(int64_t, std::vector<double>&)>& b_row,
                    std::vector<double>& acc) {
  std::vector<double> brow(static_cast<size_t>(n_dim));
  for (int64_t k = 0; k < k_dim; ++k) {
    b_row(k, brow);
    for (int64_t t = 0; t < rows; ++t) {
      const double av = a[size_t(t * k_dim + k)];
      double* out = acc.data() + t * n_dim;
      for (int64_t n = 0; n < n_dim; ++n) out[n] += av * brow[size_t(n)];
    }
  }
}

}  // namespace

StatusOr<HostTensor> Matmul(const HostTensor& a, const HostTensor& b, DType out_dtype) {
  if (a.rank() < 1 || b.rank() != 2)
    return InvalidArgument("matmul: expected a [.., K] and b [K, N], got ", a.TypeString(),
                           " and ", b.TypeString());
  const int64_t k_dim = LastDim(a), n_dim = b.dim(1);
  if (b.dim(0) != k_dim)
    return InvalidArgument("matmul: inner dims differ: a ", a.TypeString(), ", b ",
                           b.TypeString());
  const int64_t rows = k_dim == 0 ? 0 : a.numel() / k_dim;
  std::vector<int64_t> shape = a.shape();
  shape.back() = n_dim;
  const std::vector<float> af = Decode(a);
  const std::vector<double> av(af.begin(), af.end());
  std::vector<double> acc(size_t(rows * n_dim), 0.0);
  std::vector<float> brow(static_cast<size_t>(n_dim));
  AccumulateGemm(av, rows, k_dim, n_dim,
                 [&](int64_t k, std::vector<double>& row) {
                   DecodeRange(b, k * n_dim, n_dim, brow.data());
                   for (int64_t n = 0; n < n_dim; ++n) row[size_t(n)] = brow[size_t(n)];
                 },
                 acc);
  HostTensor y(out_dtype, shape);
  for (int64_t i = 0; i < y.numel(); ++i) y.SetF32(i, float(acc[size_t(i)]));
  return y;
}

StatusOr<HostTensor> ScaledMatmul(const HostTensor& q, const HostTensor& s,
                                  ActScaleLayout s_layout, const HostTensor& w,
                                  const HostTensor& ws, DType out_dtype) {
  if (q.dtype() != DType::kF8E4M3 || q.rank() != 2)
    return InvalidArgument("scaled_matmul: q must be f8e4m3 [T, K], got ", q.TypeString());
  if (w.dtype() != DType::kF8E4M3 || w.rank() != 2)
    return InvalidArgument("scaled_matmul: w must be f8e4m3 [K, N], got ", w.TypeString());
  if (s.dtype() != DType::kF32 || ws.dtype() != DType::kF32)
    return InvalidArgument("scaled_matmul: scales must be f32, got s ", s.TypeString(), " and ws ",
                           ws.TypeString());
  const int64_t rows = q.dim(0), k_dim = q.dim(1), n_dim = w.dim(1);
  if (w.dim(0) != k_dim)
    return InvalidArgument("scaled_matmul: inner dims differ: q ", q.TypeString(), ", w ",
                           w.TypeString());

  // Activation scale index of element (t, k).
  std::function<int64_t(int64_t, int64_t)> s_index;
  const auto bad_s = [&] {
    return InvalidArgument("scaled_matmul: scale s ", s.TypeString(), " does not fit a ",
                           ActScaleLayoutName(s_layout), " scale of q ", q.TypeString());
  };
  switch (s_layout) {
    case ActScaleLayout::kPerTensor:
      if (s.numel() != 1) return bad_s();
      s_index = [](int64_t, int64_t) { return int64_t{0}; };
      break;
    case ActScaleLayout::kPerToken:
      if (s.numel() < rows) return bad_s();  // [T, 1], or [1, pad4(T)] column-major
      s_index = [](int64_t t, int64_t) { return t; };
      break;
    case ActScaleLayout::kPerGroupRow: {
      if (s.rank() != 2 || s.dim(0) != rows || s.dim(1) == 0 || k_dim % s.dim(1) != 0)
        return bad_s();
      const int64_t groups = s.dim(1), g = k_dim / groups;
      s_index = [=](int64_t t, int64_t k) { return t * groups + k / g; };
      break;
    }
    case ActScaleLayout::kPerGroupCol: {
      if (s.rank() != 2 || s.dim(1) < rows || s.dim(0) == 0 || k_dim % s.dim(0) != 0)
        return bad_s();
      const int64_t padded = s.dim(1), g = k_dim / s.dim(0);
      s_index = [=](int64_t t, int64_t k) { return (k / g) * padded + t; };
      break;
    }
  }
  // Weight scale: one element or [K / bk, N / bn] blocks.
  int64_t bk = k_dim, bn = n_dim, ws_cols = 1;
  if (ws.numel() != 1) {
    if (ws.rank() != 2 || ws.dim(0) == 0 || ws.dim(1) == 0 || k_dim % ws.dim(0) != 0 ||
        n_dim % ws.dim(1) != 0)
      return InvalidArgument("scaled_matmul: weight scale ws ", ws.TypeString(),
                             " is neither one element nor blocks dividing w ", w.TypeString());
    bk = k_dim / ws.dim(0);
    bn = n_dim / ws.dim(1);
    ws_cols = ws.dim(1);
  }

  std::vector<double> a(static_cast<size_t>(rows * k_dim));
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t k = 0; k < k_dim; ++k)
      a[size_t(t * k_dim + k)] = double(q.GetF32(t * k_dim + k)) * double(s.GetF32(s_index(t, k)));
  const std::vector<float> wsv = Decode(ws);
  std::vector<float> wrow(static_cast<size_t>(n_dim));
  std::vector<double> acc(size_t(rows * n_dim), 0.0);
  AccumulateGemm(a, rows, k_dim, n_dim,
                 [&](int64_t k, std::vector<double>& row) {
                   DecodeRange(w, k * n_dim, n_dim, wrow.data());
                   const float* block_scales = wsv.data() + (k / bk) * ws_cols;
                   for (int64_t n = 0; n < n_dim; ++n)
                     row[size_t(n)] = double(wrow[size_t(n)]) * double(block_scales[n / bn]);
                 },
                 acc);
  HostTensor y(out_dtype, {rows, n_dim});
  for (int64_t i = 0; i < y.numel(); ++i) y.SetF32(i, float(acc[size_t(i)]));
  return y;
}

// ---------------------------------------------------------------- collectives

StatusOr<HostTensor> AllreduceSum(const std::vector<const HostTensor*>& partials) {
  if (partials.empty()) return InvalidArgument("all_reduce: no partials");
  for (size_t r = 0; r < partials.size(); ++r) {
    if (partials[r] == nullptr) return InvalidArgument("all_reduce: rank ", r, "'s partial is null");
    if (partials[r]->dtype() != partials[0]->dtype() || partials[r]->shape() != partials[0]->shape())
      return InvalidArgument("all_reduce: rank ", r, "'s partial ", partials[r]->TypeString(),
                             " differs from rank 0's ", partials[0]->TypeString());
  }
  HostTensor a(partials[0]->dtype(), partials[0]->shape());
  // NOTE: above one rank, -0.0 partials count as +0.0 (x + 0.0f): the GPU strategies carry
  // -0.0 as their "not yet written" sentinel and canonicalize it, so a sum of -0.0s is +0.0
  // there; here too. At one rank a = x, bit for bit.
  const bool canonical_zeros = partials.size() > 1;
  for (int64_t i = 0; i < a.numel(); ++i) {
    float acc = partials[0]->GetF32(i);
    if (canonical_zeros) acc = acc + 0.0f;
    for (size_t r = 1; r < partials.size(); ++r) acc += partials[r]->GetF32(i);
    a.SetF32(i, acc);
  }
  return a;
}

StatusOr<HostTensor> AllreduceSum(const std::vector<HostTensor>& partials) {
  std::vector<const HostTensor*> ptrs;
  for (const HostTensor& t : partials) ptrs.push_back(&t);
  return AllreduceSum(ptrs);
}

StatusOr<std::vector<HostTensor>> AllreduceRmsnorm(const AllreduceRmsnormSpec& spec,
                                                   const std::vector<const HostTensor*>& partials,
                                                   const HostTensor* residual, const HostTensor& w,
                                                   const HostTensor* scale,
                                                   const std::vector<const HostTensor*>& partials2,
                                                   const HostTensor* pre_weight, const HostTensor* bias) {
  TPFUSE_RETURN_IF_ERROR(spec.Validate().WithContext("allreduce_rmsnorm"));
  if (partials.empty()) return InvalidArgument("allreduce_rmsnorm: no partials");
  if (spec.second_sum != !partials2.empty() || (spec.second_sum && partials2.size() != partials.size()))
    return InvalidArgument("allreduce_rmsnorm: the spec ", spec.second_sum ? "sums" : "does not sum",
                           " a second all_reduce (second_sum) but the call passes ", partials2.size(),
                           " partials of x2 for ", partials.size(), " of x");
  for (const auto* list : {&partials, &partials2}) {
    const char* name = list == &partials ? "x" : "x2";
    for (size_t r = 0; r < list->size(); ++r) {
      const HostTensor* x = (*list)[r];
      if (x == nullptr) return InvalidArgument("allreduce_rmsnorm: rank ", r, "'s ", name, " is null");
      if (x->dtype() != spec.act_dtype || x->rank() != 2 || x->dim(1) != spec.hidden ||
          x->dim(0) != partials[0]->dim(0))
        return InvalidArgument("allreduce_rmsnorm: rank ", r, "'s ", name, " is ", x->TypeString(),
                               ", expected ", DTypeName(spec.act_dtype), "[", partials[0]->dim(0), ", ",
                               spec.hidden, "]");
    }
  }
  if (spec.has_residual != (residual != nullptr))
    return InvalidArgument("allreduce_rmsnorm: the spec ", spec.has_residual ? "has" : "has no",
                           " residual but the call passes ", residual ? "one" : "none");
  if (residual &&
      (residual->dtype() != spec.residual_in_dtype() || residual->shape() != partials[0]->shape()))
    return InvalidArgument("allreduce_rmsnorm: residual ", residual->TypeString(), " does not match x ",
                           partials[0]->TypeString(), " (the spec's residual is ",
                           DTypeName(spec.residual_in_dtype()), ")");
  if (w.dtype() != spec.weight_dtype || w.numel() != spec.hidden)
    return InvalidArgument("allreduce_rmsnorm: w is ", w.TypeString(), ", expected ",
                           DTypeName(spec.weight_dtype), "[", spec.hidden, "]");
  if (spec.pre_residual_norm != (pre_weight != nullptr))
    return InvalidArgument("allreduce_rmsnorm: the spec ", spec.pre_residual_norm ? "norms" : "does not norm",
                           " the sum before the residual add (pre_residual_norm) but the call passes ",
                           pre_weight ? "a" : "no", " pre_weight");
  if (pre_weight && (pre_weight->dtype() != spec.weight_dtype || pre_weight->numel() != spec.hidden))
    return InvalidArgument("allreduce_rmsnorm: pre_weight is ", pre_weight->TypeString(), ", expected ",
                           DTypeName(spec.weight_dtype), "[", spec.hidden, "]");
  if (spec.has_bias != (bias != nullptr))
    return InvalidArgument("allreduce_rmsnorm: the spec ", spec.has_bias ? "adds" : "adds no",
                           " a bias to the sum but the call passes ", bias ? "one" : "none");
  const int64_t bias_rows = spec.bias_per_token ? partials[0]->dim(0) : 1;  // [T, H] or [H]
  if (bias && (bias->dtype() != spec.act_dtype || bias->numel() != spec.hidden * bias_rows))
    return InvalidArgument("allreduce_rmsnorm: bias is ", bias->TypeString(), ", expected ",
                           DTypeName(spec.act_dtype), spec.bias_per_token ? StrCat("[", bias_rows, ", ") : "[",
                           spec.hidden, "]");
  if ((spec.quant == QuantMode::kFp8Tensor) != (scale != nullptr))
    return InvalidArgument("allreduce_rmsnorm: a static scale is needed iff quant = fp8_tensor (quant ",
                           QuantModeName(spec.quant), ", scale ", scale ? "given" : "missing", ")");

  // 1. a = round(sum of partials in rank order).
  TPFUSE_ASSIGN_OR_RETURN(HostTensor a, AllreduceSum(partials));
  const int64_t rows = a.dim(0), hidden = spec.hidden;
  // Held in h, which step 2 turns into a' + residual.
  HostTensor h = a;
  // 1a. second_sum: a2 = round(sum of x2's partials) likewise, and the sum of the two, each
  // scaled first where the graph scales it: round(round(a * first_scale) + round(a2 * second_scale));
  // or, into the residual, h1 = round(residual + round(a2 * second_scale)), the residual step 2
  // adds a' to.
  std::optional<HostTensor> h1;
  if (spec.second_sum) {
    TPFUSE_ASSIGN_OR_RETURN(HostTensor a2, AllreduceSum(partials2));
    const auto scaled = [&](const HostTensor& t, int64_t i, float s) {
      return s == 1.0f ? t.GetF32(i) : RoundTo(spec.act_dtype, t.GetF32(i) * s);
    };
    if (spec.second_sum_into_residual) {
      h1 = HostTensor(spec.act_dtype, a.shape());
      for (int64_t i = 0; i < a.numel(); ++i) h1->SetF32(i, residual->GetF32(i) + scaled(a2, i, spec.second_scale));
      residual = &*h1;
    } else {
      for (int64_t i = 0; i < a.numel(); ++i)
        h.SetF32(i, scaled(a, i, spec.first_scale) + scaled(a2, i, spec.second_scale));
    }
  }
  // 1b. has_bias: ab = round(a + bias), the bias of every row, or each row's own
  // (bias_per_token) (f32 sum, one rounding).
  if (bias) {
    for (int64_t i = 0; i < h.numel(); ++i)
      h.SetF32(i, h.GetF32(i) + bias->GetF32(spec.bias_per_token ? i : i % hidden));
  }
  // 1c. a' = round(h * sum_scale) (f32 product), where the graph scaled a before the add.
  if (spec.sum_scale != 1.0f) {
    for (int64_t i = 0; i < h.numel(); ++i) h.SetF32(i, h.GetF32(i) * spec.sum_scale);
  }
  // 1d. pre_residual_norm: a' = the norm of a with pre_weight and pre_eps, rounded (its output
  // in the activation dtype), in the norm's row order (RmsNormRows).
  if (spec.pre_residual_norm) {
    RoundingRecipe pre = spec.rounding;
    pre.norm_out_f32 = false;
    RmsNormRows(Decode(h), rows, hidden, *pre_weight, spec.pre_eps, spec.weight_bias, pre, spec.act_dtype, h);
  }
  // 2. h = a' + residual in f32; residual_out = round(h) (or h itself, rounding.residual_out_f32);
  // the norm reads round(h) or, with rounding.norm_input_f32, the f32 h itself.
  std::vector<float> u = Decode(h);
  if (residual) {
    h = HostTensor(spec.residual_out_dtype(), a.shape());
    for (int64_t i = 0; i < a.numel(); ++i) {
      const float sum = u[size_t(i)] + residual->GetF32(i);
      h.SetF32(i, sum);
      u[size_t(i)] = spec.rounding.norm_input_f32 ? sum : RoundTo(spec.act_dtype, sum);
    }
  }
  // 3. y = round(u * r * w') or round(round(u * r) * w') (unrounded, f32: rounding.norm_out_f32).
  HostTensor y(spec.norm_out_dtype(), a.shape());
  RmsNormRows(u, rows, hidden, w, spec.eps, spec.weight_bias, spec.rounding, spec.act_dtype, y);

  std::vector<HostTensor> results;
  if (spec.emit.allreduce) results.push_back(a);
  if (spec.emit.norm) results.push_back(y);
  if (spec.emit.residual) results.push_back(h);
  // 4. quantization of the rounded y.
  if (spec.emit.quant) {
    if (spec.quant == QuantMode::kFp8Tensor) {
      TPFUSE_ASSIGN_OR_RETURN(HostTensor q, QuantFp8Tensor(y, *scale, spec.QuantDivides()));
      results.push_back(std::move(q));
    } else {
      TPFUSE_ASSIGN_OR_RETURN(DynamicQuantResult qs, QuantFp8Dynamic(y, spec.quant_params()));
      results.push_back(std::move(qs.q));
      results.push_back(std::move(qs.s));
    }
  }
  return results;
}

StatusOr<std::vector<HostTensor>> AllreduceRmsnorm(const AllreduceRmsnormSpec& spec,
                                                   const std::vector<HostTensor>& partials,
                                                   const HostTensor* residual, const HostTensor& w,
                                                   const HostTensor* scale,
                                                   const std::vector<HostTensor>& partials2,
                                                   const HostTensor* pre_weight, const HostTensor* bias) {
  std::vector<const HostTensor*> ptrs, ptrs2;
  for (const HostTensor& t : partials) ptrs.push_back(&t);
  for (const HostTensor& t : partials2) ptrs2.push_back(&t);
  return AllreduceRmsnorm(spec, ptrs, residual, w, scale, ptrs2, pre_weight, bias);
}

}  // namespace tpfuse::cpu
