"""UE8M0 scales written in torch ops are the fused quant's round-up to a power of two.

The compiler folds `exp2(ceil(log2(s)))` and `2 ** ceil(log2(s))` with s = amax.clamp_min(1e-10)
/ 448 into quant_fp8 scale_fmt ue8m0, whose kernels round s up to the next power of two by bit
manipulation. The two agree only if torch's f32 log2 never lands on an integer for an s above a
power of two, and returns the integer at one. Checked here for every s a bf16 or f16 activation
can give (every finite non-negative amax), on the vectorized and the one-element paths.
"""
import pytest
import torch


def round_up_to_power_of_two(s):
    bits = s.view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    exponent = torch.where((bits & 0x7FFFFF) != 0, exponent + 1, exponent)
    return (exponent << 23).view(torch.float32)


def every_scale(dtype):
    values = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).float()
    amax = values[torch.isfinite(values) & (values >= 0)]
    return amax.clamp_min(1e-10) / 448


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("form", ["exp2", "pow", "one_element"])
def test_ue8m0_in_torch_ops_is_the_round_up(dtype, form):
    s = every_scale(dtype)
    if form == "exp2":
        got = torch.exp2(torch.ceil(torch.log2(s)))
    elif form == "pow":
        got = 2 ** torch.ceil(torch.log2(s))
    else:
        got = torch.cat([torch.exp2(torch.ceil(torch.log2(e.reshape(1)))) for e in s])
    want = round_up_to_power_of_two(s)
    differ = (got.view(torch.int32) != want.view(torch.int32)).nonzero().flatten()
    assert differ.numel() == 0, f"{differ.numel()} scales differ, first s = {s[differ[0]].item()!r}"
