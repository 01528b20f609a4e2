// The forms mixed: one all_reduce site written with a random choice at every point where model
// code differs (rank 2 or 3, a no-op view, the residual add's operand order or vLLM's f32 sum,
// pow(v, 2) or v * v, rsqrt or pow(-0.5), each multiply's operand order, the weight's dtype,
// Gemma's + 1 in f32 or in the weight's dtype, the weight multiply before or after the cast,
// and the quant: none, static dividing or multiplying by the reciprocal, per token or per group
// with the scale floored before or after the division or rounded up to a power of two, divided
// or multiplied by its reciprocal, with or without the clamp). Every mix fuses into one op with
// the recipe the form implies, and the fused graph computes the same bits as the written one on
// the CPU oracle. The lists of forms test each point; this tests them together.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "passes_test_util.h"

namespace tpfuse::passes::testing {
namespace {

struct Site {
  std::string text;                   // the func
  std::vector<std::string> rounding;  // the fused op's recipe, sorted as RoundingRecipe::Names
  std::string quant = "none";
  std::string scale_fmt = "f32";
  std::string description;
};

// One random site. Names are fixed (one site per func); `pick(n)` draws from [0, n).
Site RandomSite(std::mt19937_64& rng) {
  const auto pick = [&](int n) { return int(rng() % uint64_t(n)); };
  const auto coin = [&] { return pick(2) == 1; };
  Site site;
  std::string& d = site.description;
  const std::string act = coin() ? "bf16" : "f16";
  const int hidden = coin() ? 256 : 128;
  const std::string h = std::to_string(hidden);
  // Rank 3 ([2, T, H], a batch of sequences) or rank 2 ([T, H]); `lead` is the dims before H.
  const bool rank3 = coin();
  const std::string lead = rank3 ? "2, T" : "T";
  const std::string w_dtype = coin() ? act : "f32";
  const int residual = pick(3);  // 0: none, 1: add in the activation dtype, 2: vLLM's f32 sum
  const int bias = pick(3);      // 0: none, 1: + 1 in f32, 2: + 1 in the weight's dtype
  // After the cast (LlamaRMSNorm) only where the product stays in the activation dtype.
  const bool after_cast = w_dtype == act && bias != 1 && coin();
  const int quant = pick(5);  // none, static div, static mul reciprocal, token, group
  const bool return_norm = quant == 0 || coin();
  const bool return_residual = residual != 0 && coin();

  std::string params = "%x: " + act + "[" + lead + ", " + h + "], %g: " + w_dtype + "[" + h + "]";
  if (residual != 0) params += ", %res: " + act + "[" + lead + ", " + h + "]";
  if (quant == 1 || quant == 2) params += ", %scale: f32[]";
  std::string body = "  %ar = all_reduce(%x)\n";
  std::string a = "%ar";
  if (coin()) {
    body += "  %arv = view(%ar) {shape = [" + lead + ", " + h + "]}\n";
    a = "%arv";
    d += "view ";
  }
  std::string v;         // the f32 value normalized
  std::string h_out;     // the residual output, if any
  if (residual == 2) {
    body += "  %af = cast(" + a + ") {to = f32}\n  %rf = cast(%res) {to = f32}\n";
    body += coin() ? "  %hs = add(%af, %rf)\n" : "  %hs = add(%rf, %af)\n";
    v = "%hs";
    if (return_residual) {
      body += "  %h = cast(%hs) {to = " + act + "}\n";
      h_out = "%h";
    }
    site.rounding.push_back("norm_input_f32");
    d += "f32-sum ";
  } else {
    std::string input = a;
    if (residual == 1) {
      body += coin() ? "  %h = add(" + a + ", %res)\n" : "  %h = add(%res, " + a + ")\n";
      input = "%h";
      h_out = return_residual ? "%h" : "";
      d += "add ";
    }
    body += "  %v = cast(" + input + ") {to = f32}\n";
    v = "%v";
  }
  body += coin() ? "  %sq = pow(" + v + ") {exponent = 2}\n"
                 : "  %sq = mul(" + v + ", " + v + ")\n";
  body += "  %ms = mean(%sq) {dim = -1, keepdim = true}\n  %me = add(%ms) {scalar = 1e-6}\n";
  if (coin()) {
    body += "  %r = rsqrt(%me)\n";
  } else {
    body += "  %r = pow(%me) {exponent = -0.5}\n";
    d += "pow-0.5 ";
  }
  body += coin() ? "  %n = mul(" + v + ", %r)\n" : "  %n = mul(%r, " + v + ")\n";
  // The weight as the multiply reads it.
  std::string w = "%g";
  if (bias == 2 && w_dtype != "f32") {
    body += "  %gb = add(%g) {scalar = 1}\n";
    w = "%gb";
    site.rounding.push_back("weight_bias_in_weight_dtype");
    d += "bias-in-weight-dtype ";
  }
  const auto weight_mul = [&](const std::string& out, const std::string& value,
                              const std::string& weight) {
    body += coin() ? "  " + out + " = mul(" + value + ", " + weight + ")\n"
                   : "  " + out + " = mul(" + weight + ", " + value + ")\n";
  };
  if (after_cast) {
    body += "  %nc = cast(%n) {to = " + act + "}\n";
    weight_mul("%y", "%nc", w);
    site.rounding.push_back("weight_after_round");
    d += "weight-after-cast ";
  } else {
    if (w_dtype != "f32") {
      body += "  %gf = cast(" + w + ") {to = f32}\n";
      w = "%gf";
    }
    if (bias == 1 || (bias == 2 && w_dtype == "f32")) {
      body += "  %g1 = add(" + w + ") {scalar = 1}\n";
      w = "%g1";
      d += "bias-in-f32 ";
    }
    weight_mul("%nw", "%n", w);
    body += "  %y = cast(%nw) {to = " + act + "}\n";
  }
  d += "w " + w_dtype + " ";
  std::vector<std::string> outputs;
  if (return_norm) outputs.push_back("%y");
  if (!h_out.empty()) outputs.push_back(h_out);
  std::string y = "%y";
  if (quant != 0 && coin()) {
    body += "  %yf = cast(%y) {to = f32}\n";
    y = "%yf";
  }
  const bool clamp = coin();
  const auto clamp_and_cast = [&](const std::string& in) {
    std::string q = in;
    if (clamp) {
      body += "  %c = clamp(" + in + ") {min = -448, max = 448}\n";
      q = "%c";
    }
    body += "  %q = cast(" + q + ") {to = f8e4m3}\n";
  };
  if (quant == 1) {
    body += "  %dq = div(" + y + ", %scale)\n";
    clamp_and_cast("%dq");
    outputs.push_back("%q");
    site.rounding.push_back("scale_op_swapped");
    site.quant = "fp8_tensor";
  } else if (quant == 2) {
    body += "  %ri = reciprocal(%scale)\n";
    body += coin() ? "  %dq = mul(" + y + ", %ri)\n" : "  %dq = mul(%ri, " + y + ")\n";
    clamp_and_cast("%dq");
    outputs.push_back("%q");
    site.quant = "fp8_tensor";
  } else if (quant == 3 || quant == 4) {
    std::string in = y;
    if (y == "%y") {  // the dynamic forms divide an f32 value
      body += "  %yf = cast(%y) {to = f32}\n";
      in = "%yf";
    }
    const std::string groups = std::to_string(hidden / 64);
    if (quant == 4) {
      body += "  %yg = view(" + in + ") {shape = [" + lead + ", " + groups + ", 64]}\n";
      in = "%yg";
    }
    body += "  %ab = abs(" + in + ")\n  %am = amax(%ab) {dim = -1, keepdim = true}\n";
    // The scale: max(amax, 1e-10) / 448; vLLM's max(amax / 448, 1 / (448 * 512)); the first
    // rounded up to a power of two (UE8M0); or vLLM's QuantFP8 UE8M0 form, amax / 448 rounded up,
    // then floored.
    const int scale_form = pick(4);
    if (scale_form == 1) {
      body += "  %sd = div(%am) {scalar = 448}\n  %s = clamp(%sd) {min = 4.359654017857143e-06}\n";
      site.rounding.push_back("scale_floor_after_div");
      d += "floor-after-div ";
    } else if (scale_form == 3) {
      body += "  %sd = div(%am) {scalar = 448}\n  %lg = log2(%sd)\n  %ce = ceil(%lg)\n";
      body += "  %ex = exp2(%ce)\n  %s = clamp(%ex) {min = 4.359654017857143e-06}\n";
      site.rounding.push_back("scale_floor_after_div");
      site.scale_fmt = "ue8m0";
      d += "ue8m0-floored-after ";
    } else {
      body += "  %ac = clamp(%am) {min = 1e-10}\n";
      body += std::string("  ") + (scale_form == 2 ? "%sc" : "%s") + " = div(%ac) {scalar = 448}\n";
      if (scale_form == 2) {
        body += "  %lg = log2(%sc)\n  %ce = ceil(%lg)\n  %s = exp2(%ce)\n";
        site.scale_fmt = "ue8m0";
        d += "ue8m0 ";
      }
    }
    if (coin()) {
      body += "  %dq = div(" + in + ", %s)\n";
    } else {
      body += "  %inv = reciprocal(%s)\n  %dq = mul(" + in + ", %inv)\n";
      site.rounding.push_back("scale_op_swapped");
      d += "times-reciprocal ";
    }
    clamp_and_cast("%dq");
    if (quant == 4) {
      body += "  %qf = view(%q) {shape = [" + lead + ", " + h + "]}\n";
      body += "  %sf = view(%s) {shape = [" + lead + ", " + groups + "]}\n";
      outputs.push_back("%qf");
      outputs.push_back("%sf");
      site.quant = "fp8_group";
    } else {
      outputs.push_back("%q");
      outputs.push_back("%s");
      site.quant = "fp8_token";
    }
  }
  d += std::string(rank3 ? "rank 3 " : "") + "quant " + site.quant + (clamp ? " clamp" : "");
  std::string ret;
  for (const std::string& o : outputs) ret += (ret.empty() ? "" : ", ") + o;
  site.text = "func @site(" + params + ") {\n" + body + "  return " + ret + "\n}\n";
  std::sort(site.rounding.begin(), site.rounding.end());
  return site;
}

// Each site compiled at `world_size` (1: local fusion on, the all_reduce is the identity).
void ExpectEveryMixFuses(int world_size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  constexpr int kSites = 160;
  PassContext ctx;
  ctx.world_size = world_size;
  ctx.fuse_local = world_size == 1;
  for (int i = 0; i < kSites; ++i) {
    const Site site = RandomSite(rng);
    SCOPED_TRACE(StrCat("site ", i, ": ", site.description, "\n", site.text));
    Compiled c = Compile(site.text, ctx);
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx) << Print(*c.after);
    EXPECT_TRUE(c.ctx.rejections.empty()) << DescribeReport(c.ctx);
    const AllreduceRmsnormSpec& spec = c.ctx.fusions[0].spec;
    std::vector<std::string> names = spec.rounding.Names();
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, site.rounding) << spec.ToString();
    EXPECT_EQ(std::string(QuantModeName(spec.quant)), site.quant) << spec.ToString();
    EXPECT_EQ(spec.scale_fmt == ScaleFormat::kUe8m0 ? "ue8m0" : "f32", site.scale_fmt)
        << spec.ToString();
    for (const char* op : {"all_reduce", "rsqrt", "pow", "mean", "amax", "abs", "clamp"})
      EXPECT_EQ(CountOp(*c.after, op), 0) << op << "\n" << Print(*c.after);
    ExpectBitwiseOutputs(*c.before, *c.after, world_size, {1, 6}, {uint64_t(i) + 1});
  }
}

TEST(PassesFormMix, EveryMixFusesWithItsRecipeAndChangesNoBit) { ExpectEveryMixFuses(2, 20261205); }

// Inf and NaN in the inputs: the fused op computes what the written graph computes, bit for
// bit, NaN payloads and signs included. Each rank's x gets a NaN in row 1 and +inf in row 2
// (whose norm then makes 0 * inf = NaN), the residual -inf in row 3, and the weight 3e38 at
// column 5, which overflows y to +-inf in the rows where |n| > about 1.1 (an inf amax and an
// inf scale, y / inf = +-0) and leaves the rest finite.
TEST(PassesFormMix, InfAndNanChangeNoBit) {
  const auto poke = [](runtime::TensorMap& in) {
    const auto set = [&](const char* name, int64_t row, int64_t col, float v) {
      auto it = in.find(name);
      if (it == in.end()) return;
      HostTensor& t = it->second;
      const int64_t hidden = t.dim(t.rank() - 1);
      if (row * hidden + col < t.numel()) t.SetF32(row * hidden + col, v);
    };
    set("x", 1, 0, std::numeric_limits<float>::quiet_NaN());
    set("x", 2, 3, INFINITY);
    set("res", 3, 1, -INFINITY);
    set("g", 0, 5, 3e38f);
  };
  std::mt19937_64 rng(20261208);
  int inf_scales = 0, nan_scales = 0;
  for (int i = 0; i < 160; ++i) {
    const Site site = RandomSite(rng);
    SCOPED_TRACE(StrCat("site ", i, ": ", site.description, "\n", site.text));
    Compiled c = Compile(site.text);
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx);
    ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 6}, {uint64_t(i) + 1}, poke);
    if (site.quant != "fp8_token" && site.quant != "fp8_group") continue;
    // Count the scales that came out inf and NaN, so the test is known to reach them.
    std::unique_ptr<runtime::Executor> cpu = runtime::MakeCpuExecutor(2);
    StatusOr<std::vector<runtime::TensorMap>> inputs = runtime::MakeRandomInputs(*c.after, 2, 6, 1);
    ASSERT_TRUE(inputs.ok());
    for (runtime::TensorMap& m : *inputs) poke(m);
    StatusOr<runtime::RankOutputs> out = cpu->Run(*c.after, *inputs);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    for (const HostTensor& t : (*out)[0]) {
      if (t.dtype() != DType::kF32) continue;
      for (int64_t k = 0; k < t.numel(); ++k) {
        inf_scales += std::isinf(t.GetF32(k));
        nan_scales += std::isnan(t.GetF32(k));
      }
    }
  }
  EXPECT_GT(inf_scales, 0);
  EXPECT_GT(nan_scales, 0);
}

// Near misses: a mixed site with one change that makes it another computation (another
// divisor, clamp, floor, exponent, reduction, or op). Whatever the compiler then does, fuse
// something or nothing, the compiled graph computes the same bits as the written one.
TEST(PassesFormMix, NearMissesChangeNoBit) {
  struct Mutation {
    const char* from;
    const char* to;
    bool quant = false;  // changes the quant: the quant must then stay out of any fusion
  };
  // The floors and the clamp bind on rows of normed values around 1 (amax about 2 to 4).
  const Mutation kMutations[] = {
      {"{scalar = 448}", "{scalar = 447}", true},
      {"{min = -448, max = 448}", "{min = -400, max = 448}", true},
      {"{min = 1e-10}", "{min = 100}", true},
      {"{min = 4.359654017857143e-06}", "{min = 0.01}", true},
      {"%sq = pow(%v) {exponent = 2}", "%sq = pow(%v) {exponent = 4}"},
      {"%sq = pow(%hs) {exponent = 2}", "%sq = pow(%hs) {exponent = 4}"},
      {"{exponent = -0.5}", "{exponent = -0.25}"},
      {"%ms = mean(%sq)", "%ms = amax(%sq)"},
      {"%r = rsqrt(%me)", "%r = sqrt(%me)"},
      {"%n = mul(", "%n = add("},
      {"%h = add(", "%h = sub("},
      {"%hs = add(", "%hs = sub("},
      {"{scalar = 1}", "{scalar = 2}"},
      {"%ab = abs(", "%ab = neg(", true},
      {"%s = exp2(%ce)", "%s = exp2(%lg)", true},
      {"%ri = reciprocal(%scale)", "%ri = sqrt(%scale)", true},
      {"%inv = reciprocal(%s)", "%inv = sqrt(%s)", true},
      {"{scalar = 1e-6}", "{scalar = 0.5}"},
  };
  std::mt19937_64 rng(20261207);
  int mutated = 0, still_fused = 0;
  for (int i = 0; i < 240; ++i) {
    Site site = RandomSite(rng);
    std::vector<const Mutation*> apply;
    for (const Mutation& m : kMutations)
      if (site.text.find(m.from) != std::string::npos) apply.push_back(&m);
    ASSERT_FALSE(apply.empty()) << site.text;
    const Mutation& m = *apply[rng() % apply.size()];
    site.text.replace(site.text.find(m.from), std::string(m.from).size(), m.to);
    SCOPED_TRACE(StrCat("site ", i, ": ", site.description, "; ", m.from, " -> ", m.to, "\n",
                        site.text));
    Compiled c = Compile(site.text);
    ASSERT_TRUE(c.ok());
    ++mutated;
    still_fused += int(c.ctx.fusions.size());
    if (m.quant) {
      for (const FusionRecord& f : c.ctx.fusions)
        EXPECT_EQ(f.spec.quant, QuantMode::kNone) << f.spec.ToString();
    }
    ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 6}, {uint64_t(i) + 1});
  }
  // Some near misses still fuse (another eps or weight bias is still the fused op's), most do
  // not; every one computes what it did.
  EXPECT_GT(still_fused, 0);
  EXPECT_LT(still_fused, mutated);
}

TEST(PassesFormMix, EveryMixFusesLocallyAtWorldSizeOne) { ExpectEveryMixFuses(1, 20261206); }

}  // namespace
}  // namespace tpfuse::passes::testing
