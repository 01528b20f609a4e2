// The C ABI (libtpfuse.so) on the CPU: the reference fused op against the C++ oracle, the
// compiler, errors and the last-error message, and the CUDA entry points of a CPU-only build.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backends/cpu/reference_ops.h"
#include "common/tensor.h"
#include "support/shapes.h"
#include "tpfuse/tpfuse_c.h"

extern "C" int tpfuse_header_is_c_abi_version(void);

namespace tpfuse {
namespace {

HostTensor Random(DType dtype, std::vector<int64_t> shape, std::mt19937& rng) {
  HostTensor t(dtype, std::move(shape));
  std::normal_distribution<float> dist(0.0f, 1.5f);
  for (int64_t i = 0; i < t.numel(); ++i) t.SetF32(i, dist(rng));
  return t;
}

struct Case {
  const char* name;
  int32_t quant;
  uint32_t emit;
  int32_t residual;  // TPFUSE_RESIDUAL_*
  int32_t scale_layout = TPFUSE_SCALE_LAYOUT_ROW;
  int32_t scale_fmt = TPFUSE_SCALE_FMT_F32;
  int32_t weight_dtype = TPFUSE_DTYPE_BF16;
  uint32_t rounding = 0;
  int32_t local = 0;
  float sum_scale = 1.0f;
  int32_t second_sum = 0;
  float first_scale = 1.0f;
  float second_scale = 1.0f;
  float pre_eps = 0.0f;  // > 0: pre_residual_norm with this eps
  int32_t bias = 0;      // has_bias (a tpfuse_bias_t)
};

const Case kCases[] = {
    {"norm", TPFUSE_QUANT_NONE, TPFUSE_EMIT_NORM, false},
    {"all_results", TPFUSE_QUANT_NONE,
     TPFUSE_EMIT_ALLREDUCE | TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL, true},
    {"tensor", TPFUSE_QUANT_FP8_TENSOR, TPFUSE_EMIT_RESIDUAL | TPFUSE_EMIT_QUANT, true},
    {"token", TPFUSE_QUANT_FP8_TOKEN, TPFUSE_EMIT_NORM | TPFUSE_EMIT_QUANT, true},
    {"group_col_ue8m0_f32_weight", TPFUSE_QUANT_FP8_GROUP,
     TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL | TPFUSE_EMIT_QUANT, true, TPFUSE_SCALE_LAYOUT_COL,
     TPFUSE_SCALE_FMT_UE8M0, TPFUSE_DTYPE_F32},
    {"rounding_recipe", TPFUSE_QUANT_FP8_TENSOR, TPFUSE_EMIT_NORM | TPFUSE_EMIT_QUANT, true,
     TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16,
     TPFUSE_ROUNDING_NORM_INPUT_F32 | TPFUSE_ROUNDING_WEIGHT_AFTER_ROUND |
         TPFUSE_ROUNDING_SCALE_OP_SWAPPED},
    {"local", TPFUSE_QUANT_FP8_GROUP, TPFUSE_EMIT_NORM | TPFUSE_EMIT_QUANT, true,
     TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16, 0, 1},
    {"token_floor_after_div", TPFUSE_QUANT_FP8_TOKEN, TPFUSE_EMIT_NORM | TPFUSE_EMIT_QUANT, true,
     TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16,
     TPFUSE_ROUNDING_SCALE_FLOOR_AFTER_DIV},
    {"group_ue8m0_floor", TPFUSE_QUANT_FP8_GROUP, TPFUSE_EMIT_QUANT, true, TPFUSE_SCALE_LAYOUT_COL,
     TPFUSE_SCALE_FMT_UE8M0, TPFUSE_DTYPE_BF16, TPFUSE_ROUNDING_UE8M0_FLOOR},
    {"sum_scale", TPFUSE_QUANT_NONE, TPFUSE_EMIT_ALLREDUCE | TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL, true,
     TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16, 0, 0, 0.22f},
    {"f32_residual_stream", TPFUSE_QUANT_FP8_TOKEN, TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL | TPFUSE_EMIT_QUANT,
     TPFUSE_RESIDUAL_F32, TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16,
     TPFUSE_ROUNDING_NORM_INPUT_F32 | TPFUSE_ROUNDING_RESIDUAL_OUT_F32},
    {"f32_residual_out", TPFUSE_QUANT_NONE, TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL, TPFUSE_RESIDUAL_ACT,
     TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16, TPFUSE_ROUNDING_RESIDUAL_OUT_F32},
    {"f32_norm_out", TPFUSE_QUANT_NONE, TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL, TPFUSE_RESIDUAL_ACT,
     TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_F32,
     TPFUSE_ROUNDING_NORM_INPUT_F32 | TPFUSE_ROUNDING_RESIDUAL_OUT_F32 | TPFUSE_ROUNDING_NORM_OUT_F32},
    {"second_sum", TPFUSE_QUANT_FP8_TOKEN, TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL | TPFUSE_EMIT_QUANT, true,
     TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16, 0, 0, 0.22f, TPFUSE_SECOND_SUM_ADDED, 0.5f,
     3.0f},
    {"second_sum_into_residual", TPFUSE_QUANT_FP8_GROUP, TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL | TPFUSE_EMIT_QUANT,
     true, TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16, 0, 0, 0.5f,
     TPFUSE_SECOND_SUM_INTO_RESIDUAL, 1.0f, 1.5f},
    {"pre_residual_norm", TPFUSE_QUANT_FP8_GROUP, TPFUSE_EMIT_ALLREDUCE | TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL |
     TPFUSE_EMIT_QUANT, true, TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16,
     TPFUSE_ROUNDING_WEIGHT_AFTER_ROUND, 0, 1.0f, 0, 1.0f, 1.0f, 1e-5f},
    {"bias_scaled", TPFUSE_QUANT_FP8_TOKEN, TPFUSE_EMIT_ALLREDUCE | TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL |
     TPFUSE_EMIT_QUANT, true, TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16, 0, 0, 0.22f, 0, 1.0f,
     1.0f, 0.0f, 1},
    {"bias_local", TPFUSE_QUANT_NONE, TPFUSE_EMIT_NORM, false, TPFUSE_SCALE_LAYOUT_ROW, TPFUSE_SCALE_FMT_F32,
     TPFUSE_DTYPE_BF16, 0, 1, 1.0f, 0, 1.0f, 1.0f, 0.0f, 1},
    {"bias_per_token", TPFUSE_QUANT_FP8_GROUP, TPFUSE_EMIT_ALLREDUCE | TPFUSE_EMIT_RESIDUAL | TPFUSE_EMIT_QUANT, true,
     TPFUSE_SCALE_LAYOUT_COL, TPFUSE_SCALE_FMT_F32, TPFUSE_DTYPE_BF16, 0, 0, 1.0f, 0, 1.0f, 1.0f, 0.0f,
     TPFUSE_BIAS_PER_TOKEN},
};

AllreduceRmsnormSpec CppSpec(const Case& c, int64_t hidden) {
  AllreduceRmsnormSpec s;
  s.hidden = hidden;
  s.weight_dtype = c.weight_dtype == TPFUSE_DTYPE_F32 ? DType::kF32 : DType::kBF16;
  s.local = c.local != 0;
  s.has_residual = c.residual != TPFUSE_RESIDUAL_NONE;
  s.residual_f32_in = c.residual == TPFUSE_RESIDUAL_F32;
  s.quant = QuantMode(c.quant);  // the C codes follow the C++ enum's order
  s.scale_layout = c.scale_layout == TPFUSE_SCALE_LAYOUT_COL ? ScaleLayout::kCol : ScaleLayout::kRow;
  s.scale_fmt = c.scale_fmt == TPFUSE_SCALE_FMT_UE8M0 ? ScaleFormat::kUe8m0 : ScaleFormat::kF32;
  s.emit.allreduce = c.emit & TPFUSE_EMIT_ALLREDUCE;
  s.emit.norm = c.emit & TPFUSE_EMIT_NORM;
  s.emit.residual = c.emit & TPFUSE_EMIT_RESIDUAL;
  s.emit.quant = c.emit & TPFUSE_EMIT_QUANT;
  s.rounding.norm_input_f32 = c.rounding & TPFUSE_ROUNDING_NORM_INPUT_F32;
  s.rounding.weight_after_round = c.rounding & TPFUSE_ROUNDING_WEIGHT_AFTER_ROUND;
  s.rounding.scale_op_swapped = c.rounding & TPFUSE_ROUNDING_SCALE_OP_SWAPPED;
  s.rounding.scale_floor_after_div = c.rounding & TPFUSE_ROUNDING_SCALE_FLOOR_AFTER_DIV;
  s.rounding.ue8m0_floor = c.rounding & TPFUSE_ROUNDING_UE8M0_FLOOR;
  s.rounding.residual_out_f32 = c.rounding & TPFUSE_ROUNDING_RESIDUAL_OUT_F32;
  s.rounding.norm_out_f32 = c.rounding & TPFUSE_ROUNDING_NORM_OUT_F32;
  s.sum_scale = c.sum_scale;
  s.second_sum = c.second_sum != TPFUSE_SECOND_SUM_NONE;
  s.second_sum_into_residual = c.second_sum == TPFUSE_SECOND_SUM_INTO_RESIDUAL;
  s.first_scale = c.first_scale;
  s.second_scale = c.second_scale;
  s.pre_residual_norm = c.pre_eps > 0.0f;
  if (s.pre_residual_norm) s.pre_eps = c.pre_eps;
  s.has_bias = c.bias != TPFUSE_BIAS_NONE;
  s.bias_per_token = c.bias == TPFUSE_BIAS_PER_TOKEN;
  return s;
}

tpfuse_spec_t CSpec(const Case& c, int64_t hidden) {
  tpfuse_spec_t s;
  tpfuse_spec_init(&s);
  s.hidden = hidden;
  s.weight_dtype = c.weight_dtype;
  s.local = c.local;
  s.has_residual = c.residual;
  s.quant = c.quant;
  s.scale_layout = c.scale_layout;
  s.scale_fmt = c.scale_fmt;
  s.emit = c.emit;
  s.rounding = c.rounding;
  s.sum_scale = c.sum_scale;
  s.second_sum = c.second_sum;
  s.first_scale = c.first_scale;
  s.second_scale = c.second_scale;
  s.pre_residual_norm = c.pre_eps > 0.0f;
  if (s.pre_residual_norm) s.pre_eps = c.pre_eps;
  s.has_bias = c.bias;
  return s;
}

TEST(CApi, VersionAndHeaderCompileAsC) {
  EXPECT_EQ(tpfuse_abi_version(), TPFUSE_C_ABI_VERSION);
  EXPECT_EQ(tpfuse_header_is_c_abi_version(), TPFUSE_C_ABI_VERSION);
  EXPECT_STRNE(tpfuse_version(), "");
}

TEST(CApi, SpecInitHasContract3Defaults) {
  tpfuse_spec_t s;
  std::memset(&s, 0xff, sizeof(s));
  tpfuse_spec_init(&s);
  const AllreduceRmsnormSpec d;
  EXPECT_EQ(s.act_dtype, TPFUSE_DTYPE_BF16);
  EXPECT_EQ(s.weight_dtype, TPFUSE_DTYPE_BF16);
  EXPECT_EQ(s.eps, d.eps);
  EXPECT_EQ(s.group_size, d.group_size);
  EXPECT_EQ(s.local, 0);
  EXPECT_EQ(s.rounding, 0u);
  EXPECT_EQ(s.emit, uint32_t(TPFUSE_EMIT_NORM));
  EXPECT_EQ(s.sum_scale, 1.0f);
  EXPECT_EQ(s.second_sum, TPFUSE_SECOND_SUM_NONE);
  EXPECT_EQ(s.first_scale, 1.0f);
  EXPECT_EQ(s.second_scale, 1.0f);
  EXPECT_EQ(s.pre_residual_norm, 0);
  EXPECT_EQ(s.pre_eps, d.pre_eps);
  EXPECT_EQ(s.has_bias, 0);
  // hidden is the caller's to set.
  EXPECT_EQ(tpfuse_spec_validate(&s), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tpfuse_last_error()).find("hidden"), std::string::npos) << tpfuse_last_error();
  s.hidden = 4096;
  EXPECT_EQ(tpfuse_spec_validate(&s), TPFUSE_OK);
  EXPECT_STREQ(tpfuse_last_error(), "");
}

TEST(CApi, ReferenceMatchesTheOracleBitwise) {
  std::mt19937 rng(20261203);
  for (const Case& c : kCases) {
    for (int world_size : {1, 2, 3}) {
      if (c.local && world_size != 1) continue;
      if ((c.emit & TPFUSE_EMIT_ALLREDUCE) && world_size == 1 && c.local) continue;
      for (int64_t tokens : testing::kQuickTokenCounts) {
        const int64_t hidden = 256;
        SCOPED_TRACE(::testing::Message() << c.name << " N=" << world_size << " T=" << tokens);
        const AllreduceRmsnormSpec spec = CppSpec(c, hidden);
        const tpfuse_spec_t cspec = CSpec(c, hidden);
        std::vector<HostTensor> xs, x2s;
        for (int r = 0; r < world_size; ++r) xs.push_back(Random(spec.act_dtype, {tokens, hidden}, rng));
        for (int r = 0; spec.second_sum && r < world_size; ++r)
          x2s.push_back(Random(spec.act_dtype, {tokens, hidden}, rng));
        const HostTensor residual = Random(spec.residual_in_dtype(), {tokens, hidden}, rng);
        const HostTensor w = Random(spec.weight_dtype, {hidden}, rng);
        const HostTensor pre_w = Random(spec.weight_dtype, {hidden}, rng);
        const HostTensor bias =
            Random(spec.act_dtype, spec.bias_per_token ? std::vector<int64_t>{tokens, hidden} : std::vector<int64_t>{hidden}, rng);
        HostTensor scale(DType::kF32, {});
        scale.SetF32(0, 0.0234375f);
        StatusOr<std::vector<HostTensor>> expected = cpu::AllreduceRmsnorm(
            spec, xs, c.residual ? &residual : nullptr, w,
            spec.quant == QuantMode::kFp8Tensor ? &scale : nullptr, x2s,
            spec.pre_residual_norm ? &pre_w : nullptr, spec.has_bias ? &bias : nullptr);
        ASSERT_TRUE(expected.ok()) << expected.status().ToString();

        // Outputs poisoned; every byte must be written.
        HostTensor ar(spec.act_dtype, {tokens, hidden}), y(spec.norm_out_dtype(), {tokens, hidden}),
            h(spec.residual_out_dtype(), {tokens, hidden}), q(DType::kF8E4M3, {tokens, hidden});
        int64_t scale_elements = -1;
        ASSERT_EQ(tpfuse_spec_scale_elements(&cspec, tokens, &scale_elements), TPFUSE_OK);
        EXPECT_EQ(scale_elements, spec.ScaleElements(tokens));
        HostTensor s(DType::kF32, {scale_elements});
        for (HostTensor* t : {&ar, &y, &h, &q, &s}) t->FillBytes(0x7f);
        std::vector<const void*> partials;
        for (const HostTensor& x : xs) partials.push_back(x.data());
        for (const HostTensor& x : x2s) partials.push_back(x.data());  // after x's (second_sum)
        tpfuse_buffers_t b{};
        b.residual = c.residual ? residual.data() : nullptr;
        b.weight = w.data();
        b.pre_weight = spec.pre_residual_norm ? pre_w.data() : nullptr;
        b.bias = spec.has_bias ? bias.data() : nullptr;
        b.scale = spec.quant == QuantMode::kFp8Tensor ? scale.data_as<float>() : nullptr;
        b.allreduce_out = spec.emit.allreduce ? ar.data() : nullptr;
        b.norm_out = spec.emit.norm ? y.data() : nullptr;
        b.residual_out = spec.emit.residual ? h.data() : nullptr;
        b.quant_out = spec.emit.quant ? q.data() : nullptr;
        b.scale_out = IsDynamicQuant(spec.quant) ? s.data_as<float>() : nullptr;
        ASSERT_EQ(tpfuse_reference_allreduce_rmsnorm(&cspec, tokens, world_size, partials.data(), &b),
                  TPFUSE_OK)
            << tpfuse_last_error();

        std::vector<const HostTensor*> got;
        if (spec.emit.allreduce) got.push_back(&ar);
        if (spec.emit.norm) got.push_back(&y);
        if (spec.emit.residual) got.push_back(&h);
        if (spec.emit.quant) got.push_back(&q);
        if (IsDynamicQuant(spec.quant)) got.push_back(&s);
        ASSERT_EQ(got.size(), expected->size());
        for (size_t i = 0; i < got.size(); ++i) {
          const HostTensor& e = (*expected)[i];
          ASSERT_EQ(got[i]->nbytes(), e.nbytes()) << "result " << i;
          EXPECT_EQ(std::memcmp(got[i]->data(), e.data(), e.nbytes()), 0) << "result " << i;
        }
      }
    }
  }
}

TEST(CApi, ReferenceNamesTheMissingBuffer) {
  tpfuse_spec_t spec;
  tpfuse_spec_init(&spec);
  spec.hidden = 128;
  spec.has_residual = 1;
  spec.quant = TPFUSE_QUANT_FP8_TOKEN;
  spec.emit = TPFUSE_EMIT_NORM | TPFUSE_EMIT_QUANT;
  std::vector<uint16_t> x(128, 0x3f80), w(128, 0x3f80), res(128, 0x3f80), y(128);
  std::vector<uint8_t> q(128);
  const void* partials[] = {x.data()};
  tpfuse_buffers_t b{};
  b.weight = w.data();
  b.norm_out = y.data();
  b.quant_out = q.data();
  EXPECT_EQ(tpfuse_reference_allreduce_rmsnorm(&spec, 1, 1, partials, &b), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "buffers.residual is null");
  b.residual = res.data();
  EXPECT_EQ(tpfuse_reference_allreduce_rmsnorm(&spec, 1, 1, partials, &b), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "buffers.scale_out is null but the spec emits it");
  EXPECT_EQ(tpfuse_reference_allreduce_rmsnorm(&spec, 0, 1, partials, &b), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "tokens must be >= 1, got 0");
  EXPECT_EQ(tpfuse_reference_allreduce_rmsnorm(nullptr, 1, 1, partials, &b), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "spec is null");
}

TEST(CApi, SpecRejectsUnknownCodesAndInconsistency) {
  tpfuse_spec_t spec;
  tpfuse_spec_init(&spec);
  spec.hidden = 4096;
  spec.quant = 7;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "spec.quant: unknown quant mode code 7");
  spec.quant = TPFUSE_QUANT_FP8_GROUP;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tpfuse_last_error()).find("quant is set but emit has no quant"),
            std::string::npos)
      << tpfuse_last_error();
  spec.emit = TPFUSE_EMIT_QUANT | 64;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "spec.emit: unknown bits 0x40");
  spec.emit = TPFUSE_EMIT_QUANT;
  spec.group_size = 100;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tpfuse_last_error()).find("not a multiple of group_size 100"),
            std::string::npos)
      << tpfuse_last_error();
  spec.group_size = 128;
  spec.sum_scale = std::numeric_limits<float>::infinity();
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tpfuse_last_error()).find("sum_scale must be finite"), std::string::npos)
      << tpfuse_last_error();
  spec.sum_scale = 1.0f;
  spec.scale_layout = TPFUSE_SCALE_LAYOUT_COL;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_OK);
  int64_t elements = 0;
  ASSERT_EQ(tpfuse_spec_scale_elements(&spec, 5, &elements), TPFUSE_OK);
  EXPECT_EQ(elements, 32 * 8);  // [H / 128, pad4(5)]
  spec.has_residual = 3;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "spec.has_residual: unknown residual code 3");
  spec.has_residual = TPFUSE_RESIDUAL_NONE;
  // The norm before the residual add: 0 or 1, and only with a residual to add its output to.
  spec.pre_residual_norm = 2;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "spec.pre_residual_norm must be 0 or 1, got 2");
  spec.pre_residual_norm = 1;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tpfuse_last_error()).find("pre_residual_norm norms the sum before the residual add: it needs a "
                                                  "residual"),
            std::string::npos)
      << tpfuse_last_error();
  spec.has_residual = TPFUSE_RESIDUAL_ACT;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_OK) << tpfuse_last_error();
  spec.pre_residual_norm = 0;
  spec.has_residual = TPFUSE_RESIDUAL_NONE;
  spec.rounding = TPFUSE_ROUNDING_RESIDUAL_OUT_F32;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tpfuse_last_error()).find("residual_out_f32 needs a residual operand"),
            std::string::npos)
      << tpfuse_last_error();
  spec.rounding = TPFUSE_ROUNDING_NORM_OUT_F32;  // beside the quant of `spec` (fp8_group)
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tpfuse_last_error()).find("norm_out_f32 takes quant none"), std::string::npos)
      << tpfuse_last_error();
  spec.rounding = 256;
  EXPECT_EQ(tpfuse_spec_validate(&spec), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "spec.rounding: unknown bits 0x100");
}

TEST(CApi, LastErrorIsPerThread) {
  tpfuse_spec_t bad;
  tpfuse_spec_init(&bad);  // hidden 0
  ASSERT_EQ(tpfuse_spec_validate(&bad), TPFUSE_ERR_INVALID_ARGUMENT);
  const std::string here = tpfuse_last_error();
  std::string there = "unset";
  std::thread other([&] {
    tpfuse_spec_t good;
    tpfuse_spec_init(&good);
    good.hidden = 128;
    EXPECT_EQ(tpfuse_spec_validate(&good), TPFUSE_OK);
    there = tpfuse_last_error();
  });
  other.join();
  EXPECT_EQ(there, "");
  EXPECT_EQ(std::string(tpfuse_last_error()), here);
  EXPECT_FALSE(here.empty());
}

constexpr char kLayer[] = R"(func @layer(%x: bf16[T,4096], %res: bf16[T,4096], %g: bf16[4096]) {
  %ar = all_reduce(%x)
  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
  %q, %s = quant_fp8(%y) {mode = "group", group_size = 128}
  return %q, %s, %r
}
)";

TEST(CApi, CompileFusesAndReports) {
  tpfuse_compile_options_t options;
  tpfuse_compile_options_init(&options);
  EXPECT_EQ(options.world_size, 2);
  char* text = nullptr;
  char* report = nullptr;
  ASSERT_EQ(tpfuse_compile(kLayer, &options, &text, &report), TPFUSE_OK) << tpfuse_last_error();
  ASSERT_NE(text, nullptr);
  ASSERT_NE(report, nullptr);
  const std::string fused = text;
  EXPECT_NE(fused.find("allreduce_rmsnorm("), std::string::npos) << fused;
  EXPECT_EQ(fused.find("all_reduce("), std::string::npos) << fused;
  const nlohmann::json j = nlohmann::json::parse(report);
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_EQ(j["ops_before"]["all_reduce"], 1);
  EXPECT_EQ(j["ops_after"]["allreduce_rmsnorm"], 1);
  ASSERT_EQ(j["fusions"].size(), 1u);
  EXPECT_EQ(j["fusions"][0]["anchor"], "ar");
  EXPECT_EQ(j["fusions"][0]["quant"], "fp8_group");
  EXPECT_EQ(j["fusions"][0]["emit"], nlohmann::json::array({"residual", "quant"}));
  EXPECT_TRUE(j["rejections"].empty());
  tpfuse_free(text);
  tpfuse_free(report);

  // Text only; the report is not wanted.
  text = nullptr;
  ASSERT_EQ(tpfuse_compile(kLayer, nullptr, &text, nullptr), TPFUSE_OK);
  EXPECT_EQ(std::string(text), fused);
  tpfuse_free(text);
}

TEST(CApi, CompileRecordsRejectionsAndNamesParseErrors) {
  tpfuse_compile_options_t options;
  tpfuse_compile_options_init(&options);
  options.world_size = 3;
  options.backend = TPFUSE_BACKEND_CUDA;
  char* report = nullptr;
  ASSERT_EQ(tpfuse_compile(kLayer, &options, nullptr, &report), TPFUSE_OK) << tpfuse_last_error();
  const nlohmann::json j = nlohmann::json::parse(report);
  tpfuse_free(report);
  EXPECT_EQ(j["backend"], "cuda");
  EXPECT_EQ(j["fusions"].size() + j["rejections"].size(), 1u);
  for (const auto& r : j["rejections"]) EXPECT_FALSE(r["reason"].get<std::string>().empty());

  options.source_name = "bad.tpg";
  char* text = reinterpret_cast<char*>(0x1);  // left alone on failure
  EXPECT_EQ(tpfuse_compile("func @f(%x: bf16[T,8]) {\n  %y = all_reduse(%x)\n  return %y\n}\n",
                           &options, &text, nullptr),
            TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(text, reinterpret_cast<char*>(0x1));
  EXPECT_EQ(std::string(tpfuse_last_error()).rfind("bad.tpg:2:", 0), 0u) << tpfuse_last_error();
  options.world_size = 0;
  EXPECT_EQ(tpfuse_compile(kLayer, &options, nullptr, nullptr), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "world size must be >= 1, got 0");
}

TEST(CApi, CompilePassesTheLocalFusionMode) {
  constexpr char kLocal[] = R"(func @norm(%x: bf16[T,256], %g: bf16[256]) {
  %y = rms_norm(%x, %g) {eps = 1e-6}
  return %y
}
)";
  tpfuse_compile_options_t options;
  tpfuse_compile_options_init(&options);
  // AUTO at world size 2 (the default): on CUDA, where the fused local op was measured faster
  // than Inductor's kernel; not on the CPU.
  const struct {
    int32_t mode;
    int32_t backend;
    bool fuses;
  } cases[] = {{TPFUSE_FUSE_LOCAL_OFF, TPFUSE_BACKEND_CPU, false},
               {TPFUSE_FUSE_LOCAL_ON, TPFUSE_BACKEND_CPU, true},
               {TPFUSE_FUSE_LOCAL_AUTO, TPFUSE_BACKEND_CPU, false},
               {TPFUSE_FUSE_LOCAL_AUTO, TPFUSE_BACKEND_CUDA, true},
               {TPFUSE_FUSE_LOCAL_OFF, TPFUSE_BACKEND_CUDA, false}};
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "mode " << c.mode << ", backend " << c.backend);
    options.fuse_local = c.mode;
    options.backend = c.backend;
    char* report = nullptr;
    ASSERT_EQ(tpfuse_compile(kLocal, &options, nullptr, &report), TPFUSE_OK) << tpfuse_last_error();
    const nlohmann::json j = nlohmann::json::parse(report);
    tpfuse_free(report);
    // The report says whether the compiler fused local chains under these options.
    EXPECT_EQ(j["fuse_local"], c.fuses) << j.dump();
    EXPECT_EQ(j["fusions"].size(), c.fuses ? 1u : 0u) << j.dump();
  }
  options.backend = TPFUSE_BACKEND_CPU;
  options.fuse_local = 9;
  EXPECT_EQ(tpfuse_compile(kLocal, &options, nullptr, nullptr), TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "options.fuse_local: unknown code 9");
}

TEST(CApi, CudaEntryPointsOfACpuBuild) {
  if (tpfuse_has_cuda()) GTEST_SKIP() << "built with CUDA: the GPU tests cover these";
  uint8_t id[TPFUSE_UNIQUE_ID_BYTES];
  EXPECT_EQ(tpfuse_get_unique_id(id), TPFUSE_ERR_UNIMPLEMENTED);
  EXPECT_NE(std::string(tpfuse_last_error()).find("built without CUDA"), std::string::npos);
  tpfuse_comm_t* comm = reinterpret_cast<tpfuse_comm_t*>(0x1);
  EXPECT_EQ(tpfuse_comm_create(id, 0, 1, 0, nullptr, &comm), TPFUSE_ERR_UNIMPLEMENTED);
  EXPECT_EQ(comm, nullptr);
  tpfuse_spec_t spec;
  tpfuse_spec_init(&spec);
  spec.hidden = 128;
  tpfuse_buffers_t b{};
  EXPECT_EQ(tpfuse_allreduce_rmsnorm_local(&spec, 1, &b, nullptr), TPFUSE_ERR_UNIMPLEMENTED);
  // Argument errors come before the build's limits.
  EXPECT_EQ(tpfuse_allreduce_rmsnorm(nullptr, &spec, 1, &b, nullptr, TPFUSE_STRATEGY_AUTO),
            TPFUSE_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(tpfuse_last_error(), "comm is null");
  tpfuse_comm_destroy(nullptr);
  EXPECT_STREQ(tpfuse_status_name(TPFUSE_ERR_UNIMPLEMENTED), "unimplemented");
}

}  // namespace
}  // namespace tpfuse
