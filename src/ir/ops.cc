#include "ir/ops.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <utility>

#include "common/numerics.h"

namespace tpfuse::ir {
namespace {

using Types = std::vector<TensorType>;
using AttrType = AttrSpec::Type;

// ---------------------------------------------------------------- attribute reading

std::string AttrTypeWords(AttrType type) {
  switch (type) {
    case AttrType::kNumber: return "a number";
    case AttrType::kInt: return "an integer";
    case AttrType::kBool: return "true or false";
    case AttrType::kText: return "a name or a \"string\"";
    case AttrType::kTextList: return "a list of names or strings";
    case AttrType::kItemList: return "a list";
  }
  return "?";
}

bool AttrHasType(const Attr& attr, AttrType type) {
  switch (type) {
    case AttrType::kNumber: return attr.is_number();
    case AttrType::kInt: return attr.kind == Attr::Kind::kInt;
    case AttrType::kBool: return attr.kind == Attr::Kind::kBool;
    case AttrType::kText: return attr.AsText().has_value();
    case AttrType::kTextList: return attr.AsTextList().has_value();
    case AttrType::kItemList: return attr.kind == Attr::Kind::kList;
  }
  return false;
}

// Names, kinds and presence of every attribute against the op's definition.
Status CheckAttrs(const OpDef& def, const AttrMap& attrs) {
  for (const auto& [name, attr] : attrs) TPFUSE_RETURN_IF_ERROR(CheckAttribute(def, name, attr));
  for (const AttrSpec& spec : def.attrs) {
    if (spec.required && !attrs.count(spec.name))
      return InvalidArgument(def.name, ": missing required attribute '", spec.name, "'");
  }
  return Status::Ok();
}

// Typed access to attributes already checked by CheckAttrs; absent ones take the default.
class AttrReader {
 public:
  AttrReader(const std::string& op, const AttrMap& attrs) : op_(op), attrs_(attrs) {}

  const std::string& op() const { return op_; }
  bool Has(const std::string& name) const { return attrs_.count(name) != 0; }
  const Attr* Find(const std::string& name) const {
    auto it = attrs_.find(name);
    return it == attrs_.end() ? nullptr : &it->second;
  }
  double Number(const std::string& name, double default_value) const {
    const Attr* a = Find(name);
    return a ? a->AsNumber().value_or(default_value) : default_value;
  }
  int64_t Int(const std::string& name, int64_t default_value) const {
    const Attr* a = Find(name);
    return a && a->kind == Attr::Kind::kInt ? a->i : default_value;
  }
  bool Bool(const std::string& name, bool default_value) const {
    const Attr* a = Find(name);
    return a && a->kind == Attr::Kind::kBool ? a->b : default_value;
  }
  std::string Text(const std::string& name, const std::string& default_value) const {
    const Attr* a = Find(name);
    return a ? a->AsText().value_or(default_value) : default_value;
  }

  // An error "<op>: <args...>".
  template <class... Args>
  Status Error(const Args&... args) const {
    return InvalidArgument(op_, ": ", args...);
  }

 private:
  const std::string& op_;
  const AttrMap& attrs_;
};

// group_size as an int in (0, INT32_MAX].
StatusOr<int> ReadGroupSize(const AttrReader& attrs) {
  const int64_t group_size = attrs.Int("group_size", 128);
  if (group_size <= 0 || group_size > std::numeric_limits<int32_t>::max())
    return attrs.Error("group_size must be a positive 32-bit integer, got ", group_size);
  return int(group_size);
}

// eps >= 0 and finite, also in f32, where the backends read it (NaN fails the comparison).
StatusOr<double> ReadEps(const AttrReader& attrs) {
  const double eps = attrs.Number("eps", 1e-6);
  if (!(eps >= 0.0)) return attrs.Error("eps must be >= 0, got ", eps);
  if (!std::isfinite(float(eps))) return attrs.Error("eps must be finite in f32, got ", eps);
  return eps;
}

StatusOr<double> ReadWeightBias(const AttrReader& attrs) {
  const double bias = attrs.Number("weight_bias", 0.0);
  if (!std::isfinite(float(bias)))
    return attrs.Error("weight_bias must be finite in f32, got ", bias);
  return bias;
}

// ---------------------------------------------------------------- type helpers

bool IsActivationFloat(DType d) { return IsHalfType(d) || d == DType::kF32; }

// "x must be bf16, f16 or f32, got i32[T, 4096]".
Status CheckFloatOperand(const AttrReader& attrs, const std::string& what, const TensorType& t) {
  if (IsActivationFloat(t.dtype)) return Status::Ok();
  return attrs.Error(what, " must be bf16, f16 or f32, got ", t.ToString());
}

bool IsConstOne(const Dim& d) { return d.is_const() && d.value == 1; }

// round_up(d, 4): the padded token count of the column-major scale layout.
StatusOr<Dim> PadTo4(const AttrReader& attrs, const Dim& d) {
  if (d.is_const()) {
    if (d.value > std::numeric_limits<int64_t>::max() - 3)
      return attrs.Error("dim ", d.value, " is too large to pad");
    return Dim::Const(PaddedScaleTokens(d.value));
  }
  // round_up(round_up(T, a), 4) is round_up(T, max(a, 4)) when one alignment divides the other.
  if (d.align % 4 == 0) return d;
  if (4 % d.align == 0) return Dim::Sym(d.symbol, 4);
  return attrs.Error("cannot pad ", d.ToString(), " to a multiple of 4");
}

// Whether `groups` splits `total` evenly: constants are checked, a symbolic `groups` must be
// `total` itself (one group per element), and a constant count of a symbolic total cannot be
// checked here, so it is accepted.
bool DividesEvenly(const Dim& groups, const Dim& total) {
  if (!groups.is_const()) return groups == total;
  if (groups.value <= 0) return false;
  if (!total.is_const()) return true;
  return total.value % groups.value == 0;
}

// NumPy's (and torch's) broadcasting: shapes aligned on the right; each pair of dims equal, or
// one of them the constant 1, which stretches. Contract 2's forms are cases of it ([..., H] with
// [H], [..., H] with [..., 1], one element with anything). A symbol meets only itself or a 1: a
// symbol against a constant other than 1, or against another symbol, could be unequal at run
// time, so it does not broadcast.
std::optional<Shape> BroadcastShapes(const Shape& a, const Shape& b) {
  if (a == b) return a;
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 1; i <= rank; ++i) {
    const Dim one = Dim::Const(1);
    const Dim& da = i <= a.size() ? a[a.size() - i] : one;
    const Dim& db = i <= b.size() ? b[b.size() - i] : one;
    if (da == db || IsConstOne(db)) {
      out[rank - i] = da;
    } else if (IsConstOne(da)) {
      out[rank - i] = db;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

// Element count of a shape, as a product of constants times a multiset of symbols.
struct ElementCount {
  int64_t constant = 1;
  std::vector<std::pair<std::string, int64_t>> symbols;  // (symbol, align), sorted
  bool overflow = false;
};

ElementCount CountElements(const Shape& shape) {
  ElementCount count;
  for (const Dim& d : shape) {
    if (d.is_const()) {
      if (__builtin_mul_overflow(count.constant, d.value, &count.constant)) count.overflow = true;
    } else if (d.align == 1) {
      for (std::string& factor : d.Factors()) {
        if (std::optional<int64_t> c = Dim::ConstantFactor(factor)) {
          if (__builtin_mul_overflow(count.constant, *c, &count.constant)) count.overflow = true;
        } else {
          count.symbols.emplace_back(std::move(factor), 1);
        }
      }
    } else {
      count.symbols.emplace_back(d.symbol, d.align);
    }
  }
  std::sort(count.symbols.begin(), count.symbols.end());
  return count;
}

// ---------------------------------------------------------------- inference, op by op

using InferFn = std::function<StatusOr<Types>(const Types&, const AttrReader&)>;

StatusOr<Types> InferAllReduce(const Types& in, const AttrReader& attrs) {
  if (attrs.Text("group", "tp").empty()) return attrs.Error("group must not be empty");
  return Types{in[0]};
}

// add / sub / mul / div: a op b with broadcasting, or a op scalar.
StatusOr<Types> InferBinary(const Types& in, const AttrReader& attrs) {
  const bool has_scalar = attrs.Has("scalar");
  for (size_t i = 0; i < in.size(); ++i) {
    const DType d = in[i].dtype;
    if (d == DType::kF8E4M3 || d == DType::kI32)
      return attrs.Error("operand ", i, " is ", in[i].ToString(),
                         "; arithmetic takes bf16, f16 or f32");
  }
  if (in.size() == 1) {
    if (!has_scalar)
      return attrs.Error("one operand needs a 'scalar' attribute (or give two operands)");
    return Types{in[0]};
  }
  if (has_scalar) return attrs.Error("takes two operands or one operand and 'scalar', not both");
  const TensorType& a = in[0];
  const TensorType& b = in[1];
  std::optional<Shape> shape = BroadcastShapes(a.shape, b.shape);
  if (!shape)
    return attrs.Error("shapes ", a.ToString(), " and ", b.ToString(), " do not broadcast");
  // Mixed precision computes in f32: bf16 and f16 have no common 16-bit type.
  const DType dtype = a.dtype == b.dtype ? a.dtype : DType::kF32;
  return Types{TensorType{dtype, *shape}};
}

StatusOr<Types> InferUnaryFloat(const Types& in, const AttrReader& attrs) {
  TPFUSE_RETURN_IF_ERROR(CheckFloatOperand(attrs, "x", in[0]));
  return Types{in[0]};
}

StatusOr<Types> InferPow(const Types& in, const AttrReader& attrs) {
  if (!std::isfinite(attrs.Number("exponent", 1.0)))
    return attrs.Error("exponent must be finite, got ", attrs.Find("exponent")->ToString());
  return InferUnaryFloat(in, attrs);
}

StatusOr<Types> InferClamp(const Types& in, const AttrReader& attrs) {
  if (!attrs.Has("min") && !attrs.Has("max")) return attrs.Error("needs 'min' or 'max' (or both)");
  if (attrs.Has("min") && attrs.Has("max")) {
    const double lo = attrs.Number("min", 0.0);
    const double hi = attrs.Number("max", 0.0);
    if (lo > hi) return attrs.Error("min ", lo, " is greater than max ", hi);
  }
  return InferUnaryFloat(in, attrs);
}

StatusOr<Types> InferCast(const Types& in, const AttrReader& attrs) {
  const std::string to = attrs.Text("to", "");
  std::optional<DType> dtype = ParseDType(to);
  if (!dtype || *dtype == DType::kI32)
    return attrs.Error("'to' must be f32, bf16, f16 or f8e4m3, got '", to, "'");
  return Types{TensorType{*dtype, in[0].shape}};
}

// mean / amax over the last dim.
StatusOr<Types> InferLastDimReduction(const Types& in, const AttrReader& attrs) {
  TPFUSE_RETURN_IF_ERROR(CheckFloatOperand(attrs, "x", in[0]));
  const TensorType& x = in[0];
  if (x.rank() == 0) return attrs.Error("x must have rank >= 1, got ", x.ToString());
  const int64_t dim = attrs.Int("dim", -1);
  if (dim != -1 && dim != x.rank() - 1)
    return attrs.Error("only the last dim (-1 or ", x.rank() - 1,
                       ") is supported, got dim = ", dim);
  TensorType y = x;
  if (attrs.Bool("keepdim", true)) {
    y.shape.back() = Dim::Const(1);
  } else {
    y.shape.pop_back();
  }
  return Types{y};
}

// full() {shape = [256], value = 1, dtype = f32}: a constant tensor of a constant shape (the
// unit weight of a norm written without one).
StatusOr<Types> InferFull(const Types&, const AttrReader& attrs) {
  const std::string name = attrs.Text("dtype", "");
  std::optional<DType> dtype = ParseDType(name);
  if (!dtype || !IsActivationFloat(*dtype))
    return attrs.Error("'dtype' must be f32, bf16 or f16, got '", name, "'");
  Shape shape;
  for (const Attr& item : attrs.Find("shape")->list) {
    if (item.kind != Attr::Kind::kInt || item.i < 0 || item.i > kMaxDimValue)
      return attrs.Error("shape item ", item.ToString(), " is not a constant in [0, ", kMaxDimValue,
                         "]");
    shape.push_back(Dim::Const(item.i));
  }
  // A value the dtype holds (no overflow to inf), and not -0: the backends fill from +0.
  const double value = attrs.Number("value", 0.0);
  if (!std::isfinite(value) || !std::isfinite(RoundTo(*dtype, float(value))))
    return attrs.Error("'value' ", value, " is not a finite ", DTypeName(*dtype));
  if (value == 0.0 && std::signbit(value)) return attrs.Error("'value' -0 is not supported");
  return Types{TensorType{*dtype, shape}};
}

StatusOr<Types> InferView(const Types& in, const AttrReader& attrs) {
  const TensorType& x = in[0];
  Shape shape;
  for (const Attr& item : attrs.Find("shape")->list) {
    if (item.kind == Attr::Kind::kInt) {
      if (item.i < 0 || item.i > kMaxDimValue)
        return attrs.Error("shape item ", item.i, " is out of range [0, ", kMaxDimValue, "]");
      shape.push_back(Dim::Const(item.i));
    } else if (item.kind == Attr::Kind::kName) {
      shape.push_back(Dim::Sym(item.s));
    } else {
      return attrs.Error("shape item ", item.ToString(), " is not an integer or a symbol");
    }
  }
  const ElementCount from = CountElements(x.shape);
  const ElementCount to = CountElements(shape);
  if (from.overflow || to.overflow)
    return attrs.Error("element count of ", x.ToString(), " or its view overflows");
  if (from.constant != to.constant || from.symbols != to.symbols) {
    TensorType target{x.dtype, shape};
    return attrs.Error("cannot view ", x.ToString(), " as ", target.ToString(),
                       ": element counts differ");
  }
  return Types{TensorType{x.dtype, shape}};
}

// The `rounding` attribute of a canonical norm or quant: flag names of RoundingRecipe, limited
// to those that op can carry.
StatusOr<RoundingRecipe> ReadRounding(const AttrReader& attrs,
                                      const std::vector<std::string_view>& allowed) {
  const Attr* attr = attrs.Find("rounding");
  if (attr == nullptr) return RoundingRecipe{};
  const std::optional<std::vector<std::string>> names = attr->AsTextList();
  if (!names) return attrs.Error("rounding must be a list of names");
  for (const std::string& name : *names) {
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      std::string list;
      for (std::string_view a : allowed) list += StrCat(list.empty() ? "" : ", ", a);
      return attrs.Error("rounding entry '", name, "' does not apply here (", list, ")");
    }
  }
  StatusOr<RoundingRecipe> recipe = RoundingRecipe::FromNames(*names);
  if (!recipe.ok()) return attrs.Error(recipe.status().message());
  return *recipe;
}

StatusOr<RoundingRecipe> ReadNormRounding(const AttrReader& attrs) {
  if (attrs.op() == "fused_add_rms_norm")
    return ReadRounding(attrs, {"norm_input_f32", "weight_after_round", "weight_bias_in_weight_dtype",
                                "residual_out_f32", "norm_out_f32"});
  return ReadRounding(attrs, {"weight_after_round", "weight_bias_in_weight_dtype", "norm_out_f32"});
}

// x [..., H] and w [H], both bf16 / f16 / f32.
Status CheckNormOperands(const AttrReader& attrs, const TensorType& x, const TensorType& w) {
  TPFUSE_RETURN_IF_ERROR(CheckFloatOperand(attrs, "x", x));
  TPFUSE_RETURN_IF_ERROR(CheckFloatOperand(attrs, "weight w", w));
  if (x.rank() == 0) return attrs.Error("x must have rank >= 1, got ", x.ToString());
  if (w.rank() != 1 || w.shape[0] != x.shape.back())
    return attrs.Error("weight ", w.ToString(), " does not match the hidden dim of ", x.ToString());
  TPFUSE_RETURN_IF_ERROR(ReadEps(attrs).status());
  TPFUSE_RETURN_IF_ERROR(ReadNormRounding(attrs).status());
  return ReadWeightBias(attrs).status();
}

// The residual: x's type, or f32 of x's shape (a residual stream kept in f32) for 16-bit x.
Status CheckResidual(const AttrReader& attrs, const TensorType& residual, const TensorType& x) {
  if (residual == x) return Status::Ok();
  if (residual.dtype == DType::kF32 && residual.shape == x.shape && IsHalfType(x.dtype))
    return Status::Ok();
  return attrs.Error("residual ", residual.ToString(), " does not match x ", x.ToString(),
                     " (its type, or f32 of its shape)");
}

// residual_out: x's type, or f32 of x's shape under rounding residual_out_f32 (h unrounded).
TensorType ResidualOutType(const TensorType& x, const RoundingRecipe& rounding) {
  return rounding.residual_out_f32 ? TensorType{DType::kF32, x.shape} : x;
}

// The norm output y: x's type, or f32 of x's shape under rounding norm_out_f32 (y unrounded).
TensorType NormOutType(const TensorType& x, const RoundingRecipe& rounding) {
  return rounding.norm_out_f32 ? TensorType{DType::kF32, x.shape} : x;
}

StatusOr<Types> InferRmsNorm(const Types& in, const AttrReader& attrs) {
  TPFUSE_RETURN_IF_ERROR(CheckNormOperands(attrs, in[0], in[1]));
  TPFUSE_ASSIGN_OR_RETURN(RoundingRecipe rounding, ReadNormRounding(attrs));
  return Types{NormOutType(in[0], rounding)};
}

StatusOr<Types> InferFusedAddRmsNorm(const Types& in, const AttrReader& attrs) {
  const TensorType& x = in[0];
  const TensorType& residual = in[1];
  TPFUSE_RETURN_IF_ERROR(CheckNormOperands(attrs, x, in[2]));
  TPFUSE_RETURN_IF_ERROR(CheckResidual(attrs, residual, x));
  TPFUSE_ASSIGN_OR_RETURN(RoundingRecipe rounding, ReadNormRounding(attrs));
  return Types{NormOutType(x, rounding), ResidualOutType(x, rounding)};
}

// The f32 scale of dynamic quantization for x [T, H]: [T, G] (row) or [G, pad4(T)] (col).
StatusOr<TensorType> DynamicScaleType(const AttrReader& attrs, const Dim& tokens, int64_t groups,
                                      ScaleLayout layout) {
  if (layout == ScaleLayout::kRow) return TensorType{DType::kF32, {tokens, Dim::Const(groups)}};
  TPFUSE_ASSIGN_OR_RETURN(Dim padded, PadTo4(attrs, tokens));
  return TensorType{DType::kF32, {Dim::Const(groups), padded}};
}

// Parses an enum-valued attribute and prefixes the parser's error with the op.
template <class T>
StatusOr<T> ReadEnum(const AttrReader& attrs, const std::string& name,
                     const std::string& default_value, StatusOr<T> (*parse)(std::string_view)) {
  StatusOr<T> value = parse(attrs.Text(name, default_value));
  if (!value.ok()) return attrs.Error(value.status().message());
  return value;
}

StatusOr<QuantMode> ParseQuantFp8Mode(std::string_view mode) {
  if (mode == "tensor") return QuantMode::kFp8Tensor;
  if (mode == "token") return QuantMode::kFp8Token;
  if (mode == "group") return QuantMode::kFp8Group;
  return InvalidArgument("unknown mode '", mode, "' (expected tensor, token or group)");
}

StatusOr<QuantParams> ReadQuantParams(const AttrReader& attrs) {
  QuantParams params;
  TPFUSE_ASSIGN_OR_RETURN(params.mode, ReadEnum(attrs, "mode", "", &ParseQuantFp8Mode));
  TPFUSE_ASSIGN_OR_RETURN(params.group_size, ReadGroupSize(attrs));
  TPFUSE_ASSIGN_OR_RETURN(params.layout, ReadEnum(attrs, "scale_layout", "row", &ParseScaleLayout));
  TPFUSE_ASSIGN_OR_RETURN(params.format, ReadEnum(attrs, "scale_fmt", "f32", &ParseScaleFormat));
  TPFUSE_ASSIGN_OR_RETURN(RoundingRecipe rounding,
                          ReadRounding(attrs, {"scale_op_swapped", "scale_floor_after_div", "ue8m0_floor"}));
  params.scale_op_swapped = rounding.scale_op_swapped;
  params.scale_floor_after_div = rounding.scale_floor_after_div;
  params.ue8m0_floor = rounding.ue8m0_floor;
  if (Status valid = params.Validate(); !valid.ok()) return attrs.Error(valid.message());
  return params;
}

StatusOr<Types> InferQuantFp8(const Types& in, const AttrReader& attrs) {
  TPFUSE_ASSIGN_OR_RETURN(QuantParams params, ReadQuantParams(attrs));
  const TensorType& x = in[0];
  TPFUSE_RETURN_IF_ERROR(CheckFloatOperand(attrs, "x", x));
  const TensorType q{DType::kF8E4M3, x.shape};
  if (params.mode == QuantMode::kFp8Tensor) {
    if (in.size() != 2) return attrs.Error("mode tensor needs a scale operand (f32[])");
    if (!IsOneElementF32(in[1]) || in[1].rank() > x.rank())
      return attrs.Error("scale must be one f32 element (f32[], f32[1], ...) of rank <= x's, got ",
                         in[1].ToString());
    return Types{q};
  }
  const std::string_view mode = params.mode == QuantMode::kFp8Token ? "token" : "group";
  if (in.size() != 1) return attrs.Error("mode ", mode, " takes no scale operand");
  if (x.rank() != 2)
    return attrs.Error("mode ", mode, " needs x of rank 2 ([T, H]), got ", x.ToString());
  int64_t groups = 1;
  if (params.mode == QuantMode::kFp8Group) {
    const Dim& hidden = x.shape[1];
    if (!hidden.is_const())
      return attrs.Error("mode group needs a constant hidden dim, got ", x.ToString());
    if (hidden.value % params.group_size != 0)
      return attrs.Error("hidden ", hidden.value, " is not a multiple of group_size ",
                         params.group_size);
    groups = hidden.value / params.group_size;
  }
  TPFUSE_ASSIGN_OR_RETURN(TensorType s, DynamicScaleType(attrs, x.shape[0], groups, params.layout));
  return Types{q, s};
}

StatusOr<Types> InferMatmul(const Types& in, const AttrReader& attrs) {
  const TensorType& a = in[0];
  const TensorType& b = in[1];
  TPFUSE_RETURN_IF_ERROR(CheckFloatOperand(attrs, "a", a));
  if (a.dtype != b.dtype)
    return attrs.Error("a and b must have one dtype, got ", a.ToString(), " and ", b.ToString());
  if (a.rank() != 2 || b.rank() != 2)
    return attrs.Error("a and b must have rank 2, got ", a.ToString(), " and ", b.ToString());
  if (a.shape[1] != b.shape[0])
    return attrs.Error("inner dims differ: ", a.ToString(), " x ", b.ToString());
  return Types{TensorType{a.dtype, {a.shape[0], b.shape[1]}}};
}

StatusOr<Types> InferScaledMatmul(const Types& in, const AttrReader& attrs) {
  const TensorType& q = in[0];
  const TensorType& s = in[1];
  const TensorType& w = in[2];
  const TensorType& ws = in[3];
  if (q.dtype != DType::kF8E4M3 || q.rank() != 2)
    return attrs.Error("q must be f8e4m3 [M, K], got ", q.ToString());
  if (w.dtype != DType::kF8E4M3 || w.rank() != 2)
    return attrs.Error("w must be f8e4m3 [K, N], got ", w.ToString());
  if (q.shape[1] != w.shape[0])
    return attrs.Error("inner dims differ: ", q.ToString(), " x ", w.ToString());
  const Dim& m = q.shape[0];
  const Dim& k = q.shape[1];
  const Dim& n = w.shape[1];

  // Activation scales: per tensor [], per token [M, 1], per group [M, G] or [G, pad4(M)].
  bool s_ok = s.dtype == DType::kF32 && s.rank() == 0;
  if (s.dtype == DType::kF32 && s.rank() == 2) {
    const bool row = s.shape[0] == m && (IsConstOne(s.shape[1]) || DividesEvenly(s.shape[1], k));
    StatusOr<Dim> padded = PadTo4(attrs, m);
    const bool col = padded.ok() && s.shape[1] == *padded && DividesEvenly(s.shape[0], k);
    s_ok = row || col;
  }
  if (!s_ok)
    return attrs.Error("scale s ", s.ToString(), " does not fit q ", q.ToString(),
                       " (expected f32[], f32[M, 1], f32[M, G] or f32[G, pad4(M)] with G "
                       "dividing K)");

  // Weight scales: per tensor [] or per block [K / bk, N / bn].
  bool ws_ok = ws.dtype == DType::kF32 && ws.rank() == 0;
  if (ws.dtype == DType::kF32 && ws.rank() == 2)
    ws_ok = DividesEvenly(ws.shape[0], k) && DividesEvenly(ws.shape[1], n);
  if (!ws_ok)
    return attrs.Error("weight scale ws ", ws.ToString(), " does not fit w ", w.ToString(),
                       " (expected f32[] or f32[K / bk, N / bn] with whole blocks)");
  return Types{TensorType{DType::kBF16, {m, n}}};
}

// Everything allreduce_rmsnorm's attributes and operand types say, checked.
StatusOr<AllreduceRmsnormSpec> SpecFromTypes(const Types& in, const AttrReader& attrs) {
  AllreduceRmsnormSpec spec;
  TPFUSE_ASSIGN_OR_RETURN(spec.quant, ReadEnum(attrs, "quant", "none", &ParseQuantMode));
  TPFUSE_ASSIGN_OR_RETURN(spec.group_size, ReadGroupSize(attrs));
  TPFUSE_ASSIGN_OR_RETURN(spec.scale_layout,
                          ReadEnum(attrs, "scale_layout", "row", &ParseScaleLayout));
  TPFUSE_ASSIGN_OR_RETURN(spec.scale_fmt, ReadEnum(attrs, "scale_fmt", "f32", &ParseScaleFormat));
  TPFUSE_ASSIGN_OR_RETURN(double eps, ReadEps(attrs));
  TPFUSE_ASSIGN_OR_RETURN(double weight_bias, ReadWeightBias(attrs));
  spec.eps = float(eps);
  spec.weight_bias = float(weight_bias);
  const double sum_scale = attrs.Number("sum_scale", 1.0);
  if (!std::isfinite(float(sum_scale)))
    return attrs.Error("sum_scale must be finite in f32, got ", sum_scale);
  spec.sum_scale = float(sum_scale);
  spec.has_bias = attrs.Bool("bias", false);
  spec.second_sum = attrs.Bool("second_sum", false);
  spec.second_sum_into_residual = attrs.Bool("second_sum_into_residual", false);
  const double first_scale = attrs.Number("first_scale", 1.0), second_scale = attrs.Number("second_scale", 1.0);
  if (!std::isfinite(float(first_scale)) || !std::isfinite(float(second_scale)))
    return attrs.Error("first_scale and second_scale must be finite in f32, got ", first_scale, " and ",
                       second_scale);
  spec.first_scale = float(first_scale);
  spec.second_scale = float(second_scale);
  spec.pre_residual_norm = attrs.Bool("pre_residual_norm", false);
  if (attrs.Find("pre_eps") != nullptr && !spec.pre_residual_norm)
    return attrs.Error("pre_eps is the eps of the norm before the residual add: it needs pre_residual_norm");
  const double pre_eps = attrs.Number("pre_eps", 1e-6);
  if (!(float(pre_eps) >= 0.0f) || !std::isfinite(float(pre_eps)))
    return attrs.Error("pre_eps must be finite and >= 0 in f32, got ", pre_eps);
  spec.pre_eps = float(pre_eps);
  StatusOr<EmitSet> emit = EmitSet::FromNames(*attrs.Find("emit")->AsTextList());
  if (!emit.ok()) return attrs.Error(emit.status().message());
  spec.emit = *emit;
  if (const Attr* rounding = attrs.Find("rounding")) {
    StatusOr<RoundingRecipe> recipe = RoundingRecipe::FromNames(*rounding->AsTextList());
    if (!recipe.ok()) return attrs.Error(recipe.status().message());
    spec.rounding = *recipe;
  }
  spec.local = attrs.Bool("local", false);

  const bool has_scale = spec.quant == QuantMode::kFp8Tensor;
  const int extra = int(in.size()) - 2 - int(has_scale) - int(spec.second_sum) - int(spec.has_bias) -
                    int(spec.pre_residual_norm);
  if (extra != 0 && extra != 1)
    return attrs.Error("quant ", QuantModeName(spec.quant), spec.second_sum ? " with second_sum" : "",
                       spec.has_bias ? " with bias" : "", spec.pre_residual_norm ? " with pre_residual_norm" : "",
                       " takes operands (x, ", spec.second_sum ? "x2, " : "", spec.has_bias ? "bias, " : "",
                       "[residual], w", spec.pre_residual_norm ? ", pre_weight" : "", has_scale ? ", scale" : "",
                       "), got ", in.size());
  if (spec.second_sum && spec.has_bias)
    return attrs.Error("bias and second_sum are exclusive: the bias is added to the one all_reduce's sum");
  spec.has_residual = extra == 1;
  const FusedOperandIndices at = FusedOperandLayout(spec);

  const TensorType& x = in[at.x];
  const TensorType& w = in[at.w];
  if (x.rank() != 2) return attrs.Error("x must be [T, H], got ", x.ToString());
  if (!x.shape[1].is_const())
    return attrs.Error("x needs a constant hidden dim, got ", x.ToString());
  if (w.rank() != 1 || w.shape[0] != x.shape[1])
    return attrs.Error("weight ", w.ToString(), " does not match the hidden dim of ", x.ToString());
  if (spec.pre_residual_norm && in[at.pre_weight] != w)
    return attrs.Error("pre_weight ", in[at.pre_weight].ToString(), " does not match weight ", w.ToString(),
                       " (the two norms' weights have one type)");
  if (spec.has_bias) {
    const TensorType& bias = in[at.bias];
    if (bias.dtype != x.dtype || !(bias == x || (bias.rank() == 1 && bias.shape[0] == x.shape[1])))
      return attrs.Error("bias ", bias.ToString(), " does not match x ", x.ToString(),
                         " (the bias added to the sum is [H] or [T, H] of x's dtype)");
    spec.bias_per_token = bias.rank() == 2;
  }
  if (spec.second_sum && in[at.x2] != x)
    return attrs.Error("x2 ", in[at.x2].ToString(), " does not match x ", x.ToString(),
                       " (the second all_reduce's partial has x's type)");
  if (spec.has_residual) {
    TPFUSE_RETURN_IF_ERROR(CheckResidual(attrs, in[at.residual], x));
    spec.residual_f32_in = in[at.residual].dtype != x.dtype;
  }
  if (has_scale && in[at.scale] != TensorType{DType::kF32, {}})
    return attrs.Error("scale must be f32[], got ", in[at.scale].ToString());
  spec.act_dtype = x.dtype;
  spec.weight_dtype = w.dtype;
  spec.hidden = x.shape[1].value;
  if (Status valid = spec.Validate(); !valid.ok()) return attrs.Error(valid.message());
  return spec;
}

StatusOr<Types> InferAllreduceRmsnorm(const Types& in, const AttrReader& attrs) {
  TPFUSE_ASSIGN_OR_RETURN(AllreduceRmsnormSpec spec, SpecFromTypes(in, attrs));
  const TensorType& x = in[0];
  Types out;
  if (spec.emit.allreduce) out.push_back(x);
  if (spec.emit.norm) out.push_back(NormOutType(x, spec.rounding));
  if (spec.emit.residual) out.push_back(ResidualOutType(x, spec.rounding));
  if (spec.emit.quant) {
    out.push_back(TensorType{DType::kF8E4M3, x.shape});
    if (IsDynamicQuant(spec.quant)) {
      TPFUSE_ASSIGN_OR_RETURN(
          TensorType s,
          DynamicScaleType(attrs, x.shape[0], spec.ScaleGroupsPerRow(), spec.scale_layout));
      out.push_back(s);
    }
  }
  return out;
}

StatusOr<Types> InferOpaque(const Types&, const AttrReader& attrs) {
  return attrs.Error("result types are declared, not inferred (write them after the statement: "
                     "'%y = opaque(%x) {name = \"aten.foo\"} : bf16[T, 4096]')");
}

// ---------------------------------------------------------------- the registry

struct OpEntry {
  OpDef def;
  InferFn infer;
};

std::vector<OpEntry> MakeRegistry() {
  using T = AttrType;
  const std::vector<AttrSpec> norm_attrs = {{"eps", T::kNumber, true},
                                            {"weight_bias", T::kNumber, false},
                                            {"rounding", T::kTextList, false}};
  std::vector<OpEntry> ops = {
      {{"all_reduce", 1, 1, {{"group", T::kText, false}}}, InferAllReduce},
      {{"pow", 1, 1, {{"exponent", T::kNumber, true}}}, InferPow},
      {{"mean", 1, 1, {{"dim", T::kInt, false}, {"keepdim", T::kBool, false}}},
       InferLastDimReduction},
      {{"amax", 1, 1, {{"dim", T::kInt, false}, {"keepdim", T::kBool, false}}},
       InferLastDimReduction},
      {{"clamp", 1, 1, {{"min", T::kNumber, false}, {"max", T::kNumber, false}}}, InferClamp},
      {{"cast", 1, 1, {{"to", T::kText, true}}}, InferCast},
      {{"view", 1, 1, {{"shape", T::kItemList, true}}}, InferView},
      {{"full", 0, 0, {{"shape", T::kItemList, true}, {"value", T::kNumber, true},
                       {"dtype", T::kText, true}}},
       InferFull},
      {{"rms_norm", 2, 2, norm_attrs}, InferRmsNorm},
      {{"fused_add_rms_norm", 3, 3, norm_attrs}, InferFusedAddRmsNorm},
      {{"quant_fp8",
        1,
        2,
        {{"mode", T::kText, true},
         {"group_size", T::kInt, false},
         {"scale_layout", T::kText, false},
         {"scale_fmt", T::kText, false},
         {"rounding", T::kTextList, false}}},
       InferQuantFp8},
      {{"matmul", 2, 2, {}}, InferMatmul},
      {{"scaled_matmul", 4, 4, {}}, InferScaledMatmul},
      {{"allreduce_rmsnorm",
        2,
        5,
        {{"eps", T::kNumber, true},
         {"weight_bias", T::kNumber, false},
         {"sum_scale", T::kNumber, false},
         {"bias", T::kBool, false},
         {"second_sum", T::kBool, false},
         {"second_sum_into_residual", T::kBool, false},
         {"first_scale", T::kNumber, false},
         {"second_scale", T::kNumber, false},
         {"pre_residual_norm", T::kBool, false},
         {"pre_eps", T::kNumber, false},
         {"quant", T::kText, false},
         {"group_size", T::kInt, false},
         {"scale_layout", T::kText, false},
         {"scale_fmt", T::kText, false},
         {"emit", T::kTextList, true},
         {"rounding", T::kTextList, false},
         {"local", T::kBool, false}}},
       InferAllreduceRmsnorm},
      {{"opaque", 0, std::numeric_limits<int>::max(), {{kOpaqueNameAttr, T::kText, true}}, true},
       InferOpaque},
  };
  for (const char* name : {"add", "sub", "mul", "div"}) {
    ops.push_back({{name, 1, 2, {{"scalar", T::kNumber, false}}}, InferBinary});
  }
  for (const char* name : {"rsqrt", "sqrt", "abs", "neg", "reciprocal", "log2", "exp2", "ceil"}) {
    ops.push_back({{name, 1, 1, {}}, InferUnaryFloat});
  }
  for (OpEntry& e : ops) e.def.kind = OpKindFromName(e.def.name);
  return ops;
}

const std::vector<OpEntry>& Registry() {
  static const std::vector<OpEntry> registry = MakeRegistry();
  return registry;
}

const OpEntry* FindEntry(const std::string& name) {
  for (const OpEntry& e : Registry()) {
    if (e.def.name == name) return &e;
  }
  return nullptr;
}

const OpEntry* FindEntry(OpKind kind) {
  for (const OpEntry& e : Registry()) {
    if (e.def.kind == kind) return &e;
  }
  return nullptr;
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string OperandCountWords(const OpDef& def) {
  auto plural = [](int n) { return StrCat(n, n == 1 ? " operand" : " operands"); };
  if (def.min_operands == def.max_operands) return plural(def.min_operands);
  if (def.max_operands == def.min_operands + 1)
    return StrCat(def.min_operands, " or ", plural(def.max_operands));
  return StrCat(def.min_operands, " to ", plural(def.max_operands));
}

// A float attribute printed as the float it is: 1e-6f reads back as 1e-06, not as
// 9.999999974752427e-07.
Attr FloatAttr(float value) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  double shortest = value;
  std::from_chars(buf, end, shortest);
  return Attr::Float(shortest);
}

}  // namespace

const AttrSpec* OpDef::FindAttr(const std::string& attr_name) const {
  for (const AttrSpec& a : attrs) {
    if (a.name == attr_name) return &a;
  }
  return nullptr;
}

Status CheckAttribute(const OpDef& def, const std::string& name, const Attr& value) {
  const AttrSpec* spec = def.FindAttr(name);
  if (spec == nullptr && def.any_attrs) return Status::Ok();
  if (spec == nullptr) {
    if (def.attrs.empty())
      return InvalidArgument(def.name, ": unknown attribute '", name, "' (", def.name,
                             " takes no attributes)");
    std::string accepted;
    for (const AttrSpec& a : def.attrs) accepted += (accepted.empty() ? "" : ", ") + a.name;
    return InvalidArgument(def.name, ": unknown attribute '", name, "' (accepted: ", accepted, ")");
  }
  if (!AttrHasType(value, spec->type))
    return InvalidArgument(def.name, ": attribute '", name, "' must be ", AttrTypeWords(spec->type),
                           ", got ", value.ToString());
  return Status::Ok();
}

const std::vector<OpDef>& AllOps() {
  static const std::vector<OpDef> defs = [] {
    std::vector<OpDef> out;
    for (const OpEntry& e : Registry()) out.push_back(e.def);
    return out;
  }();
  return defs;
}

const OpDef* FindOp(const std::string& name) {
  const OpEntry* entry = FindEntry(name);
  return entry ? &entry->def : nullptr;
}

const OpDef& GetOpDef(OpKind kind) {
  static const OpDef unknown{"<unknown>", 0, 0, {}, false, OpKind::kUnknown};
  const OpEntry* entry = FindEntry(kind);
  return entry ? entry->def : unknown;
}

std::string ClosestOpName(const std::string& name) {
  // Long names are never typos of our short op names; skip the quadratic distance.
  if (name.empty() || name.size() > 64) return {};
  std::string best;
  size_t best_distance = std::max<size_t>(2, name.size() / 3) + 1;
  for (const OpDef& def : AllOps()) {
    const size_t d = EditDistance(name, def.name);
    if (d < best_distance) {
      best_distance = d;
      best = def.name;
    }
  }
  return best;
}

StatusOr<std::vector<TensorType>> InferResultTypes(const std::string& op,
                                                   const std::vector<TensorType>& operands,
                                                   const AttrMap& attrs) {
  const OpEntry* entry = FindEntry(op);
  if (entry == nullptr) {
    std::string hint = ClosestOpName(op);
    return InvalidArgument("unknown op '", op, "'",
                           hint.empty() ? "" : StrCat(" (did you mean '", hint, "'?)"));
  }
  const OpDef& def = entry->def;
  const int n = int(operands.size());
  if (n < def.min_operands || n > def.max_operands)
    return InvalidArgument(op, ": expected ", OperandCountWords(def), ", got ", n);
  TPFUSE_RETURN_IF_ERROR(CheckAttrs(def, attrs));
  return entry->infer(operands, AttrReader(op, attrs));
}

StatusOr<Node*> BuildNode(Graph& graph, const std::string& op, const std::vector<Value*>& operands,
                          AttrMap attrs, const std::vector<std::string>& result_names,
                          Node* insert_before) {
  std::vector<TensorType> types;
  for (size_t i = 0; i < operands.size(); ++i) {
    if (operands[i] == nullptr) return InvalidArgument(op, ": operand ", i, " is null");
    types.push_back(operands[i]->type());
  }
  TPFUSE_ASSIGN_OR_RETURN(std::vector<TensorType> result_types, InferResultTypes(op, types, attrs));
  if (!result_names.empty() && result_names.size() != result_types.size())
    return InvalidArgument(op, ": produces ", result_types.size(), " results, ",
                           result_names.size(), " names given");
  return graph.AddNode(op, operands, std::move(attrs), result_names, result_types, insert_before);
}

StatusOr<double> GetNumberAttr(const Node& node, const std::string& name, double default_value) {
  const Attr* a = node.attr(name);
  if (a == nullptr) return default_value;
  if (!a->is_number())
    return InvalidArgument(node.op(), ": attribute '", name, "' must be a number, got ",
                           a->ToString());
  return *a->AsNumber();
}

StatusOr<std::string> GetTextAttr(const Node& node, const std::string& name,
                                  const std::string& default_value) {
  const Attr* a = node.attr(name);
  if (a == nullptr) return default_value;
  std::optional<std::string> text = a->AsText();
  if (!text)
    return InvalidArgument(node.op(), ": attribute '", name,
                           "' must be a name or a \"string\", got ", a->ToString());
  return *text;
}

StatusOr<AllreduceRmsnormSpec> FusedSpecFromNode(const Node& node) {
  if (node.kind() != OpKind::kAllreduceRmsnorm)
    return InvalidArgument("expected an allreduce_rmsnorm node, got ", node.op());
  const OpDef& def = *FindOp(node.op());
  if (node.num_operands() < def.min_operands || node.num_operands() > def.max_operands)
    return InvalidArgument(node.op(), ": expected ", OperandCountWords(def), ", got ",
                           node.num_operands());
  TPFUSE_RETURN_IF_ERROR(CheckAttrs(def, node.attrs()));
  std::vector<TensorType> types;
  for (Value* v : node.operands()) types.push_back(v->type());
  return SpecFromTypes(types, AttrReader(node.op(), node.attrs()));
}

AttrMap FusedAttrsFromSpec(const AllreduceRmsnormSpec& spec) {
  AttrMap attrs;
  attrs["eps"] = FloatAttr(spec.eps);
  if (spec.weight_bias != 0.0f) attrs["weight_bias"] = FloatAttr(spec.weight_bias);
  if (spec.sum_scale != 1.0f) attrs["sum_scale"] = FloatAttr(spec.sum_scale);
  if (spec.has_bias) attrs["bias"] = Attr::Bool(true);
  if (spec.second_sum) attrs["second_sum"] = Attr::Bool(true);
  if (spec.second_sum_into_residual) attrs["second_sum_into_residual"] = Attr::Bool(true);
  if (spec.first_scale != 1.0f) attrs["first_scale"] = FloatAttr(spec.first_scale);
  if (spec.second_scale != 1.0f) attrs["second_scale"] = FloatAttr(spec.second_scale);
  if (spec.pre_residual_norm) {
    attrs["pre_residual_norm"] = Attr::Bool(true);
    attrs["pre_eps"] = FloatAttr(spec.pre_eps);
  }
  attrs["quant"] = Attr::Str(std::string(QuantModeName(spec.quant)));
  if (spec.quant == QuantMode::kFp8Group) attrs["group_size"] = Attr::Int(spec.group_size);
  if (IsDynamicQuant(spec.quant)) {
    attrs["scale_layout"] = Attr::Str(std::string(ScaleLayoutName(spec.scale_layout)));
    attrs["scale_fmt"] = Attr::Str(std::string(ScaleFormatName(spec.scale_fmt)));
  }
  attrs["emit"] = Attr::StrList(spec.emit.Names());
  if (!spec.rounding.is_default()) attrs["rounding"] = Attr::StrList(spec.rounding.Names());
  if (spec.local) attrs["local"] = Attr::Bool(true);
  return attrs;
}

FusedOperandIndices FusedOperandLayout(const AllreduceRmsnormSpec& spec) {
  FusedOperandIndices at;
  int next = 1;
  if (spec.second_sum) at.x2 = next++;
  if (spec.has_bias) at.bias = next++;
  if (spec.has_residual) at.residual = next++;
  at.w = next++;
  if (spec.pre_residual_norm) at.pre_weight = next++;
  if (spec.quant == QuantMode::kFp8Tensor) at.scale = next++;
  at.count = next;
  return at;
}

FusedResultIndices FusedResultLayout(const AllreduceRmsnormSpec& spec) {
  FusedResultIndices at;
  int next = 0;
  if (spec.emit.allreduce) at.allreduce = next++;
  if (spec.emit.norm) at.norm = next++;
  if (spec.emit.residual) at.residual = next++;
  if (spec.emit.quant) {
    at.q = next++;
    if (IsDynamicQuant(spec.quant)) at.s = next++;
  }
  at.count = next;
  return at;
}

StatusOr<RoundingRecipe> NormRoundingFromNode(const Node& node) {
  if (node.kind() != OpKind::kRmsNorm && node.kind() != OpKind::kFusedAddRmsNorm)
    return InvalidArgument("expected an rms_norm or fused_add_rms_norm node, got ", node.op());
  return ReadNormRounding(AttrReader(node.op(), node.attrs()));
}

StatusOr<std::optional<AllreduceRmsnormSpec>> NormAsLocalFusedSpec(const Node& node, int64_t hidden) {
  TPFUSE_ASSIGN_OR_RETURN(const RoundingRecipe rounding, NormRoundingFromNode(node));
  const bool has_residual = node.kind() == OpKind::kFusedAddRmsNorm;
  const DType x = node.operand(0)->dtype();
  const bool f32_residual = has_residual && node.operand(1)->dtype() != x;
  if (rounding.is_default() && !f32_residual) return std::optional<AllreduceRmsnormSpec>();
  if (hidden <= 0)
    return Unimplemented(node.op(), " with a rounding recipe or an f32 residual runs as the local fused op, ",
                         "which needs a hidden size, got ", node.operand(0)->type().ToString());
  const AttrReader attrs(node.op(), node.attrs());
  TPFUSE_ASSIGN_OR_RETURN(const double eps, ReadEps(attrs));
  TPFUSE_ASSIGN_OR_RETURN(const double weight_bias, ReadWeightBias(attrs));
  AllreduceRmsnormSpec spec;
  spec.act_dtype = x;
  spec.weight_dtype = node.operand(has_residual ? 2 : 1)->dtype();
  spec.hidden = hidden;
  spec.local = true;
  spec.has_residual = has_residual;
  spec.residual_f32_in = f32_residual;
  spec.eps = float(eps);
  spec.weight_bias = float(weight_bias);
  spec.emit.norm = true;
  spec.emit.residual = has_residual;
  spec.rounding = rounding;
  TPFUSE_RETURN_IF_ERROR(spec.Validate().WithContext(node.op()));
  return std::optional<AllreduceRmsnormSpec>(spec);
}

AttrMap WithRounding(AttrMap attrs, const RoundingRecipe& rounding) {
  attrs.erase("rounding");
  if (!rounding.is_default()) attrs["rounding"] = Attr::StrList(rounding.Names());
  return attrs;
}

StatusOr<QuantParams> QuantParamsFromNode(const Node& node) {
  if (node.kind() != OpKind::kQuantFp8)
    return InvalidArgument("expected a quant_fp8 node, got ", node.op());
  TPFUSE_RETURN_IF_ERROR(CheckAttrs(*FindOp(node.op()), node.attrs()));
  return ReadQuantParams(AttrReader(node.op(), node.attrs()));
}

bool SameElementCount(const Shape& a, const Shape& b) {
  const ElementCount ca = CountElements(a), cb = CountElements(b);
  return !ca.overflow && !cb.overflow && ca.constant == cb.constant && ca.symbols == cb.symbols;
}

bool IsOneElementF32(const TensorType& type) {
  return type.dtype == DType::kF32 &&
         std::all_of(type.shape.begin(), type.shape.end(),
                     [](const Dim& d) { return d.is_const() && d.value == 1; });
}

const Value* SkipViews(const Value* value) {
  while (value->producer() && value->producer()->kind() == OpKind::kView)
    value = value->producer()->operand(0);
  return value;
}

StatusOr<ActScaleLayout> ScaledMatmulScaleLayout(const Node& node) {
  if (node.kind() != OpKind::kScaledMatmul || node.num_operands() < 2)
    return InvalidArgument("ScaledMatmulScaleLayout: expected a scaled_matmul node, got ", node.op());
  const Value* s = SkipViews(node.operand(1));
  if (const Node* p = s->producer()) {
    QuantMode mode = QuantMode::kNone;
    ScaleLayout layout = ScaleLayout::kRow;
    if (p->kind() == OpKind::kQuantFp8) {
      TPFUSE_ASSIGN_OR_RETURN(QuantParams params, QuantParamsFromNode(*p));
      mode = params.mode;
      layout = params.layout;
    } else if (p->kind() == OpKind::kAllreduceRmsnorm) {
      TPFUSE_ASSIGN_OR_RETURN(AllreduceRmsnormSpec spec, FusedSpecFromNode(*p));
      mode = spec.quant;
      layout = spec.scale_layout;
    }
    if (mode == QuantMode::kFp8Tensor) return ActScaleLayout::kPerTensor;
    if (mode == QuantMode::kFp8Token) return ActScaleLayout::kPerToken;
    if (mode == QuantMode::kFp8Group)
      return layout == ScaleLayout::kRow ? ActScaleLayout::kPerGroupRow : ActScaleLayout::kPerGroupCol;
  }
  const TensorType& st = node.operand(1)->type();
  const Dim& m = node.operand(0)->type().shape.at(0);
  if (st.rank() == 0) return ActScaleLayout::kPerTensor;
  if (st.rank() == 2 && st.shape[0] == m) {
    if (st.shape[1] == Dim::Const(1)) return ActScaleLayout::kPerToken;
    return ActScaleLayout::kPerGroupRow;
  }
  return ActScaleLayout::kPerGroupCol;
}

}  // namespace tpfuse::ir

namespace tpfuse::ir {

Status CheckOpaque(const AttrMap& attrs, const std::vector<TensorType>& result_types) {
  TPFUSE_RETURN_IF_ERROR(CheckAttrs(GetOpDef(OpKind::kOpaque), attrs));
  const std::optional<std::string> name = attrs.at(kOpaqueNameAttr).AsText();
  if (!name || name->empty()) return InvalidArgument("opaque: 'name' must not be empty");
  if (result_types.empty())
    return InvalidArgument("opaque '", *name, "': declare at least one result type");
  for (const TensorType& t : result_types) {
    for (const Dim& d : t.shape) {
      if (d.is_const() && (d.value < 0 || d.value > kMaxDimValue))
        return InvalidArgument("opaque '", *name, "': result dim ", d.value, " is out of range");
    }
  }
  return Status::Ok();
}

std::string OpaqueName(const Node& node) {
  if (node.kind() != OpKind::kOpaque) return {};
  const Attr* name = node.attr(kOpaqueNameAttr);
  return name ? name->AsText().value_or("") : "";
}

StatusOr<Node*> BuildOpaqueNode(Graph& graph, const std::string& name,
                                const std::vector<Value*>& operands,
                                const std::vector<TensorType>& result_types,
                                const std::vector<std::string>& result_names, AttrMap attrs,
                                Node* insert_before) {
  for (size_t i = 0; i < operands.size(); ++i) {
    if (operands[i] == nullptr) return InvalidArgument("opaque '", name, "': operand ", i, " is null");
  }
  attrs[kOpaqueNameAttr] = Attr::Str(name);
  TPFUSE_RETURN_IF_ERROR(CheckOpaque(attrs, result_types));
  if (!result_names.empty() && result_names.size() != result_types.size())
    return InvalidArgument("opaque '", name, "': declares ", result_types.size(), " results, ",
                           result_names.size(), " names given");
  return graph.AddNode("opaque", operands, std::move(attrs), result_names, result_types,
                       insert_before);
}

Status RefuseOpaque(const Graph& graph, std::string_view backend) {
  for (const auto& node : graph.nodes()) {
    if (node->kind() != OpKind::kOpaque) continue;
    std::string where = "%" + node->result(0)->name();
    if (node->line() > 0) where += StrCat(", line ", node->line());
    return Unimplemented("opaque op '", OpaqueName(*node), "' (", where,
                         ") cannot be executed: backend ", backend,
                         " runs only the ops of DESIGN.md Contract 2 (the graph keeps ops it does "
                         "not know as opaque; run it where they are defined)");
  }
  return Status::Ok();
}

}  // namespace tpfuse::ir
