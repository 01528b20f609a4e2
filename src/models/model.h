// Model descriptions (models/*.json) and the builder that turns one into the decode graph that
// tpfuse compiles.
//
// A description is a subset of a Hugging Face config.json plus a few tpfuse fields:
//
//   Hugging Face: hidden_size, num_hidden_layers, intermediate_size, rms_norm_eps,
//                 num_attention_heads, num_key_value_heads, head_dim, torch_dtype, model_type
//   tpfuse:       tp_size, layers, quant (none | fp8_tensor | fp8_token | fp8_group),
//                 group_size, scale_layout (row | col), scale_fmt (f32 | ue8m0),
//                 norm_weight_dtype (bf16 | f16 | f32), weight_bias, first_layer_residual,
//                 indexer_dim, decomposed, shared_mlp_reduced_apart, residual_multiplier,
//                 attention_bias, mlp_bias,
//                 sandwich_norms, max_gemm_shard, description
//
// Other keys (a real config.json has many) are ignored. Errors name the file and the field.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"
#include "tpfuse/dtype.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::models {

// The GEMM weight block of the block-scaled (fp8_group) GEMMs: scales are per 128 x 128 block.
inline constexpr int64_t kWeightBlock = 128;

struct ModelConfig {
  std::string name;         // the file's stem ("llama-3.1-8b-fp8")
  std::string source;       // the file it came from, for messages
  std::string description;  // one line for tables
  std::string model_type;   // Hugging Face model_type, informational

  // ---- Hugging Face fields
  int64_t hidden_size = 0;        // H: kept at the real size, it is what the fused op sees
  int num_hidden_layers = 0;      // the real depth (informational)
  int64_t intermediate_size = 0;  // the dense MLP width, before sharding
  double rms_norm_eps = 1e-6;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;     // default: num_attention_heads
  int64_t head_dim = 0;            // default: hidden_size / num_attention_heads
  DType act_dtype = DType::kBF16;  // torch_dtype: bfloat16 | float16

  // ---- tpfuse fields
  int tp_size = 2;  // the TP degree the GEMMs are sharded for
  int layers = 2;   // decoder layers built (small, so the CPU runs in seconds)
  QuantMode quant = QuantMode::kNone;
  int group_size = 128;  // fp8_group
  ScaleLayout scale_layout = ScaleLayout::kRow;
  ScaleFormat scale_fmt = ScaleFormat::kF32;
  DType norm_weight_dtype = DType::kBF16;
  double weight_bias = 0.0;  // 1: Gemma's x * (1 + w)
  // false: layer 0's input norm reads the all_reduce of a vocab-parallel embedding with no
  // residual; the all_reduce result itself becomes the residual stream (emit allreduce).
  bool first_layer_residual = true;
  // > 0: a bf16 GEMM [H, indexer_dim] reads each input norm's output beside the quantized QKV
  // GEMM (DeepSeek V3.2's indexer key projection): the fan-out that emits norm and quant.
  int64_t indexer_dim = 0;
  // Emit RMSNorm, the residual add and static quantization in the decomposed forms an export
  // with custom ops disabled contains (Contract 2), for the canonicalizer to recognize.
  bool decomposed = false;
  // The MLP is routed experts and a shared MLP whose outputs are each all-reduced apart and then
  // summed (Granite-MoE's shared MLP under a tensor-parallel plan, vLLM's `reduce_results`): the
  // sites after layer 0's attention read two partial sums (the fused op's second_sum).
  bool shared_mlp_reduced_apart = false;
  // Every block's output is scaled by this before the residual add (Granite's
  // residual_multiplier; the fused op's sum_scale). 1: none.
  double residual_multiplier = 1.0;
  // Every block's output is normed before the residual add (Gemma 2/3/4's and GLM-4's
  // post-attention and post-feedforward norms, then the next block's input norm: the fused op's
  // pre_residual_norm).
  bool sandwich_norms = false;
  // The attention's output projection (attention_bias) and the MLP's down projection (mlp_bias)
  // have a bias, which transformers' row-wise tensor-parallel plan adds after their all_reduce
  // (Llama's attention_bias and mlp_bias, GPT-OSS's attention): the fused op's has_bias.
  bool attention_bias = false;
  bool mlp_bias = false;
  // Each rank's GEMM shard is at most this many columns (0: the real shard). The hidden size,
  // which is what the fused op sees, is never reduced; only the GEMMs around it are narrowed
  // so that the CPU reference backend runs a model in seconds.
  int64_t max_gemm_shard = 256;

  // ---- derived per-rank widths (after max_gemm_shard)
  int64_t QkvShard() const;           // (heads + 2 * kv heads) * head_dim / tp
  int64_t IntermediateShard() const;  // intermediate_size / tp

  // Checks ranges and combinations; the error names the file and the field.
  Status Validate() const;
  // "H 4096, 2 of 32 layers, tp 2, fp8_tensor, norm weight bf16"
  std::string Summary() const;
};

// Parses a description. `source` names it in errors; its stem becomes the model's name.
StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, const std::string& source);
// Reads and parses a file.
StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// The decode graph of `config.layers` layers with a symbolic token count T, per rank. Layer l:
//
//   all_reduce(%lL.in.partial) -> [+ residual] -> input norm -> quant
//       -> QKV GEMM, and the indexer GEMM on the norm output                       (returned)
//   all_reduce(%lL.attn.partial) -> + residual -> post-attention norm -> quant
//       -> gate and up GEMMs -> mul -> down GEMM                                   (returned)
//
// so every layer has two all_reduce -> [+residual] -> RMSNorm -> [quant] chains, and the
// residual stream runs through all of them. With shared_mlp_reduced_apart the MLP is two
// (the experts' and a shared MLP's gate, up, mul, down; both downs returned), and each input norm
// after one reads all_reduce(%lL.in.partial) + all_reduce(%lL.in.shared.partial); with a
// residual_multiplier each block's sum is scaled by it before the residual add; with
// sandwich_norms each block's sum is normed (its own weight, %lL.<site>.post_norm_w) before the
// residual add; with attention_bias (mlp_bias) the attention's (MLP's) sum gets its bias
// (%lL.<site>.bias) added first. Attention is kept out (the QKV output is returned)
// and SiLU is an elementwise mul. The partial sums the row-parallel GEMMs (o_proj, down) leave
// on each rank are parameters: every chain then starts from bit-identical inputs on every
// backend, so a check compares each chain's outputs with Contract 3's tolerance instead of GEMM
// rounding differences compounded over layers. The graph also returns each chain's GEMM input
// (q and s, or the bf16 norm output), which the fused op emits anyway. The residual stream is
// not returned, so the last chain does not emit it.
StatusOr<std::unique_ptr<ir::Graph>> BuildDecodeGraph(const ModelConfig& config);

// The directory of the bundled models (TPFUSE_MODELS_DIR).
std::string BundledModelsDir();
// Every *.json under `dir`, sorted by name. An error when the directory cannot be read or holds
// no model.
StatusOr<std::vector<std::string>> ListModelFiles(const std::string& dir);

}  // namespace tpfuse::models
