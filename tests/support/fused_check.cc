#include "support/fused_check.h"

#include <random>

#include "backends/cpu/reference_ops.h"
#include "common/numerics.h"
#include "common/tolerance.h"

namespace tpfuse::testing {

std::vector<std::string> FusedOutputNames(const AllreduceRmsnormSpec& spec) {
  std::vector<std::string> names;
  if (spec.emit.allreduce) names.push_back("allreduce");
  if (spec.emit.norm) names.push_back("norm");
  if (spec.emit.residual) names.push_back("residual");
  if (spec.emit.quant) {
    names.push_back("q");
    if (IsDynamicQuant(spec.quant)) names.push_back("s");
  }
  return names;
}

std::vector<HostTensor> FusedOutputShapes(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  std::vector<HostTensor> out;
  const int64_t h = spec.hidden;
  if (spec.emit.allreduce) out.emplace_back(spec.act_dtype, std::vector<int64_t>{tokens, h});
  if (spec.emit.norm) out.emplace_back(spec.norm_out_dtype(), std::vector<int64_t>{tokens, h});
  if (spec.emit.residual) out.emplace_back(spec.residual_out_dtype(), std::vector<int64_t>{tokens, h});
  if (spec.emit.quant) {
    out.emplace_back(DType::kF8E4M3, std::vector<int64_t>{tokens, h});
    if (IsDynamicQuant(spec.quant)) {
      const int64_t g = spec.ScaleGroupsPerRow();
      if (spec.scale_layout == ScaleLayout::kCol)
        out.emplace_back(DType::kF32, std::vector<int64_t>{g, PaddedScaleTokens(tokens)});
      else
        out.emplace_back(DType::kF32, std::vector<int64_t>{tokens, g});
    }
  }
  return out;
}

FusedInputs MakeFusedInputs(const AllreduceRmsnormSpec& spec, int64_t tokens, int world_size,
                            uint64_t seed, InputKind kind) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  const int64_t h = spec.hidden;
  FusedInputs in;
  for (int r = 0; r < world_size; ++r) {
    HostTensor x(spec.act_dtype, {tokens, h});
    for (int64_t i = 0; i < x.numel(); ++i) {
      float v;
      if (kind == InputKind::kRankTagged) {
        v = float((r + 1) * int((i * 7 + r * 3) % 11 - 5));  // small integers: exact sums
      } else {
        // Rows get different magnitudes so the norm's scale varies; some exact zeros and
        // negative zeros exercise the sentinel handling of one-shot.
        const float row_scale = 0.25f + 4.0f * float((i / h * 37) % 17) / 17.0f;
        v = normal(rng) * row_scale;
        const float u = uniform(rng);
        if (u < 0.002f) v = -0.0f;
        else if (u < 0.004f) v = 0.0f;
      }
      x.SetF32(i, v);
    }
    in.partials.push_back(std::move(x));
  }
  in.has_residual = spec.has_residual;
  if (spec.has_residual) {
    in.residual = HostTensor(spec.residual_in_dtype(), {tokens, h});
    for (int64_t i = 0; i < in.residual.numel(); ++i)
      in.residual.SetF32(i, kind == InputKind::kRankTagged ? float(int(i % 7) - 3) : normal(rng));
  }
  in.weight = HostTensor(spec.weight_dtype, {h});
  for (int64_t i = 0; i < h; ++i) {
    const float w = spec.weight_bias != 0.0f ? (uniform(rng) - 0.5f) : 0.5f + uniform(rng);
    in.weight.SetF32(i, w);
  }
  in.has_scale = spec.quant == QuantMode::kFp8Tensor;
  if (in.has_scale) {
    in.scale = HostTensor(DType::kF32, {});
    in.scale.SetF32(0, 0.004f + 0.01f * uniform(rng));  // some values saturate at +-448
  }
  // Drawn last, so the other inputs of a spec without it are as they were.
  for (int r = 0; spec.second_sum && r < world_size; ++r) {
    HostTensor x2(spec.act_dtype, {tokens, h});
    for (int64_t i = 0; i < x2.numel(); ++i)
      x2.SetF32(i, kind == InputKind::kRankTagged ? float((r + 2) * int((i * 5 + r) % 9 - 4)) : normal(rng));
    in.partials2.push_back(std::move(x2));
  }
  in.has_pre_weight = spec.pre_residual_norm;
  if (spec.pre_residual_norm) {
    in.pre_weight = HostTensor(spec.weight_dtype, {h});
    for (int64_t i = 0; i < h; ++i)
      in.pre_weight.SetF32(i, spec.weight_bias != 0.0f ? (uniform(rng) - 0.5f) : 0.5f + uniform(rng));
  }
  in.has_bias = spec.has_bias;
  if (spec.has_bias) {
    in.bias = spec.bias_per_token ? HostTensor(spec.act_dtype, {tokens, h}) : HostTensor(spec.act_dtype, {h});
    for (int64_t i = 0; i < in.bias.numel(); ++i)
      in.bias.SetF32(i, kind == InputKind::kRankTagged ? float(int(i % 5) - 2) : normal(rng));
  }
  return in;
}

std::vector<HostTensor> OracleOutputs(const AllreduceRmsnormSpec& spec, const FusedInputs& in) {
  auto out = cpu::AllreduceRmsnorm(spec, in.partials, in.has_residual ? &in.residual : nullptr,
                                   in.weight, in.has_scale ? &in.scale : nullptr, in.partials2,
                                   in.has_pre_weight ? &in.pre_weight : nullptr, in.has_bias ? &in.bias : nullptr);
  if (!out.ok()) return {};
  return std::move(out).value();
}

std::string CompareFusedOutputs(const AllreduceRmsnormSpec& spec, const FusedInputs& in,
                                const std::vector<HostTensor>& got,
                                const std::vector<HostTensor>& ref) {
  const std::vector<std::string> names = FusedOutputNames(spec);
  if (got.size() != names.size() || ref.size() != names.size())
    return StrCat("expected ", names.size(), " outputs, got ", got.size(), " and oracle ",
                  ref.size());
  std::string report;
  auto add = [&](const std::string& name, const CompareResult& r) {
    if (!r.ok) report += StrCat(name, ": ", r.summary, "\n");
  };
  for (size_t i = 0; i < names.size(); ++i) {
    if (got[i].shape() != ref[i].shape() || got[i].dtype() != ref[i].dtype()) {
      report += StrCat(names[i], ": got ", got[i].TypeString(), ", oracle ", ref[i].TypeString(), "\n");
      continue;
    }
    if (names[i] == "q") {
      Fp8ScaleMap map = Fp8ScaleMap::Tensor();
      const bool col = spec.scale_layout == ScaleLayout::kCol;
      if (spec.quant == QuantMode::kFp8Token) map = Fp8ScaleMap::Token(col);
      if (spec.quant == QuantMode::kFp8Group) map = Fp8ScaleMap::Group(spec.group_size, col);
      if (spec.quant == QuantMode::kFp8Tensor)
        add("q", CompareFp8Dequantized(got[i], in.scale, ref[i], in.scale, map));
      else
        add("q", CompareFp8Dequantized(got[i], got[i + 1], ref[i], ref[i + 1], map));
    } else if (names[i] == "s") {
      add("s", CompareScales(got[i], ref[i]));
    } else if (got[i].dtype() == DType::kF32) {
      // An f32 residual_out: a' + residual in f32, one operation on exact operands.
      add(names[i], CompareExact(got[i], ref[i]));
    } else {
      add(names[i], CompareHalf(got[i], ref[i]));
    }
  }
  return report;
}

std::string BitwiseDiff(const std::vector<HostTensor>& a, const std::vector<HostTensor>& b,
                        bool nan_is_nan) {
  if (a.size() != b.size()) return StrCat("output counts differ: ", a.size(), " vs ", b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const CompareResult r = CompareExact(a[i], b[i], nan_is_nan);
    if (!r.ok) return StrCat("output ", i, ": ", r.summary);
  }
  return "";
}

FusedBuffers FusedBuffersFor(const AllreduceRmsnormSpec& spec, const void* x, const void* residual,
                             const void* weight, const float* scale,
                             const std::vector<void*>& outputs) {
  FusedBuffers b;
  b.x = x;
  b.residual = residual;
  b.weight = weight;
  b.scale = scale;
  size_t i = 0;
  auto next = [&]() { return i < outputs.size() ? outputs[i++] : nullptr; };
  if (spec.emit.allreduce) b.allreduce_out = next();
  if (spec.emit.norm) b.norm_out = next();
  if (spec.emit.residual) b.residual_out = next();
  if (spec.emit.quant) {
    b.quant_out = next();
    if (IsDynamicQuant(spec.quant)) b.scale_out = static_cast<float*>(next());
  }
  return b;
}

}  // namespace tpfuse::testing
