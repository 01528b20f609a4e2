// The fused op on one GPU without communication (world size 1, or spec.local) against the CPU
// oracle, BITWISE: every quant mode, scale layout and format, every rounding recipe flag, both
// activation dtypes and every weight dtype, H from one vector per thread to the largest row,
// T from 1 past the grid's first wave. Outputs are poisoned before each call, inputs fresh.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backends/cuda/allreduce_rmsnorm.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "common/amax_bound.h"
#include "common/numerics.h"
#include "common/row_layout.h"
#include "support/cuda_harness.h"
#include "support/fused_check.h"
#include "tpfuse/tpfuse.h"

namespace tpfuse::testing {
namespace {

struct LocalCall {
  cuda::DeviceBuffer x, x2, residual, weight, pre_weight, bias, scale;
  std::vector<cuda::DeviceBuffer> outputs;
  std::vector<HostTensor> host_outputs;
  cuda::FusedBuffers buffers;
};

Status Upload(cuda::DeviceBuffer& dst, const HostTensor& src) {
  TPFUSE_ASSIGN_OR_RETURN(dst, cuda::DeviceBuffer::Allocate(std::max<size_t>(src.nbytes(), 16)));
  if (src.nbytes() > 0) TPFUSE_CUDA_CHECK(cudaMemcpy(dst.get(), src.data(), src.nbytes(), cudaMemcpyHostToDevice));
  return Status::Ok();
}

// Uploads the inputs and allocates every emitted output poisoned with 0xFF (NaN in each dtype).
Status Prepare(const AllreduceRmsnormSpec& spec, const FusedInputs& in, int64_t tokens, LocalCall& call) {
  TPFUSE_RETURN_IF_ERROR(Upload(call.x, in.partials[0]));
  if (!in.partials2.empty()) TPFUSE_RETURN_IF_ERROR(Upload(call.x2, in.partials2[0]));
  if (in.has_residual) TPFUSE_RETURN_IF_ERROR(Upload(call.residual, in.residual));
  TPFUSE_RETURN_IF_ERROR(Upload(call.weight, in.weight));
  if (in.has_pre_weight) TPFUSE_RETURN_IF_ERROR(Upload(call.pre_weight, in.pre_weight));
  if (in.has_bias) TPFUSE_RETURN_IF_ERROR(Upload(call.bias, in.bias));
  if (in.has_scale) TPFUSE_RETURN_IF_ERROR(Upload(call.scale, in.scale));
  call.host_outputs = FusedOutputShapes(spec, tokens);
  for (const HostTensor& t : call.host_outputs) {
    TPFUSE_ASSIGN_OR_RETURN(cuda::DeviceBuffer b, cuda::DeviceBuffer::Allocate(std::max<size_t>(t.nbytes(), 16)));
    TPFUSE_CUDA_CHECK(cudaMemset(b.get(), 0xFF, b.size()));
    call.outputs.push_back(std::move(b));
  }
  std::vector<void*> outputs;
  for (cuda::DeviceBuffer& out : call.outputs) outputs.push_back(out.get());
  call.buffers = FusedBuffersFor(spec, call.x.get(), in.has_residual ? call.residual.get() : nullptr,
                                 call.weight.get(), in.has_scale ? call.scale.get<float>() : nullptr,
                                 outputs);
  if (!in.partials2.empty()) call.buffers.x2 = call.x2.get();
  if (in.has_pre_weight) call.buffers.pre_weight = call.pre_weight.get();
  if (in.has_bias) call.buffers.bias = call.bias.get();
  return Status::Ok();
}

Status Download(LocalCall& call) {
  TPFUSE_CUDA_CHECK(cudaDeviceSynchronize());
  for (size_t i = 0; i < call.outputs.size(); ++i) {
    HostTensor& t = call.host_outputs[i];
    if (t.nbytes() > 0) TPFUSE_CUDA_CHECK(cudaMemcpy(t.data(), call.outputs[i].get(), t.nbytes(), cudaMemcpyDeviceToHost));
  }
  return Status::Ok();
}

// Runs `spec` on `in` (T tokens) on GPU 0 and returns "" when every output equals the oracle's
// bit for bit.
// `nan_is_nan`: a NaN matches any NaN (inputs with NaN: the GPU's NaN is canonical).
std::string RunAndCompareInputs(const AllreduceRmsnormSpec& spec, int64_t tokens, const FusedInputs& in,
                                const cuda::LaunchOptions& options = {}, bool nan_is_nan = false) {
  LocalCall call;
  Status st = Prepare(spec, in, tokens, call);
  if (st.ok()) st = cuda::LaunchLocalAllreduceRmsnorm(spec, tokens, call.buffers, /*stream=*/nullptr, options);
  if (st.ok()) st = Download(call);
  if (!st.ok()) return "launch: " + st.ToString();
  return BitwiseDiff(call.host_outputs, OracleOutputs(spec, in), nan_is_nan);
}

std::string RunAndCompare(const AllreduceRmsnormSpec& spec, int64_t tokens, uint64_t seed,
                          const cuda::LaunchOptions& options = {}) {
  return RunAndCompareInputs(spec, tokens, MakeFusedInputs(spec, tokens, /*world_size=*/1, seed), options);
}

// As RunAndCompare, with the outputs written over their inputs as in-place callers do:
// residual_out over the residual, the norm over x. The results are read back from the inputs'
// buffers into the outputs' for Download.
Status LaunchInPlace(const AllreduceRmsnormSpec& spec, int64_t tokens, const FusedInputs& in,
                     const cuda::LaunchOptions& options, LocalCall& call) {
  TPFUSE_RETURN_IF_ERROR(Prepare(spec, in, tokens, call));
  const size_t norm = spec.emit.allreduce ? 1 : 0, residual = norm + (spec.emit.norm ? 1 : 0);
  if (spec.emit.norm) call.buffers.norm_out = call.x.get();
  if (spec.emit.residual) call.buffers.residual_out = call.residual.get();
  TPFUSE_RETURN_IF_ERROR(cuda::LaunchLocalAllreduceRmsnorm(spec, tokens, call.buffers, /*stream=*/nullptr, options));
  if (spec.emit.norm)
    TPFUSE_CUDA_CHECK(cudaMemcpy(call.outputs[norm].get(), call.x.get(), call.host_outputs[norm].nbytes(),
                                 cudaMemcpyDeviceToDevice));
  if (spec.emit.residual)
    TPFUSE_CUDA_CHECK(cudaMemcpy(call.outputs[residual].get(), call.residual.get(),
                                 call.host_outputs[residual].nbytes(), cudaMemcpyDeviceToDevice));
  return Download(call);
}

std::string RunInPlaceAndCompare(const AllreduceRmsnormSpec& spec, int64_t tokens, uint64_t seed,
                                 const cuda::LaunchOptions& options) {
  const FusedInputs in = MakeFusedInputs(spec, tokens, /*world_size=*/1, seed);
  LocalCall call;
  const Status st = LaunchInPlace(spec, tokens, in, options, call);
  if (!st.ok()) return "launch: " + st.ToString();
  return BitwiseDiff(call.host_outputs, OracleOutputs(spec, in));
}

AllreduceRmsnormSpec LocalSpec(int64_t hidden, QuantMode quant, bool residual) {
  AllreduceRmsnormSpec s;
  s.local = true;
  s.hidden = hidden;
  s.has_residual = residual;
  s.quant = quant;
  s.group_size = hidden % 128 == 0 ? 128 : 64;  // H 2880 = 45 groups of 64
  s.emit.norm = quant == QuantMode::kNone || quant == QuantMode::kFp8Group;
  s.emit.residual = residual;
  s.emit.quant = quant != QuantMode::kNone;
  return s;
}

// fp8_group with the residual at `hidden`, groups of `group` elements, scales in `layout` and `fmt`.
AllreduceRmsnormSpec GroupSpec(int64_t hidden, int group, ScaleLayout layout, ScaleFormat fmt) {
  AllreduceRmsnormSpec s = LocalSpec(hidden, QuantMode::kFp8Group, true);
  s.group_size = group;
  s.scale_layout = layout;
  s.scale_fmt = fmt;
  return s;
}

std::string Describe(const AllreduceRmsnormSpec& s, int64_t t) {
  return s.ToString() + " T=" + std::to_string(t);
}

// The row owners a test forces at H: one block; a cluster of a thread per row thread, where the
// row has a split into blocks of two warps or fewer; for rows of two vectors per row thread, a
// cluster of two threads per row thread; and for rows of one or two warps, rows packed into
// blocks.
std::vector<cuda::RowOwner> RowOwnersOf(int64_t hidden, bool block = true) {
  const RowLayout layout = MakeRowLayout(hidden);
  std::vector<cuda::RowOwner> owners;
  if (block) owners.push_back(cuda::RowOwner::kBlock);
  if (RowClusterBlocks(layout, 8, 64) > 1) owners.push_back(cuda::RowOwner::kCluster);
  if (layout.vecs_per_thread == 2) owners.push_back(cuda::RowOwner::kClusterPair);
  if (layout.threads <= 64 && layout.vecs_per_thread == 1) owners.push_back(cuda::RowOwner::kPacked);
  return owners;
}

const char* OwnerName(cuda::RowOwner owner) {
  switch (owner) {
    case cuda::RowOwner::kBlock: return " block";
    case cuda::RowOwner::kCluster: return " cluster";
    case cuda::RowOwner::kClusterPair: return " cluster pair";
    case cuda::RowOwner::kPacked: return " packed";
    default: return " auto";
  }
}

// Launch options that force a row owner and the fixed-recipe or run-time kernels, and their words.
cuda::LaunchOptions Forced(cuda::RowOwner owner, bool fixed) {
  cuda::LaunchOptions options;
  options.row_owner = owner;
  options.fixed_recipes = fixed;
  return options;
}
std::string ForcedName(cuda::RowOwner owner, bool fixed) {
  return std::string(OwnerName(owner)) + (fixed ? " fixed" : " run-time") + " recipe";
}

class LocalFusedTest : public ::testing::Test {
 protected:
  void SetUp() override { TPFUSE_REQUIRE_GPUS(1); }
};

// Every quant mode with and without a residual, across row layouts (H = 128: one vector per
// thread; 2880, 4096 and 7168: two; 16384: four) and T across the first wave of blocks.
TEST_F(LocalFusedTest, EveryModeAndRowLayoutIsBitwiseTheOracle) {
  const QuantMode modes[] = {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group};
  uint64_t seed = 1;
  for (int64_t h : {128, 2880, 4096, 7168, 16384})
    for (QuantMode q : modes)
      for (bool residual : {true, false})
        for (int64_t t : {1, 5, 33, 1000}) {
          const AllreduceRmsnormSpec s = LocalSpec(h, q, residual);
          EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
        }
}

// Each rounding flag alone and all together, on the modes where it matters.
TEST_F(LocalFusedTest, EveryRoundingRecipeIsBitwiseTheOracle) {
  std::vector<RoundingRecipe> recipes(5);
  recipes[1].norm_input_f32 = true;
  recipes[2].weight_after_round = true;
  recipes[3].weight_bias_in_weight_dtype = true;
  recipes[4].scale_op_swapped = true;
  RoundingRecipe all = recipes[1];
  all.weight_after_round = all.weight_bias_in_weight_dtype = all.scale_op_swapped = true;
  recipes.push_back(all);
  uint64_t seed = 100;
  for (const RoundingRecipe& r : recipes)
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (float bias : {0.0f, 1.0f})
        for (int64_t h : {2880, 7168}) {
          AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
          s.rounding = r;
          s.weight_bias = bias;
          for (int64_t t : {1, 33}) EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
        }
}

// A residual stream kept in f32: an f32 residual (off the 16-bit grid), residual_out f32 or
// rounded, the norm of the f32 sum or of its rounding, every quant mode, both activation dtypes,
// H from one vector per thread to four, T past the first wave (the rule's owner: a cluster per row
// at small T where the row splits, else one block); each owner forced: one block and a cluster of
// a thread per row thread (F32ResidualRecipe's kernels) bitwise the oracle, the others refused,
// the reason named.
// Each row owner of `s`'s H forced at T 1 and 7 for a spec of f32 values: one block and one
// cluster run it bitwise the oracle, the others refuse it with the reason.
void ExpectF32RowOwners(const AllreduceRmsnormSpec& s, uint64_t& seed) {
  for (cuda::RowOwner owner : RowOwnersOf(s.hidden)) {
    cuda::LaunchOptions options;
    options.row_owner = owner;
    for (int64_t t : {1, 7}) {
      const std::string got = RunAndCompare(s, t, seed++, options);
      if (owner == cuda::RowOwner::kBlock || owner == cuda::RowOwner::kCluster)
        EXPECT_EQ(got, "") << Describe(s, t) << OwnerName(owner);
      else
        EXPECT_NE(got.find("an f32 residual or norm output runs with one block or one cluster"), std::string::npos)
            << Describe(s, t) << OwnerName(owner) << ": " << got;
    }
  }
}

TEST_F(LocalFusedTest, AnF32ResidualStreamIsBitwiseTheOracle) {
  uint64_t seed = 5000;
  for (DType act : {DType::kBF16, DType::kF16})
    for (int form = 1; form < 4; ++form)  // bit 0: f32 residual in; bit 1: residual_out f32
      for (bool norm_input_f32 : {true, false})
        for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
          for (int64_t h : {128, 2880, 7168, 16384}) {
            AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
            s.act_dtype = act;
            s.weight_dtype = act;
            s.residual_f32_in = form & 1;
            s.rounding.residual_out_f32 = form & 2;
            s.rounding.norm_input_f32 = norm_input_f32;
            s.weight_bias = form == 3 ? 1.0f : 0.0f;
            for (int64_t t : {1, 33, 300}) EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
          }
  for (QuantMode q : {QuantMode::kFp8Tensor, QuantMode::kFp8Group})
    for (int64_t h : {128, 2880, 7168, 16384}) {
      AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
      s.residual_f32_in = s.rounding.residual_out_f32 = s.rounding.norm_input_f32 = true;
      ExpectF32RowOwners(s, seed);
    }
}

// The norm output in f32, unrounded (norm_out_f32; FlashInfer's fusion tests' reference, an f32
// weight multiplying round(n)): with no residual, a residual of the activation dtype, and an f32
// residual stream; n rounded first or not; a weight of the activation dtype or f32, with and
// without Gemma's bias; bf16 and f16; rows of one vector per thread to four. Then each row owner
// forced: one block and one cluster run it, the others refuse with the reason.
TEST_F(LocalFusedTest, AnF32NormOutputIsBitwiseTheOracle) {
  uint64_t seed = 5500;
  for (DType act : {DType::kBF16, DType::kF16})
    for (int residual = 0; residual < 3; ++residual)  // none, activation dtype, f32 stream
      for (int form = 0; form < 4; ++form)  // bit 0: weight_after_round; bit 1: f32 weight + bias 1
        for (int64_t h : {128, 2880, 7168, 16384}) {
          AllreduceRmsnormSpec s = LocalSpec(h, QuantMode::kNone, /*residual=*/residual > 0);
          s.act_dtype = act;
          s.weight_dtype = form & 2 ? DType::kF32 : act;
          s.weight_bias = form & 2 ? 1.0f : 0.0f;
          s.rounding.norm_out_f32 = true;
          s.rounding.weight_after_round = form & 1;
          s.residual_f32_in = s.rounding.residual_out_f32 = s.rounding.norm_input_f32 = residual == 2;
          for (int64_t t : {1, 33, 300}) EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
        }
  for (int64_t h : {128, 2880, 7168, 16384}) {
    AllreduceRmsnormSpec s = LocalSpec(h, QuantMode::kNone, /*residual=*/true);
    s.rounding.norm_out_f32 = true;
    ExpectF32RowOwners(s, seed);
  }
}

// Each row owner forced on `s` at T 7: one block per row runs it bitwise the oracle, every other
// owner refuses with `refusal` in its message (a recipe of one block per row).
void ExpectOneBlockPerRowOnly(const AllreduceRmsnormSpec& s, const std::string& refusal, uint64_t& seed) {
  for (cuda::RowOwner owner : RowOwnersOf(s.hidden)) {
    cuda::LaunchOptions options;
    options.row_owner = owner;
    const std::string got = RunAndCompare(s, 7, seed++, options);
    if (owner == cuda::RowOwner::kBlock)
      EXPECT_EQ(got, "") << Describe(s, 7) << OwnerName(owner);
    else
      EXPECT_NE(got.find(refusal), std::string::npos) << Describe(s, 7) << OwnerName(owner) << ": " << got;
  }
}

// Two all_reduces summed (second_sum) at world size 1, where each sum is its partial (a = x, a2 =
// x2): each sum scaled before the add or not, the sum scaled after it or not; with and without a
// residual; the second into the residual (its sum scaled or not, the norm of the f32 sum or not);
// an f32 residual stream; every quant mode; rows of one vector per thread to four
// (SecondSumRecipe's kernels, and F32SecondSumRecipe's for the f32 stream). Then each row owner
// forced, with a 16-bit stream and an f32 one: one block runs it, the others refuse with the
// reason.
TEST_F(LocalFusedTest, TwoSummedAllReducesAreBitwiseTheOracle) {
  uint64_t seed = 6000;
  for (DType act : {DType::kBF16, DType::kF16})
    // bit 0: each sum scaled; bit 1: the sum scaled; 4, 5: into the residual; 6: an f32 stream
    for (int form = 0; form < 7; ++form)
      for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
        for (int64_t h : {128, 2880, 7168, 16384}) {
          AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/form != 2);
          s.local = false;
          s.act_dtype = act;
          s.weight_dtype = act;
          s.second_sum = true;
          s.second_sum_into_residual = form == 4 || form == 5;
          s.first_scale = form & 1 && form < 4 ? 0.5f : 1.0f;
          s.second_scale = form & 1 ? 1.5f : 1.0f;
          s.sum_scale = form & 2 || form == 4 ? 0.22f : 1.0f;
          s.rounding.weight_after_round = form == 3;
          s.rounding.norm_input_f32 = form == 5;
          s.residual_f32_in = s.rounding.residual_out_f32 = form == 6;
          for (int64_t t : {1, 33, 300}) EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
        }
  for (int64_t h : {128, 2880, 7168, 16384})
    for (bool f32_stream : {false, true}) {
      AllreduceRmsnormSpec s = LocalSpec(h, QuantMode::kFp8Group, /*residual=*/true);
      s.local = false;
      s.second_sum = true;
      s.first_scale = 3.0f;
      s.residual_f32_in = s.rounding.residual_out_f32 = f32_stream;
      EXPECT_EQ(cuda::LocalKernelRecipe(s),
                f32_stream ? cuda::KernelRecipe::kRuntimeF32SecondSum : cuda::KernelRecipe::kRuntimeSecondSum);
      ExpectOneBlockPerRowOnly(s, "two summed all_reduces run with one block per row", seed);
    }
}

// A bias added to the sum first (has_bias: a row-parallel layer's bias after its all_reduce) at world
// size 1 (a = x) and in a local op: bf16 and f16, with and without a residual, the biased sum
// scaled or not, the norm of the f32 sum or not, an f32 residual stream, the all_reduce's result
// emitted, a bias per token ([T, H]); every quant mode; rows of one vector per thread to four (the
// second-sum recipes' kernels). Then each row owner forced: one block runs it, the others refuse with the reason.
TEST_F(LocalFusedTest, ABiasAddedToTheSumIsBitwiseTheOracle) {
  uint64_t seed = 6500;
  for (DType act : {DType::kBF16, DType::kF16})
    // 0: plain; 1: scaled; 2: no residual; 3: weight_after_round, local; 4: norm of the f32
    // sum; 5: an f32 stream; 6: the all_reduce's result emitted; 7: a bias per token, local; 8:
    // a bias per token, scaled, the all_reduce's result emitted
    for (int form = 0; form < 9; ++form)
      for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
        for (int64_t h : {128, 2880, 7168, 16384}) {
          AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/form != 2);
          s.act_dtype = act;
          s.weight_dtype = act;
          s.has_bias = true;
          s.bias_per_token = form >= 7;
          s.sum_scale = form == 1 || form == 8 ? 0.22f : 1.0f;
          s.local = form == 3 || form == 7;
          s.rounding.weight_after_round = form == 3;
          s.rounding.norm_input_f32 = form == 4;
          s.residual_f32_in = s.rounding.residual_out_f32 = form == 5;
          s.emit.allreduce = form == 6 || form == 8;
          for (int64_t t : {1, 33, 300}) EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
        }
  for (bool f32_stream : {false, true}) {
    AllreduceRmsnormSpec s = LocalSpec(4096, QuantMode::kFp8Token, /*residual=*/true);
    s.has_bias = true;
    s.residual_f32_in = s.rounding.residual_out_f32 = f32_stream;
    EXPECT_EQ(cuda::LocalKernelRecipe(s),
              f32_stream ? cuda::KernelRecipe::kRuntimeF32SecondSum : cuda::KernelRecipe::kRuntimeSecondSum);
    ExpectOneBlockPerRowOnly(s, "a bias added to the sum runs with one block per row", seed);
  }
}

// A norm of the sum before the residual add (pre_residual_norm: sandwich norms) at world size 1:
// bf16 and f16; every quant mode; the weight in the activation dtype or f32, with Gemma's bias of
// 1 (in f32 or in the weight's dtype) or none; weight_after_round or not; the norm of the f32 sum
// or not; an f32 residual stream; the all_reduce's result emitted (world size 1, not local: x);
// rows of one vector per thread to four, T 1, 33 and 300 (PreNormRecipe's kernels, and
// F32PreNormRecipe's for the f32 stream). Then each row owner forced, with a 16-bit stream and an
// f32 one: one block runs it, the others refuse with the reason.
TEST_F(LocalFusedTest, ANormBeforeTheResidualAddIsBitwiseTheOracle) {
  uint64_t seed = 7000;
  for (DType act : {DType::kBF16, DType::kF16})
    for (int form = 0; form < 6; ++form)
      for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
        for (int64_t h : {128, 2880, 7168, 16384}) {
          AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
          s.act_dtype = act;
          s.weight_dtype = form == 2 ? DType::kF32 : act;
          s.pre_residual_norm = true;
          s.pre_eps = 1e-5f;
          s.weight_bias = form == 1 || form == 4 ? 1.0f : 0.0f;
          s.rounding.weight_bias_in_weight_dtype = form == 4;
          s.rounding.weight_after_round = form == 0 || form == 4;
          s.rounding.norm_input_f32 = form == 3;
          if (form == 5) s.residual_f32_in = s.rounding.residual_out_f32 = true;
          if (form == 3) {
            s.local = false;
            s.emit.allreduce = true;
          }
          for (int64_t t : {1, 33, 300}) EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
        }
  for (int64_t h : {128, 2880, 7168, 16384})
    for (bool f32_stream : {false, true}) {
      AllreduceRmsnormSpec s = LocalSpec(h, QuantMode::kFp8Group, /*residual=*/true);
      s.pre_residual_norm = true;
      s.residual_f32_in = s.rounding.residual_out_f32 = f32_stream;
      EXPECT_EQ(cuda::LocalKernelRecipe(s),
                f32_stream ? cuda::KernelRecipe::kRuntimeF32PreNorm : cuda::KernelRecipe::kRuntimePreNorm);
      ExpectOneBlockPerRowOnly(s, "a norm before the residual add runs with one block per row", seed);
    }
}

// The scale floors of vLLM's kernels: the floor after the division (per token and per group,
// either scale step) and UE8M0 of the floored scale, where they decide: weights of 2^-30 put
// every amax below 448 * 2^-34 (so below 1/512), and rows 1 and 4 are zero. Variants 3 and 4,
// vLLM's QuantFP8 UE8M0 form (the floor after the rounding, either scale step), take weights
// of 2^-12, which put the amaxes about the floor's 448 * 2^-18: scales of the floor (no power of
// two) and of powers of two. Under every row owner, H from one vector per thread to two-block
// rows, and at 4099 rows (the packed rows' warp per row).
TEST_F(LocalFusedTest, ScaleFloorsAreBitwiseTheOracle) {
  uint64_t seed = 4000;
  for (QuantMode q : {QuantMode::kFp8Token, QuantMode::kFp8Group})
    for (int variant = 0; variant < 5; ++variant)
      for (int64_t h : {128, 512, 2880, 7168})
        for (int64_t tokens : {int64_t(6), int64_t(4099)}) {
          if (tokens > 6 && h != 512) continue;
          AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
          s.rounding.weight_after_round = true;
          s.rounding.scale_floor_after_div = variant != 2;
          s.rounding.scale_op_swapped = variant == 1 || variant == 4;
          if (variant >= 2) {
            s.scale_fmt = ScaleFormat::kUe8m0;
            s.scale_layout = variant == 2 ? ScaleLayout::kCol : ScaleLayout::kRow;
            s.rounding.ue8m0_floor = variant == 2;
          }
          FusedInputs in = MakeFusedInputs(s, tokens, /*world_size=*/1, seed++);
          const float weight_scale = variant >= 3 ? 0x1p-12f : 0x1p-30f;
          for (int64_t i = 0; i < h; ++i) {
            in.weight.SetF32(i, in.weight.GetF32(i) * weight_scale);
            for (int64_t row : {1, 4}) {
              in.partials[0].SetF32(row * h + i, 0.0f);
              in.residual.SetF32(row * h + i, 0.0f);
            }
          }
          for (cuda::RowOwner owner : RowOwnersOf(h)) {
            cuda::LaunchOptions options;
            options.row_owner = owner;
            EXPECT_EQ(RunAndCompareInputs(s, tokens, in, options), "")
                << Describe(s, tokens) << OwnerName(owner);
          }
        }
}

// Inf and NaN in the rows, as torch's forms take them: a NaN in a row (or group) makes its amax
// and scale NaN and every q of it NaN; an inf y makes the scale inf and every other q +-0. Rows
// 1-3 of x and the residual get a NaN, +inf (the norm's 0 * inf is NaN) and -inf; with `big`,
// the weight's column 5 is 3e38, which overflows y to +-inf in the rows where |n| > about 1.1
// (inf scales, the amax bound refused) and leaves the others finite; without it, the other rows
// stay finite and fp8_token's amax bound decides them. Every quant mode and row owner, both
// recipes' kernels, the run-time recipe's forms (one rounding or two, vLLM's floors, the
// reciprocal, ue8m0, ue8m0 floored after the rounding), 4099 rows at H 512 (a warp per row).
// Bitwise the oracle, any NaN for a NaN.
TEST_F(LocalFusedTest, InfAndNanRowsAreTheOracle) {
  uint64_t seed = 4500;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
    for (int recipe = 0; recipe < 5; ++recipe)
      for (int64_t h : {128, 512, 2880, 7168})
        for (int64_t tokens : {int64_t(6), int64_t(4099)})
          for (bool big : {false, true}) {
            if (tokens > 6 && h != 512) continue;
            if (recipe > 0 && !IsDynamicQuant(q)) continue;
            AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
            s.rounding.weight_after_round = recipe == 1;
            s.rounding.scale_floor_after_div = recipe == 2;
            s.rounding.scale_op_swapped = recipe == 2;
            if (recipe >= 3) {  // 4: vLLM's QuantFP8 UE8M0 form, floored after the rounding
              s.scale_fmt = ScaleFormat::kUe8m0;
              s.scale_layout = ScaleLayout::kCol;
              s.rounding.scale_floor_after_div = recipe == 4;
            }
            FusedInputs in = MakeFusedInputs(s, tokens, /*world_size=*/1, seed++);
            in.partials[0].SetF32(1 * h + 0, nan);
            in.partials[0].SetF32(2 * h + 3, INFINITY);
            in.residual.SetF32(3 * h + 1, -INFINITY);
            in.residual.SetF32(5 * h + h - 1, nan);
            if (big) in.weight.SetF32(5, 3e38f);
            for (bool fixed : {true, false})
              for (cuda::RowOwner owner : RowOwnersOf(h))
                EXPECT_EQ(RunAndCompareInputs(s, tokens, in, Forced(owner, fixed), /*nan_is_nan=*/true), "")
                    << Describe(s, tokens) << ForcedName(owner, fixed) << (big ? ", weight 3e38" : "");
          }
}

// A scale of the sum before the residual add (Granite's multiplier, a' = round(a * s)), with and
// without the residual, under every row owner: a negative, a zero and a tiny factor too (the
// row's squares underflow).
TEST_F(LocalFusedTest, SumScaleIsBitwiseTheOracle) {
  uint64_t seed = 3000;
  for (float scale : {0.22f, -3.0f, 0.0f, 1e-30f})
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (bool residual : {true, false})
        for (int64_t h : {128, 2880, 7168})
          for (cuda::RowOwner owner : RowOwnersOf(h)) {
            AllreduceRmsnormSpec s = LocalSpec(h, q, residual);
            s.sum_scale = scale;
            cuda::LaunchOptions options;
            options.row_owner = owner;
            for (int64_t t : {1, 33})
              EXPECT_EQ(RunAndCompare(s, t, seed++, options), "") << Describe(s, t) << OwnerName(owner);
          }
}

// Dtypes (f16 activations; f32 and f16 weights), group sizes, column-major and UE8M0 scales;
// the group sizes under every row owner (the groups' maxima by shuffles, or by whole-warp
// reductions where a warp holds at most two groups' maxima: 128 and 256 at one vector per
// thread, 256 at two).
TEST_F(LocalFusedTest, DtypesGroupsAndScaleLayoutsAreBitwiseTheOracle) {
  uint64_t seed = 1000;
  for (DType act : {DType::kBF16, DType::kF16})
    for (DType w : {DType::kBF16, DType::kF16, DType::kF32}) {
      AllreduceRmsnormSpec s = LocalSpec(4096, QuantMode::kFp8Group, true);
      s.act_dtype = act;
      s.weight_dtype = w;
      for (int64_t t : {1, 7}) EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
    }
  for (int g : {8, 16, 32, 64, 128, 256})
    for (ScaleLayout layout : {ScaleLayout::kRow, ScaleLayout::kCol})
      for (ScaleFormat fmt : {ScaleFormat::kF32, ScaleFormat::kUe8m0})
        for (cuda::RowOwner owner : RowOwnersOf(7168)) {
          const AllreduceRmsnormSpec s = GroupSpec(7168, g, layout, fmt);
          cuda::LaunchOptions options;
          options.row_owner = owner;
          for (int64_t t : {1, 6})
            EXPECT_EQ(RunAndCompare(s, t, seed++, options), "") << Describe(s, t) << OwnerName(owner);
        }
}

// Rows built to reach the roundings' edge cases, beside a random row: every h = x + residual a
// tie between two 16-bit neighbours (half round down to even, half up); bf16/f16 subnormal
// inputs (their squares underflow: the row's sum is 0 and 1/rms is 1/sqrt(eps)); and a row of
// +0.0 and -0.0, whose signs must survive into y and q. The weight in the activation dtype, with
// and without weight_after_round, each under the fixed-recipe and the run-time kernels.
TEST_F(LocalFusedTest, TiesSubnormalsAndSignedZerosAreBitwiseTheOracle) {
  uint64_t seed = 5000;
  for (DType act : {DType::kBF16, DType::kF16})
    for (int64_t h : {128, 4096})
      for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
        for (bool weight_after_round : {false, true})
          for (bool fixed : {true, false}) {
            AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
            s.act_dtype = s.weight_dtype = act;  // the fixed-recipe kernels' form, unless !fixed
            s.rounding.weight_after_round = weight_after_round;
            cuda::LaunchOptions options;
            options.fixed_recipes = fixed;
            const int64_t tokens = 4;
            FusedInputs in = MakeFusedInputs(s, tokens, /*world_size=*/1, seed++);
            HostTensor& x = in.partials[0];
            // One unit in the last place at 1.0: 2^-7 (bf16), 2^-10 (f16); half of it makes a tie.
            const float ulp = act == DType::kBF16 ? 0x1p-7f : 0x1p-10f;
            const float tiny = act == DType::kBF16 ? 0x1p-133f : 0x1p-24f;  // the smallest subnormal
            for (int64_t i = 0; i < h; ++i) {
              const float sign = i % 3 == 0 ? -1.0f : 1.0f;
              x.SetF32(i, sign * (i % 2 == 0 ? 1.0f : 1.0f + ulp));  // row 0: ties, to even both ways
              in.residual.SetF32(i, sign * ulp / 2);
              x.SetF32(h + i, sign * tiny * float(1 + i % 7));     // row 1: subnormals
              in.residual.SetF32(h + i, -sign * tiny * float(i % 3));
              x.SetF32(2 * h + i, i % 2 == 0 ? 0.0f : -0.0f);      // row 2: signed zeros
              in.residual.SetF32(2 * h + i, i % 4 < 2 ? -0.0f : 0.0f);
            }
            for (cuda::RowOwner owner : RowOwnersOf(h)) {
              options.row_owner = owner;
              EXPECT_EQ(RunAndCompareInputs(s, tokens, in, options), "")
                  << Describe(s, tokens) << " act " << DTypeName(act) << (fixed ? " fixed" : " run-time") << " recipe"
                  << OwnerName(owner);
            }
          }
}

// The local epilogue's row owners, forced, against the oracle: one block per row, and one
// thread block cluster per row at every kind of split the row layout makes (a thread per row
// thread: H 1536: 3 blocks of two warps at one vector per thread; 16384: 8 blocks of two warps
// at four vectors per thread; 2048-6144 at two; and two threads per row thread
// (ClusterPairRow) at two vectors per row thread: 2048: 2 blocks of two warp pairs; 2560: 5
// blocks of one pair; 5120: 5; 6144: 6; and clusters of 2 blocks, of 2-8 pairs, at 2048, 5120,
// 6144 and 8192, as the rule takes at larger T), every quant mode; one row per owner, and three
// owners striding over the rows (each reduction's shared memory and mbarrier, and a pair's
// hand-off, used again on the next rows).
TEST_F(LocalFusedTest, BlockAndClusterRowOwnersAreBitwiseTheOracle) {
  uint64_t seed = 9000;
  for (int64_t h : {1536, 2048, 2560, 5120, 6144, 8192, 16384})
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (cuda::RowOwner owner : RowOwnersOf(h))
        for (int cluster_blocks : {0, 2}) {
          if (cluster_blocks == 2 && (owner != cuda::RowOwner::kClusterPair || h == 2560)) continue;
          if (h == 8192 && cluster_blocks != 2) continue;  // blocks of 8 pairs, the most
          for (int64_t max_owners : {0, 3}) {
            cuda::LaunchOptions options;
            options.row_owner = owner;
            options.cluster_blocks = cluster_blocks;
            options.max_row_owners = max_owners;
            const AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
            for (int64_t t : {1, 10})
              EXPECT_EQ(RunAndCompare(s, t, seed++, options), "")
                  << Describe(s, t) << OwnerName(owner) << " of " << cluster_blocks << " blocks, owners " << max_owners;
          }
        }
}

// Rows packed into blocks (rows of one or two warps, H <= 512): groups of 8 lanes (H 8-64, four
// rows per warp), 16 (H 72-128, two), 32 (H 136-256, one), and for H 264-512 groups of two warps
// (their sums through shared memory) or a warp per row at two vectors per lane (its two sums of
// squares apart until each warp sum), against the oracle. T from 1 to more rows than a warp holds, not a multiple of the rows per
// warp (a warp whose groups end at different rows), and past the rows the launcher's blocks take
// at once (each block striding); three blocks striding too. Every quant mode, every group size
// the row divides (row-major and column-major scales, f32 and ue8m0; groups within each of a
// lane's two vectors at H 384 and 512), f16, both recipes' kernels, the run-time recipe's forms
// (at H 264-512 held in registers at two vectors per thread); at H 264-512 each both below and
// from the row count where a warp per row takes over.
TEST_F(LocalFusedTest, PackedRowsAreBitwiseTheOracle) {
  uint64_t seed = 9300;
  // Rows of two warps' layout take groups of two warps below 4096 rows and a warp per row from
  // there (the launcher's kPackedWarpRowsMinRows): each case below at H 264-512 runs both.
  constexpr int64_t kWarpRows = 4099;
  auto row_counts = [](int64_t h, std::vector<int64_t> ts) {
    if (h > 256) ts.push_back(int64_t{kWarpRows});
    return ts;
  };
  for (int64_t h : {8, 24, 64, 96, 128, 136, 200, 256, 264, 296, 384, 504, 512})
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (bool residual : {true, false})
        for (int64_t max_owners : {0, 3}) {
          AllreduceRmsnormSpec s = LocalSpec(h, q, residual);
          s.group_size = h % 32 == 0 ? 32 : 8;
          cuda::LaunchOptions options;
          options.row_owner = cuda::RowOwner::kPacked;
          options.max_row_owners = max_owners;
          for (int64_t t : row_counts(h, {1, 3, 5, 33, 1001, 30001})) {
            if (t == 30001 && (max_owners != 0 || !residual)) continue;
            EXPECT_EQ(RunAndCompare(s, t, seed++, options), "") << Describe(s, t) << " owners " << max_owners;
          }
        }
  for (int64_t h : {64, 128, 256, 384, 512})
    for (int g : {8, 16, 32, 64, 128, 256})
      for (ScaleLayout layout : {ScaleLayout::kRow, ScaleLayout::kCol})
        for (ScaleFormat fmt : {ScaleFormat::kF32, ScaleFormat::kUe8m0}) {
          if (h % g != 0) continue;
          const AllreduceRmsnormSpec s = GroupSpec(h, g, layout, fmt);
          cuda::LaunchOptions options;
          options.row_owner = cuda::RowOwner::kPacked;
          for (int64_t t : row_counts(h, {3, 37})) EXPECT_EQ(RunAndCompare(s, t, seed++, options), "") << Describe(s, t);
        }
  for (DType act : {DType::kBF16, DType::kF16})
    for (bool fixed : {true, false})
      for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
        for (int64_t h : {64, 296, 512}) {
          AllreduceRmsnormSpec s = LocalSpec(h, q, true);
          s.act_dtype = s.weight_dtype = act;
          s.group_size = h % 64 == 0 ? 64 : 8;  // groups that divide H (296 = 37 * 8)
          cuda::LaunchOptions options;
          options.row_owner = cuda::RowOwner::kPacked;
          options.fixed_recipes = fixed;
          for (int64_t t : row_counts(h, {77}))
            EXPECT_EQ(RunAndCompare(s, t, seed++, options), "") << Describe(s, t) << (fixed ? " fixed" : " run-time");
        }
  // The run-time recipe's forms (the weights held in registers, f32 ones too): the weight in
  // another dtype, a weight bias in f32 and in the weight's dtype, the norm reading f32 h, the
  // scale step swapped, ue8m0 scales.
  for (int form = 0; form < 6; ++form)
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (int64_t h : {64, 200, 296, 384, 512}) {
        AllreduceRmsnormSpec s = LocalSpec(h, q, true);
        s.group_size = 8;
        if (form == 0) s.weight_dtype = DType::kF32;
        if (form == 1) s.weight_dtype = DType::kF16;
        if (form == 2 || form == 3) s.weight_bias = 1.0f;
        if (form == 3) s.rounding.weight_bias_in_weight_dtype = true;
        if (form == 4) s.rounding.norm_input_f32 = true;
        if (form == 5) {
          s.rounding.scale_op_swapped = true;
          if (IsDynamicQuant(q)) s.scale_fmt = ScaleFormat::kUe8m0;
        }
        cuda::LaunchOptions options;
        options.row_owner = cuda::RowOwner::kPacked;
        for (int64_t t : row_counts(h, {5, 37}))
          EXPECT_EQ(RunAndCompare(s, t, seed++, options), "") << Describe(s, t) << " form " << form;
      }
  // The rule packs rows of one or two warps (at 1024 rows in every mode); a row of three warps is
  // refused, and has no packed capacity.
  for (int64_t h : {256, 512, 520}) {
    const StatusOr<cuda::LocalRowOwner> got = cuda::LocalRowOwnerOnDevice(LocalSpec(h, QuantMode::kFp8Token, true), 1024);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->owner, h <= 512 ? cuda::RowOwner::kPacked : cuda::RowOwner::kBlock) << "H " << h;
  }
  cuda::LaunchOptions packed;
  packed.row_owner = cuda::RowOwner::kPacked;
  EXPECT_NE(RunAndCompare(LocalSpec(520, QuantMode::kNone, true), 4, seed++, packed).find("unimplemented"),
            std::string::npos);
  EXPECT_FALSE(cuda::LocalRowOwnerCapacity(LocalSpec(520, QuantMode::kNone, true), {cuda::RowOwner::kPacked, 1}).ok());
  const StatusOr<int64_t> at_once = cuda::LocalRowOwnerCapacity(LocalSpec(64, QuantMode::kNone, true), {cuda::RowOwner::kPacked, 1});
  ASSERT_TRUE(at_once.ok()) << at_once.status().ToString();
  EXPECT_GT(*at_once, 0);
}

// Packed rows in every group width the launcher can be forced to (LaunchOptions::
// packed_row_lanes): one vector per lane, and two (half the lanes of a row of one warp's layout,
// a warp per row of two warps'), whatever the rule picks; the widths a row cannot take are
// refused with a reason naming the lanes, and exactly those. Then the rule's own pick of two
// vectors per lane.
TEST_F(LocalFusedTest, PackedRowsInEveryGroupWidthAreBitwiseTheOracle) {
  uint64_t seed = 9900;
  auto takes = [](const AllreduceRmsnormSpec& s, int lanes) {
    const int64_t vecs = s.hidden / 8;
    const int64_t one = vecs <= 8 ? 8 : vecs <= 16 ? 16 : vecs <= 32 ? 32 : 64;
    const int64_t per_lane = (vecs + lanes - 1) / lanes;
    return lanes <= one && per_lane <= 2 && (lanes > 4 || per_lane == 2) &&
           !(per_lane == 2 && s.quant == QuantMode::kFp8Group && s.group_size / 8 > lanes);
  };
  int half_lane_runs = 0;  // two vectors per lane below a warp
  for (int64_t h : {8, 24, 40, 56, 64, 72, 96, 128, 136, 200, 256, 264, 384, 512})
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (bool residual : {true, false})
        for (int lanes : {4, 8, 16, 32, 64}) {
          AllreduceRmsnormSpec s = LocalSpec(h, q, residual);
          s.group_size = h % 128 == 0 ? 128 : 8;  // at H 128 and 256 a group over 16 lanes' vectors
          cuda::LaunchOptions options;
          options.row_owner = cuda::RowOwner::kPacked;
          options.packed_row_lanes = lanes;
          for (int64_t t : {1, 37, 1001}) {
            options.max_row_owners = t == 37 ? 3 : 0;
            const std::string diff = RunAndCompare(s, t, seed++, options);
            if (takes(s, lanes)) {
              EXPECT_EQ(diff, "") << Describe(s, t) << " lanes " << lanes;
              half_lane_runs += lanes < 32 && (h / 8 + lanes - 1) / lanes == 2;
            } else {
              EXPECT_EQ(diff.rfind("launch: invalid argument: ", 0), 0u)
                  << Describe(s, t) << " lanes " << lanes << ": " << diff;
              EXPECT_NE(diff.find(" lanes"), std::string::npos) << diff;
            }
          }
        }
  EXPECT_GT(half_lane_runs, 0);
  // The rule's own pick where it takes two vectors per lane: the norm alone from 16384 rows.
  for (int64_t h : {64, 128, 200, 256})
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group}) {
      AllreduceRmsnormSpec s = LocalSpec(h, q, false);
      s.group_size = h % 64 == 0 ? 32 : 8;
      ASSERT_LT(cuda::PackedRowLanes(s, 16390), cuda::PackedRowLanes(s, 16383)) << Describe(s, 16390);
      EXPECT_EQ(RunAndCompare(s, 16390, seed++), "") << Describe(s, 16390);
    }
  // fp8_group's groups of every size that fits in half a row's lanes, both scale layouts and
  // formats, two vectors per lane.
  for (int64_t h : {64, 128, 256})
    for (int g : {8, 16, 32, 64, 128})
      for (ScaleLayout layout : {ScaleLayout::kRow, ScaleLayout::kCol})
        for (ScaleFormat fmt : {ScaleFormat::kF32, ScaleFormat::kUe8m0}) {
          const AllreduceRmsnormSpec s = GroupSpec(h, g, layout, fmt);
          cuda::LaunchOptions options;
          options.row_owner = cuda::RowOwner::kPacked;
          options.packed_row_lanes = int(h / 16);
          if (!takes(s, options.packed_row_lanes)) continue;
          for (int64_t t : {3, 37}) EXPECT_EQ(RunAndCompare(s, t, seed++, options), "") << Describe(s, t);
        }
  // The other kernels at two vectors per lane in each width (the fixed recipe of 16-bit
  // activations and weights above): the run-time recipe (f32 weights), the recipe that rounds
  // before the weight, and f16 activations.
  for (int form = 0; form < 3; ++form)
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (int64_t h : {48, 72, 200}) {
        AllreduceRmsnormSpec s = LocalSpec(h, q, true);
        s.group_size = 8;
        if (form == 0) s.weight_dtype = DType::kF32;
        if (form == 1) s.rounding.weight_after_round = true;
        if (form == 2) s.act_dtype = s.weight_dtype = DType::kF16;
        cuda::LaunchOptions options;
        options.row_owner = cuda::RowOwner::kPacked;
        options.packed_row_lanes = h <= 64 ? 4 : h <= 128 ? 8 : 16;
        EXPECT_EQ(RunAndCompare(s, 77, seed++, options), "") << Describe(s, 77) << " form " << form;
      }
  // Lanes for another owner are refused.
  cuda::LaunchOptions block;
  block.row_owner = cuda::RowOwner::kBlock;
  block.packed_row_lanes = 16;
  EXPECT_NE(RunAndCompare(LocalSpec(128, QuantMode::kNone, true), 4, seed++, block).find("invalid argument"),
            std::string::npos);
}

// Outputs written over their inputs (the residual over the residual, the norm over x), as
// in-place callers do, against the oracle: whatever owns a row reads the row's inputs before it
// writes its outputs, and reads no other row's after they are written. Packed rows at H 64 and
// 512, one block per row at one and two vectors per thread, quant none and fp8_group + norm,
// with the residual and the norm alone (over x only); the launcher's grid, and three owners
// striding; at many rows (packed rows at H 512: a warp per row) the rule's choice and packed rows.
TEST_F(LocalFusedTest, InPlaceOutputsAreBitwiseTheOracle) {
  uint64_t seed = 9700;
  for (int64_t h : {64, 512, 1536, 4096})
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Group})
      for (cuda::RowOwner owner : {cuda::RowOwner::kAuto, h <= 512 ? cuda::RowOwner::kPacked : cuda::RowOwner::kBlock})
        for (int64_t max_owners : {0, 3})
          for (bool residual : {true, false}) {
            const AllreduceRmsnormSpec s = LocalSpec(h, q, residual);
            cuda::LaunchOptions options;
            options.row_owner = owner;
            options.max_row_owners = max_owners;
            for (int64_t t : {1, 37, 1001, 20000}) {
              if (t == 20000 && (max_owners != 0 || h > 512)) continue;
              EXPECT_EQ(RunInPlaceAndCompare(s, t, seed++, options), "")
                  << Describe(s, t) << OwnerName(owner) << " owners " << max_owners;
            }
          }
}

// Packed rows' grid (no GPU needed): one block per rows_per_block rows, rounded up; the norm
// alone writing q alone (fp8_tensor, fp8_token, and fp8_group without the norm output) at most
// the resident blocks, which then stride; every grid at most max_row_owners where that is set.
TEST(LocalPackedRowsGridTest, BlocksFollowTheBytesTheOpWrites) {
  constexpr int64_t kRowsPerBlock = 32, kResident = 792;
  const QuantMode kQuants[] = {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token,
                               QuantMode::kFp8Group};
  const int64_t kRows[] = {1, 33, kRowsPerBlock * kResident, kRowsPerBlock * kResident + 1, 262144};
  for (QuantMode q : kQuants)
    for (bool residual : {true, false})
      for (bool norm : {true, false}) {
        AllreduceRmsnormSpec s = LocalSpec(64, q, residual);
        s.emit.norm = norm || q == QuantMode::kNone;
        const bool strides = q != QuantMode::kNone && !residual && !s.emit.norm;
        for (int64_t t : kRows) {
          const int64_t all = (t + kRowsPerBlock - 1) / kRowsPerBlock;
          EXPECT_EQ(cuda::PackedRowsBlocks(s, t, kRowsPerBlock, kResident, 0),
                    strides ? std::min(all, kResident) : all)
              << Describe(s, t);
          EXPECT_EQ(cuda::PackedRowsBlocks(s, t, kRowsPerBlock, kResident, 3),
                    std::min<int64_t>(all, 3))
              << Describe(s, t);
        }
      }
}

// Packed rows' group width, the launcher's rule (no GPU needed): rows of one warp's layout in
// the fewest lanes that hold them at one vector per lane, or in half of those at two for the
// norm alone from 16384 rows, where fp8_group's groups lie within half and two vectors per lane
// are needed (not H <= 32); rows of two warps' layout a group of two warps below 4096 rows, a
// warp from there.
TEST(LocalPackedRowsGridTest, LanesFollowTheRule) {
  struct Case {
    int64_t h;
    QuantMode q;
    int group;
    bool residual;
    int64_t t;
    int lanes;
  };
  const Case cases[] = {
      {256, QuantMode::kNone, 128, false, 16384, 16},     {256, QuantMode::kNone, 128, false, 16383, 32},
      {256, QuantMode::kNone, 128, true, 262144, 32},     {256, QuantMode::kFp8Tensor, 128, false, 262144, 16},
      {256, QuantMode::kFp8Group, 128, false, 65536, 16}, {256, QuantMode::kFp8Group, 256, false, 65536, 32},
      {200, QuantMode::kFp8Token, 128, false, 20000, 16}, {136, QuantMode::kNone, 128, false, 16384, 16},
      {128, QuantMode::kNone, 128, false, 16384, 8},      {128, QuantMode::kFp8Group, 128, false, 16384, 16},
      {128, QuantMode::kFp8Group, 64, false, 16384, 8},   {72, QuantMode::kFp8Tensor, 8, false, 16384, 8},
      {64, QuantMode::kNone, 64, false, 16384, 4},        {64, QuantMode::kFp8Group, 32, false, 16384, 4},
      {64, QuantMode::kFp8Group, 64, false, 16384, 8},    {40, QuantMode::kNone, 8, false, 100000, 4},
      {32, QuantMode::kNone, 32, false, 100000, 8},       {8, QuantMode::kFp8Tensor, 8, false, 100000, 8},
      {264, QuantMode::kNone, 8, false, 100000, 32},      {512, QuantMode::kNone, 128, true, 4095, 64},
      {512, QuantMode::kFp8Group, 128, false, 4096, 32},
  };
  for (const Case& c : cases) {
    AllreduceRmsnormSpec s = LocalSpec(c.h, c.q, c.residual);
    s.group_size = c.group;
    EXPECT_EQ(cuda::PackedRowLanes(s, c.t), c.lanes) << Describe(s, c.t) << " group " << c.group;
  }
}

// The rule's owner and cluster size (no GPU needed) on a GPU of 132 SMs. Where every cluster runs
// at once: at two vectors per row thread the pair cluster while T x C stays within 7/4 x SMs,
// then, for the dynamic modes, the pair cluster of fewer blocks (the most, down to 2, dividing
// the row's warps, whose T x c stays within 7/4 x SMs), then the two-warp cluster within
// 2 x SMs, then one block; the static modes' rows of 6-8 warps the pair while T x C <= SMs / 2;
// rows of one vector per thread, and of four in quant none, the two-warp cluster; rows with no
// split one block. Then, with what one H200 runs at once (LocalRowOwnerCapacity): a cluster only
// while T is at most half of those of its kind and size (a pair giving way to the two-warp
// cluster in the dynamic modes), which bounds the fp8 modes' rows of four vectors alone; and a
// device that runs no clusters one block. Rows of one or two warps: packed from their row counts
// on (no capacity asked).
TEST(LocalRowOwnerRuleTest, ClusterKindAndSizeFollowTheRule) {
  using cuda::RowOwner;
  struct AtOnce {
    int64_t pair[9] = {};  // by cluster blocks
    int64_t cluster = 0;
  };
  struct Case {
    int64_t h;
    QuantMode q;
    int64_t t;
    RowOwner owner;
    int blocks;
    AtOnce at_once;
  };
  const QuantMode group = QuantMode::kFp8Group, token = QuantMode::kFp8Token, tensor = QuantMode::kFp8Tensor;
  const AtOnce ample{{0, 0, 1000, 1000, 1000, 1000, 1000, 1000, 1000}, 1000};
  const AtOnce token8192{{0, 0, 66, 0, 92, 0, 0, 0, 62}, 124}, group8192{{0, 0, 132, 0, 124, 0, 0, 0, 62}, 124};
  const AtOnce four_vectors{{}, 124}, none{};
  const Case cases[] = {
      {8192, group, 1, RowOwner::kClusterPair, 8, ample},     {8192, group, 28, RowOwner::kClusterPair, 8, ample},
      {8192, group, 29, RowOwner::kClusterPair, 4, ample},    {8192, group, 34, RowOwner::kClusterPair, 4, ample},
      {8192, token, 64, RowOwner::kClusterPair, 2, ample},    {8192, token, 115, RowOwner::kClusterPair, 2, ample},
      {8192, token, 116, RowOwner::kBlock, 1, ample},         {7168, group, 33, RowOwner::kClusterPair, 7, ample},
      {7168, group, 34, RowOwner::kClusterPair, 2, ample},    {7168, group, 38, RowOwner::kClusterPair, 2, ample},
      {5120, tensor, 46, RowOwner::kClusterPair, 5, ample},   {5120, tensor, 47, RowOwner::kCluster, 5, ample},
      {5120, tensor, 53, RowOwner::kBlock, 1, ample},         {5120, group, 53, RowOwner::kClusterPair, 2, ample},
      {4096, tensor, 16, RowOwner::kClusterPair, 4, ample},   {4096, tensor, 17, RowOwner::kBlock, 1, ample},
      {4096, group, 64, RowOwner::kClusterPair, 2, ample},    {5120, tensor, 48, RowOwner::kCluster, 5, ample},
      // Past 7/4 x SMs fp8_group takes one block per row instead of the pair of fewer blocks
      // from T > SMs / 2; its full split below 7/4 x SMs stays; fp8_token keeps the pair.
      {4096, group, 66, RowOwner::kClusterPair, 2, ample},    {4096, group, 67, RowOwner::kBlock, 1, ample},
      {2880, group, 77, RowOwner::kClusterPair, 3, ample},    {2880, group, 78, RowOwner::kBlock, 1, ample},
      {4096, token, 96, RowOwner::kClusterPair, 2, ample},
      {2880, QuantMode::kNone, 22, RowOwner::kClusterPair, 3, ample},
      {2880, QuantMode::kNone, 23, RowOwner::kBlock, 1, ample}, {2048, tensor, 1, RowOwner::kBlock, 1, ample},
      {2048, group, 1, RowOwner::kClusterPair, 2, ample},     {1536, group, 88, RowOwner::kCluster, 3, ample},
      {1536, group, 89, RowOwner::kBlock, 1, ample},          {16384, QuantMode::kNone, 33, RowOwner::kCluster, 8, ample},
      {16384, QuantMode::kNone, 34, RowOwner::kBlock, 1, ample}, {4608, group, 1, RowOwner::kBlock, 1, ample},
      // What one H200 runs at once.
      {8192, token, 28, RowOwner::kClusterPair, 8, token8192}, {8192, token, 31, RowOwner::kClusterPair, 4, token8192},
      {8192, token, 48, RowOwner::kCluster, 8, token8192},    {8192, token, 63, RowOwner::kBlock, 1, token8192},
      {8192, token, 80, RowOwner::kBlock, 1, token8192},      {8192, group, 48, RowOwner::kClusterPair, 4, group8192},
      {8192, group, 64, RowOwner::kClusterPair, 2, group8192}, {8192, group, 67, RowOwner::kBlock, 1, group8192},
      {16384, token, 62, RowOwner::kCluster, 8, four_vectors}, {16384, token, 63, RowOwner::kBlock, 1, four_vectors},
      {16384, tensor, 40, RowOwner::kCluster, 8, four_vectors}, {16384, QuantMode::kNone, 33, RowOwner::kCluster, 8, four_vectors},
      {8192, group, 1, RowOwner::kBlock, 1, none},            {16384, token, 1, RowOwner::kBlock, 1, none},
      // Rows of one warp are packed from 256 rows in the static modes and from 1024 in the
      // dynamic ones; rows of two warps at every T; a row of three warps (H 520) has no split.
      {64, QuantMode::kNone, 255, RowOwner::kBlock, 1, none}, {64, QuantMode::kNone, 256, RowOwner::kPacked, 1, none},
      {128, tensor, 256, RowOwner::kPacked, 1, none},          {256, QuantMode::kNone, 262144, RowOwner::kPacked, 1, none},
      {64, group, 1, RowOwner::kBlock, 1, none},              {64, group, 1023, RowOwner::kBlock, 1, none},
      {256, token, 1023, RowOwner::kBlock, 1, none},          {256, token, 1024, RowOwner::kPacked, 1, none},
      {136, group, 65536, RowOwner::kPacked, 1, none},         {512, token, 1, RowOwner::kPacked, 1, ample},
      {384, QuantMode::kNone, 262144, RowOwner::kPacked, 1, ample}, {264, group, 1, RowOwner::kPacked, 1, ample},
      {512, group, 65536, RowOwner::kPacked, 1, ample},        {520, QuantMode::kNone, 65536, RowOwner::kBlock, 1, ample}};
  for (const Case& c : cases) {
    const AllreduceRmsnormSpec s = LocalSpec(c.h, c.q, /*residual=*/true);
    const RowLayout layout = MakeRowLayout(c.h);
    const cuda::LocalRowOwner got = cuda::LocalRowOwnerRule(s, c.t, 132, [&](const cuda::LocalRowOwner& o) -> int64_t {
      // Asked only of owners the row has: a pair size dividing its warps, or its own split.
      if (o.owner == RowOwner::kClusterPair) {
        EXPECT_EQ(layout.vecs_per_thread, 2) << Describe(s, c.t);
        EXPECT_EQ(layout.threads / 32 % o.cluster_blocks, 0) << Describe(s, c.t);
        return o.cluster_blocks >= 2 && o.cluster_blocks <= 8 ? c.at_once.pair[o.cluster_blocks] : 0;
      }
      EXPECT_EQ(o.owner, RowOwner::kCluster) << Describe(s, c.t);
      EXPECT_EQ(o.cluster_blocks, RowClusterBlocks(layout, 8, 64)) << Describe(s, c.t);
      return c.at_once.cluster;
    });
    EXPECT_EQ(got.owner, c.owner) << Describe(s, c.t);
    EXPECT_EQ(got.cluster_blocks, c.blocks) << Describe(s, c.t);
  }
}

// On the GPU: the device answers how many of each owner run at once (more than none, and no more
// blocks than its SMs hold, 32 each); at T = 1 the dynamic modes' rows with a split take a
// cluster (a capacity wrongly none would leave every row to one block); the rule never takes a
// cluster of which fewer than 2 T run at once (no grid in two waves); and what the launcher runs
// under it is bitwise the oracle.
TEST_F(LocalFusedTest, TheRuleOnTheDeviceFitsOneWave) {
  int sms = 0, major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  uint64_t seed = 500;
  for (int64_t h : {2048, 2880, 4096, 6144, 8192, 12288, 16384})
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group}) {
      const AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
      const RowLayout layout = MakeRowLayout(h);
      const int split = RowClusterBlocks(layout, 8, 64);
      std::vector<cuda::LocalRowOwner> owners = {{cuda::RowOwner::kBlock, 1}, {cuda::RowOwner::kCluster, split}};
      if (layout.vecs_per_thread == 2)
        for (int c = 2; c <= 8; ++c)
          if (layout.threads / 32 % c == 0) owners.push_back({cuda::RowOwner::kClusterPair, c});
      for (const cuda::LocalRowOwner& o : owners) {
        const StatusOr<int64_t> at_once = cuda::LocalRowOwnerCapacity(s, o);
        ASSERT_TRUE(at_once.ok()) << Describe(s, 1) << OwnerName(o.owner) << ": " << at_once.status().ToString();
        if (major >= 9) EXPECT_GT(*at_once, 0) << Describe(s, 1) << OwnerName(o.owner) << " of " << o.cluster_blocks;
        EXPECT_LE(*at_once * o.cluster_blocks, int64_t{sms} * 32) << Describe(s, 1) << OwnerName(o.owner);
      }
      for (int64_t t : {1, 24, 47, 64, 80, 96, 128, 200}) {
        const StatusOr<cuda::LocalRowOwner> got = cuda::LocalRowOwnerOnDevice(s, t);
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        if (t == 1 && major >= 9 && IsDynamicQuant(q)) EXPECT_NE(got->owner, cuda::RowOwner::kBlock) << Describe(s, t);
        if (t == 47 || t == 96) EXPECT_EQ(RunAndCompare(s, t, seed++), "") << Describe(s, t);
        if (got->owner == cuda::RowOwner::kBlock) continue;
        const StatusOr<int64_t> at_once = cuda::LocalRowOwnerCapacity(s, *got);
        ASSERT_TRUE(at_once.ok()) << at_once.status().ToString();
        EXPECT_LE(2 * t, *at_once) << Describe(s, t) << " cluster of " << got->cluster_blocks;
      }
    }
}

// The kernels with the recipe fixed at compile time (the local op's default recipe and
// weight_after_round, bf16 and f16 with the weight in the activation dtype) and the kernels that
// read it at run time, each forced, under every row owner (the pair cluster where the row has
// two vectors per row thread), at one, two and four vectors per thread, with the residual and
// without (the norm alone's own fixed-recipe kernels, NormAloneEpilogueFamily): both bitwise the
// oracle. (Specs outside the fixed forms run the run-time kernels: the tests above.)
TEST_F(LocalFusedTest, FixedAndRuntimeRecipeKernelsAreBitwiseTheOracle) {
  uint64_t seed = 9500;
  for (DType act : {DType::kBF16, DType::kF16})
    for (bool weight_after_round : {false, true})
      for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
        for (int64_t h : {1536, 7168, 16384})
          for (cuda::RowOwner owner : RowOwnersOf(h))
            for (bool fixed : {true, false})
              for (bool residual : {true, false}) {
                AllreduceRmsnormSpec s = LocalSpec(h, q, residual);
                s.act_dtype = s.weight_dtype = act;
                s.rounding.weight_after_round = weight_after_round;
                for (int64_t t : {1, 40})
                  EXPECT_EQ(RunAndCompare(s, t, seed++, Forced(owner, fixed)), "")
                      << Describe(s, t) << ForcedName(owner, fixed);
              }
}

// A row whose FP8 values tell the scale steps apart (as CpuFusedRecipeTest.
// DynamicScaleDivideOrMultiply): x = 1 and no residual term, w = [3136, 10.9375, 1, ...], so
// y = w; with the scale 7 (3136 / 448, or the static scale 7), y / 7 = 1.5625 is an FP8 tie
// (1.5) and y * (1/7) rounds up (1.625). Every quantized mode, both scale steps, both recipes'
// kernels and row owners, 1, 2 and 4 vectors per thread.
TEST_F(LocalFusedTest, ScaleStepTiesAreBitwiseTheOracleInEveryKernel) {
  uint64_t seed = 9900;
  for (QuantMode q : {QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
    for (int64_t h : {1536, 7168, 16384}) {
      AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
      const int64_t tokens = 2;
      FusedInputs in = MakeFusedInputs(s, tokens, /*world_size=*/1, seed++);
      for (int64_t i = 0; i < tokens * h; ++i) {
        in.partials[0].SetF32(i, 1.0f);
        in.residual.SetF32(i, 0.0f);
      }
      for (int64_t i = 0; i < h; ++i) in.weight.SetF32(i, i == 0 ? 3136.0f : i == 1 ? 10.9375f : 1.0f);
      if (q == QuantMode::kFp8Tensor) in.scale.SetF32(0, 7.0f);
      AllreduceRmsnormSpec swapped = s;
      swapped.rounding.scale_op_swapped = true;
      ASSERT_NE(BitwiseDiff(OracleOutputs(s, in), OracleOutputs(swapped, in)), "") << "the row must tell the steps apart";
      for (const AllreduceRmsnormSpec& spec : {s, swapped})
        for (cuda::RowOwner owner : RowOwnersOf(h))
          for (bool fixed : {true, false})
            EXPECT_EQ(RunAndCompareInputs(spec, tokens, in, Forced(owner, fixed)), "")
                << Describe(spec, tokens) << ForcedName(owner, fixed);
    }
}

// Rows whose layout leaves a thread's last vector past the row (H 2880: 24 of 384 vector slots,
// two per thread; 5760: 48 of 768; 13824: 64 of 1792, four per thread): the kernels compute
// those vectors on zeros and must store nothing of them and leave them out of every sum and
// maximum. Every quant mode (fp8_group with column-major scales, whose padding rows are
// written too), every row owner (a cluster holds its weights in registers), both recipes'
// kernels, and f32 weights (read per vector from global memory by the one-block kernel).
TEST_F(LocalFusedTest, VectorsPastTheRowAreBitwiseTheOracleInEveryKernel) {
  uint64_t seed = 9950;
  for (int64_t h : {2880, 5760, 13824}) {
    const RowLayout layout = MakeRowLayout(h);
    ASSERT_GT(int64_t{layout.threads} * layout.vecs_per_thread, layout.vecs) << "H " << h << " must leave vectors past the row";
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (DType w : {DType::kBF16, DType::kF32})
        for (cuda::RowOwner owner : RowOwnersOf(h))
          for (bool fixed : {true, false}) {
            AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
            s.weight_dtype = w;
            if (q == QuantMode::kFp8Group) s.scale_layout = ScaleLayout::kCol;
            for (int64_t t : {1, 9})
              EXPECT_EQ(RunAndCompare(s, t, seed++, Forced(owner, fixed)), "")
                  << Describe(s, t) << ForcedName(owner, fixed);
          }
  }
}

// fp8_token's amax from a bound (common/amax_bound.h: over a cluster, one rounding in y), on
// rows that take each of its paths, against the oracle. Rows 3k are random: the bound decides
// (checked on the host, with the header's own function, before the GPU runs). Rows 3k + 1 have
// mean square exactly 1 (four 1.5s, five 0s, the rest +-1) and their 1.5s meet weights
// 1 + 1 ulp, so their maximum y lies just below a 16-bit rounding boundary, where the bound must
// not decide (its upper end would give the larger neighbour). Rows 3k + 2 are tiny (bf16: c
// below 2^-60, not decided) or zeros, in turn. Then the same rows with one bf16 weight above the
// bound's limit (nothing decided). Clusters forced: one row each, and one or two striding over
// the rows, so a reduction row and its mbarrier are used again after rows that skipped the
// second exchange; both recipes' kernels, weight_after_round (no bound) too; bf16 and f16; 1, 2
// and 4 vectors per thread. fp8_group (no bound) on the same rows, for contrast.
TEST_F(LocalFusedTest, AmaxBoundRowsAreBitwiseTheOracle) {
  uint64_t seed = 9970;
  for (DType act : {DType::kBF16, DType::kF16})
    for (QuantMode q : {QuantMode::kFp8Token, QuantMode::kFp8Group})
      for (int64_t h : {1536, 7168, 16384})
        for (bool heavy_weight : {false, true}) {
          if (heavy_weight && act == DType::kF16) continue;  // no f16 weight exceeds the bound's limit
          AllreduceRmsnormSpec s = LocalSpec(h, q, /*residual=*/true);
          s.act_dtype = s.weight_dtype = act;
          s.eps = 1e-6f;
          const int64_t tokens = 12;
          FusedInputs in = MakeFusedInputs(s, tokens, /*world_size=*/1, seed++);
          const float ulp = act == DType::kBF16 ? 0x1p-7f : 0x1p-10f;
          for (int64_t i = 0; i < h; ++i) in.weight.SetF32(i, i < 4 ? 1.0f + ulp : 1.0f);
          for (int64_t row = 0; row < tokens; ++row) {
            const int64_t o = row * h;
            for (int64_t i = 0; i < h; ++i) {
              if (row % 3 == 0) continue;  // random
              in.residual.SetF32(o + i, 0.0f);
              if (row % 3 == 1) {
                in.partials[0].SetF32(o + i, i < 4 ? 1.5f : i < 9 ? 0.0f : (i % 2 ? 1.0f : -1.0f));
              } else {
                const float random = in.partials[0].GetF32(o - 2 * h + i);  // row 3k's
                in.partials[0].SetF32(o + i, row % 6 == 2 ? random * 0x1p-100f : 0.0f);
              }
            }
            if (row % 3 != 0) continue;
            // The random row's bound decides (r summed in another order than the kernel's: a
            // decision this far from a boundary does not depend on it).
            std::vector<float> u(size_t(h), 0.0f), w(size_t(h), 0.0f);
            float sum = 0.0f;
            for (int64_t i = 0; i < h; ++i) {
              u[size_t(i)] = RoundTo(act, in.partials[0].GetF32(o + i) + in.residual.GetF32(o + i));
              w[size_t(i)] = in.weight.GetF32(i);
              sum += u[size_t(i)] * u[size_t(i)];
            }
            const float r = 1.0f / std::sqrt(sum / float(h) + s.eps);
            const float m = AmaxBoundOf(u.data(), w.data(), int(h), 0.0f);
            ASSERT_GE(AmaxFromBound(m, r, [act](float x) { return RoundTo(act, x); }), 0.0f)
                << "row " << row << " must take the bound's path";
          }
          if (heavy_weight) in.weight.SetF32(h / 4, 0x1p41f);  // in a pair cluster's part 0
          for (cuda::RowOwner owner : RowOwnersOf(h, /*block=*/false))
            for (bool weight_after_round : {false, true})
              for (bool fixed : {true, false})
                for (int64_t max_owners : {0, 1, 2}) {
                  s.rounding.weight_after_round = weight_after_round;
                  cuda::LaunchOptions options = Forced(owner, fixed);
                  options.max_row_owners = max_owners;
                  EXPECT_EQ(RunAndCompareInputs(s, tokens, in, options), "")
                      << Describe(s, tokens) << " act " << DTypeName(act) << (heavy_weight ? " heavy weight" : "")
                      << ForcedName(owner, fixed) << ", owners " << max_owners;
                }
        }
  // The bound under the run-time recipe's other forms, clusters forced, random rows: ue8m0
  // scales (column-major too), the norm reading f32 h, a weight bias (in f32, and in the
  // weight's dtype), the scale applied by multiplying, f32 weights.
  for (int form = 0; form < 6; ++form) {
    AllreduceRmsnormSpec s = LocalSpec(7168, QuantMode::kFp8Token, /*residual=*/true);
    if (form <= 1) s.scale_fmt = ScaleFormat::kUe8m0;
    if (form == 1) s.scale_layout = ScaleLayout::kCol;
    if (form == 2) s.rounding.norm_input_f32 = true;
    if (form == 3 || form == 4) s.weight_bias = 1.0f;
    if (form == 4) s.rounding.weight_bias_in_weight_dtype = true;
    if (form == 5) {
      s.rounding.scale_op_swapped = true;
      s.weight_dtype = DType::kF32;
    }
    for (cuda::RowOwner owner : RowOwnersOf(7168, /*block=*/false))
      for (int64_t max_owners : {0, 1}) {
        cuda::LaunchOptions options;
        options.row_owner = owner;
        options.max_row_owners = max_owners;
        EXPECT_EQ(RunAndCompare(s, 9, seed++, options), "")
            << Describe(s, 9) << OwnerName(owner) << " owners " << max_owners;
      }
  }
}

// fp8_group's one block per row runs its own kernels for grids of at most one block per SM (the
// fixed recipes' SoleBlockRecipe, two vectors per thread) and the shared ones past it: T = SMs
// and SMs + 1, and 2 SMs + 3 rows under SMs blocks striding over them, each bitwise the oracle.
// Both fixed recipes, bf16 and f16; groups of 16 (shuffles), 128 and 256 (in SoleBlockRecipe's
// kernels whole-warp reductions, two groups to a warp and one), which do not divide H 2880 and
// run at H 7168 only; both scale layouts (column-major's padding rows past T); ue8m0 at groups of
// 128 (DeepSeek's).
TEST_F(LocalFusedTest, GroupKernelsOnEitherSideOfOneBlockPerSmAreBitwiseTheOracle) {
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  uint64_t seed = 9990;
  for (DType act : {DType::kBF16, DType::kF16})
    for (bool weight_after_round : {false, true})
      for (int64_t h : {2880, 7168})
        for (int g : {16, 128, 256})
          for (ScaleLayout layout : {ScaleLayout::kRow, ScaleLayout::kCol})
            for (ScaleFormat fmt : {ScaleFormat::kF32, ScaleFormat::kUe8m0}) {
              if (h % g != 0 || (fmt == ScaleFormat::kUe8m0 && g != 128)) continue;
              AllreduceRmsnormSpec s = GroupSpec(h, g, layout, fmt);
              s.act_dtype = s.weight_dtype = act;
              s.rounding.weight_after_round = weight_after_round;
              for (int64_t t : {int64_t{sms}, int64_t{sms} + 1, 2 * int64_t{sms} + 3}) {
                cuda::LaunchOptions options = Forced(cuda::RowOwner::kBlock, /*fixed=*/true);
                if (t > sms + 1) options.max_row_owners = sms;
                EXPECT_EQ(RunAndCompare(s, t, seed++, options), "")
                    << Describe(s, t) << " act " << DTypeName(act) << ", owners " << options.max_row_owners;
              }
            }
}

// Which kernel the local op runs: the fixed recipes for exactly their forms (no GPU needed).
TEST(LocalKernelRecipeTest, FixedForTheirFormsOnly) {
  using cuda::KernelRecipe;
  const AllreduceRmsnormSpec base = LocalSpec(4096, QuantMode::kFp8Token, /*residual=*/true);
  for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group}) {
    AllreduceRmsnormSpec s = LocalSpec(4096, q, /*residual=*/true);
    EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kFixed) << s.ToString();
    s.rounding.weight_after_round = true;
    EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kFixedWeightAfterRound) << s.ToString();
    s.rounding.scale_op_swapped = true;  // the scale step: not the fixed kernels' where one runs
    EXPECT_EQ(cuda::LocalKernelRecipe(s),
              q == QuantMode::kNone ? KernelRecipe::kFixedWeightAfterRound : KernelRecipe::kRuntime)
        << s.ToString();
  }
  AllreduceRmsnormSpec s = base;
  s.act_dtype = s.weight_dtype = DType::kF16;
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kFixed);
  s.weight_dtype = DType::kBF16;  // a weight in another dtype
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kRuntime);
  s = base;
  s.weight_dtype = DType::kF32;
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kRuntime);
  s = base;
  s.weight_bias = 1.0f;
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kRuntime);
  s.weight_bias = -0.0f;  // adds nothing, as 0
  s.rounding.weight_bias_in_weight_dtype = true;  // no effect without a bias
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kFixed);
  s = base;
  s.rounding.norm_input_f32 = true;
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kRuntime);
  s = base;
  s.sum_scale = 0.22f;
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kRuntime);
  s = base;
  s.scale_fmt = ScaleFormat::kUe8m0;
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kRuntime);
  s = base;
  s.emit.allreduce = true;
  EXPECT_EQ(cuda::LocalKernelRecipe(s), KernelRecipe::kRuntime);
  cuda::LaunchOptions options;
  options.fixed_recipes = false;
  EXPECT_EQ(cuda::LocalKernelRecipe(base, options), KernelRecipe::kRuntime);
}

// A forced cluster where the row has no split is refused with the reason, as is a pair cluster
// for rows of other than two vectors per row thread, and a negative cap.
TEST_F(LocalFusedTest, ForcedClusterWithoutASplitIsRefused) {
  const AllreduceRmsnormSpec s = LocalSpec(128, QuantMode::kFp8Tensor, true);  // one warp per row
  cuda::LaunchOptions options;
  for (cuda::RowOwner owner : {cuda::RowOwner::kCluster, cuda::RowOwner::kClusterPair}) {
    options.row_owner = owner;
    const std::string diff = RunAndCompare(s, 4, 1, options);
    EXPECT_NE(diff.find("no cluster per row"), std::string::npos) << diff;
  }
  options.row_owner = cuda::RowOwner::kClusterPair;
  for (int64_t h : {1536, 16384}) {  // one and four vectors per row thread, both with a split
    const std::string diff = RunAndCompare(LocalSpec(h, QuantMode::kFp8Tensor, true), 4, 1, options);
    EXPECT_NE(diff.find("not 2"), std::string::npos) << "H " << h << ": " << diff;
  }
  // Two vectors per row thread and 9 warps: no split.
  std::string diff = RunAndCompare(LocalSpec(4608, QuantMode::kFp8Tensor, true), 4, 1, options);
  EXPECT_NE(diff.find("no cluster per row"), std::string::npos) << diff;
  // Blocks per cluster that do not divide the row's warps, or for another owner.
  options.cluster_blocks = 3;  // H 8192: 16 warps
  diff = RunAndCompare(LocalSpec(8192, QuantMode::kFp8Tensor, true), 4, 1, options);
  EXPECT_NE(diff.find("cluster_blocks 3"), std::string::npos) << diff;
  options.row_owner = cuda::RowOwner::kCluster;
  options.cluster_blocks = 2;
  diff = RunAndCompare(LocalSpec(8192, QuantMode::kFp8Tensor, true), 4, 1, options);
  EXPECT_NE(diff.find("kClusterPair only"), std::string::npos) << diff;
  options.cluster_blocks = 0;
  options.row_owner = cuda::RowOwner::kAuto;
  options.max_row_owners = -1;
  EXPECT_NE(RunAndCompare(s, 4, 1, options).find("max_row_owners"), std::string::npos);
}

// The public entry point validates like the launcher and refuses what no kernel runs.
TEST_F(LocalFusedTest, PublicEntryPointRefusesBadSpecsWithAReason) {
  AllreduceRmsnormSpec s = LocalSpec(4096, QuantMode::kFp8Tensor, true);
  cuda::FusedBuffers none;
  // emit.allreduce on a local op: the graph already has x.
  AllreduceRmsnormSpec bad = s;
  bad.emit.allreduce = true;
  Status st = AllreduceRmsnormLocal(bad, 4, none, nullptr);
  EXPECT_FALSE(st.ok());
  // A hidden size past the largest row.
  bad = s;
  bad.hidden = kMaxRowHidden * 2;
  st = AllreduceRmsnormLocal(bad, 4, none, nullptr);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("hidden"), std::string::npos) << st.ToString();
  // Missing buffers are named, not dereferenced.
  st = AllreduceRmsnormLocal(s, 4, none, nullptr);
  EXPECT_FALSE(st.ok());
}

}  // namespace
}  // namespace tpfuse::testing
