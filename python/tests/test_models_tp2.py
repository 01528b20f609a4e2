"""transformers' Llama, Qwen3, Gemma3, DeepSeek-V3 and Granite (tiny configs, random weights, 2
layers), sharded for TP 2 by hand; Llama (with biased projections too), Mixtral, Qwen3,
Gemma3 and Qwen3-MoE sharded by transformers' own tp_plan="auto" (which adds a row-parallel bias
after its all_reduce, and hooks the per-head norms of Qwen3 and Gemma3 for their gradients); and
the replicated families of tp_models (post-norm, sandwich norms, fused projections, MoE, hybrid linear attention, Gemma 4's pow(-0.5) norms, nanochat's norms without a
weight, MiniMax's scaled residual, LFM2's short convolutions, BitNet's norms inside the blocks,
Jamba's and Falcon-H1's mamba mixers, LongCat-Flash's two sublayers a layer), run at world size 2
over gloo: the pass fuses every all_reduce -> norm site (2 per layer, or as
tp_models.ALL_REDUCES_PER_LAYER says), no all_reduce stays in the graph, it reports nothing it
should not, and the compiled model equals the eager one. Two all_reduces
added on the way to one norm (Cohere's parallel attention and MLP, Granite 4's MoE and shared
MLP, Falcon-H1's mamba and attention, LongCat-Flash's MoE shortcut) become one fused op. FP8
cases quantize the input of every token mixer and feed-forward block, and the quant after each
all_reduce is fused; where two blocks read one norm, the other quant reads the emitted norm.

All cases run in one pair of processes (a session fixture), so the interpreter start, the
imports and the process group are paid once.
"""

import importlib.util

import pytest

pytest.importorskip("transformers")

import tp_harness  # noqa: E402
import tp_models  # noqa: E402
from tp_models import Case  # noqa: E402

LAYERS = 2
# Families where two all_reduces meet before a norm (tested on their own, below).
TWO_ALL_REDUCES = ("cohere2_moe", "granitemoehybrid")
CASES = [
    Case("llama"),
    Case("qwen3"),
    Case("gemma3"),
    Case("deepseek_v3"),
    Case("granite"),  # the sum scaled before the residual add: the fused op's sum_scale
    Case("llama", inplace=True),
    Case("llama", quant="tensor"),
    Case("qwen3", quant="group"),
    Case("deepseek_v3", quant="group"),
    Case("llama", quant="vllm_token"),   # vLLM's QuantFP8 torch forms
    Case("qwen3", quant="vllm_group"),
    Case("qwen3_next", quant="group"),    # (1 + w) norms with f32 weights, hybrid layers
    Case("gpt_oss", quant="vllm_token"),  # MoE
    Case("gemma2", quant="group"),        # sandwich norms, the second norm's output quantized
    Case("deepseek_v2", quant="vllm_group"),
    Case("qwen2_moe", quant="tensor"),
    Case("bitnet", quant="group"),        # norms inside the blocks, after the quantized input
    # Two blocks quantizing one norm's output (the fused op takes one quant, the other reads the
    # emitted norm): parallel attention and MLP, a MoE beside its shared MLP.
    Case("cohere2_moe", quant="group"),
    Case("granitemoehybrid", quant="vllm_token"),
    Case("falcon_h1", quant="tensor"),    # mamba mixers, quantized like the attention
    Case("jamba", quant="vllm_group"),
    Case("lfm2", quant="group"),          # short convolutions
    Case("longcat_flash", quant="vllm_token"),
    Case("deepseek_v32", quant="group"),  # the indexer's own norm and GEMMs beside the quant
    Case("nemotron_h", quant="vllm_token"),
] + [Case(family) for family in tp_models.REPLICATED if family not in TWO_ALL_REDUCES] + [
    # Sharded by transformers' own tp_plan="auto": DTensor plans, traced to functional all_reduces.
    Case("llama", hf_tp=True),
    Case("mixtral", hf_tp=True),
    # Plans with replicated_with_grad_allreduce norms (full backward hooks, which torch.compile
    # breaks the graph at unless the call runs without grad: tpfuse.torch.compile's dispatch).
    Case("qwen3", hf_tp=True),
    Case("gemma3", hf_tp=True),
    Case("qwen3_moe", hf_tp=True),
    # Biased projections: the row-wise plan adds each row-parallel bias after its all_reduce,
    # which the fused op takes over (spec.has_bias).
    Case("llama_bias", hf_tp=True),
    # A MoE plan whose replicated shared experts' output is added to the routed experts'
    # all_reduce: a bias per token (spec.bias_per_token).
    Case("glm4_moe_lite", hf_tp=True),
]
HAVE_ACCELERATE = importlib.util.find_spec("accelerate") is not None  # tp_plan needs it
PARALLEL_BLOCKS = Case("cohere2_moe")
# MoE plans of two all_reduces a block where one block's output reaches the other's sum through an
# op the fused op does not take (left alone, with that op in the reason), and is added to it as a
# bias per token: Llama 4's routed experts, all_reduced per expert and then summed (opaque), added
# to the shared expert's all_reduce; Qwen3-Next's shared expert, all_reduced and then gated per
# token (a mul), added to the routed experts' all_reduce.
ADDED_BLOCKS = {Case("llama4_text", hf_tp=True): "only through opaque",
                Case("qwen3_next", hf_tp=True): "only through mul"}
SUMMED_BLOCKS = Case("granitemoehybrid")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = [c for c in CASES if HAVE_ACCELERATE or not c.hf_tp] + [PARALLEL_BLOCKS, SUMMED_BLOCKS]
    cases += list(ADDED_BLOCKS) if HAVE_ACCELERATE else []
    per_rank = tp_harness.run_all(cases, str(tmp_path_factory.mktemp("tp2")))
    return {case.name: [per_rank[r][i] for r in range(len(per_rank))]
            for i, case in enumerate(cases)}


def _ok(result):
    assert "error" not in result, result["error"]
    return result


def _of(results, case):
    """The case's per-rank results; a transformers tp_plan case skips without accelerate."""
    if case.hf_tp and not HAVE_ACCELERATE:
        pytest.skip("accelerate is not installed: transformers' tp_plan needs it")
    return results[case.name]


def _all_reduces(case):
    return LAYERS * tp_models.ALL_REDUCES_PER_LAYER.get(case.family, 2)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_all_reduce_norm_site_is_fused(results, case):
    for result in map(_ok, _of(results, case)):
        assert result["untranslated"] == []
        assert result["all_reduces"] == _all_reduces(case)
        assert result["fused"] == _all_reduces(case), result["left_alone"]
        assert result["all_reduces_after"] == 0  # no replaced chain still alive beside its fusion
        assert result["left_alone"] == {}
        assert result["skipped"] == {}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_quantized_cases_fuse_the_quantization(results, case):
    if case.quant == "none":
        pytest.skip("no quantization in this case")
    for result in map(_ok, _of(results, case)):
        quants = [f["quant"] for f in result["fusions"]]
        # Every fused op's norm feeds a quantized block but the final norm's (layer 0's input
        # norm has no all_reduce before it, so no fused op).
        want = {"tensor": "fp8_tensor", "group": "fp8_group", "vllm_token": "fp8_token",
                "vllm_group": "fp8_group"}[case.quant]
        assert quants.count(want) == len(quants) - 1 >= 1, result["fusions"]
        if case.quant.startswith("vllm"):  # the scale floored after the division, as written
            assert all("scale_floor_after_div" in f["rounding"] for f in result["fusions"]
                       if f["quant"] == want), result["fusions"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_compiled_equals_eager(results, case):
    for result in map(_ok, _of(results, case)):
        # Without the pass the decomposed graph computes what eager computes, bit for bit ...
        assert result["unfused_vs_eager"]["equal"], result["unfused_vs_eager"]
        # ... and the fused ops round where the forms they replace round (Contract 3).
        assert result["vs_unfused"]["equal"], result["vs_unfused"]
        assert result["vs_eager"]["equal"], result["vs_eager"]


def test_ranks_agree(results):
    for name, (r0, r1) in results.items():
        assert _ok(r0)["fused"] == _ok(r1)["fused"], name


def test_parallel_blocks_fuse_both_all_reduces_into_one_op(results):
    # h = residual + attn + mlp: the attention's all_reduce goes into the residual first, the
    # MLP's is the next norm's input; one fused op reduces both (second_sum_into_residual), so no
    # all_reduce is left, and no bit changes.
    for result in map(_ok, results[PARALLEL_BLOCKS.name]):
        assert result["untranslated"] == [] and result["skipped"] == {}
        assert result["all_reduces"] == 2 * LAYERS
        assert result["fused"] == result["all_reduces"], result["left_alone"]
        assert result["left_alone"] == {} and result["all_reduces_after"] == 0, result
        assert result["vs_unfused"]["equal"] and result["vs_eager"]["equal"], result


def test_blocks_summed_before_the_residual_add_fuse_as_one_op(results):
    # Granite 4: h = residual + (moe + shared_mlp) * multiplier, each block's output all-reduced:
    # one fused op reduces both (second_sum, the multiplier its sum_scale), and the mixer's
    # (attention or mamba) chain fuses too: no all_reduce is left, and no bit changes.
    for result in map(_ok, results[SUMMED_BLOCKS.name]):
        assert result["untranslated"] == [] and result["skipped"] == {}
        assert result["all_reduces"] == _all_reduces(SUMMED_BLOCKS)
        assert result["fused"] == _all_reduces(SUMMED_BLOCKS), result["left_alone"]
        assert result["left_alone"] == {} and result["all_reduces_after"] == 0, result
        assert result["vs_unfused"]["equal"] and result["vs_eager"]["equal"], result


def test_the_row_wise_plans_bias_after_each_all_reduce_goes_into_its_fused_op(results):
    # transformers' row-wise plan adds o_proj's and down_proj's bias after their all_reduce:
    # every fused op takes its bias over (spec.has_bias), and no bit changes (the tests above).
    case = Case("llama_bias", hf_tp=True)
    for result in map(_ok, _of(results, case)):
        assert result["fusions"] and all(f["bias"] for f in result["fusions"]), result["fusions"]


def test_glm4_moe_lites_shared_experts_go_into_the_routed_fused_op_as_a_bias_per_token(results):
    for result in map(_ok, _of(results, Case("glm4_moe_lite", hf_tp=True))):
        assert sum(f["bias"] for f in result["fusions"]) == 1, result["fusions"]  # the MoE layer


@pytest.mark.parametrize("case", list(ADDED_BLOCKS), ids=lambda c: c.name)
def test_a_block_added_to_another_blocks_sum_goes_into_its_fused_op_as_a_bias_per_token(results,
                                                                                       case):
    # Per MoE block one all_reduce stays, with the op on its way named; the other's fused op
    # takes what that sum became as a bias per token. No bit changes.
    for result in map(_ok, _of(results, case)):
        assert result["untranslated"] == [] and result["skipped"] == {}
        moe_blocks = len(result["left_alone"])
        assert moe_blocks == LAYERS, result["left_alone"]
        assert all(ADDED_BLOCKS[case] in why for why in result["left_alone"].values()), result
        assert result["fused"] == result["all_reduces"] - moe_blocks
        assert sum(f["bias"] for f in result["fusions"]) == moe_blocks, result["fusions"]
        assert result["all_reduces_after"] == moe_blocks, result
        assert result["vs_unfused"]["equal"] and result["vs_eager"]["equal"], result


@pytest.mark.parametrize("case, ops_per_layer",
                         [(Case("falcon_h1"), 2), (Case("longcat_flash"), 4)],
                         ids=lambda v: v.name if isinstance(v, Case) else str(v))
def test_two_all_reduces_meeting_at_a_residual_add_become_one_op(results, case, ops_per_layer):
    # Falcon-H1: residual + mamba * ssm_out_multiplier + attention * attention_out_multiplier,
    # then the MLP's chain: three all_reduces a layer in two fused ops (the first two summed,
    # each with its scale). LongCat-Flash: five a layer in four, the MoE shortcut's all_reduce,
    # carried across the second attention, summed with the second MLP's at the layer's end.
    # (Every all_reduce fused, and no bit changed: the tests above.)
    for result in map(_ok, results[case.name]):
        assert result["fused"] == _all_reduces(case), result["left_alone"]
        assert len(result["fusions"]) == ops_per_layer * LAYERS, result["fusions"]
