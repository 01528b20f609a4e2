"""torch.ops.tpfuse.allreduce_rmsnorm on the CPU: against the plain-torch Contract 3 reference,
bitwise, at world size 1 and at world size 2 over gloo (two processes); tracing; errors."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tpfuse  # noqa: F401  (registers the op)
import contract3
from ranks import end_rank

OP = torch.ops.tpfuse.allreduce_rmsnorm

# (name, attributes, residual: False, True (x's dtype) or "f32") — every quant mode and scale
# form, emit subsets, the residual stream kept in f32.
CASES = [
    ("norm", dict(emit=["norm"]), False),
    ("all_bf16_results", dict(emit=["allreduce", "norm", "residual"]), True),
    ("gemma_bias", dict(emit=["norm", "residual"], weight_bias=1.0, eps=1e-5), True),
    ("fp8_tensor", dict(emit=["residual", "quant"], quant="fp8_tensor"), True),
    ("fp8_token", dict(emit=["norm", "quant"], quant="fp8_token"), True),
    ("fp8_group_row", dict(emit=["quant"], quant="fp8_group", group_size=64), True),
    ("fp8_group_col_ue8m0", dict(emit=["norm", "residual", "quant"], quant="fp8_group",
                                 scale_layout="col", scale_fmt="ue8m0"), True),
    ("vllm_native_rounding", dict(emit=["norm", "residual", "quant"], quant="fp8_tensor",
                                  rounding=["norm_input_f32", "scale_op_swapped"]), True),
    ("llama_rounding", dict(emit=["quant"], quant="fp8_token", weight_bias=1.0,
                            rounding=["weight_after_round", "weight_bias_in_weight_dtype",
                                      "scale_op_swapped"]), True),
    ("vllm_token_kernel", dict(emit=["norm", "quant"], quant="fp8_token",
                               rounding=["weight_after_round", "scale_floor_after_div"]), True),
    ("vllm_group_ue8m0", dict(emit=["quant"], quant="fp8_group", scale_fmt="ue8m0",
                              rounding=["weight_after_round", "ue8m0_floor"]), True),
    ("granite_sum_scale", dict(emit=["allreduce", "norm", "residual"], sum_scale=0.22), True),
    ("sum_scale_no_residual", dict(emit=["norm", "quant"], quant="fp8_token", sum_scale=-3.0),
     False),
    ("f32_residual_stream", dict(emit=["norm", "residual", "quant"], quant="fp8_token",
                                 rounding=["norm_input_f32", "residual_out_f32"]), "f32"),
    ("f32_residual_out", dict(emit=["allreduce", "norm", "residual"], weight_bias=1.0,
                              rounding=["norm_input_f32", "residual_out_f32"]), True),
    ("f32_norm_out", dict(emit=["norm", "residual"], weight_bias=1.0,
                          rounding=["norm_input_f32", "residual_out_f32", "norm_out_f32"]), True),
    ("f32_norm_out_after_round",
     dict(emit=["norm"], rounding=["weight_after_round", "norm_out_f32"]), False),
]
SHAPES = [(1, 256), (3, 256), (19, 128), (2, 5, 256), (64, 2880), (0, 256), (2, 0, 128)]


def make_inputs(seed: int, shape, world_size: int, residual: bool, quant: str,
                dtype=torch.bfloat16, weight_dtype=torch.bfloat16):
    """Fresh random inputs: partials of every rank, residual, weight, scale."""
    g = torch.Generator().manual_seed(seed)
    hidden = shape[-1]
    partials = [torch.randn(shape, generator=g).to(dtype) for _ in range(world_size)]
    res = None
    if residual:
        res = torch.randn(shape, generator=g)
        # An f32 residual off the 16-bit grid: a kernel that rounded it would show.
        res = res + 1e-3 * torch.randn(shape, generator=g) if residual == "f32" else res.to(dtype)
    weight = (torch.rand(hidden, generator=g) + 0.5).to(weight_dtype)
    scale = (torch.rand((), generator=g) * 0.05 + 0.01) if quant == "fp8_tensor" else None
    return partials, res, weight, scale


def assert_bitwise(got, expected, what: str):
    assert len(got) == len(expected), f"{what}: {len(got)} results, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and g.dtype == e.dtype, \
            f"{what} result {i}: {g.dtype}{list(g.shape)} vs {e.dtype}{list(e.shape)}"
        if g.numel() == 0:
            continue  # no rows: the shape and dtype are all there is
        gb, eb = g.view(torch.uint8), e.view(torch.uint8)
        if not torch.equal(gb, eb):
            bad = (gb != eb).nonzero()
            pytest.fail(f"{what} result {i}: {len(bad)} bytes differ, first at {bad[0].tolist()}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name,attrs,residual", CASES, ids=[c[0] for c in CASES])
def test_world_size_1_matches_reference(name, attrs, residual, shape):
    if attrs.get("quant") == "fp8_group" and shape[-1] % attrs.get("group_size", 128):
        pytest.skip("group does not divide H")
    partials, res, weight, scale = make_inputs(hash((name, shape)) % 2**31, shape, 1, residual,
                                               attrs.get("quant", "none"))
    got = OP(partials[0], res, weight, scale, **attrs)
    assert_bitwise(got, contract3.allreduce_rmsnorm(partials, res, weight, scale, **attrs), name)


def test_reference_helper_sums_every_rank():
    partials, res, weight, _ = make_inputs(11, (5, 256), 3, True, "none")
    attrs = dict(emit=["allreduce", "norm", "residual"])
    assert_bitwise(tpfuse.ops.reference(partials, res, weight, None, **attrs),
                   contract3.allreduce_rmsnorm(partials, res, weight, None, **attrs), "3 ranks")
    with pytest.raises(ValueError, match=r"partials\[1\] must be a CPU tensor like partials\[0\]"):
        tpfuse.ops.reference([partials[0], partials[1][:2]], res, weight, None, **attrs)


def test_local_ignores_the_group_and_f32_weight():
    partials, res, weight, _ = make_inputs(7, (4, 128), 1, True, "none",
                                           torch.float16, torch.float32)
    attrs = dict(emit=["norm", "residual"], local=True)
    got = OP(partials[0], res, weight, None, **attrs)
    assert_bitwise(got, contract3.allreduce_rmsnorm(partials, res, weight, None, **attrs), "local")
    # A local op does not read its group's name (none needs to exist: a world-size-1 graph).
    named = OP(partials[0], res, weight, None, group_name="tp-nowhere", **attrs)
    assert_bitwise(named, got, "local with a group name")


SECOND_SUM_CASES = [
    ("granite_moe", dict(emit=["norm", "residual"], sum_scale=0.22)),
    ("falcon_h1_mixers", dict(emit=["norm", "residual", "quant"], quant="fp8_token",
                              first_scale=0.5, second_scale=3.0,
                              rounding=["weight_after_round"])),
    ("parallel_blocks_into_residual", dict(emit=["norm", "residual"], sum_scale=0.5,
                                           second_scale=1.5, second_sum_into_residual=True)),
]


def second_sum_inputs(seed: int, shape, world_size: int, quant: str = "none"):
    partials, res, weight, scale = make_inputs(seed, shape, world_size, True, quant)
    g = torch.Generator().manual_seed(seed + 1)
    partials2 = [torch.randn(shape, generator=g).to(partials[0].dtype) for _ in range(world_size)]
    return partials, partials2, res, weight, scale


@pytest.mark.parametrize("name,attrs", SECOND_SUM_CASES, ids=[c[0] for c in SECOND_SUM_CASES])
def test_two_summed_all_reduces_match_the_reference(name, attrs):
    # World size 1 (each sum is its partial) and the C ABI's reference at 3 ranks, against
    # contract3's torch oracle.
    for world_size, shape in ((1, (3, 256)), (1, (2, 5, 256)), (3, (7, 256))):
        partials, partials2, res, weight, scale = second_sum_inputs(
            hash((name, shape)) % 2**31, shape, world_size, attrs.get("quant", "none"))
        expected = contract3.allreduce_rmsnorm(partials, res, weight, scale, partials2=partials2,
                                               **attrs)
        if world_size == 1:
            got = OP(partials[0], res, weight, scale, partials2[0], **attrs)
            # A local op (no all_reduce feeds it) reads x and x2 as the two sums.
            local = OP(partials[0], res, weight, scale, partials2[0], local=True, **attrs)
            assert_bitwise(local, expected, f"{name} local {list(shape)}")
        else:
            got = tpfuse.ops.reference(partials, res, weight, scale, partials2=partials2, **attrs)
        assert_bitwise(got, expected, f"{name} N={world_size} {list(shape)}")


def test_two_summed_all_reduces_refuse_what_they_cannot_do():
    partials, partials2, res, weight, _ = second_sum_inputs(5, (3, 256), 1)
    with pytest.raises(ValueError, match="no one all_reduce result to emit"):
        OP(partials[0], res, weight, None, partials2[0], emit=["allreduce", "norm"])
    with pytest.raises(ValueError, match="x2 must have x's shape, dtype and device"):
        OP(partials[0], res, weight, None, partials2[0][:2], emit=["norm"])
    with pytest.raises(ValueError, match="scale the two sums of second_sum, which is not set"):
        OP(partials[0], res, weight, None, emit=["norm"], first_scale=2.0)
    with pytest.raises(ValueError, match="second_sum_into_residual needs second_sum"):
        OP(partials[0], res, weight, None, emit=["norm"], second_sum_into_residual=True)
    with pytest.raises(ValueError,
                       match="it needs second_sum, such a residual, and no first_scale"):
        OP(partials[0], None, weight, None, partials2[0], emit=["norm"],
           second_sum_into_residual=True)
    with pytest.raises(ValueError, match=r"partials2 must hold one tensor per rank"):
        tpfuse.ops.reference(partials, res, weight, None, emit=["norm"], partials2=partials2 * 2)


PRE_NORM_CASES = [
    # Gemma 2/3: x * (1 + w) in f32, both norms.
    ("gemma", dict(emit=["norm", "residual"], weight_bias=1.0)),
    # GLM-4 (LlamaRMSNorm), another eps before the add, the next norm quantized per group.
    ("glm4_group_quant", dict(emit=["residual", "quant"], quant="fp8_group", pre_eps=1e-5,
                              rounding=["weight_after_round"])),
    # The all_reduce's own result returned too, a static quant, and the norm of the f32 sum.
    ("allreduce_and_tensor_quant", dict(emit=["allreduce", "norm", "residual", "quant"],
                                        quant="fp8_tensor", rounding=["norm_input_f32"])),
]


@pytest.mark.parametrize("name,attrs", PRE_NORM_CASES, ids=[c[0] for c in PRE_NORM_CASES])
def test_a_norm_before_the_residual_add_matches_the_reference(name, attrs):
    # pre_weight: the sum normed, then added to the residual, and the stream normed again; at
    # world size 1 (the op and a local op), through the C ABI's reference at 3 ranks, against
    # contract3's torch oracle, and against the two norms written in torch (no quant).
    for world_size, shape in ((1, (3, 256)), (1, (2, 5, 256)), (3, (7, 256))):
        partials, res, weight, scale = make_inputs(hash((name, shape)) % 2**31, shape,
                                                   world_size, True, attrs.get("quant", "none"))
        g = torch.Generator().manual_seed(len(name))
        pre_weight = (torch.rand(shape[-1], generator=g) + 0.5).to(weight.dtype)
        expected = contract3.allreduce_rmsnorm(partials, res, weight, scale,
                                               pre_weight=pre_weight, **attrs)
        if world_size == 1:
            got = OP(partials[0], res, weight, scale, None, pre_weight, **attrs)
            if "allreduce" not in attrs["emit"]:
                local = OP(partials[0], res, weight, scale, None, pre_weight, local=True, **attrs)
                assert_bitwise(local, expected, f"{name} local {list(shape)}")
        else:
            got = tpfuse.ops.reference(partials, res, weight, scale, pre_weight=pre_weight,
                                       **attrs)
        assert_bitwise(got, expected, f"{name} N={world_size} {list(shape)}")
    if name == "gemma":
        # The same bits as each norm through the op alone: the first norm's output added to
        # the residual by the second op.
        first, = OP(partials[0], None, pre_weight, None, emit=["norm"], weight_bias=1.0, local=True)
        two = OP(first, res, weight, None, emit=["norm", "residual"], weight_bias=1.0, local=True)
        one = OP(partials[0], res, weight, None, None, pre_weight, local=True, **attrs)
        assert_bitwise(one, two, "one op against two")


def test_a_norm_before_the_residual_add_refuses_what_it_cannot_do():
    partials, res, weight, _ = make_inputs(5, (3, 256), 1, True, "none")
    with pytest.raises(ValueError, match="pre_weight must have weight's shape, dtype and device"):
        OP(partials[0], res, weight, None, None, weight[:128], emit=["norm"])
    with pytest.raises(ValueError, match="pre_weight must have weight's shape, dtype and device"):
        OP(partials[0], res, weight, None, None, weight.float(), emit=["norm"])
    with pytest.raises(ValueError, match="it needs a residual, and takes no second_sum"):
        OP(partials[0], None, weight, None, None, weight, emit=["norm"])
    with pytest.raises(ValueError, match="it needs a residual, and takes no second_sum"):
        OP(partials[0], res, weight, None, partials[0], weight, emit=["norm"])
    with pytest.raises(ValueError, match="pre_eps is the eps of the norm before the residual add"):
        OP(partials[0], res, weight, None, emit=["norm"], pre_eps=1e-5)
    with pytest.raises(TypeError, match="pre_weight must be a tensor or None"):
        tpfuse.ops.reference(partials, res, weight, None, emit=["norm"], pre_weight=[1.0])


BIAS_CASES = [
    # transformers' row-wise plan: `all_reduce(out) + bias`, then the residual add and the norm.
    ("residual", dict(emit=["norm", "residual"], rounding=["weight_after_round"])),
    # The all_reduce's own result returned too (without the bias), the biased sum scaled, FP8.
    ("allreduce_scaled_group_quant", dict(emit=["allreduce", "residual", "quant"],
                                          quant="fp8_group", sum_scale=0.25)),
    # No residual: the norm of the biased sum, a static quant.
    ("no_residual_tensor_quant", dict(emit=["norm", "quant"], quant="fp8_tensor")),
]


@pytest.mark.parametrize("per_token", [False, True], ids=["row", "per_token"])
@pytest.mark.parametrize("name,attrs", BIAS_CASES, ids=[c[0] for c in BIAS_CASES])
def test_a_bias_added_to_the_sum_matches_the_reference(name, attrs, per_token):
    # bias: round(a + bias) before the rest, one [H] for every row or one of x's shape (each row
    # its own); at world size 1 (the op and a local op), through the C ABI's reference at 3
    # ranks, against contract3's torch oracle, and against the bias added in torch before the op
    # without it.
    for world_size, shape in ((1, (3, 256)), (1, (2, 5, 256)), (3, (7, 256))):
        residual = name != "no_residual_tensor_quant"
        partials, res, weight, scale = make_inputs(hash((name, shape)) % 2**31, shape,
                                                   world_size, residual, attrs.get("quant", "none"))
        g = torch.Generator().manual_seed(len(name))
        bias = torch.randn(shape if per_token else shape[-1:], generator=g).to(partials[0].dtype)
        expected = contract3.allreduce_rmsnorm(partials, res, weight, scale, bias=bias, **attrs)
        if world_size == 1:
            got = OP(partials[0], res, weight, scale, None, None, bias, **attrs)
            if "allreduce" not in attrs["emit"]:
                local = OP(partials[0], res, weight, scale, None, None, bias, local=True, **attrs)
                assert_bitwise(local, expected, f"{name} local {list(shape)}")
                # The bias added in torch (bf16 + bf16: one rounding), then the op without it.
                apart = OP(partials[0] + bias, res, weight, scale, local=True, **attrs)
                assert_bitwise(apart, expected, f"{name} the bias apart {list(shape)}")
        else:
            got = tpfuse.ops.reference(partials, res, weight, scale, bias=bias, **attrs)
        assert_bitwise(got, expected, f"{name} N={world_size} {list(shape)}")


def test_a_bias_added_to_the_sum_refuses_what_it_cannot_do():
    partials, res, weight, _ = make_inputs(5, (3, 256), 1, True, "none")
    with pytest.raises(ValueError, match=r"bias must be \[H\] = \[256\] or x's shape \[3, 256\]"):
        OP(partials[0], res, weight, None, None, None, weight[:128], emit=["norm"])
    with pytest.raises(ValueError, match=r"bias must be \[H\] = \[256\] or x's shape \[3, 256\]"):
        OP(partials[0], res, weight, None, None, None, weight.float(), emit=["norm"])
    with pytest.raises(ValueError, match=r"bias must be \[H\] = \[256\] or x's shape \[3, 256\]"):
        OP(partials[0], res, weight, None, None, None, partials[0][:2], emit=["norm"])
    with pytest.raises(ValueError, match="it takes no second_sum and no pre_residual_norm"):
        OP(partials[0], res, weight, None, partials[0], None, weight, emit=["norm"])
    with pytest.raises(ValueError, match="it takes no second_sum and no pre_residual_norm"):
        OP(partials[0], res, weight, None, None, weight, weight, emit=["norm"])
    with pytest.raises(TypeError, match="bias must be a tensor or None"):
        tpfuse.ops.reference(partials, res, weight, None, emit=["norm"], bias=[1.0])


# ---------------------------------------------------------------- world size 2 over gloo

def _rank_main(rank: int, world_size: int, store_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=world_size)
    try:
        group_name = dist.group.WORLD.group_name
        for k, (name, attrs, residual) in enumerate(CASES):
            for shape in SHAPES:
                if attrs.get("quant") == "fp8_group" and shape[-1] % attrs.get("group_size", 128):
                    continue
                partials, res, weight, scale = make_inputs(1000 * k + shape[0], shape, world_size,
                                                           residual, attrs.get("quant", "none"))
                got = OP(partials[rank], res, weight, scale, group_name=group_name, **attrs)
                expected = contract3.allreduce_rmsnorm(partials, res, weight, scale, **attrs)
                assert_bitwise(got, expected, f"rank {rank} {name} {list(shape)}")
        for k, (name, attrs) in enumerate(SECOND_SUM_CASES):
            for shape in SHAPES:
                partials, partials2, res, weight, scale = second_sum_inputs(
                    500 + 1000 * k + shape[0], shape, world_size, attrs.get("quant", "none"))
                got = OP(partials[rank], res, weight, scale, partials2[rank], group_name=group_name,
                         **attrs)
                expected = contract3.allreduce_rmsnorm(partials, res, weight, scale,
                                                       partials2=partials2, **attrs)
                assert_bitwise(got, expected, f"rank {rank} {name} {list(shape)}")
        for k, (name, attrs) in enumerate(PRE_NORM_CASES):
            partials, res, weight, scale = make_inputs(700 + k, (5, 256), world_size, True,
                                                       attrs.get("quant", "none"))
            pre_weight = weight.flip(0)
            got = OP(partials[rank], res, weight, scale, None, pre_weight, group_name=group_name,
                     **attrs)
            expected = contract3.allreduce_rmsnorm(partials, res, weight, scale,
                                                   pre_weight=pre_weight, **attrs)
            assert_bitwise(got, expected, f"rank {rank} {name}")
        # Traced (fake impl) and compiled: the same bits. aot_eager traces the op through its
        # fake implementation as Inductor does, without starting Inductor's compile workers in
        # each rank's process (a rank once aborted with std::terminate here, under a CI load,
        # while the other still ran; not reproduced in 11 runs).
        partials, res, weight, _ = make_inputs(99, (3, 256), world_size, True, "none")
        attrs = dict(emit=["norm", "residual"])
        fn = torch.compile(lambda x, r, w: OP(x, r, w, None, group_name=group_name, **attrs),
                           fullgraph=True, backend="aot_eager")
        assert_bitwise(fn(partials[rank], res, weight),
                       contract3.allreduce_rmsnorm(partials, res, weight, None, **attrs),
                       f"rank {rank} compiled")
    except BaseException:
        dist.destroy_process_group()
        raise
    end_rank()


def test_world_size_2_gloo_matches_reference():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(2, os.path.join(tmp, "store")), nprocs=2, join=True)


# ---------------------------------------------------------------- tracing and errors

def test_fake_impl_gives_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(5, 512, dtype=torch.bfloat16)
        w = torch.empty(512, dtype=torch.float32)
        outs = OP(x, x, w, None, emit=["allreduce", "norm", "residual", "quant"],
                  quant="fp8_group", scale_layout="col")
    assert [(tuple(o.shape), o.dtype) for o in outs] == [
        ((5, 512), torch.bfloat16), ((5, 512), torch.bfloat16), ((5, 512), torch.bfloat16),
        ((5, 512), torch.float8_e4m3fn), ((4, 8), torch.float32)]


def test_compiled_with_dynamic_tokens_matches_eager():
    attrs = dict(emit=["norm", "quant"], quant="fp8_token")
    fn = torch.compile(lambda x, r, w: OP(x, r, w, None, **attrs), dynamic=True, fullgraph=True)
    for t in (2, 7, 33):
        partials, res, weight, _ = make_inputs(t, (t, 256), 1, True, "fp8_token")
        assert_bitwise(fn(partials[0], res, weight), OP(partials[0], res, weight, None, **attrs),
                       f"T={t}")


BAD_CALLS = [
    # (what changes, the error type, words the message must contain)
    (dict(x=torch.zeros(3, 256)), TypeError, "x must be bfloat16 or float16"),
    (dict(residual=torch.zeros(2, 256, dtype=torch.bfloat16)), ValueError,
     "residual must have x's shape"),
    (dict(residual=torch.zeros(3, 256, dtype=torch.float16)), TypeError,
     "residual must have x's dtype torch.bfloat16 or be float32"),
    (dict(residual=None, rounding=["residual_out_f32"]), ValueError,
     "residual_out_f32 needs a residual operand"),
    (dict(quant="fp8_token", emit=["quant"], rounding=["norm_out_f32"]), ValueError,
     "norm_out_f32 takes quant none"),
    (dict(weight=torch.zeros(128, dtype=torch.bfloat16)), ValueError, "weight must be [H] = [256]"),
    (dict(weight=torch.zeros(256, dtype=torch.float64)), TypeError, "weight must be bfloat16"),
    (dict(scale=torch.ones(())), ValueError, "scale is required for quant 'fp8_tensor' and only"),
    (dict(quant="fp8_tensor", emit=["quant"], scale=torch.ones(2)), TypeError,
     "scale must be a float32 tensor of one element"),
    (dict(emit=["norm", "nrom"]), ValueError, "emit: unknown result 'nrom'"),
    (dict(emit=[]), ValueError, "emit is empty"),
    (dict(quant="fp8_group", group_size=100, emit=["quant"]), ValueError,
     "not a multiple of group_size 100"),
    (dict(quant="fp4"), ValueError, "unknown quant 'fp4'"),
    (dict(group_name="no_such_group"), ValueError, "group_name 'no_such_group'"),
    # Attributes that are finite in double but not in the f32 the kernels read, or NaN.
    (dict(eps=float("inf")), ValueError, "eps must be finite and >= 0 in f32"),
    (dict(eps=1e39), ValueError, "eps must be finite and >= 0 in f32"),
    (dict(weight_bias=float("nan")), ValueError, "weight_bias must be finite in f32"),
    # An integer wider than its C field is named, not cut to its low bits.
    (dict(quant="fp8_group", group_size=2**32 + 128, emit=["quant"]), ValueError,
     "group_size must be in [-2147483648, 2147483647], got 4294967424"),
]


@pytest.mark.parametrize("change,error,words", BAD_CALLS, ids=[b[2][:30] for b in BAD_CALLS])
def test_bad_arguments_name_the_argument(change, error, words):
    args = dict(x=torch.zeros(3, 256, dtype=torch.bfloat16),
                residual=torch.zeros(3, 256, dtype=torch.bfloat16),
                weight=torch.ones(256, dtype=torch.bfloat16), scale=None, emit=["norm"])
    args.update(change)
    x, res, w, s = (args.pop(k) for k in ("x", "residual", "weight", "scale"))
    with pytest.raises(error) as info:
        OP(x, res, w, s, **args)
    assert words in str(info.value)
    assert str(info.value).startswith("tpfuse.allreduce_rmsnorm: ")


# ---------------------------------------------------------------- tpfuse.tolerance

def test_tolerance_distances_count_representable_values():
    from tpfuse.tolerance import fp8_step_distance, fp8_ulp, ulp_distance_16

    one = torch.tensor([1.0], dtype=torch.bfloat16)
    nxt = torch.tensor([1.0078125], dtype=torch.bfloat16)  # 1 + 2^-7: the next bf16
    assert ulp_distance_16(one, nxt).item() == 1
    # Across zero: -0.0 and +0.0 are one value apart in the order, the smallest subnormals 1 more.
    tiny = torch.tensor([2.0 ** -133], dtype=torch.bfloat16)
    assert ulp_distance_16(-tiny, tiny).item() == 2
    assert ulp_distance_16(torch.tensor([-0.0], dtype=torch.bfloat16),
                           torch.tensor([0.0], dtype=torch.bfloat16)).item() == 0
    f8 = torch.tensor([1.0, 1.125, -448.0], dtype=torch.float32).to(torch.float8_e4m3fn)
    assert fp8_step_distance(f8[0:1], f8[1:2]).item() == 1  # e4m3: 3 mantissa bits
    assert fp8_step_distance(f8[2:3], f8[0:1]).item() > 100
    assert fp8_ulp(torch.tensor([1.0, 448.0, 1e-4])).tolist() == [0.125, 32.0, 2.0 ** -9]


@pytest.mark.parametrize("attrs", [
    dict(quant="fp8_token", rounding=["scale_floor_after_div"]),
    dict(quant="fp8_group", rounding=["scale_floor_after_div", "scale_op_swapped"]),
    dict(quant="fp8_group", scale_fmt="ue8m0", rounding=["ue8m0_floor"]),
    dict(quant="fp8_token", scale_fmt="ue8m0", scale_layout="col"),
    dict(quant="fp8_group", scale_fmt="ue8m0", rounding=["scale_floor_after_div"]),
], ids=["token_floor_after_div", "group_floor_after_div", "group_ue8m0_floor", "ue8m0_default",
        "group_ue8m0_floored_after_rounding"])
def test_the_scale_floors_decide_tiny_and_zero_rows(attrs):
    # Weights of 2^-30 put every amax below 448 * 2^-34 (so below 1/512), and rows 0 and 3 are
    # zero: the floors decide every scale, as contract3 computes them.
    shape = (6, 256)
    partials, res, weight, _ = make_inputs(11, shape, 1, True, attrs["quant"])
    for t in (partials[0], res):
        t[0] = 0
        t[3] = 0
    weight = (weight.float() * 2.0 ** -30).to(weight.dtype)
    attrs = dict(attrs, emit=["norm", "quant"])
    got = OP(partials[0], res, weight, None, local=True, **attrs)
    expected = contract3.allreduce_rmsnorm(partials, res, weight, None, **attrs)
    assert_bitwise(got, expected, str(attrs))
    s, rounding = got[-1], attrs.get("rounding", [])
    if "scale_floor_after_div" in rounding:
        assert torch.all(s == torch.tensor(1.0 / (448.0 * 512.0)))
    elif "ue8m0_floor" in rounding:
        assert torch.all(s == 2.0 ** -33)
    else:
        assert torch.all(s[:, 0] == 2.0 ** -42)


@pytest.mark.parametrize("attrs", [
    dict(quant="fp8_token", scale_fmt="ue8m0"),
    dict(quant="fp8_group", scale_fmt="ue8m0", rounding=["ue8m0_floor"]),
    dict(quant="fp8_group", scale_fmt="ue8m0", rounding=["scale_floor_after_div"]),
], ids=["token", "group_ue8m0_floor", "group_floored_after_rounding"])
def test_ue8m0_scales_of_inf_and_nan_rows_are_inf_and_nan(attrs):
    # A NaN in row 1 and a weight of 3e38 at column 5 (y overflows to +-inf where |n| > about
    # 1.1): the rows' UE8M0 scales are NaN and inf, as exp2(ceil(log2(.))) leaves them, and q is
    # what contract3 computes from them (NaN where the scale is NaN, y / inf = +-0 elsewhere).
    shape = (6, 256)
    partials, res, weight, _ = make_inputs(13, shape, 1, True, attrs["quant"])
    partials[0][1, 0] = float("nan")
    weight[5] = 3e38
    attrs = dict(attrs, emit=["norm", "quant"])
    got = OP(partials[0], res, weight, None, local=True, **attrs)
    expected = contract3.allreduce_rmsnorm(partials, res, weight, None, **attrs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g.float(), e.float(), rtol=0, atol=0, equal_nan=True)
    s = got[-1]
    assert torch.isnan(s).any() and torch.isinf(s).any(), s


def test_the_python_helpers_name_bad_arguments():
    from tpfuse import _capi, ops

    with pytest.raises(ValueError, match="partials must hold one tensor per rank, got none"):
        ops.reference([], None, torch.ones(256, dtype=torch.bfloat16), emit=["norm"])
    x = torch.zeros(3, 256, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="weight must be a tensor, got NoneType"):
        ops.reference([x], None, None, emit=["norm"])
    with pytest.raises(ValueError, match=r"world_size must be in \[-2147483648, 2147483647\]"):
        _capi.compile_module("func @f(%x: bf16[T, 64]) {\n  return %x\n}\n", world_size=2**32 + 2)
    with pytest.raises(ValueError, match=r"max_tokens must be in \[0, "):
        _capi.compile_module("func @f(%x: bf16[T, 64]) {\n  return %x\n}\n", max_tokens=-5)
    spec = _capi.make_spec(hidden=256, quant="fp8_token", emit=["quant"])
    with pytest.raises(_capi.TpfuseError,
                       match="tokens 4611686018427387904 x hidden 256 overflows"):
        _capi.scale_elements(spec, 2**62)

