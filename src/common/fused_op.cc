#include "tpfuse/fused_op.h"

#include <algorithm>
#include <cmath>

namespace tpfuse {

std::string_view QuantModeName(QuantMode mode) {
  switch (mode) {
    case QuantMode::kNone: return "none";
    case QuantMode::kFp8Tensor: return "fp8_tensor";
    case QuantMode::kFp8Token: return "fp8_token";
    case QuantMode::kFp8Group: return "fp8_group";
  }
  return "?";
}

std::string_view ScaleLayoutName(ScaleLayout layout) {
  return layout == ScaleLayout::kRow ? "row" : "col";
}

std::string_view ScaleFormatName(ScaleFormat format) {
  return format == ScaleFormat::kF32 ? "f32" : "ue8m0";
}

std::string_view StrategyName(Strategy strategy) {
  switch (strategy) {
    case Strategy::kOneShot: return "oneshot";
    case Strategy::kTwoShot: return "twoshot";
    case Strategy::kNccl: return "nccl";
  }
  return "?";
}

StatusOr<Strategy> ParseStrategy(std::string_view name) {
  for (Strategy s : kAllStrategies) {
    if (StrategyName(s) == name) return s;
  }
  return InvalidArgument("unknown strategy '", name, "' (expected oneshot, twoshot or nccl)");
}

std::string_view StrategyRequestName(StrategyRequest request) {
  return request ? StrategyName(*request) : "auto";
}

StatusOr<StrategyRequest> ParseStrategyRequest(std::string_view name) {
  if (name == "auto") return StrategyRequest{};
  for (Strategy s : kAllStrategies) {
    if (StrategyName(s) == name) return StrategyRequest{s};
  }
  return InvalidArgument("unknown strategy '", name, "' (expected auto, oneshot, twoshot or nccl)");
}

std::string_view ActScaleLayoutName(ActScaleLayout layout) {
  switch (layout) {
    case ActScaleLayout::kPerTensor: return "per-tensor";
    case ActScaleLayout::kPerToken: return "per-token";
    case ActScaleLayout::kPerGroupRow: return "per-group row-major";
    case ActScaleLayout::kPerGroupCol: return "per-group column-major";
  }
  return "?";
}

StatusOr<QuantMode> ParseQuantMode(std::string_view name) {
  for (QuantMode m : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token,
                      QuantMode::kFp8Group}) {
    if (QuantModeName(m) == name) return m;
  }
  return InvalidArgument("unknown quant mode '", name,
                         "' (expected none, fp8_tensor, fp8_token or fp8_group)");
}

StatusOr<ScaleLayout> ParseScaleLayout(std::string_view name) {
  if (name == "row") return ScaleLayout::kRow;
  if (name == "col") return ScaleLayout::kCol;
  return InvalidArgument("unknown scale_layout '", name, "' (expected row or col)");
}

StatusOr<ScaleFormat> ParseScaleFormat(std::string_view name) {
  if (name == "f32") return ScaleFormat::kF32;
  if (name == "ue8m0") return ScaleFormat::kUe8m0;
  return InvalidArgument("unknown scale_fmt '", name, "' (expected f32 or ue8m0)");
}

std::vector<std::string> EmitSet::Names() const {
  std::vector<std::string> names;
  if (allreduce) names.push_back("allreduce");
  if (norm) names.push_back("norm");
  if (residual) names.push_back("residual");
  if (quant) names.push_back("quant");
  return names;
}

StatusOr<EmitSet> EmitSet::FromNames(const std::vector<std::string>& names) {
  EmitSet emit;
  for (const std::string& name : names) {
    bool* field = nullptr;
    if (name == "allreduce") field = &emit.allreduce;
    else if (name == "norm") field = &emit.norm;
    else if (name == "residual") field = &emit.residual;
    else if (name == "quant") field = &emit.quant;
    else
      return InvalidArgument("unknown emit entry '", name,
                             "' (expected allreduce, norm, residual or quant)");
    if (*field) return InvalidArgument("emit entry '", name, "' appears twice");
    *field = true;
  }
  return emit;
}

std::vector<std::string> RoundingRecipe::Names() const {
  std::vector<std::string> names;
  if (norm_input_f32) names.push_back("norm_input_f32");
  if (weight_after_round) names.push_back("weight_after_round");
  if (weight_bias_in_weight_dtype) names.push_back("weight_bias_in_weight_dtype");
  if (scale_op_swapped) names.push_back("scale_op_swapped");
  if (scale_floor_after_div) names.push_back("scale_floor_after_div");
  if (ue8m0_floor) names.push_back("ue8m0_floor");
  if (residual_out_f32) names.push_back("residual_out_f32");
  if (norm_out_f32) names.push_back("norm_out_f32");
  return names;
}

StatusOr<RoundingRecipe> RoundingRecipe::FromNames(const std::vector<std::string>& names) {
  RoundingRecipe recipe;
  for (const std::string& name : names) {
    bool* field = nullptr;
    if (name == "norm_input_f32") field = &recipe.norm_input_f32;
    else if (name == "weight_after_round") field = &recipe.weight_after_round;
    else if (name == "weight_bias_in_weight_dtype") field = &recipe.weight_bias_in_weight_dtype;
    else if (name == "scale_op_swapped") field = &recipe.scale_op_swapped;
    else if (name == "scale_floor_after_div") field = &recipe.scale_floor_after_div;
    else if (name == "ue8m0_floor") field = &recipe.ue8m0_floor;
    else if (name == "residual_out_f32") field = &recipe.residual_out_f32;
    else if (name == "norm_out_f32") field = &recipe.norm_out_f32;
    else
      return InvalidArgument("unknown rounding entry '", name,
                             "' (expected norm_input_f32, weight_after_round, "
                             "weight_bias_in_weight_dtype, scale_op_swapped, "
                             "scale_floor_after_div, ue8m0_floor, residual_out_f32 or norm_out_f32)");
    if (*field) return InvalidArgument("rounding entry '", name, "' appears twice");
    *field = true;
  }
  return recipe;
}

Status QuantParams::Validate() const {
  if (scale_floor_after_div && !IsDynamicQuant(mode))
    return InvalidArgument("rounding scale_floor_after_div needs dynamic FP8 scales (mode ",
                           QuantModeName(mode), ")");
  if (ue8m0_floor && !(IsDynamicQuant(mode) && format == ScaleFormat::kUe8m0))
    return InvalidArgument("rounding ue8m0_floor needs dynamic FP8 scales in ue8m0 (mode ",
                           QuantModeName(mode), ", scale_fmt ", ScaleFormatName(format), ")");
  return Status::Ok();
}

Status AllreduceRmsnormSpec::Validate() const {
  if (!IsHalfType(act_dtype))
    return InvalidArgument("activation dtype must be bf16 or f16, got ", DTypeName(act_dtype));
  if (!(IsHalfType(weight_dtype) || weight_dtype == DType::kF32))
    return InvalidArgument("norm weight dtype must be bf16, f16 or f32, got ",
                           DTypeName(weight_dtype));
  if (hidden <= 0) return InvalidArgument("hidden size must be positive, got ", hidden);
  if (emit.empty()) return InvalidArgument("emit is empty: the fused op would produce nothing");
  if (emit.quant != (quant != QuantMode::kNone))
    return InvalidArgument(emit.quant ? "emit has quant but quant = none"
                                      : "quant is set but emit has no quant");
  if (local && emit.allreduce)
    return InvalidArgument("emit has allreduce but the op is local (no all_reduce to emit)");
  if (emit.residual && !has_residual)
    return InvalidArgument("emit has residual but the op has no residual operand");
  if (residual_f32_in && !has_residual)
    return InvalidArgument("the residual is f32 but the op has no residual operand");
  if (rounding.residual_out_f32 && !has_residual)
    return InvalidArgument("rounding residual_out_f32 needs a residual operand");
  if (rounding.norm_out_f32 && quant != QuantMode::kNone)
    return InvalidArgument("rounding norm_out_f32 takes quant none: the quantization reads the norm output "
                           "rounded to the activation dtype");
  if (quant == QuantMode::kFp8Group) {
    if (group_size <= 0) return InvalidArgument("group_size must be positive, got ", group_size);
    if (hidden % group_size != 0)
      return InvalidArgument("hidden ", hidden, " is not a multiple of group_size ", group_size);
  }
  TPFUSE_RETURN_IF_ERROR(quant_params().Validate());
  // In f32, as the kernels read them (an eps of 1e39 is an f32 inf).
  if (!(eps >= 0.0f) || !std::isfinite(eps))
    return InvalidArgument("eps must be finite and >= 0 in f32, got ", eps);
  if (!std::isfinite(weight_bias))
    return InvalidArgument("weight_bias must be finite in f32, got ", weight_bias);
  if (!std::isfinite(sum_scale))
    return InvalidArgument("sum_scale must be finite in f32, got ", sum_scale);
  if (!std::isfinite(first_scale) || !std::isfinite(second_scale))
    return InvalidArgument("first_scale and second_scale must be finite in f32, got ", first_scale, " and ",
                           second_scale);
  if (!second_sum && (first_scale != 1.0f || second_scale != 1.0f))
    return InvalidArgument("first_scale and second_scale scale the two sums of second_sum, which is not set");
  if (second_sum_into_residual && !(second_sum && has_residual && !residual_f32_in && first_scale == 1.0f))
    return InvalidArgument("second_sum_into_residual adds the second sum into a residual of the activation dtype: "
                           "it needs second_sum, such a residual, and no first_scale (the first sum's scale is "
                           "sum_scale)");
  if (second_sum && emit.allreduce)
    return InvalidArgument("emit has allreduce but the op sums two all_reduces (second_sum): there is no one "
                           "all_reduce result to emit");
  if (!(pre_eps >= 0.0f) || !std::isfinite(pre_eps))
    return InvalidArgument("pre_eps must be finite and >= 0 in f32, got ", pre_eps);
  if (!pre_residual_norm && pre_eps != 1e-6f)
    return InvalidArgument("pre_eps is the eps of the norm before the residual add (pre_residual_norm), which is "
                           "not set");
  if (bias_per_token && !has_bias)
    return InvalidArgument("bias_per_token says the bias is [T, H]: it needs has_bias");
  if (has_bias && (second_sum || pre_residual_norm))
    return InvalidArgument("has_bias adds a bias to the one all_reduce's sum: it takes no second_sum and no "
                           "pre_residual_norm");
  if (pre_residual_norm && !(has_residual && !second_sum && sum_scale == 1.0f))
    return InvalidArgument("pre_residual_norm norms the sum before the residual add: it needs a residual, and "
                           "takes no second_sum and no sum_scale");
  return Status::Ok();
}

int64_t AllreduceRmsnormSpec::ScaleGroupsPerRow() const {
  if (quant == QuantMode::kFp8Group) return hidden / group_size;
  if (quant == QuantMode::kFp8Token) return 1;
  return 0;
}

int64_t AllreduceRmsnormSpec::ScaleElements(int64_t tokens) const {
  const int64_t groups = ScaleGroupsPerRow();
  if (scale_layout == ScaleLayout::kCol) return groups * PaddedScaleTokens(tokens);
  return groups * tokens;
}

int AllreduceRmsnormSpec::NumResults() const {
  int n = int(emit.allreduce) + int(emit.norm) + int(emit.residual);
  if (emit.quant) n += IsDynamicQuant(quant) ? 2 : 1;
  return n;
}

std::string AllreduceRmsnormSpec::ToString() const {
  std::string emit_names;
  for (const std::string& n : emit.Names()) emit_names += (emit_names.empty() ? "" : ",") + n;
  std::string s = StrCat("allreduce_rmsnorm{", local ? "local " : "", "H=", hidden, " act=", DTypeName(act_dtype),
                         " w=", DTypeName(weight_dtype),
                         " residual=", has_residual ? (residual_f32_in ? "f32" : "yes") : "no",
                         " quant=", QuantModeName(quant));
  if (quant == QuantMode::kFp8Group) s += StrCat(" group=", group_size);
  if (IsDynamicQuant(quant))
    s += StrCat(" scales=", ScaleLayoutName(scale_layout), "/", ScaleFormatName(scale_fmt));
  if (weight_bias != 0.0f) s += StrCat(" weight_bias=", weight_bias);
  if (second_sum && second_sum_into_residual) s += StrCat(" second_sum=a+(residual+", second_scale, "*a2)");
  else if (second_sum) s += StrCat(" second_sum=", first_scale, "*a+", second_scale, "*a2");
  if (has_bias) s += bias_per_token ? " bias=[T,H]" : " bias";
  if (sum_scale != 1.0f) s += StrCat(" sum_scale=", sum_scale);
  if (pre_residual_norm) s += StrCat(" pre_residual_norm eps=", pre_eps);
  std::string rounding_names;
  for (const std::string& n : rounding.Names())
    rounding_names += (rounding_names.empty() ? "" : ",") + n;
  if (!rounding_names.empty()) s += StrCat(" rounding=", rounding_names);
  return s + StrCat(" emit=", emit_names, "}");
}

namespace {
template <class T>
bool Contains(const std::vector<T>& v, const T& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

std::string JoinInts(const std::vector<int>& v) {
  std::string s;
  for (int x : v) s += (s.empty() ? "" : ", ") + std::to_string(x);
  return s;
}
}  // namespace

std::string FusionCapabilities::WhyWorldSizeUnsupported(int world_size) const {
  if (world_sizes.empty() || Contains(world_sizes, world_size)) return {};
  return StrCat("world size ", world_size, " is not supported by backend ", backend,
                "'s fused op (it supports ", JoinInts(world_sizes), ")");
}

std::string FusionCapabilities::WhyUnsupported(const AllreduceRmsnormSpec& spec,
                                               int world_size) const {
  if (std::string why = WhyWorldSizeUnsupported(world_size); !why.empty()) return why;
  if (!act_dtypes.empty() && !Contains(act_dtypes, spec.act_dtype))
    return StrCat("activation dtype ", DTypeName(spec.act_dtype), " is not supported by backend ",
                  backend);
  if (!weight_dtypes.empty() && !Contains(weight_dtypes, spec.weight_dtype))
    return StrCat("norm weight dtype ", DTypeName(spec.weight_dtype),
                  " is not supported by backend ", backend);
  if (!quant_modes.empty() && !Contains(quant_modes, spec.quant))
    return StrCat("quant ", QuantModeName(spec.quant), " is not supported by backend ", backend);
  if (spec.quant == QuantMode::kFp8Group && !group_sizes.empty() &&
      !Contains(group_sizes, spec.group_size))
    return StrCat("group_size ", spec.group_size, " is not supported by backend ", backend,
                  " (it supports ", JoinInts(group_sizes), ")");
  if (IsDynamicQuant(spec.quant) && spec.scale_layout == ScaleLayout::kCol && !scale_col_major)
    return StrCat("column-major scales are not supported by backend ", backend);
  if (IsDynamicQuant(spec.quant) && spec.scale_fmt == ScaleFormat::kUe8m0 && !scale_ue8m0)
    return StrCat("ue8m0 scales are not supported by backend ", backend);
  if (!norm_out_f32 && spec.rounding.norm_out_f32)
    return StrCat("backend ", backend, "'s fused op gives the norm output in the activation dtype (",
                  DTypeName(spec.act_dtype), "): an f32 norm output is not supported");
  if (!residual_f32 && spec.f32_residual())
    return StrCat("backend ", backend, "'s fused op keeps the residual in the activation dtype (",
                  DTypeName(spec.act_dtype), "): an f32 residual ",
                  spec.residual_f32_in ? "operand" : "output", " is not supported");
  if (spec.second_sum && !second_sum)
    return StrCat("backend ", backend, "'s fused op reduces one all_reduce: two all_reduces summed before the "
                  "norm are not supported");
  if (spec.has_bias && !bias)
    return StrCat("backend ", backend, "'s fused op adds no bias to the sum");
  if (spec.bias_per_token && !bias_per_token)
    return StrCat("backend ", backend, "'s fused op adds a bias [H] to the sum, not one of x's shape [T, H]");
  if (spec.pre_residual_norm && !pre_residual_norm_world_sizes.empty() &&
      !Contains(pre_residual_norm_world_sizes, world_size))
    return StrCat("backend ", backend, "'s fused op runs a norm before the residual add at world size ",
                  JoinInts(pre_residual_norm_world_sizes), " only, not ", world_size);
  if (spec.emit.allreduce && !emit_allreduce)
    return StrCat("backend ", backend, " cannot return the all_reduce result from the fused op");
  if (spec.emit.norm && spec.emit.quant && !emit_norm_with_quant)
    return StrCat("backend ", backend, " cannot return the norm output and its quantization together");
  if (hidden_multiple > 1 && spec.hidden % hidden_multiple != 0)
    return StrCat("hidden ", spec.hidden, " is not a multiple of ", hidden_multiple,
                  " (backend ", backend, ")");
  if (max_hidden > 0 && spec.hidden > max_hidden)
    return StrCat("hidden ", spec.hidden, " is over backend ", backend, "'s limit of ", max_hidden);
  return {};
}

FusionCapabilities CpuFusionCapabilities() {
  FusionCapabilities caps;
  caps.backend = "cpu";
  caps.hidden_multiple = 1;
  return caps;  // empty lists: everything
}

}  // namespace tpfuse
