#include "models/model.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ir/ops.h"

namespace tpfuse::models {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------- reading fields

// Typed access to the top-level object of a description; every error names the file and the
// field ("models/x.json: field 'hidden_size': expected a positive integer, got \"4096\"").
class FieldReader {
 public:
  FieldReader(const json& object, const std::string& source) : object_(object), source_(source) {}

  template <class... Args>
  Status Error(const std::string& key, const Args&... args) const {
    return InvalidArgument(source_, ": field '", key, "': ", args...);
  }

  bool Has(const std::string& key) const { return object_.contains(key); }

  // An integer >= min_value. Absent: `*out` keeps its value unless the field is required.
  Status Int(const std::string& key, int64_t min_value, bool required, int64_t* out) const {
    if (!Has(key)) return required ? Error(key, "missing (required)") : Status::Ok();
    const json& v = object_.at(key);
    if (!v.is_number_integer())
      return Error(key, "expected an integer >= ", min_value, ", got ", v.dump());
    const int64_t value = v.get<int64_t>();
    if (value < min_value) return Error(key, "expected an integer >= ", min_value, ", got ", value);
    *out = value;
    return Status::Ok();
  }
  Status Int(const std::string& key, int64_t min_value, bool required, int* out) const {
    int64_t value = *out;
    TPFUSE_RETURN_IF_ERROR(Int(key, min_value, required, &value));
    if (value > (int64_t{1} << 30)) return Error(key, "too large: ", value);
    *out = int(value);
    return Status::Ok();
  }

  Status Number(const std::string& key, double* out) const {
    if (!Has(key)) return Status::Ok();
    const json& v = object_.at(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()))
      return Error(key, "expected a number, got ", v.dump());
    *out = v.get<double>();
    return Status::Ok();
  }

  Status Bool(const std::string& key, bool* out) const {
    if (!Has(key)) return Status::Ok();
    const json& v = object_.at(key);
    if (!v.is_boolean()) return Error(key, "expected true or false, got ", v.dump());
    *out = v.get<bool>();
    return Status::Ok();
  }

  Status Text(const std::string& key, std::string* out) const {
    if (!Has(key)) return Status::Ok();
    const json& v = object_.at(key);
    if (!v.is_string()) return Error(key, "expected a string, got ", v.dump());
    *out = v.get<std::string>();
    return Status::Ok();
  }

  // A string parsed by `parse` (a StatusOr-returning enum parser).
  template <class T, class Parse>
  Status Enum(const std::string& key, Parse parse, T* out) const {
    std::string text;
    if (!Has(key)) return Status::Ok();
    TPFUSE_RETURN_IF_ERROR(Text(key, &text));
    StatusOr<T> value = parse(text);
    if (!value.ok()) return Error(key, value.status().message());
    *out = *value;
    return Status::Ok();
  }

 private:
  const json& object_;
  const std::string& source_;
};

StatusOr<DType> ParseTorchDtype(std::string_view name) {
  if (name == "bfloat16" || name == "bf16") return DType::kBF16;
  if (name == "float16" || name == "f16") return DType::kF16;
  return InvalidArgument("expected \"bfloat16\" or \"float16\", got \"", name, "\"");
}

StatusOr<DType> ParseNormWeightDtype(std::string_view name) {
  std::optional<DType> dtype = ParseDType(name);
  if (!dtype || !(IsHalfType(*dtype) || *dtype == DType::kF32))
    return InvalidArgument("expected \"bf16\", \"f16\" or \"f32\", got \"", name, "\"");
  return *dtype;
}

int64_t Capped(int64_t width, int64_t cap) { return cap > 0 ? std::min(width, cap) : width; }

std::string Stem(const std::string& path) { return std::filesystem::path(path).stem().string(); }

// A func name from a model name: "llama-3.1-8b-fp8" -> "llama_3_1_8b_fp8".
std::string FuncName(const std::string& name) {
  std::string out;
  for (char c : name) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  if (out.empty() || std::isdigit(static_cast<unsigned char>(out[0]))) out = "m_" + out;
  return out;
}

// ---------------------------------------------------------------- the builder

// What one all_reduce chain leaves for the rest of the layer.
struct NormResult {
  ir::Value* y = nullptr;  // the norm output
  ir::Value* h = nullptr;  // the residual stream after this chain
};

// The quantized (or not) activation that a site's GEMMs read.
struct GemmInput {
  ir::Value* a = nullptr;  // y (bf16) or q (f8e4m3)
  ir::Value* s = nullptr;  // the activation scale (FP8 only)
};

class DecodeGraphBuilder {
 public:
  explicit DecodeGraphBuilder(const ModelConfig& config)
      : c_(config), graph_(std::make_unique<ir::Graph>(FuncName(config.name))) {}

  StatusOr<std::unique_ptr<ir::Graph>> Build() {
    const int64_t hidden = c_.hidden_size;
    std::vector<ir::Value*> outputs;
    // The residual stream: a parameter, or (first_layer_residual = false) layer 0's all_reduce.
    ir::Value* residual = c_.first_layer_residual ? Param("residual", Act(hidden)) : nullptr;

    for (int l = 0; l < c_.layers; ++l) {
      const std::string p = StrCat("l", l, ".");
      // ---- input norm -> QKV (and the indexer); their outputs leave the graph for attention
      const bool embedding = l == 0 && !c_.first_layer_residual;
      ir::Value* in_partial = embedding ? Param("embed.partial", Act(hidden))    // vocab-parallel
                                        : Param(p + "in.partial", Act(hidden));  // previous down
      // The previous layer's shared MLP, reduced apart (no embedding has one).
      ir::Value* in_shared =
          c_.shared_mlp_reduced_apart && !embedding ? Param(p + "in.shared.partial", Act(hidden)) : nullptr;
      TPFUSE_ASSIGN_OR_RETURN(NormResult in, AllReduceNorm(p + "in.", in_partial, residual, in_shared,
                                                           /*scaled=*/!embedding, !embedding && c_.mlp_bias));
      TPFUSE_ASSIGN_OR_RETURN(GemmInput qkv_in, Quantize(p + "in.", in.y));
      ReturnGemmInput(qkv_in, outputs);
      if (c_.indexer_dim > 0) {
        ir::Value* wk = Param(p + "indexer.w", Weight(c_.act_dtype, hidden, c_.indexer_dim));
        TPFUSE_ASSIGN_OR_RETURN(ir::Value * k, Op("matmul", {in.y, wk}, {}, p + "indexer"));
        outputs.push_back(k);
      }
      TPFUSE_ASSIGN_OR_RETURN(ir::Value * qkv, Gemm(p + "qkv", qkv_in, hidden, c_.QkvShard()));
      outputs.push_back(qkv);

      // ---- o_proj partial -> post-attention norm -> gate, up -> mul -> down partial
      ir::Value* attn_partial = Param(p + "attn.partial", Act(hidden));
      TPFUSE_ASSIGN_OR_RETURN(NormResult post, AllReduceNorm(p + "post.", attn_partial, in.h, nullptr,
                                                             /*scaled=*/true, c_.attention_bias));
      TPFUSE_ASSIGN_OR_RETURN(GemmInput mlp_in, Quantize(p + "post.", post.y));
      ReturnGemmInput(mlp_in, outputs);
      TPFUSE_ASSIGN_OR_RETURN(ir::Value * down, Mlp(p, mlp_in));
      outputs.push_back(down);
      if (c_.shared_mlp_reduced_apart) {
        // The shared MLP beside the routed experts (the same width stands in for both).
        TPFUSE_ASSIGN_OR_RETURN(ir::Value * shared_down, Mlp(p + "shared.", mlp_in));
        outputs.push_back(shared_down);
      }
      residual = post.h;
    }
    graph_->SetOutputs(outputs);
    return std::move(graph_);
  }

 private:
  ir::TensorType Act(int64_t cols) const {
    return ir::TensorType{c_.act_dtype, {ir::Dim::Sym("T"), ir::Dim::Const(cols)}};
  }
  static ir::TensorType Weight(DType dtype, int64_t rows, int64_t cols) {
    return ir::TensorType{dtype, {ir::Dim::Const(rows), ir::Dim::Const(cols)}};
  }
  static ir::TensorType Vector(DType dtype, int64_t n) {
    return ir::TensorType{dtype, {ir::Dim::Const(n)}};
  }
  static ir::TensorType Scalar() { return ir::TensorType{DType::kF32, {}}; }

  // A site's GEMM input is returned too: it is already a result of the fused op (q and s, or
  // the norm for bf16 GEMMs), so returning it changes no emit set, and it lets a check compare
  // the fused op's own outputs with Contract 3's tolerance.
  static void ReturnGemmInput(const GemmInput& in, std::vector<ir::Value*>& outputs) {
    outputs.push_back(in.a);
    if (in.s != nullptr && in.s->producer() != nullptr) outputs.push_back(in.s);
  }

  ir::Value* Param(const std::string& name, ir::TensorType type) {
    return graph_->AddParam(name, std::move(type));
  }

  StatusOr<std::vector<ir::Value*>> OpN(const std::string& op, const std::vector<ir::Value*>& in,
                                        ir::AttrMap attrs, const std::vector<std::string>& names) {
    StatusOr<ir::Node*> node = ir::BuildNode(*graph_, op, in, std::move(attrs), names);
    if (!node.ok()) return node.status().WithContext(StrCat("building %", names[0]));
    return (*node)->results();
  }
  StatusOr<ir::Value*> Op(const std::string& op, const std::vector<ir::Value*>& in,
                          ir::AttrMap attrs, const std::string& name) {
    TPFUSE_ASSIGN_OR_RETURN(std::vector<ir::Value*> results, OpN(op, in, std::move(attrs), {name}));
    return results[0];
  }

  ir::AttrMap NormAttrs() const {
    ir::AttrMap attrs = {{"eps", ir::Attr::Float(c_.rms_norm_eps)}};
    if (c_.weight_bias != 0.0) attrs["weight_bias"] = ir::Attr::Float(c_.weight_bias);
    return attrs;
  }

  // gate and up GEMMs -> mul -> down GEMM on `in`, the down partial. `p` prefixes every name.
  StatusOr<ir::Value*> Mlp(const std::string& p, const GemmInput& in) {
    const int64_t hidden = c_.hidden_size, inter = c_.IntermediateShard();
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * gate, Gemm(p + "gate", in, hidden, inter));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * up, Gemm(p + "up", in, hidden, inter));
    // NOTE: mul stands in for SiLU(gate) * up; the fused tail never sees the difference.
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * act, Op("mul", {gate, up}, {}, p + "act"));
    ir::Value* w_down = Param(p + "down.w", Weight(act->dtype(), inter, hidden));
    return Op("matmul", {act, w_down}, {}, p + "down");
  }

  // all_reduce(partial) [+ bias] [+ all_reduce(partial2)] [* residual_multiplier] -> [+ residual]
  // -> RMSNorm. `p` prefixes every name ("l0.in."); `scaled`: a block's output (not the
  // embedding); `biased`: its row-parallel projection's bias added after the all_reduce.
  StatusOr<NormResult> AllReduceNorm(const std::string& p, ir::Value* partial, ir::Value* residual,
                                     ir::Value* partial2, bool scaled, bool biased) {
    ir::Value* g = Param(p + "norm_w", Vector(c_.norm_weight_dtype, c_.hidden_size));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * ar, Op("all_reduce", {partial}, {}, p + "ar"));
    if (biased) {
      ir::Value* bias = Param(p + "bias", Vector(c_.act_dtype, c_.hidden_size));
      TPFUSE_ASSIGN_OR_RETURN(ar, Op("add", {ar, bias}, {}, p + "biased"));
    }
    if (partial2 != nullptr) {
      TPFUSE_ASSIGN_OR_RETURN(ir::Value * ar2, Op("all_reduce", {partial2}, {}, p + "ar2"));
      TPFUSE_ASSIGN_OR_RETURN(ar, Op("add", {ar, ar2}, {}, p + "blocks"));
    }
    if (scaled && c_.residual_multiplier != 1.0) {
      TPFUSE_ASSIGN_OR_RETURN(ar, Op("mul", {ar}, {{"scalar", ir::Attr::Float(c_.residual_multiplier)}},
                                     p + "scaled"));
    }
    if (scaled && c_.sandwich_norms && residual != nullptr) {
      // The block's own norm before the residual add, of the same form as the next.
      ir::Value* post = Param(p + "post_norm_w", Vector(c_.norm_weight_dtype, c_.hidden_size));
      if (c_.decomposed) {
        TPFUSE_ASSIGN_OR_RETURN(NormResult normed, DecomposedNorm(p + "post.", ar, nullptr, post));
        ar = normed.y;
      } else {
        TPFUSE_ASSIGN_OR_RETURN(ar, Op("rms_norm", {ar, post}, NormAttrs(), p + "post"));
      }
    }
    if (c_.decomposed) return DecomposedNorm(p, ar, residual, g);
    if (residual == nullptr) {
      TPFUSE_ASSIGN_OR_RETURN(ir::Value * y, Op("rms_norm", {ar, g}, NormAttrs(), p + "y"));
      return NormResult{y, ar};
    }
    TPFUSE_ASSIGN_OR_RETURN(std::vector<ir::Value*> r, OpN("fused_add_rms_norm", {ar, residual, g},
                                                           NormAttrs(), {p + "y", p + "h"}));
    return NormResult{r[0], r[1]};
  }

  // The form a graph exported with custom ops disabled holds, with the weight applied in f32
  // before the cast (one rounding, as in vLLM's native RMSNorm):
  //   h = add(residual, ar); x = cast(h, f32); v = mean(pow(x, 2)) + eps;
  //   y = cast(mul(mul(x, rsqrt(v)), w), act)
  StatusOr<NormResult> DecomposedNorm(const std::string& p, ir::Value* ar, ir::Value* residual,
                                      ir::Value* g) {
    ir::Value* h = ar;
    if (residual != nullptr) {
      // Residual first: the canonicalizer accepts either operand order.
      TPFUSE_ASSIGN_OR_RETURN(h, Op("add", {residual, ar}, {}, p + "h"));
    }
    using ir::Attr;
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * xf, Op("cast", {h}, {{"to", Attr::Name("f32")}}, p + "xf"));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * sq,
                            Op("pow", {xf}, {{"exponent", Attr::Float(2.0)}}, p + "sq"));
    TPFUSE_ASSIGN_OR_RETURN(
        ir::Value * ms,
        Op("mean", {sq}, {{"dim", Attr::Int(-1)}, {"keepdim", Attr::Bool(true)}}, p + "ms"));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * var,
                            Op("add", {ms}, {{"scalar", Attr::Float(c_.rms_norm_eps)}}, p + "var"));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * inv, Op("rsqrt", {var}, {}, p + "inv"));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * n, Op("mul", {xf, inv}, {}, p + "n"));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * nw, Op("mul", {n, g}, {}, p + "nw"));
    TPFUSE_ASSIGN_OR_RETURN(
        ir::Value * y,
        Op("cast", {nw}, {{"to", Attr::Name(std::string(DTypeName(c_.act_dtype)))}}, p + "y"));
    return NormResult{y, h};
  }

  // The site's quantization of y per the model's scheme. `p` prefixes every name.
  StatusOr<GemmInput> Quantize(const std::string& p, ir::Value* y) {
    using ir::Attr;
    switch (c_.quant) {
      case QuantMode::kNone:
        return GemmInput{y, nullptr};
      case QuantMode::kFp8Tensor: {
        // The checkpoint's static input scale, shared by the GEMMs that read this activation.
        ir::Value* scale = Param(p + "scale", Scalar());
        if (!c_.decomposed) {
          TPFUSE_ASSIGN_OR_RETURN(
              ir::Value * q, Op("quant_fp8", {y, scale}, {{"mode", Attr::Str("tensor")}}, p + "q"));
          return GemmInput{q, scale};
        }
        // div(scale) -> clamp(+-448) -> cast(f8e4m3).
        TPFUSE_ASSIGN_OR_RETURN(ir::Value * d, Op("div", {y, scale}, {}, p + "d"));
        TPFUSE_ASSIGN_OR_RETURN(
            ir::Value * cl,
            Op("clamp", {d}, {{"min", Attr::Float(-448.0)}, {"max", Attr::Float(448.0)}}, p + "c"));
        TPFUSE_ASSIGN_OR_RETURN(ir::Value * q,
                                Op("cast", {cl}, {{"to", Attr::Name("f8e4m3")}}, p + "q"));
        return GemmInput{q, scale};
      }
      case QuantMode::kFp8Token:
      case QuantMode::kFp8Group: {
        ir::AttrMap attrs;
        if (c_.quant == QuantMode::kFp8Token) {
          attrs["mode"] = Attr::Str("token");
        } else {
          attrs["mode"] = Attr::Str("group");
          attrs["group_size"] = Attr::Int(c_.group_size);
        }
        if (c_.scale_layout != ScaleLayout::kRow)
          attrs["scale_layout"] = Attr::Str(std::string(ScaleLayoutName(c_.scale_layout)));
        if (c_.scale_fmt != ScaleFormat::kF32)
          attrs["scale_fmt"] = Attr::Str(std::string(ScaleFormatName(c_.scale_fmt)));
        TPFUSE_ASSIGN_OR_RETURN(std::vector<ir::Value*> qs,
                                OpN("quant_fp8", {y}, std::move(attrs), {p + "q", p + "s"}));
        return GemmInput{qs[0], qs[1]};
      }
    }
    return Internal("unknown quant mode");
  }

  // [T, k] x [k, n]: matmul for bf16 activations, scaled_matmul for FP8 with the weight
  // scales of the scheme (per tensor, per output channel, or per 128 x 128 block).
  StatusOr<ir::Value*> Gemm(const std::string& name, const GemmInput& in, int64_t k, int64_t n) {
    if (in.s == nullptr) {
      ir::Value* w = Param(name + ".w", Weight(in.a->dtype(), k, n));
      return Op("matmul", {in.a, w}, {}, name);
    }
    ir::Value* w = Param(name + ".w", Weight(DType::kF8E4M3, k, n));
    ir::TensorType ws_type = Scalar();
    if (c_.quant == QuantMode::kFp8Token) ws_type = Weight(DType::kF32, 1, n);
    if (c_.quant == QuantMode::kFp8Group)
      ws_type = Weight(DType::kF32, k / kWeightBlock, n / kWeightBlock);
    ir::Value* ws = Param(name + ".ws", std::move(ws_type));
    return Op("scaled_matmul", {in.a, in.s, w, ws}, {}, name);
  }

  const ModelConfig& c_;
  std::unique_ptr<ir::Graph> graph_;
};

}  // namespace

// ---------------------------------------------------------------- ModelConfig

int64_t ModelConfig::QkvShard() const {
  const int64_t q_heads = num_attention_heads / tp_size;
  // KV heads are replicated when there are fewer than ranks.
  const int64_t kv_heads = std::max<int64_t>(1, num_key_value_heads / tp_size);
  return Capped((q_heads + 2 * kv_heads) * head_dim, max_gemm_shard);
}

int64_t ModelConfig::IntermediateShard() const {
  return Capped(intermediate_size / tp_size, max_gemm_shard);
}

Status ModelConfig::Validate() const {
  const auto error = [&](const std::string& field, const auto&... args) {
    return InvalidArgument(source, ": field '", field, "': ", args...);
  };
  if (hidden_size <= 0) return error("hidden_size", "must be positive");
  // Every width becomes a dim of the graph: the IR's bound on a dim holds for each.
  for (auto [field, width] : {std::pair{"hidden_size", hidden_size},
                              std::pair{"intermediate_size", intermediate_size},
                              std::pair{"head_dim", head_dim},
                              std::pair{"indexer_dim", indexer_dim}}) {
    if (width > ir::kMaxDimValue)
      return error(field, "must be at most ", ir::kMaxDimValue, " (the IR's largest dim), got ",
                   width);
  }
  if (num_attention_heads <= 0) return error("num_attention_heads", "must be positive");
  if (num_key_value_heads <= 0 || num_attention_heads % num_key_value_heads != 0)
    return error("num_key_value_heads", num_key_value_heads,
                 " must be positive and divide num_attention_heads ", num_attention_heads);
  if (head_dim <= 0) return error("head_dim", "must be positive");
  if (intermediate_size <= 0) return error("intermediate_size", "must be positive");
  if (!(rms_norm_eps > 0.0)) return error("rms_norm_eps", "must be positive, got ", rms_norm_eps);
  if (tp_size < 1 || tp_size > 64) return error("tp_size", "must be in [1, 64], got ", tp_size);
  if (num_attention_heads % tp_size != 0)
    return error("tp_size", tp_size, " does not divide num_attention_heads ", num_attention_heads);
  if (intermediate_size % tp_size != 0)
    return error("tp_size", tp_size, " does not divide intermediate_size ", intermediate_size);
  // The QKV projection's width per rank (heads and head_dim bounded above: no overflow).
  const double qkv_heads = double(num_attention_heads / tp_size) +
                           2.0 * double(std::max<int64_t>(1, num_key_value_heads / tp_size));
  const double qkv = qkv_heads * double(head_dim);
  if (max_gemm_shard == 0 && qkv > double(ir::kMaxDimValue))
    return error("head_dim", "the QKV projection per rank is ", qkv,
                 " wide, more than the IR's largest dim ", ir::kMaxDimValue);
  if (layers < 1 || layers > 64) return error("layers", "must be in [1, 64], got ", layers);
  if (max_gemm_shard < 0) return error("max_gemm_shard", "must be >= 0");
  if (indexer_dim < 0) return error("indexer_dim", "must be >= 0");
  if (quant == QuantMode::kFp8Group && (group_size <= 0 || hidden_size % group_size != 0))
    return error("group_size", group_size, " must divide hidden_size ", hidden_size);
  if (quant != QuantMode::kNone && act_dtype != DType::kBF16)
    return error("torch_dtype",
                 "FP8 models take bfloat16 activations (scaled_matmul produces "
                 "bf16)");
  if (quant == QuantMode::kFp8Group) {
    // Block-scaled weights: every GEMM dim a whole number of 128 x 128 blocks.
    for (auto [field, width] :
         {std::pair{"hidden_size", hidden_size},
          std::pair{"max_gemm_shard (QKV shard)", QkvShard()},
          std::pair{"max_gemm_shard (intermediate shard)", IntermediateShard()}}) {
      if (width % kWeightBlock != 0)
        return error(field, "the block-scaled GEMMs need a multiple of ", kWeightBlock, ", got ",
                     width);
    }
  }
  if (!std::isfinite(residual_multiplier) || !std::isfinite(float(residual_multiplier)) ||
      float(residual_multiplier) == 0.0f)
    return error("residual_multiplier", "must be finite and nonzero in f32, got ", residual_multiplier);
  if ((attention_bias || mlp_bias) && sandwich_norms)
    return error(attention_bias ? "attention_bias" : "mlp_bias",
                 "a bias after the all_reduce goes with no sandwich_norms (the fused op takes one or the other)");
  if (mlp_bias && shared_mlp_reduced_apart)
    return error("mlp_bias", "a bias after the all_reduce goes with no shared_mlp_reduced_apart (the fused op "
                             "adds a bias to one all_reduce's sum)");
  if (decomposed) {
    if (IsDynamicQuant(quant))
      return error("decomposed", "dynamic quantization (", QuantModeName(quant),
                   ") has no decomposed form; use quant none or fp8_tensor");
    if (weight_bias != 0.0)
      return error("decomposed", "the decomposed RMSNorm form has no weight_bias");
  }
  return Status::Ok();
}

std::string ModelConfig::Summary() const {
  std::string s = StrCat("H ", hidden_size, ", ", layers, " of ", num_hidden_layers, " layers, TP ",
                         tp_size, ", ", QuantModeName(quant));
  if (quant == QuantMode::kFp8Group) s += StrCat(" g", group_size);
  if (IsDynamicQuant(quant) && scale_layout == ScaleLayout::kCol) s += " col";
  if (IsDynamicQuant(quant) && scale_fmt == ScaleFormat::kUe8m0) s += " ue8m0";
  s += StrCat(", norm weight ", DTypeName(norm_weight_dtype));
  if (weight_bias != 0.0) s += StrCat(" +", weight_bias);
  if (!first_layer_residual) s += ", layer 0 without residual";
  if (indexer_dim > 0) s += StrCat(", indexer ", indexer_dim);
  if (decomposed) s += ", decomposed";
  if (shared_mlp_reduced_apart) s += ", shared MLP reduced apart";
  if (residual_multiplier != 1.0) s += StrCat(", residual multiplier ", residual_multiplier);
  if (sandwich_norms) s += ", sandwich norms";
  if (attention_bias || mlp_bias)
    s += StrCat(", ", attention_bias && mlp_bias ? "attention and MLP" : attention_bias ? "attention" : "MLP",
                " bias after the all_reduce");
  return s;
}

StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text.begin(), json_text.end());
  } catch (const json::parse_error& e) {
    // nlohmann's message carries the line and column.
    return InvalidArgument(source, ": not valid JSON: ", e.what());
  }
  if (!root.is_object()) return InvalidArgument(source, ": expected a JSON object at the top");

  ModelConfig c;
  c.source = source;
  c.name = Stem(source);
  const FieldReader f(root, source);
  TPFUSE_RETURN_IF_ERROR(f.Text("description", &c.description));
  TPFUSE_RETURN_IF_ERROR(f.Text("model_type", &c.model_type));

  TPFUSE_RETURN_IF_ERROR(f.Int("hidden_size", 1, true, &c.hidden_size));
  TPFUSE_RETURN_IF_ERROR(f.Int("num_hidden_layers", 1, true, &c.num_hidden_layers));
  TPFUSE_RETURN_IF_ERROR(f.Int("intermediate_size", 1, true, &c.intermediate_size));
  TPFUSE_RETURN_IF_ERROR(f.Number("rms_norm_eps", &c.rms_norm_eps));
  TPFUSE_RETURN_IF_ERROR(f.Int("num_attention_heads", 1, true, &c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  TPFUSE_RETURN_IF_ERROR(f.Int("num_key_value_heads", 1, false, &c.num_key_value_heads));
  if (!f.Has("head_dim") && c.hidden_size % c.num_attention_heads != 0)
    return f.Error("head_dim", "missing, and hidden_size ", c.hidden_size,
                   " is not a multiple of num_attention_heads ", c.num_attention_heads);
  c.head_dim = c.hidden_size / c.num_attention_heads;
  TPFUSE_RETURN_IF_ERROR(f.Int("head_dim", 1, false, &c.head_dim));
  TPFUSE_RETURN_IF_ERROR(f.Enum<DType>("torch_dtype", ParseTorchDtype, &c.act_dtype));

  TPFUSE_RETURN_IF_ERROR(f.Int("tp_size", 1, false, &c.tp_size));
  c.layers = std::min(2, c.num_hidden_layers);
  TPFUSE_RETURN_IF_ERROR(f.Int("layers", 1, false, &c.layers));
  TPFUSE_RETURN_IF_ERROR(f.Enum<QuantMode>("quant", ParseQuantMode, &c.quant));
  TPFUSE_RETURN_IF_ERROR(f.Int("group_size", 1, false, &c.group_size));
  TPFUSE_RETURN_IF_ERROR(f.Enum<ScaleLayout>("scale_layout", ParseScaleLayout, &c.scale_layout));
  TPFUSE_RETURN_IF_ERROR(f.Enum<ScaleFormat>("scale_fmt", ParseScaleFormat, &c.scale_fmt));
  TPFUSE_RETURN_IF_ERROR(
      f.Enum<DType>("norm_weight_dtype", ParseNormWeightDtype, &c.norm_weight_dtype));
  TPFUSE_RETURN_IF_ERROR(f.Number("weight_bias", &c.weight_bias));
  TPFUSE_RETURN_IF_ERROR(f.Bool("first_layer_residual", &c.first_layer_residual));
  TPFUSE_RETURN_IF_ERROR(f.Int("indexer_dim", 0, false, &c.indexer_dim));
  TPFUSE_RETURN_IF_ERROR(f.Bool("decomposed", &c.decomposed));
  TPFUSE_RETURN_IF_ERROR(f.Bool("shared_mlp_reduced_apart", &c.shared_mlp_reduced_apart));
  TPFUSE_RETURN_IF_ERROR(f.Number("residual_multiplier", &c.residual_multiplier));
  TPFUSE_RETURN_IF_ERROR(f.Bool("sandwich_norms", &c.sandwich_norms));
  TPFUSE_RETURN_IF_ERROR(f.Bool("attention_bias", &c.attention_bias));
  TPFUSE_RETURN_IF_ERROR(f.Bool("mlp_bias", &c.mlp_bias));
  TPFUSE_RETURN_IF_ERROR(f.Int("max_gemm_shard", 0, false, &c.max_gemm_shard));
  TPFUSE_RETURN_IF_ERROR(c.Validate());
  return c;
}

StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    return InvalidArgument(path, " is a directory, not a model description");
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(path, ": cannot open the model description");
  std::ostringstream text;
  text << in.rdbuf();
  return ParseModelConfig(text.str(), path);
}

StatusOr<std::unique_ptr<ir::Graph>> BuildDecodeGraph(const ModelConfig& config) {
  TPFUSE_RETURN_IF_ERROR(config.Validate());
  StatusOr<std::unique_ptr<ir::Graph>> graph = DecodeGraphBuilder(config).Build();
  if (!graph.ok()) return graph.status().WithContext("model " + config.name);
  return graph;
}

std::string BundledModelsDir() { return TPFUSE_MODELS_DIR; }

StatusOr<std::vector<std::string>> ListModelFiles(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> files;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file() && it->path().extension() == ".json")
      files.push_back(it->path().string());
  }
  if (ec) return NotFound(dir, ": cannot read the models directory (", ec.message(), ")");
  if (files.empty()) return NotFound(dir, ": no model descriptions (*.json)");
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace tpfuse::models
