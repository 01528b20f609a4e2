#include "runtime/inputs.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <set>

#include "ir/ops.h"
#include "ir/static_quant.h"

namespace tpfuse::runtime {
namespace {

// The machine's physical memory (the most any host tensors of one process could take).
uint64_t HostMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return UINT64_MAX;
  return uint64_t(pages) * uint64_t(page);
}

// "bf16[4096, 8]".
std::string TypeOf(DType dtype, const std::vector<int64_t>& shape) {
  std::string text = StrCat(DTypeName(dtype), "[");
  for (size_t i = 0; i < shape.size(); ++i) text += StrCat(i ? ", " : "", shape[i]);
  return text + "]";
}

// SplitMix64: small, fast, and the same on every platform (std:: distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double Uniform() { return double(Next() >> 11) * 0x1.0p-53; }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  // Standard normal (Box-Muller; each pair of uniforms gives two normals).
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - Uniform();  // (0, 1]
    const double u2 = Uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    spare_ = radius * std::sin(6.283185307179586 * u2);
    has_spare_ = true;
    return radius * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

uint64_t HashName(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (char c : s) h = (h ^ uint8_t(c)) * 0x100000001B3ull;
  return h;
}

// Calls f(use) for every use of v and, through views, of what views it. A rank-1 value is also
// followed through casts and `+ scalar`: a norm weight written `w.float() + 1` is still the
// weight.
void ForEachUseThroughViews(const ir::Value& v, const std::function<void(const ir::Use&)>& f) {
  for (const ir::Use& use : v.uses()) {
    const ir::Node* user = use.user;
    const bool weight_step =
        user != nullptr && v.type().rank() == 1 &&
        (user->kind() == ir::OpKind::kCast ||
         (user->kind() == ir::OpKind::kAdd && user->num_operands() == 1));
    if (!use.is_return() && (user->kind() == ir::OpKind::kView || weight_step)) {
      ForEachUseThroughViews(*user->result(0), f);
    } else {
      f(use);
    }
  }
}

// Index of allreduce_rmsnorm's operands, or an empty layout when the node is malformed.
ir::FusedOperandIndices FusedOperands(const ir::Node& node) {
  StatusOr<AllreduceRmsnormSpec> spec = ir::FusedSpecFromNode(node);
  if (!spec.ok()) return ir::FusedOperandIndices{-1, -1, -1, -1, 0};
  return ir::FusedOperandLayout(*spec);
}

}  // namespace

std::string_view ParamRoleName(ParamRole role) {
  switch (role) {
    case ParamRole::kActivation: return "activation";
    case ParamRole::kNormWeight: return "norm weight";
    case ParamRole::kStaticScale: return "static scale";
    case ParamRole::kStaticInverseScale: return "static inverse scale";
    case ParamRole::kFp8: return "fp8";
    case ParamRole::kGemmScale: return "gemm scale";
    case ParamRole::kInteger: return "integer";
  }
  return "?";
}

ParamInfo ClassifyParam(const ir::Value& param) {
  ParamInfo info;
  const DType dtype = param.dtype();
  const bool f32_scalar = ir::IsOneElementF32(param.type());  // f32[], f32[1], ...
  if (dtype == DType::kF8E4M3) info.role = ParamRole::kFp8;
  if (dtype == DType::kI32) info.role = ParamRole::kInteger;

  ForEachUseThroughViews(param, [&](const ir::Use& use) {
    if (use.is_return()) return;
    const ir::Node& user = *use.user;
    const int i = use.index;
    switch (user.kind()) {
      case ir::OpKind::kAllReduce: info.per_rank = true; break;
      case ir::OpKind::kMatmul:
        if (i == 1) info.per_rank = true;
        break;
      case ir::OpKind::kScaledMatmul:
        if (i == 2 || i == 3) info.per_rank = true;
        // A static quant scale that also dequantizes the GEMM input stays a static scale.
        if ((i == 1 || i == 3) && dtype == DType::kF32 && info.role == ParamRole::kActivation)
          info.role = ParamRole::kGemmScale;
        break;
      case ir::OpKind::kAllreduceRmsnorm: {
        const ir::FusedOperandIndices at = FusedOperands(user);
        if (i == at.x || i == at.x2) info.per_rank = true;
        if (i == at.w || i == at.pre_weight) info.role = ParamRole::kNormWeight;
        if (i == at.scale && f32_scalar) info.role = ParamRole::kStaticScale;
        break;
      }
      case ir::OpKind::kRmsNorm:
        if (i == 1) info.role = ParamRole::kNormWeight;
        break;
      case ir::OpKind::kFusedAddRmsNorm:
        if (i == 2) info.role = ParamRole::kNormWeight;
        break;
      case ir::OpKind::kQuantFp8:
        if (i == 1 && f32_scalar) info.role = ParamRole::kStaticScale;
        break;
      case ir::OpKind::kDiv:
      case ir::OpKind::kMul:
        // The scale of a static quant written out (the one recognizer: ir/static_quant.h).
        if (std::optional<ir::StaticQuantForm> form = ir::StaticQuantAt(user); form && f32_scalar) {
          if (form->scale && ir::SkipViews(form->scale) == &param) info.role = ParamRole::kStaticScale;
          if (!form->divides && !form->scale && ir::SkipViews(form->inv) == &param)
            info.role = ParamRole::kStaticInverseScale;
        }
        if (user.kind() == ir::OpKind::kMul && user.num_operands() == 2) {
          const ir::Value& other = *user.operand(1 - i);
          // (A one-element f32 operand is a scale, f32[1] as f32[] is.)
          if (param.type().rank() == 1 && other.type().rank() >= 2 && IsFloatType(dtype) &&
              !f32_scalar)
            info.role = ParamRole::kNormWeight;
        }
        break;
      // A power or a reciprocal of a static scale: still the scale (x * pow(s, -1)).
      case ir::OpKind::kReciprocal:
      case ir::OpKind::kPow:
        if (f32_scalar) info.role = ParamRole::kStaticScale;
        break;
      case ir::OpKind::kAdd:
      case ir::OpKind::kSub:
      case ir::OpKind::kRsqrt:
      case ir::OpKind::kSqrt:
      case ir::OpKind::kAbs:
      case ir::OpKind::kNeg:
      case ir::OpKind::kLog2:
      case ir::OpKind::kExp2:
      case ir::OpKind::kCeil:
      case ir::OpKind::kClamp:
      case ir::OpKind::kCast:
      case ir::OpKind::kMean:
      case ir::OpKind::kAmax:
      case ir::OpKind::kView:
      case ir::OpKind::kFull:
      case ir::OpKind::kOpaque:
      case ir::OpKind::kUnknown: break;
    }
  });
  return info;
}

std::vector<std::string> ShapeSymbols(const ir::Graph& graph) {
  std::set<std::string> symbols;
  for (const ir::Value* p : graph.params())
    for (const ir::Dim& d : p->shape())
      for (const std::string& factor : d.Factors())
        if (!ir::Dim::ConstantFactor(factor)) symbols.insert(factor);
  return {symbols.begin(), symbols.end()};
}

StatusOr<ShapeBindings> BindShapeSymbols(const std::vector<std::string>& symbols, int64_t tokens,
                                         const ShapeBindings& given) {
  if (tokens < 1) return InvalidArgument("tokens must be >= 1, got ", tokens);
  ShapeBindings bindings;
  for (const std::string& symbol : symbols) bindings[symbol] = tokens;
  for (const auto& [symbol, value] : given) {
    if (!bindings.contains(symbol)) {
      std::string list;
      for (const std::string& s : symbols) list += (list.empty() ? "" : ", ") + s;
      return InvalidArgument("no shape symbol ", symbol, " (",
                             list.empty() ? "there are none" : "the shape symbols: " + list, ")");
    }
    if (value < 1) return InvalidArgument("shape symbol ", symbol, " must be >= 1, got ", value);
    bindings[symbol] = value;
  }
  return bindings;
}

int64_t SymbolRows(const ir::Graph& graph, const ShapeBindings& bindings) {
  int64_t rows = 0;
  for (const ir::Value* p : graph.params()) {
    int64_t product = 1;
    bool symbolic = false;
    for (const ir::Dim& d : p->shape())
      for (const std::string& factor : d.Factors()) {
        auto it = bindings.find(factor);
        if (it == bindings.end()) continue;
        symbolic = true;
        product = product > INT64_MAX / it->second ? INT64_MAX : product * it->second;
      }
    if (symbolic) rows = std::max(rows, product);
  }
  return rows;
}

std::string FormatBindings(const ShapeBindings& bindings) {
  if (bindings.empty()) return "";
  const int64_t first = bindings.begin()->second;
  const bool one_value = std::all_of(bindings.begin(), bindings.end(),
                                     [&](const auto& b) { return b.second == first; });
  std::string out;
  for (const auto& [symbol, value] : bindings) {
    if (!out.empty()) out += one_value ? " = " : ", ";
    out += one_value ? symbol : StrCat(symbol, " = ", value);
  }
  return one_value ? StrCat(out, " = ", first) : out;
}

StatusOr<std::vector<TensorMap>> MakeRandomInputs(const ir::Graph& graph, int world_size,
                                                  int64_t tokens, uint64_t seed) {
  TPFUSE_ASSIGN_OR_RETURN(ShapeBindings bindings, BindShapeSymbols(ShapeSymbols(graph), tokens));
  return MakeRandomInputs(graph, world_size, bindings, seed);
}

StatusOr<std::vector<TensorMap>> MakeRandomInputs(const ir::Graph& graph, int world_size,
                                                  const ShapeBindings& bindings, uint64_t seed) {
  if (world_size < 1) return InvalidArgument("world size must be >= 1, got ", world_size);
  std::vector<std::vector<int64_t>> shapes;
  uint64_t total = 0;  // bytes over every rank
  const uint64_t memory = HostMemoryBytes();
  for (const ir::Value* p : graph.params()) {
    StatusOr<std::vector<int64_t>> shape = p->type().Resolve(bindings);
    if (!shape.ok()) return shape.status().WithContext(StrCat("parameter %", p->name()));
    uint64_t bytes = uint64_t(DTypeSize(p->dtype()));
    for (int64_t d : *shape) {
      if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / uint64_t(d)) bytes = UINT64_MAX;
      else bytes *= uint64_t(d);
    }
    const uint64_t copies = uint64_t(world_size);  // every rank holds its own copy
    total = bytes > (UINT64_MAX - total) / copies ? UINT64_MAX : total + bytes * copies;
    if (total > memory) {
      return OutOfRange("the inputs need more than this machine's ", memory, " bytes of memory ",
                        "(reached at parameter %", p->name(), ", ", TypeOf(p->dtype(), *shape),
                        bytes == UINT64_MAX ? std::string(", whose size overflows")
                                            : StrCat(" = ", bytes, " bytes"),
                        copies > 1 ? StrCat(" on each of ", copies, " ranks") : std::string(),
                        bindings.empty() ? ")" : StrCat("; ", FormatBindings(bindings), ")"));
    }
    shapes.push_back(std::move(*shape));
  }
  std::vector<TensorMap> inputs(static_cast<size_t>(world_size));
  size_t index = 0;
  for (const ir::Value* p : graph.params()) {
    const std::vector<int64_t>* shape = &shapes[index++];
    const ParamInfo info = ClassifyParam(*p);
    for (int r = 0; r < (info.per_rank ? world_size : 1); ++r) {
      // The stream depends on the name (not the position) so a graph and its fused form agree.
      Rng rng(seed ^ HashName(p->name()) ^ (info.per_rank ? (uint64_t(r) + 1) * 0xD6E8FEB86659FD93ull : 0));
      HostTensor t(p->dtype(), *shape);
      bool any_nonzero = false;
      for (int64_t i = 0; i < t.numel(); ++i) {
        switch (info.role) {
          case ParamRole::kActivation: t.SetF32(i, float(rng.Normal())); break;
          case ParamRole::kNormWeight: t.SetF32(i, float(rng.Uniform(0.5, 1.5))); break;
          case ParamRole::kStaticScale: t.SetF32(i, float(rng.Uniform(0.005, 0.02))); break;
          case ParamRole::kStaticInverseScale:
            t.SetF32(i, float(1.0 / rng.Uniform(0.005, 0.02)));
            break;
          case ParamRole::kGemmScale: t.SetF32(i, float(rng.Uniform(0.002, 0.008))); break;
          case ParamRole::kFp8: {
            uint8_t code = uint8_t(rng.Next() % 254);  // 0..253 -> skip 0x7F
            if (code >= 0x7F) ++code;                   // 0x00..0x7E, 0x80..0xFE
            t.data_as<uint8_t>()[i] = code;
            break;
          }
          case ParamRole::kInteger: t.SetF32(i, float(int64_t(rng.Next() % 17) - 8)); break;
        }
        any_nonzero = any_nonzero || t.GetF32(i) != 0.0f;
      }
      if (!any_nonzero && t.numel() > 0) t.SetF32(0, 1.0f);  // never all zeros
      if (info.per_rank) {
        inputs[size_t(r)][p->name()] = std::move(t);
      } else {
        for (TensorMap& rank_inputs : inputs) rank_inputs[p->name()] = t;
      }
    }
  }
  return inputs;
}

}  // namespace tpfuse::runtime
