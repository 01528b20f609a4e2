"""transformers' models, tiny and random, sharded for tensor parallelism the way row-parallel
linears are: column-parallel q/k/v (or MLA's q_b/kv_b) and gate/up projections keep this rank's
heads and columns, and the row-parallel o_proj and down_proj outputs are all-reduced through
functional collectives. A wrapper around the model's own modules, not a copy of its code.

Families whose projections are fused (phi3's qkv_proj, glm4's gate_up_proj), whose norms span
the heads (olmo2's q_norm) or whose experts are one module run replicated instead: every rank
holds the whole model, the o_proj / down_proj weights (or the MoE block's output) divided by the
world size, and the all_reduce sums the copies back: the same graph forms, the same values.

FP8 variants quantize the input of the attention and MLP blocks (the norm output) in plain
torch, static per-tensor or dynamic per-group (128), and dequantize it for the GEMMs; the
per-group variant adds a DeepSeek-style indexer GEMM that reads the norm output in bf16. The
vllm_token and vllm_group variants write the dynamic quant as vLLM's QuantFP8 torch forms do (the
amax of the bf16 value, the scale floored after the division, y * s.reciprocal() per token).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch
import torch.nn as nn

FP8_MAX = 448.0
FP8_MIN_SCALING_FACTOR = 1.0 / (FP8_MAX * 512.0)  # vLLM's floor of the scale

# Families run replicated, built from their default config at the tiny sizes below (with the
# additions of FAMILY_CONFIG): post-norm (olmo2, exaone4), sandwich norms (glm4), fused
# projections (phi3), MoE blocks (qwen3_moe, gpt_oss: attention sinks too), hybrid linear
# attention with (1 + w) norms (qwen3_next), sandwich norms written with
# torch.pow(mean_squared, -0.5) (gemma4_text), norms without a weight (nanochat), lightning
# attention and the residual scaled before its add (minimax: residual * alpha + out * beta),
# short convolutions and the residual added second (lfm2), and two all_reduces added before
# the norm: attention and MLP in parallel on one residual (cohere2_moe), the MoE and shared MLP
# summed before the scaled residual add, beside mamba layers (granitemoehybrid), mamba and
# attention in parallel, each output scaled, then the MLP (falcon_h1: three all_reduces a layer).
# Then sandwich norms with (1 + w) weights (gemma2), post-norm (olmo3), norms inside the blocks
# before their output projections (bitnet), mamba layers beside attention and MoE layers
# (jamba), and two attention and MLP sublayers a layer with a MoE shortcut carried across the
# second and added with its MLP (longcat_flash: five all_reduces a layer). And MoE blocks of
# other makes: shared experts gated or summed, dense first layers, latent attention
# (deepseek_v2, qwen2_moe, dots1, glm4_moe, hunyuan_v1_moe, minimax_m2, lfm2_moe beside short
# convolutions), and layers without rotary embeddings (smollm3). Then DeepSeek-V3.2's sparse
# attention with its indexer, latent attention in other makes (glm4_moe_lite, minicpm3), one
# mixer a layer that is mamba, attention, MLP or MoE (nemotron_h), chunked attention and MoE
# (llama4_text), linear attention beside latent attention (kimi_linear), a MoE block with its
# shared experts inside (exaone_moe), and MoE blocks scaled into the residual (granitemoeshared).
REPLICATED = ("olmo2", "exaone4", "glm4", "phi3", "qwen3_moe", "gpt_oss", "qwen3_next",
              "gemma4_text", "nanochat", "minimax", "lfm2", "cohere2_moe", "granitemoehybrid",
              "falcon_h1", "gemma2", "olmo3", "bitnet", "jamba", "longcat_flash", "deepseek_v2",
              "qwen2_moe", "dots1", "glm4_moe", "hunyuan_v1_moe", "minimax_m2", "lfm2_moe",
              "smollm3", "deepseek_v32", "glm4_moe_lite", "minicpm3", "nemotron_h", "llama4_text",
              "kimi_linear", "exaone_moe", "granitemoeshared")
# All_reduces per decoder layer where there are not two (one for the token mixer, one for the
# feed-forward block).
ALL_REDUCES_PER_LAYER = {"granitemoehybrid": 3, "falcon_h1": 3, "longcat_flash": 5}
_MAMBA = dict(mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_n_heads=8, mamba_d_head=64,
              mamba_n_groups=1, mamba_chunk_size=16)
_MLA = dict(q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=32,
            v_head_dim=32, n_shared_experts=1, first_k_dense_replace=1, num_key_value_heads=4)
FAMILY_CONFIG = {
    "minimax": dict(layer_types=["linear_attention", "full_attention"], block_size=16,
                    full_attn_alpha_factor=1.5, full_attn_beta_factor=0.7,
                    linear_attn_alpha_factor=1.3, linear_attn_beta_factor=0.8,
                    mlp_alpha_factor=1.2, mlp_beta_factor=0.9),
    "lfm2": dict(layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False,
                 conv_L_cache=3),
    "granitemoehybrid": dict(_MAMBA, layer_types=["mamba", "attention"], residual_multiplier=0.22,
                             embedding_multiplier=12.0, attention_multiplier=0.015625,
                             shared_intermediate_size=256),
    "falcon_h1": dict(mamba_d_ssm=512, mamba_n_heads=8, mamba_d_head=64, mamba_d_state=16,
                      mamba_chunk_size=16, ssm_out_multiplier=0.2357,
                      attention_out_multiplier=0.9375, attention_in_multiplier=1.25,
                      mlp_multipliers=[0.8839, 0.5859], key_multiplier=0.5,
                      ssm_in_multiplier=1.5, embedding_multiplier=5.0),
    "gemma2": dict(sliding_window=16, query_pre_attn_scalar=64),
    # Multi-head latent attention (as many KV heads as heads), a dense first layer.
    "deepseek_v2": _MLA,
    # DeepSeek-V3.2's sparse attention: its indexer's heads and top-k, one expert group.
    "deepseek_v32": dict(_MLA, index_n_heads=4, index_head_dim=32, index_topk=4, n_group=1,
                         topk_group=1, n_routed_experts=4),
    "glm4_moe_lite": _MLA,
    "minicpm3": _MLA,
    "qwen2_moe": dict(shared_expert_intermediate_size=256),
    "dots1": dict(n_shared_experts=1, first_k_dense_replace=1),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, use_mamba_kernels=False),
    # Multi-head latent attention: as many KV heads as heads, head_dim the rope part.
    "longcat_flash": dict(num_layers=2, ffn_hidden_size=512, expert_ffn_hidden_size=128,
                          n_routed_experts=4, zero_expert_num=2, moe_topk=2, q_lora_rank=64,
                          kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16,
                          v_head_dim=32, num_key_value_heads=4, head_dim=16),
}
EAGER_ATTENTION = ("gpt_oss",)  # no SDPA path in transformers
HF_TP_ONLY = ("mixtral",)  # families only run sharded by transformers' own tp_plan

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "q_b_proj", "kv_b_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Case:
    family: str              # llama | qwen3 | gemma3 | deepseek_v3 | granite | REPLICATED
    quant: str = "none"      # none | tensor | group | vllm_token | vllm_group
    inplace: bool = False    # torch.distributed.all_reduce (in place) instead of the functional one
    layers: int = 2
    # Sharded by transformers itself (from_pretrained(tp_plan="auto"): DTensor row- and
    # column-wise plans, which need accelerate) instead of by shard_for_tp.
    hf_tp: bool = False

    @property
    def name(self) -> str:
        return self.family + ("" if self.quant == "none" else f"-fp8{self.quant}") + (
            "-inplace" if self.inplace else "") + ("-hf_tp" if self.hf_tp else "")


def tiny_config(family: str, layers: int):
    import transformers as tf

    common = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=128,
                  max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False)
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "llama_bias":  # biased projections: the row-wise plan adds o_proj's and
        # down_proj's bias after their all_reduce
        return tf.LlamaConfig(**common, attention_bias=True, mlp_bias=True)
    if family == "qwen3":
        return tf.Qwen3Config(**common)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, sliding_window=16, query_pre_attn_scalar=64)
    if family == "granite":  # residual + out * residual_multiplier after each row-parallel linear
        return tf.GraniteConfig(**common, residual_multiplier=0.22, embedding_multiplier=12.0,
                                attention_multiplier=0.015625, logits_scaling=8.0)
    if family == "deepseek_v3":
        del common["head_dim"]
        common["num_key_value_heads"] = common["num_attention_heads"]  # MLA: one KV per head
        return tf.DeepseekV3Config(**common, q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16,
                                   qk_nope_head_dim=32, v_head_dim=32, moe_intermediate_size=128,
                                   n_routed_experts=4, num_experts_per_tok=2, n_group=1,
                                   topk_group=1, first_k_dense_replace=layers, n_shared_experts=1)
    if family in REPLICATED or family in HF_TP_ONLY:  # FAMILY_CONFIG may override `common`
        return tf.AutoConfig.for_model(family, **{
            **common, "moe_intermediate_size": 128, "num_experts": 4, "num_local_experts": 4,
            "num_experts_per_tok": 2, "pad_token_id": None, "bos_token_id": None,
            "eos_token_id": None, **FAMILY_CONFIG.get(family, {})})
    raise ValueError(f"unknown model family {family!r}")


class RowParallel(nn.Module):
    """This rank's columns of a row-parallel linear; the partial products are summed across the
    group by a functional all_reduce, or in place by torch.distributed.all_reduce (which
    torch.compile traces into the functional form plus a copy back)."""

    def __init__(self, linear: nn.Linear, group_name: str, inplace: bool):
        super().__init__()
        self.linear = linear
        self.group_name = group_name
        self.group = _resolve_group(group_name) if inplace else None
        self.inplace = inplace

    def forward(self, x):
        partial = self.linear(x)
        if self.inplace:
            torch.distributed.all_reduce(partial, group=self.group)
            return partial
        return torch.ops._c10d_functional.wait_tensor(
            torch.ops._c10d_functional.all_reduce(partial, "sum", self.group_name))


def _resolve_group(group_name: str):
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(group_name)


def _shard_linear(linear: nn.Linear, dim: int, rank: int, world: int) -> nn.Linear:
    w = linear.weight.detach()
    size = w.shape[dim]
    assert size % world == 0, f"{size} does not split over {world} ranks"
    part = w.narrow(dim, rank * size // world, size // world).clone()
    out = nn.Linear(part.shape[1], part.shape[0], bias=linear.bias is not None,
                    dtype=w.dtype, device=w.device)
    out.weight.data.copy_(part)
    if linear.bias is not None:
        b = linear.bias.detach()
        out.bias.data.copy_(b.narrow(0, rank * b.shape[0] // world, b.shape[0] // world)
                            if dim == 0 else b / world if rank == 0 else torch.zeros_like(b))
    return out


def shard_for_tp(model: nn.Module, rank: int, world: int, group_name: str, inplace: bool) -> None:
    for _, module in list(model.named_modules()):
        for name in COLUMN_PARALLEL:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                setattr(module, name, _shard_linear(child, 0, rank, world))
        for name in ROW_PARALLEL:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                setattr(module, name, RowParallel(_shard_linear(child, 1, rank, world),
                                                  group_name, inplace))


class AllReduced(nn.Module):
    """A replicated block whose output (the first of a tuple) is divided by the world size and
    all-reduced: the copies sum back to the block's own output."""

    def __init__(self, block: nn.Module, group_name: str, world: int):
        super().__init__()
        self.block, self.group_name, self.world = block, group_name, world

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        rest = out[1:] if isinstance(out, tuple) else None
        part = (out[0] if rest is not None else out) / self.world
        total = torch.ops._c10d_functional.wait_tensor(
            torch.ops._c10d_functional.all_reduce(part, "sum", self.group_name))
        return total if rest is None else (total,) + tuple(rest)


# A decoder layer's token mixers (one, or two in parallel: falcon_h1), its feed-forward blocks
# (a list of them: longcat_flash's two sublayers' attentions and MLPs), and the names of the
# output linears that make either row-parallel.
MIXERS = ("self_attn", "linear_attn", "conv", "mamba", "mixer")
FEED_FORWARD = ("mlp", "mlps", "feed_forward", "block_sparse_moe", "shared_mlp")
OUTPUT_LINEARS = ("o_proj", "out_proj", "dense", "down_proj", "w2", "output_linear")


def _blocks(layer: nn.Module):
    """(parent, name, kind) of each token mixer and feed-forward block of `layer`, mixers first:
    the block is parent.<name>, kind its name in MIXERS or FEED_FORWARD (each block of a list
    is one, named by its index)."""
    found = []
    for kind in MIXERS + FEED_FORWARD:
        block = getattr(layer, kind, None)
        if isinstance(block, nn.ModuleList):
            found += [(block, str(i), kind) for i in range(len(block))]
        elif block is not None:
            found.append((layer, kind, kind))
    return found


def replicate_for_tp(model: nn.Module, world: int, group_name: str) -> None:
    """Every rank keeps the whole model; each decoder layer's token mixers' output projections and
    feed-forward down projections (or a whole MoE block) become sums over the ranks."""
    for layer in model.layers:
        for parent, name, _ in _blocks(layer):
            _replicate_block(parent, name, world, group_name)


def _replicate_block(parent: nn.Module, name: str, world: int, group_name: str) -> None:
    """`parent`'s child `name`: its output linear divided by the world size and all-reduced, or,
    without one, the whole block's output."""
    block = getattr(parent, name)
    out = next((n for n in OUTPUT_LINEARS if isinstance(getattr(block, n, None), nn.Linear)), None)
    if out is None:
        setattr(parent, name, AllReduced(block, group_name, world))
        return
    linear = getattr(block, out)
    with torch.no_grad():
        linear.weight.div_(world)
        if linear.bias is not None:
            linear.bias.div_(world)
    setattr(block, out, RowParallel(linear, group_name, inplace=False))


class QuantizedInput(nn.Module):
    """Runs `block` on FP8-quantized-then-dequantized input, the quantization written in torch:
    static per-tensor (x / scale, clamp, cast) or dynamic per-group of 128 (amax / 448)."""

    def __init__(self, block: nn.Module, mode: str, hidden: int, indexer: bool):
        super().__init__()
        self.block = block
        self.mode = mode
        self.register_buffer("scale", torch.tensor(4.0 / FP8_MAX, dtype=torch.float32))
        # DeepSeek-style indexer: a bf16 GEMM on the norm output next to the quantized path.
        self.indexer = nn.Linear(hidden, 64, bias=False, dtype=torch.bfloat16) if indexer else None
        self.indexer_out = nn.Linear(64, hidden, bias=False, dtype=torch.bfloat16) if indexer else None

    def quantize(self, x):
        if self.mode == "vllm_token":
            x_max, _ = x.abs().max(dim=-1)
            s = (x_max.unsqueeze(-1).to(torch.float32) / FP8_MAX).clamp(min=FP8_MIN_SCALING_FACTOR)
            q = (x.to(torch.float32) * s.reciprocal()).clamp(-FP8_MAX, FP8_MAX)
            return (q.to(torch.float8_e4m3fn).to(torch.float32) * s).to(x.dtype)
        if self.mode == "vllm_group":
            g = x.view(-1, x.shape[-1] // 128, 128)
            s = (g.abs().max(dim=-1, keepdim=True)[0].float() / FP8_MAX).clamp(
                min=FP8_MIN_SCALING_FACTOR)
            q = (g / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return (q.to(torch.float32) * s).view(x.shape).to(x.dtype)
        if self.mode == "tensor":
            q = (x.to(torch.float32) / self.scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return (q.to(torch.float32) * self.scale).to(x.dtype)
        xg = x.to(torch.float32).unflatten(-1, (-1, 128))
        s = xg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / FP8_MAX
        q = (xg / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return (q.to(torch.float32) * s).flatten(-2).to(x.dtype)

    def forward(self, hidden_states, *args, **kwargs):
        x = self.quantize(hidden_states)
        if self.indexer is not None:
            x = x + self.indexer_out(self.indexer(hidden_states))
        return self.block(x, *args, **kwargs)


def build(case: Case, rank: int, world: int, group_name: str, seed: int = 0) -> nn.Module:
    """The sharded model on this rank (every rank draws the same full weights first)."""
    import transformers as tf

    config = tiny_config(case.family, case.layers)
    config._attn_implementation = "eager" if case.family in EAGER_ATTENTION else "sdpa"
    torch.manual_seed(seed)
    model = tf.AutoModel.from_config(config).to(torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights: around 1 (Gemma's around 0: it adds the 1)
                base = 0.0 if case.family in ("gemma2", "gemma3", "qwen3_next") else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    if case.hf_tp:
        # The checkpoint holds the weights only: quant wrappers would not survive the reload.
        assert case.quant == "none", "transformers' tp_plan cases run unquantized"
        return load_with_transformers_tp(model, case, rank)
    if case.family == "longcat_flash":
        dense_longcat_experts(model)
    if case.family in REPLICATED:
        replicate_for_tp(model, world, group_name)  # finds the projections, then the wrappers go on
        quantize_inputs(model, case, config.hidden_size, seed)
    else:
        quantize_inputs(model, case, config.hidden_size, seed)
        shard_for_tp(model, rank, world, group_name, case.inplace)
    return model


def dense_longcat_experts(model: nn.Module) -> None:
    """LongCat-Flash's experts run only the experts its router chose (a loop over nonzero(), which
    torch.compile cannot trace without breaking the graph around every MoE). Here every expert,
    and every zero (identity) expert, runs on every token, weighted by the router's weight of it
    for that token (0 where not chosen): the same routing and the same terms, in one graph."""
    import torch.nn.functional as F

    def forward(self, hidden_states, top_k_index, top_k_weights):
        weight = torch.zeros(hidden_states.shape[0], self.total_experts, dtype=top_k_weights.dtype,
                             device=hidden_states.device).scatter_add(1, top_k_index, top_k_weights)
        out = torch.zeros_like(hidden_states)
        for e in range(self.total_experts):
            if e < self.num_routed_experts:
                gate, up = F.linear(hidden_states, self.gate_up_proj[e]).chunk(2, dim=-1)
                expert = F.linear(self.act_fn(gate) * up, self.down_proj[e])
            else:
                expert = hidden_states
            out = out + (expert * weight[:, e, None]).to(hidden_states.dtype)
        return out

    for layer in model.layers:
        experts = layer.mlp.experts
        experts.forward = forward.__get__(experts)


def quantize_inputs(model: nn.Module, case: Case, hidden: int, seed: int) -> None:
    """The case's FP8 quant on the input of every token mixer and feed-forward block of each
    layer (MIXERS, FEED_FORWARD; every block of a list), the per-group indexer on the mixers'
    (none: nothing)."""
    if case.quant == "none":
        return
    torch.manual_seed(seed + 2)
    for layer in model.layers:
        for parent, name, kind in _blocks(layer):
            setattr(parent, name, QuantizedInput(getattr(parent, name), case.quant, hidden,
                                                 indexer=case.quant == "group" and kind in MIXERS))


def load_with_transformers_tp(model: nn.Module, case: Case, rank: int) -> nn.Module:
    """The same weights, saved by rank 0 (transformers writes checkpoints on rank 0 only) and
    loaded back on every rank with transformers' own tensor parallelism on the default process
    group (from_pretrained(tp_plan="auto"))."""
    import shutil
    import tempfile

    import torch.distributed as dist
    import transformers as tf
    from torch.distributed.tensor import DTensor

    # The ranks are siblings (one spawn): the parent's pid names a directory both can find.
    path = os.path.join(tempfile.gettempdir(), f"tpfuse_hf_tp_{os.getppid()}_{case.name}")
    if rank == 0:
        model.save_pretrained(path)
    dist.barrier()
    # transformers reads the group from the environment torchrun would set (this worker's
    # own environment; later cases in it see the same values).
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(dist.get_world_size()))
    # The causal LM's plan shards its decoder (the base model alone loads unsharded).
    loaded = tf.AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=torch.bfloat16)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)
    if not any(isinstance(p, DTensor) for p in loaded.model.parameters()):
        raise RuntimeError("transformers loaded the model unsharded (tp_plan not applied)")
    return loaded.model.eval()


def forward_fn(model: nn.Module):
    def run(input_ids):
        return model(input_ids=input_ids, use_cache=False).last_hidden_state

    return run


def example_input(seed: int = 3, batch: int = 2, seq: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (batch, seq), generator=gen)
