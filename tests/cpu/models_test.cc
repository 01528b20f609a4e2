// The bundled models (models/*.json) and the decode-graph builder: every model builds, verifies,
// compiles with exactly two fusions per layer and no rejection (for the CPU and the CUDA
// backend's capabilities), and its fused graph matches the unfused one on the CPU oracle at two
// ranks. Descriptions with mistakes fail with the file and the field named.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "ir/parser.h"
#include "ir/printer.h"
#include "ir/verifier.h"
#include "models/model.h"
#include "passes/pass.h"
#include "runtime/check.h"
#include "runtime/executor.h"
#include "runtime/inputs.h"

namespace tpfuse::models {
namespace {

// Every file under models/, as a test parameter ("deepseek-v3.2.json").
std::vector<std::string> BundledModelNames() {
  std::vector<std::string> names;
  StatusOr<std::vector<std::string>> files = ListModelFiles(BundledModelsDir());
  if (!files.ok()) return names;
  for (const std::string& f : *files) names.push_back(std::filesystem::path(f).filename());
  return names;
}

ModelConfig MustLoad(const std::string& file) {
  StatusOr<ModelConfig> config = LoadModelConfig(BundledModelsDir() + "/" + file);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  return config.ok() ? *config : ModelConfig{};
}

struct CompileOutcome {
  std::unique_ptr<ir::Graph> graph;
  passes::PassContext ctx;
};

CompileOutcome Compile(const ir::Graph& graph, const FusionCapabilities& caps, int world_size,
                       bool fuse_local = false) {
  CompileOutcome out;
  out.graph = graph.Clone();
  out.ctx.world_size = world_size;
  out.ctx.fuse_local = fuse_local;
  out.ctx.caps = caps;
  StatusOr<bool> changed = passes::MakeDefaultPipeline().Run(*out.graph, out.ctx);
  EXPECT_TRUE(changed.ok()) << changed.status().ToString();
  return out;
}

// `graph` compiled for the CPU target at `world_size` against itself on the CPU executor, over
// 3 tokens of random inputs (`seed`): the compiled graph's outputs match (CompareGraphOutputs).
void ExpectFusedMatchesTheGraph(const ir::Graph& graph, int world_size, bool fuse_local, uint64_t seed) {
  CompileOutcome c = Compile(graph, CpuFusionCapabilities(), world_size, fuse_local);
  StatusOr<std::vector<runtime::TensorMap>> inputs = runtime::MakeRandomInputs(graph, world_size, 3, seed);
  ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
  StatusOr<runtime::RankOutputs> ref = runtime::MakeCpuExecutor(world_size)->Run(graph, *inputs);
  StatusOr<runtime::RankOutputs> got = runtime::MakeCpuExecutor(world_size)->Run(*c.graph, *inputs);
  ASSERT_TRUE(ref.ok() && got.ok()) << ref.status().ToString() << got.status().ToString();
  StatusOr<runtime::CheckReport> report = runtime::CompareGraphOutputs(graph, *ref, *c.graph, *got, *inputs);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->ok) << report->ToString();
}

std::string Rejections(const passes::PassContext& ctx) {
  std::string text;
  for (const passes::Rejection& r : ctx.rejections) text += "%" + r.anchor + ": " + r.reason + "\n";
  return text;
}

// ---------------------------------------------------------------- every bundled model

class BundledModelTest : public ::testing::TestWithParam<std::string> {};

TEST(BundledModels, TheFourRequiredModelsAreThere) {
  const std::vector<std::string> names = BundledModelNames();
  const std::set<std::string> have(names.begin(), names.end());
  for (const char* required :
       {"llama-3.1-8b-fp8.json", "deepseek-v3.2.json", "qwen3-next.json", "gemma.json"}) {
    EXPECT_TRUE(have.count(required)) << required << " is missing from " << BundledModelsDir();
  }
}

TEST_P(BundledModelTest, BuildsVerifiesAndRoundTripsThroughText) {
  const ModelConfig config = MustLoad(GetParam());
  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(config);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  EXPECT_TRUE(ir::Verify(**graph).ok()) << ir::Verify(**graph).ToString();
  // Two sites a layer; a shared MLP reduced apart adds one all_reduce at each site it feeds.
  const int shared_sites = config.shared_mlp_reduced_apart ? config.layers - (config.first_layer_residual ? 0 : 1) : 0;
  EXPECT_EQ((*graph)->OpCounts()["all_reduce"], 2 * config.layers + shared_sites);

  // The text format carries the whole graph: parse(print(g)) prints the same.
  const std::string text = ir::PrintGraph(**graph);
  StatusOr<std::unique_ptr<ir::Graph>> reparsed = ir::ParseGraph(text, GetParam());
  ASSERT_TRUE(reparsed.ok()) << reparsed.status().ToString() << "\n" << text;
  EXPECT_EQ(ir::PrintGraph(**reparsed), text);
}

TEST_P(BundledModelTest, CompilesWithTwoFusionsPerLayerAndNoRejection) {
  const ModelConfig config = MustLoad(GetParam());
  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(config);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  for (const FusionCapabilities& caps : {CpuFusionCapabilities(), CudaFusionCapabilities()}) {
    SCOPED_TRACE("backend " + caps.backend);
    CompileOutcome c = Compile(**graph, caps, 2);
    EXPECT_EQ(c.ctx.fusions.size(), size_t(2 * config.layers));
    EXPECT_TRUE(c.ctx.rejections.empty()) << Rejections(c.ctx);
    const std::map<std::string, int> ops = c.graph->OpCounts();
    EXPECT_EQ(ops.count("all_reduce"), 0u);
    EXPECT_EQ(ops.at("allreduce_rmsnorm"), 2 * config.layers);
    // Sandwich norms on CUDA at world size 2: the residual add and the next norm stay for local
    // fusion (off here), with a note at each fusion (BundledModels.GemmaNormsEachBlocksOutput...).
    const bool norms_apart = config.sandwich_norms && caps.backend == "cuda";
    EXPECT_EQ(ops.count("fused_add_rms_norm") ? ops.at("fused_add_rms_norm") : 0, norms_apart ? 2 * config.layers : 0);
    // Nothing else of the norm or the quantization is left beside the fused ops.
    for (const char* op : {"rms_norm", "quant_fp8", "rsqrt", "cast", "pow", "mean", "clamp", "div"}) {
      EXPECT_EQ(ops.count(op), 0u) << op;
    }
    for (const passes::FusionRecord& f : c.ctx.fusions) {
      SCOPED_TRACE("fusion at %" + f.anchor);
      EXPECT_EQ(f.spec.quant, config.quant);
      EXPECT_EQ(f.spec.hidden, config.hidden_size);
      EXPECT_EQ(f.spec.weight_dtype, config.norm_weight_dtype);
      EXPECT_EQ(f.spec.weight_bias, float(config.weight_bias));
      EXPECT_EQ(f.spec.emit.quant, config.quant != QuantMode::kNone);
      EXPECT_EQ(f.spec.pre_residual_norm, config.sandwich_norms && !norms_apart) << f.spec.ToString();
      EXPECT_EQ(f.notes.size(), norms_apart ? 1u : 0u);
    }
  }
}

TEST_P(BundledModelTest, FusedMatchesUnfusedOnTheCpuOracleAtTwoRanks) {
  ModelConfig config = MustLoad(GetParam());
  config.tp_size = 2;
  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(config);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  CompileOutcome c = Compile(**graph, CpuFusionCapabilities(), 2);
  for (int64_t tokens : {1, 3}) {
    SCOPED_TRACE("T = " + std::to_string(tokens));
    StatusOr<std::vector<runtime::TensorMap>> inputs =
        runtime::MakeRandomInputs(**graph, 2, tokens, /*seed=*/uint64_t(tokens) * 7919);
    ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
    StatusOr<runtime::RankOutputs> ref = runtime::MakeCpuExecutor(2)->Run(**graph, *inputs);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    StatusOr<runtime::RankOutputs> got = runtime::MakeCpuExecutor(2)->Run(*c.graph, *inputs);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    StatusOr<runtime::CheckReport> report =
        runtime::CompareGraphOutputs(**graph, *ref, *c.graph, *got, *inputs);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    EXPECT_TRUE(report->ok) << report->ToString();
  }
}

INSTANTIATE_TEST_SUITE_P(Models, BundledModelTest, ::testing::ValuesIn(BundledModelNames()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = std::filesystem::path(info.param).stem();
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

// ---------------------------------------------------------------- what each model shows

const passes::FusionRecord* FusionAt(const passes::PassContext& ctx, const std::string& anchor) {
  for (const passes::FusionRecord& f : ctx.fusions) {
    if (f.anchor == anchor) return &f;
  }
  return nullptr;
}

std::string EmitOf(const passes::PassContext& ctx, const std::string& anchor) {
  const passes::FusionRecord* f = FusionAt(ctx, anchor);
  if (f == nullptr) return "(not fused)";
  std::string text;
  for (const std::string& name : f->spec.emit.Names()) text += (text.empty() ? "" : ",") + name;
  return text;
}

TEST(BundledModels, DeepSeekFansOutFromTheFirstNormAndStartsWithoutResidual) {
  const ModelConfig config = MustLoad("deepseek-v3.2.json");
  EXPECT_FALSE(config.first_layer_residual);
  EXPECT_EQ(config.quant, QuantMode::kFp8Group);
  EXPECT_EQ(config.group_size, 128);
  EXPECT_GT(config.indexer_dim, 0);
  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(config);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  CompileOutcome c = Compile(**graph, CpuFusionCapabilities(), 2);
  // Layer 0: no residual; the all_reduce result is the residual stream, the norm feeds the
  // indexer's bf16 GEMM and the quantized QKV GEMM.
  ASSERT_NE(FusionAt(c.ctx, "l0.in.ar"), nullptr);
  EXPECT_FALSE(FusionAt(c.ctx, "l0.in.ar")->spec.has_residual);
  EXPECT_EQ(EmitOf(c.ctx, "l0.in.ar"), "allreduce,norm,quant");
  EXPECT_EQ(EmitOf(c.ctx, "l1.in.ar"), "norm,residual,quant");
  EXPECT_EQ(EmitOf(c.ctx, "l0.post.ar"), "residual,quant");
  // The last chain's residual is dead.
  EXPECT_EQ(EmitOf(c.ctx, "l1.post.ar"), "quant");
}

TEST(BundledModels, LlamaIsStaticPerTensorAndQwenHasAnF32NormWeight) {
  const ModelConfig llama = MustLoad("llama-3.1-8b-fp8.json");
  EXPECT_EQ(llama.quant, QuantMode::kFp8Tensor);
  EXPECT_EQ(llama.hidden_size, 4096);
  const ModelConfig qwen = MustLoad("qwen3-next.json");
  EXPECT_EQ(qwen.norm_weight_dtype, DType::kF32);
  EXPECT_EQ(qwen.act_dtype, DType::kBF16);
  const ModelConfig gemma = MustLoad("gemma.json");
  EXPECT_EQ(gemma.weight_bias, 1.0);

  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(llama);
  ASSERT_TRUE(graph.ok());
  CompileOutcome c = Compile(**graph, CpuFusionCapabilities(), 2);
  ASSERT_NE(FusionAt(c.ctx, "l0.in.ar"), nullptr);
  EXPECT_TRUE(FusionAt(c.ctx, "l0.in.ar")->spec.has_residual);
  EXPECT_EQ(EmitOf(c.ctx, "l0.in.ar"), "residual,quant");
}

// Granite's layers: the routed experts and the shared MLP reduced apart, then scaled by the
// residual multiplier: each site after an MLP fuses both all_reduces (second_sum, sum_scale 0.22),
// each site after the attention its one (sum_scale 0.22); at world size 2 and at world size 1
// (where the all_reduces are the identity), for the CPU and the CUDA targets, bitwise the graph.
TEST(BundledModels, GraniteSumsTheSharedMlpAndTheExpertsInOneFusedOp) {
  const ModelConfig granite = MustLoad("granite-4.0-moe.json");
  ASSERT_TRUE(granite.shared_mlp_reduced_apart);
  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(granite);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  for (int world_size : {2, 1}) {
    for (const FusionCapabilities& caps : {CpuFusionCapabilities(), CudaFusionCapabilities()}) {
      SCOPED_TRACE(StrCat("world size ", world_size, ", backend ", caps.backend));
      CompileOutcome c = Compile(**graph, caps, world_size, /*fuse_local=*/world_size == 1);
      EXPECT_TRUE(c.ctx.rejections.empty()) << Rejections(c.ctx);
      for (int l = 0; l < granite.layers; ++l) {
        const passes::FusionRecord* in = FusionAt(c.ctx, StrCat("l", l, ".in.ar"));
        const passes::FusionRecord* post = FusionAt(c.ctx, StrCat("l", l, ".post.ar"));
        ASSERT_NE(in, nullptr);
        ASSERT_NE(post, nullptr);
        EXPECT_TRUE(in->spec.second_sum) << in->spec.ToString();
        EXPECT_EQ(in->second_anchor, StrCat("l", l, ".in.ar2"));
        EXPECT_EQ(in->spec.sum_scale, 0.22f) << in->spec.ToString();
        EXPECT_FALSE(post->spec.second_sum) << post->spec.ToString();
        EXPECT_EQ(post->spec.sum_scale, 0.22f) << post->spec.ToString();
        EXPECT_EQ(in->spec.local, world_size == 1);
      }
      EXPECT_EQ(c.graph->OpCounts().count("all_reduce"), 0u);
    }
    ExpectFusedMatchesTheGraph(**graph, world_size, /*fuse_local=*/world_size == 1, 17);
  }
}

// GPT-OSS's attention output projection has a bias, which transformers' row-wise plan adds after
// its all_reduce: every site after the attention fuses it (has_bias), the sites after the MLP
// have none; with mlp_bias too (Llama's), and in the decomposed export, every block's site does.
// At world size 2 and 1, for the CPU and the CUDA targets, bitwise the graph.
TEST(BundledModels, GptOssAddsTheAttentionsBiasInTheFusedOp) {
  for (int form = 0; form < 3; ++form) {  // 0: as bundled; 1: mlp_bias too; 2: decomposed too
    ModelConfig config = MustLoad("gpt-oss-120b.json");
    ASSERT_TRUE(config.attention_bias);
    config.mlp_bias = form > 0;
    config.decomposed = form == 2;
    StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(config);
    ASSERT_TRUE(graph.ok()) << graph.status().ToString();
    for (int world_size : {2, 1}) {
      for (const FusionCapabilities& caps : {CpuFusionCapabilities(), CudaFusionCapabilities()}) {
        SCOPED_TRACE(StrCat("form ", form, ", world size ", world_size, ", backend ", caps.backend));
        CompileOutcome c = Compile(**graph, caps, world_size, /*fuse_local=*/world_size == 1);
        EXPECT_TRUE(c.ctx.rejections.empty()) << Rejections(c.ctx);
        for (int l = 0; l < config.layers; ++l) {
          const passes::FusionRecord* in = FusionAt(c.ctx, StrCat("l", l, ".in.ar"));
          const passes::FusionRecord* post = FusionAt(c.ctx, StrCat("l", l, ".post.ar"));
          ASSERT_NE(in, nullptr);
          ASSERT_NE(post, nullptr);
          EXPECT_TRUE(post->spec.has_bias) << post->spec.ToString();
          EXPECT_EQ(in->spec.has_bias, config.mlp_bias && (l > 0 || config.first_layer_residual))
              << in->spec.ToString();
        }
        EXPECT_EQ(c.graph->OpCounts().count("all_reduce"), 0u);
        EXPECT_EQ(c.graph->OpCounts().count("add"), 0u) << ir::PrintGraph(*c.graph);
      }
      ExpectFusedMatchesTheGraph(**graph, world_size, /*fuse_local=*/world_size == 1, 23 + form);
    }
  }
  ModelConfig both = MustLoad("gpt-oss-120b.json");
  both.sandwich_norms = true;
  EXPECT_NE(both.Validate().message().find("attention_bias"), std::string::npos) << both.Validate().ToString();
}

// Gemma's sandwich norms: each block's output normed before the residual add. Every site after
// a block fuses its all_reduce, that norm, the add and the next norm into one op
// (pre_residual_norm) on the CPU target at world size 2 and on both targets at world size 1 (a
// local op); on the CUDA target at world size 2 the all_reduce fuses with the first norm and the
// add and the next norm are a local op of their own. Without a residual (layer 0's input norm of
// the reduced embedding) the site has no such norm. Bitwise the graph.
TEST(BundledModels, GemmaNormsEachBlocksOutputBeforeTheResidualAdd) {
  for (bool first_layer_residual : {true, false}) {
    ModelConfig gemma = MustLoad("gemma.json");
    ASSERT_TRUE(gemma.sandwich_norms);
    gemma.first_layer_residual = first_layer_residual;
    StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(gemma);
    ASSERT_TRUE(graph.ok()) << graph.status().ToString();
    for (int world_size : {2, 1}) {
      for (const FusionCapabilities& caps : {CpuFusionCapabilities(), CudaFusionCapabilities()}) {
        SCOPED_TRACE(StrCat("world size ", world_size, ", backend ", caps.backend,
                            first_layer_residual ? "" : ", layer 0 without residual"));
        CompileOutcome c = Compile(**graph, caps, world_size, /*fuse_local=*/true);
        EXPECT_TRUE(c.ctx.rejections.empty()) << Rejections(c.ctx);
        const bool in_one_op = caps.backend == "cpu" || world_size == 1;
        for (int l = 0; l < gemma.layers; ++l) {
          for (const char* site : {".in.ar", ".post.ar"}) {
            const std::string anchor = StrCat("l", l, site);
            const passes::FusionRecord* f = FusionAt(c.ctx, anchor);
            ASSERT_NE(f, nullptr) << anchor;
            const bool after_a_block = first_layer_residual || l > 0 || std::string(site) == ".post.ar";
            EXPECT_EQ(f->spec.pre_residual_norm, after_a_block && in_one_op) << anchor << f->spec.ToString();
            if (after_a_block && !in_one_op) {
              ASSERT_EQ(f->notes.size(), 1u) << anchor;
              EXPECT_NE(f->notes[0].find("runs a norm before the residual add at world size 1 only"),
                        std::string::npos)
                  << f->notes[0];
            }
          }
        }
        const std::map<std::string, int> ops = c.graph->OpCounts();
        EXPECT_EQ(ops.count("all_reduce") + ops.count("rsqrt") + ops.count("rms_norm") +
                      ops.count("fused_add_rms_norm"),
                  0u);
        const int sites = 2 * gemma.layers, after_blocks = first_layer_residual ? sites : sites - 1;
        EXPECT_EQ(ops.at("allreduce_rmsnorm"), in_one_op ? sites : sites + after_blocks);
      }
      ExpectFusedMatchesTheGraph(**graph, world_size, /*fuse_local=*/true, 19);
    }
  }
}

TEST(ModelBuilder, DecomposedFormsAreCanonicalizedAndFused) {
  ModelConfig config = MustLoad("llama-3.1-8b-fp8.json");
  config.decomposed = true;
  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(config);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  const std::map<std::string, int> before = (*graph)->OpCounts();
  EXPECT_EQ(before.count("rms_norm") + before.count("fused_add_rms_norm"), 0u);
  EXPECT_EQ(before.at("rsqrt"), 2 * config.layers);
  EXPECT_EQ(before.at("clamp"), 2 * config.layers);
  CompileOutcome c = Compile(**graph, CpuFusionCapabilities(), 2);
  EXPECT_EQ(c.ctx.fusions.size(), size_t(2 * config.layers));
  EXPECT_TRUE(c.ctx.rejections.empty()) << Rejections(c.ctx);
}

TEST(ModelBuilder, LayersAndShardsFollowTheDescription) {
  ModelConfig config = MustLoad("qwen3-next.json");
  config.layers = 3;
  config.max_gemm_shard = 0;  // the real shards
  EXPECT_EQ(config.IntermediateShard(), config.intermediate_size / config.tp_size);
  EXPECT_EQ(config.QkvShard(), (16 / 2 + 2 * 1) * 256);  // 16 heads, 2 KV heads, head_dim 256
  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(config);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  CompileOutcome c = Compile(**graph, CpuFusionCapabilities(), 2);
  EXPECT_EQ(c.ctx.fusions.size(), 6u);
  const ir::Value* w = (*graph)->FindValue("l2.gate.w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->type().ToString(), "f8e4m3[2048, 2560]");
}

TEST(ModelBuilder, WorldSizeOneLeavesEveryChainWithItsReason) {
  ModelConfig config = MustLoad("gemma.json");
  config.tp_size = 1;
  StatusOr<std::unique_ptr<ir::Graph>> graph = BuildDecodeGraph(config);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  CompileOutcome c = Compile(**graph, CpuFusionCapabilities(), 1);
  EXPECT_TRUE(c.ctx.fusions.empty());
  ASSERT_EQ(c.ctx.rejections.size(), size_t(2 * config.layers));
  EXPECT_NE(c.ctx.rejections[0].reason.find("world size 1"), std::string::npos);
}

// ---------------------------------------------------------------- descriptions with mistakes

constexpr char kMinimal[] = R"({
  "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
  "num_attention_heads": 32, "num_key_value_heads": 8
})";

// kMinimal with `extra` ("\"quant\": \"fp8_tensor\"") added to the object.
std::string With(const std::string& extra) {
  std::string text = kMinimal;
  text.insert(text.rfind('}'), ", " + extra);
  return text;
}

void ExpectError(const std::string& text, const std::string& field, const std::string& words) {
  StatusOr<ModelConfig> config = ParseModelConfig(text, "models/bad.json");
  ASSERT_FALSE(config.ok()) << text;
  const std::string message = config.status().message();
  EXPECT_NE(message.find("models/bad.json"), std::string::npos) << message;
  EXPECT_NE(message.find("'" + field + "'"), std::string::npos) << message;
  EXPECT_NE(message.find(words), std::string::npos) << message;
}

TEST(ModelConfigParse, MinimalDescriptionTakesTheDefaults) {
  StatusOr<ModelConfig> config = ParseModelConfig(kMinimal, "dir/minimal.json");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->name, "minimal");
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->layers, 2);
  EXPECT_EQ(config->tp_size, 2);
  EXPECT_EQ(config->quant, QuantMode::kNone);
  EXPECT_TRUE(config->first_layer_residual);
  EXPECT_EQ(config->norm_weight_dtype, DType::kBF16);
  // Keys tpfuse does not read (a real config.json has many) are ignored.
  EXPECT_TRUE(
      ParseModelConfig(With("\"rope_theta\": 500000.0, \"architectures\": [\"X\"]"), "x.json")
          .ok());
}

TEST(ModelConfigParse, ErrorsNameTheFileAndTheField) {
  ExpectError(R"({"num_hidden_layers": 2})", "hidden_size", "missing");
  ExpectError(R"({"hidden_size": "4096", "num_hidden_layers": 32})", "hidden_size", "integer");
  ExpectError(With("\"quant\": \"fp8_blocks\""), "quant", "fp8_blocks");
  ExpectError(With("\"quant\": 3"), "quant", "string");
  ExpectError(With("\"torch_dtype\": \"float64\""), "torch_dtype", "float64");
  ExpectError(With("\"norm_weight_dtype\": \"f8e4m3\""), "norm_weight_dtype", "f8e4m3");
  ExpectError(With("\"first_layer_residual\": 0"), "first_layer_residual", "true or false");
  ExpectError(With("\"rms_norm_eps\": -1"), "rms_norm_eps", "positive");
  ExpectError(With("\"tp_size\": 3"), "tp_size", "does not divide");
  ExpectError(With("\"layers\": 0"), "layers", ">= 1");
  ExpectError(With("\"quant\": \"fp8_group\", \"group_size\": 100"), "group_size", "divide");
  ExpectError(With("\"quant\": \"fp8_group\", \"max_gemm_shard\": 200"),
              "max_gemm_shard (QKV shard)", "multiple of 128");
  ExpectError(With("\"quant\": \"fp8_token\", \"decomposed\": true"), "decomposed",
              "no decomposed form");
  ExpectError(With("\"quant\": \"fp8_tensor\", \"torch_dtype\": \"float16\""), "torch_dtype",
              "bfloat16");
}

TEST(ModelConfigParse, SyntaxErrorsAndMissingFilesAreNamed) {
  StatusOr<ModelConfig> bad = ParseModelConfig("{\"hidden_size\": 4096,", "models/cut.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("models/cut.json: not valid JSON"), std::string::npos)
      << bad.status().message();
  StatusOr<ModelConfig> array = ParseModelConfig("[1, 2]", "models/array.json");
  ASSERT_FALSE(array.ok());
  EXPECT_NE(array.status().message().find("JSON object"), std::string::npos);
  StatusOr<ModelConfig> missing = LoadModelConfig("/nonexistent/model.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/model.json"), std::string::npos);
}

TEST(ModelConfigParse, ListModelFilesNamesAnEmptyOrMissingDirectory) {
  EXPECT_FALSE(ListModelFiles("/nonexistent/models").ok());
  const std::string empty = ::testing::TempDir() + "/tpfuse_empty_models";
  std::filesystem::create_directories(empty);
  StatusOr<std::vector<std::string>> none = ListModelFiles(empty);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("no model descriptions"), std::string::npos);
}

}  // namespace
}  // namespace tpfuse::models
