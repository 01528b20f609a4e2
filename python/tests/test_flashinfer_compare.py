"""bench/flashinfer_compare.py without a GPU: its arguments, the shape plan, the input-set
rotation, the unpacking of FlashInfer's UE8M0 scales, the tolerance comparison (against the
CPU reference of Contract 3), the FlashInfer API check and the refusal without
NCCL_NVLS_ENABLE=0. The timing itself needs 2 GPUs and flashinfer: docs/perf/h200x2/README.md."""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import types

import pytest
import torch

import tpfuse

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "flashinfer_compare.py")
_spec = importlib.util.spec_from_file_location("flashinfer_compare", _PATH)
fc = importlib.util.module_from_spec(_spec)
sys.modules["flashinfer_compare"] = fc
_spec.loader.exec_module(fc)


# ---------------------------------------------------------------- arguments and plan

def test_defaults_are_the_issue_sweep():
    a = fc.parse_args([])
    assert a.hidden == [4096, 7168]
    assert a.tokens == [2 ** i for i in range(14)]
    assert a.quant == ["fp8_tensor", "fp8_group"]
    assert a.fi_strategy == ["auto"]
    assert (a.ops_per_graph, a.warmup, a.replays) == (20, 5, 50)
    plan = fc.shape_plan(a.hidden, a.tokens, a.quant)
    assert len(plan) == 2 * 2 * 14
    assert plan[0] == fc.Case(4096, 1, "fp8_tensor")
    assert plan[13] == fc.Case(4096, 8192, "fp8_tensor")
    assert plan[14] == fc.Case(4096, 1, "fp8_group")
    assert plan[-1] == fc.Case(7168, 8192, "fp8_group")


def test_lists_parse_and_plan_sorts_tokens():
    a = fc.parse_args(["--hidden", "7168", "--tokens", "128,1,128,8", "--quant", "fp8_group",
                       "--fi-strategy", "oneshot,twoshot", "--out", "d"])
    assert a.fi_strategy == ["oneshot", "twoshot"] and a.out == "d"
    assert [c.tokens for c in fc.shape_plan(a.hidden, a.tokens, a.quant)] == [1, 8, 128]
    assert fc.Case(7168, 1, "fp8_group").groups == 56


@pytest.mark.parametrize("argv, words", [
    (["--tokens", "0"], "--tokens: 0 is not positive"),
    (["--tokens", "1,x"], "--tokens: 'x' is not an integer"),
    (["--hidden", "4100"], "--hidden: 4100 is not a multiple of 128"),
    (["--quant", "fp8_token"], "--quant: unknown 'fp8_token'"),
    (["--fi-strategy", "lamport"], "--fi-strategy: unknown 'lamport'"),
    (["--world-size", "1"], "--world-size"),
    (["--replays", "0"], "--replays"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_are_usage_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        fc.parse_args(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


def test_help_names_every_option_and_the_nvls_rule(capsys):
    with pytest.raises(SystemExit) as e:
        fc.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--hidden", "--tokens", "--quant", "--fi-strategy", "--fi-workspace",
                   "--world-size",
                   "--ops-per-graph", "--warmup", "--replays", "--no-pdl", "--no-check", "--out"):
        assert option in text
    assert "NCCL_NVLS_ENABLE=0" in text
    assert "kARResidualRMSNormOutPerTokenGroupFP8PackedQuant" in text


def test_rotation_follows_the_benchmarking_rule():
    l2 = 50 << 20
    # A small set: every op of the graph gets its own set, and the L2 is still flushed.
    assert fc.rotation(1 << 20, l2, 20) == (20, True)
    # Exactly 2 x L2 in K - 1 sets.
    assert fc.rotation(25 << 20, l2, 20) == (5, False)
    assert fc.rotation((25 << 20) + 1, l2, 20) == (5, False)
    assert fc.rotation((25 << 20) - 1, l2, 20) == (6, False)
    # A set larger than 2 x L2: two sets alternate.
    assert fc.rotation(300 << 20, l2, 20) == (2, False)


def test_set_bytes_counts_inputs_and_flashinfer_outputs():
    t, h = 8, 4096
    assert fc.set_bytes(fc.Case(h, t, "fp8_tensor")) == t * h * (2 + 2 + 2 + 1)
    # fp8_group adds the norm and the packed scales: 32 groups -> 8 words per padded row.
    assert fc.set_bytes(fc.Case(h, t, "fp8_group")) == t * h * (2 + 2 + 2 + 1 + 2) + 4 * 8 * 8


# ---------------------------------------------------------------- UE8M0 unpacking

def _pack_ue8m0(scales: torch.Tensor) -> torch.Tensor:
    """f32 powers of two [T, G] in FlashInfer's layout: int32 words, word k of row t at
    k * pad4(T) + t, byte p of it for group 4k + p; the result [T, ceil(G/4)] with strides
    (1, pad4(T)), as trtllm_allreduce_fusion takes scale_out."""
    tokens, groups = scales.shape
    padded = (tokens + 3) // 4 * 4
    words = (groups + 3) // 4
    storage = torch.zeros(words * padded * 4, dtype=torch.uint8)
    exponents = (torch.frexp(scales)[1] - 1 + 127).to(torch.uint8)  # 2^e: frexp gives e + 1
    for t in range(tokens):
        for g in range(groups):
            storage[((g // 4) * padded + t) * 4 + g % 4] = exponents[t, g]
    return storage.view(torch.int32).view(words, padded).t()[:tokens]


def test_unpack_ue8m0_reads_flashinfers_layout():
    tokens, groups = 5, 7  # T padded to 8, two words per row, the second half used
    e = torch.arange(tokens * groups, dtype=torch.int32).reshape(tokens, groups) - 20
    scales = torch.ldexp(torch.ones(tokens, groups), e)
    packed = _pack_ue8m0(scales)
    assert packed.shape == (5, 2) and packed.stride() == (1, 8)
    got = fc.unpack_ue8m0(packed, groups)
    assert got.dtype == torch.float32
    assert torch.equal(got, scales)


# ---------------------------------------------------------------- the comparison

def _reference(quant: str, tokens: int = 6, hidden: int = 512, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    parts = [(torch.rand(tokens, hidden, generator=g) * 2 - 1).to(torch.bfloat16)
             for _ in range(2)]
    residual = (torch.rand(tokens, hidden, generator=g) * 2 - 1).to(torch.bfloat16)
    weight = (torch.rand(hidden, generator=g) + 0.5).to(torch.bfloat16)
    case = fc.Case(hidden, tokens, quant)
    if quant == "fp8_group":
        outs = tpfuse.ops.reference(parts, residual, weight, None, emit=fc.EMIT[quant],
                                    eps=fc.EPS, quant=quant, group_size=128,
                                    scale_layout="col", scale_fmt="ue8m0")
        tp = dict(zip(["norm", "residual", "q", "s"], outs))
        tp["s"] = fc.col_scales_to_rows(tp["s"], tokens)
        fi = {k: v.clone() for k, v in tp.items()}
        fi["s"] = fc.unpack_ue8m0(_pack_ue8m0(tp["s"]), case.groups)  # through the packing
    else:
        scale = torch.full((1,), fc.STATIC_SCALE)
        outs = tpfuse.ops.reference(parts, residual, weight, scale, emit=fc.EMIT[quant],
                                    eps=fc.EPS, quant=quant)
        tp = dict(zip(["residual", "q"], outs))
        tp["s"] = scale
        fi = {k: v.clone() for k, v in tp.items()}
    return case, fi, tp


def _bump16(t: torch.Tensor, index, steps: int) -> None:
    """Moves one bf16 element `steps` ulps away from zero."""
    bits = t.view(torch.int16)
    bits[index] = bits[index] + steps


def _by_name(findings):
    return {f.name: f for f in findings}


@pytest.mark.parametrize("quant", ["fp8_tensor", "fp8_group"])
def test_equal_outputs_pass_bitwise(quant):
    case, fi, tp = _reference(quant)
    findings = fc.compare_outputs(case, fi, tp, world_size=2)
    names = ["residual_out", "q"] + (["norm", "scales"] if quant == "fp8_group" else [])
    assert sorted(f.name for f in findings) == sorted(names)
    for f in findings:
        assert f.ok and f.differing == 0, f.line()
        assert f.elements == (case.tokens * case.groups if f.name == "scales"
                              else case.tokens * case.hidden)


def test_norm_within_one_ulp_passes_two_ulps_fail():
    case, fi, tp = _reference("fp8_group")
    _bump16(fi["norm"], (2, 5), 1)
    f = _by_name(fc.compare_outputs(case, fi, tp, 2))["norm"]
    assert f.ok and f.differing == 1 and "max 1 ulp" in f.line()
    _bump16(fi["norm"], (3, 7), 2)
    f = _by_name(fc.compare_outputs(case, fi, tp, 2))["norm"]
    assert not f.ok and f.out_of_tolerance == 1 and f.differing == 2
    assert "OUT OF TOLERANCE" in f.line() and "first at [3, 7]" in f.line()


def test_residual_is_bitwise_at_world_size_two_and_one_ulp_above():
    case, fi, tp = _reference("fp8_tensor")
    _bump16(fi["residual"], (0, 0), 1)
    assert not _by_name(fc.compare_outputs(case, fi, tp, 2))["residual_out"].ok
    assert _by_name(fc.compare_outputs(case, fi, tp, 4))["residual_out"].ok


def _step_fp8(q: torch.Tensor, index, steps: int) -> None:
    bits = q.view(torch.uint8)
    bits[index] = bits[index] + steps  # away from zero for either sign, off the saturation


def test_fp8_one_step_passes_two_fail():
    case, fi, tp = _reference("fp8_tensor")
    idx = (1, 3)
    assert abs(float(tp["q"][idx])) < 200
    _step_fp8(fi["q"], idx, 1)
    f = _by_name(fc.compare_outputs(case, fi, tp, 2))["q"]
    assert f.ok and f.differing == 1 and "max 1 FP8 steps" in f.line()
    _step_fp8(fi["q"], idx, 1)
    f = _by_name(fc.compare_outputs(case, fi, tp, 2))["q"]
    assert not f.ok and "first at [1, 3]" in f.line()


def test_a_doubled_group_scale_is_reported():
    case, fi, tp = _reference("fp8_group")
    fi["s"][4, 2] *= 2
    found = _by_name(fc.compare_outputs(case, fi, tp, 2))
    assert not found["scales"].ok and "first at [4, 2]" in found["scales"].line()
    # Contract 3's FP8 rule allows what the scale difference explains (|q| x |s' - s|): the
    # scale's own finding carries the error, q's does not repeat it.
    assert found["q"].ok and found["q"].differing == 0


def test_unwritten_poisoned_elements_fail():
    """The script poisons FlashInfer's outputs with NaN (q 0x7F, scales 0xFF bytes) before
    the checking call: an element left unwritten must not pass any rule."""
    case, fi, tp = _reference("fp8_group")
    fi["q"].view(torch.uint8)[2, 9] = 0x7F
    fi["norm"][1, 1] = float("nan")
    fi["residual"][0, 4] = float("nan")
    packed = _pack_ue8m0(tp["s"])
    packed[5, 0] = -1  # groups 0..3 of token 5: exponent 255
    fi["s"] = fc.unpack_ue8m0(packed, case.groups)
    found = _by_name(fc.compare_outputs(case, fi, tp, 4))
    assert found["q"].out_of_tolerance >= 1 and "first at [2, 9]" in found["q"].line()
    assert found["norm"].out_of_tolerance == 1
    assert found["residual_out"].out_of_tolerance == 1
    assert found["scales"].out_of_tolerance == 4 and "first at [5, 0]" in found["scales"].line()


def test_a_shape_mismatch_is_a_finding_not_a_crash():
    case, fi, tp = _reference("fp8_tensor")
    fi["residual"] = fi["residual"][:-1]
    f = _by_name(fc.compare_outputs(case, fi, tp, 2))["residual_out"]
    assert not f.ok and "shape/dtype" in f.line()


# ---------------------------------------------------------------- FlashInfer's API and refusals

def _fake_flashinfer(monkeypatch, patterns=("kARResidualRMSNormFP8Quant",
                                            "kARResidualRMSNormOutPerTokenGroupFP8PackedQuant"),
                     group_param=True):
    fi = types.ModuleType("flashinfer")
    fi.__version__ = "9.9.9"
    comm = types.ModuleType("flashinfer.comm")
    comm.AllReduceFusionPattern = type("AllReduceFusionPattern", (),
                                       {p: i for i, p in enumerate(patterns)})
    params = list(fc.REQUIRED_PARAMS) + (["block_quant_group_size"] if group_param else [])
    ns: dict = {}
    exec(f"def trtllm_allreduce_fusion({', '.join(params)}): pass", ns)
    comm.trtllm_allreduce_fusion = ns["trtllm_allreduce_fusion"]
    exec("def create(tp_rank, tp_size, max_token_num, hidden_dim, group=None, "
         "create_metadata=False): pass", ns)
    comm.trtllm_create_ipc_workspace_for_all_reduce_fusion = ns["create"]
    fi.comm = comm
    monkeypatch.setitem(sys.modules, "flashinfer", fi)
    monkeypatch.setitem(sys.modules, "flashinfer.comm", comm)
    return comm


def test_flashinfer_not_importable_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashinfer", None)
    with pytest.raises(fc.FlashInferUnavailable, match="flashinfer is not importable"):
        fc.load_flashinfer(["fp8_tensor"])


def test_flashinfer_api_complete(monkeypatch):
    comm = _fake_flashinfer(monkeypatch)
    assert fc.load_flashinfer(["fp8_tensor", "fp8_group"]) is comm


def test_flashinfer_missing_group_pattern_and_parameter(monkeypatch):
    _fake_flashinfer(monkeypatch, patterns=("kARResidualRMSNormFP8Quant",), group_param=False)
    assert fc.load_flashinfer(["fp8_tensor"]) is not None  # enough for static FP8
    with pytest.raises(fc.FlashInferUnavailable) as e:
        fc.load_flashinfer(["fp8_group"])
    text = str(e.value)
    assert text.startswith("flashinfer 9.9.9 lacks: ")
    assert "AllReduceFusionPattern.kARResidualRMSNormOutPerTokenGroupFP8PackedQuant" in text
    assert "parameter 'block_quant_group_size' of trtllm_allreduce_fusion" in text


def test_flashinfer_own_workspace_needs_use_symm_dev_mem(monkeypatch):
    _fake_flashinfer(monkeypatch)
    assert fc.load_flashinfer(["fp8_tensor"], "torch") is not None
    with pytest.raises(fc.FlashInferUnavailable,
                       match="parameter 'use_symm_dev_mem' of trtllm_create_ipc_workspace"):
        fc.load_flashinfer(["fp8_tensor"], "flashinfer")


def test_flashinfer_missing_function(monkeypatch):
    comm = _fake_flashinfer(monkeypatch)
    monkeypatch.delattr(comm, "trtllm_create_ipc_workspace_for_all_reduce_fusion")
    with pytest.raises(fc.FlashInferUnavailable,
                       match="flashinfer.comm.trtllm_create_ipc_workspace_for_all_reduce_fusion"):
        fc.load_flashinfer(["fp8_tensor"])


def _keep_multicast_env(monkeypatch):
    """main() sets these where unset: restored after the test."""
    for name in ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
        monkeypatch.setenv(name, os.environ.get(name, "1"))


def test_refuses_without_nccl_nvls_enable_zero(monkeypatch, capsys):
    _fake_flashinfer(monkeypatch)
    _keep_multicast_env(monkeypatch)
    for value in (None, "1"):
        if value is None:
            monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
        else:
            monkeypatch.setenv("NCCL_NVLS_ENABLE", value)
        assert fc.main(["--tokens", "1"]) == 1
        assert "NCCL_NVLS_ENABLE=0 must be set" in capsys.readouterr().err


def test_exits_one_naming_missing_flashinfer(monkeypatch, capsys):
    _keep_multicast_env(monkeypatch)
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setitem(sys.modules, "flashinfer", None)
    assert fc.main([]) == 1
    assert "flashinfer is not importable" in capsys.readouterr().err


# ---------------------------------------------------------------- output

def test_table_and_csv():
    rows = [{"world_size": 2, "hidden": 4096, "tokens": 1, "quant": "fp8_tensor",
             "emit": "residual,quant", "tpfuse_us": 4.0, "fi_auto_us": 5.0,
             "fi_over_tpfuse": 1.25, "input_sets": 20, "l2_flush": 1, "check": "bitwise",
             "check_details": "", "notes": []},
            {"world_size": 2, "hidden": 4096, "tokens": 2, "quant": "fp8_tensor",
             "emit": "residual,quant", "tpfuse_us": 4.5, "fi_auto_us": None,
             "fi_over_tpfuse": None, "input_sets": 20, "l2_flush": 1, "check": "FAIL",
             "check_details": "x", "notes": ["T=2: a note"]}]
    rows[0]["fi_over_tpfuse"] = fc.best_ratio(rows[0], ["auto"])
    assert rows[0]["fi_over_tpfuse"] == 1.25
    # busbw: T 8192, H 4096, N 2: 64 MiB x 2(N-1)/N in 172 µs -> 390 GB/s (docs/benchmarking.md).
    big = fc.Case(4096, 8192, "fp8_tensor")
    assert round(fc.busbw_gbps(big, 2, 172.0)) == 390
    assert fc.busbw_gbps(big, 4, 172.0) == pytest.approx(1.5 * fc.busbw_gbps(big, 2, 172.0))
    rows[0]["tpfuse_busbw_gbps"] = fc.busbw_gbps(fc.Case(4096, 1, "fp8_tensor"), 2, 4.0)
    text = fc.format_table(4096, "fp8_tensor", 2, ["auto"], rows)
    lines = text.splitlines()
    assert lines[0] == "== H=4096  quant=fp8_tensor  emit=residual,quant  world size 2"
    assert lines[3].split() == ["1", "4.00", "5.00", "1.25", "2", "-", "bitwise"]
    assert lines[4].split() == ["2", "4.50", "-", "-", "-", "-", "FAIL"]
    assert lines[5] == "   note: T=2: a note"
    out = io.StringIO()
    fc.write_csv(rows, out)
    csv_lines = out.getvalue().splitlines()
    assert csv_lines[0].split(",") == fc.CSV_FIELDS
    assert csv_lines[1].startswith("2,4096,1,fp8_tensor,\"residual,quant\",4.000,5.000,,,1.250,"
                                   "2.048,,20,1,bitwise,")


# ---------------------------------------------------------------- one rank's flow, on the CPU

class _FakeDist:
    """all_gather_object as at world size 2 with both ranks alike."""

    def all_gather_object(self, out, obj):
        for i in range(len(out)):
            out[i] = obj


def _cpu_rank(monkeypatch, fi_writes, quants=("fp8_tensor", "fp8_group")):
    """A Rank whose device is the CPU: tpfuse's side is the CPU reference of the op (the second
    rank's partial is x / 2), FlashInfer's side `fi_writes(case, outs_by_name, buffers)`, and
    timing returns fixed numbers."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    args = fc.parse_args(["--quant", ",".join(quants), "--tokens", "3", "--hidden", "512"])
    r = object.__new__(fc.Rank)
    r.args, r.rank, r.world, r.dist = args, 0, 2, _FakeDist()
    r.device, r.l2 = torch.device("cpu"), 1 << 20

    def tpfuse_fn(case, weight, scale, sets):
        group = case.quant == "fp8_group"

        def call(j):
            x, res, _ = sets[j % len(sets)]
            return tpfuse.ops.reference(
                [x, (x.float() / 2).to(x.dtype)], res, weight, None if group else scale,
                emit=fc.EMIT[case.quant], eps=fc.EPS, quant=case.quant, group_size=128,
                scale_layout="col" if group else "row", scale_fmt="ue8m0" if group else "f32")
        return call

    def fi_fn(case, strategy, weight, scale, sets):
        ref = tpfuse_fn(case, weight, scale, sets)

        def call(j):
            outs = ref(j)
            names = ["norm", "residual", "q", "s"] if case.quant == "fp8_group" else \
                ["residual", "q"]
            got = dict(zip(names, outs))
            o = sets[j % len(sets)][2]
            fi_writes(case, got, o)
        return call

    r.tpfuse_fn, r.fi_fn = tpfuse_fn, fi_fn
    r.time_per_op = lambda call, count, flush: (2.0, [2.0, 2.1])
    return r


def _write_all(case, got, o):
    for name in ("residual", "norm", "q"):
        if name in o:
            o[name].copy_(got[name])
    if "s" in o:
        o["s"].copy_(_pack_ue8m0(fc.col_scales_to_rows(got["s"], case.tokens)))


def test_measure_checks_and_fills_a_row(monkeypatch):
    r = _cpu_rank(monkeypatch, _write_all)
    for quant in ("fp8_tensor", "fp8_group"):
        row, bad = r.measure(fc.Case(512, 3, quant))
        assert bad == 0 and row["check"] == "bitwise", row["check_details"]
        assert row["tpfuse_us"] == 2.0 and row["fi_auto_us"] == 2.0
        assert row["fi_over_tpfuse"] == 1.0 and row["input_sets"] == 20 and row["l2_flush"] == 1
        assert row["notes"] == []  # rank 1's 2.1 µs is within 10% of rank 0's


def test_measure_reports_what_flashinfer_left_unwritten(monkeypatch):
    def skip_last_row_of_q(case, got, o):
        _write_all(case, got, o)
        o["q"][-1].copy_(torch.full_like(o["q"][-1], float("nan")))  # as if never written

    r = _cpu_rank(monkeypatch, skip_last_row_of_q)
    row, bad = r.measure(fc.Case(512, 3, "fp8_tensor"))
    assert bad == 1 and row["check"] == "FAIL"
    assert "rank 0 FI auto q: OUT OF TOLERANCE" in row["check_details"]
    assert "first at [2, " in row["check_details"]


def test_measure_notes_a_refused_shape_and_the_two_shot_limit(monkeypatch):
    def refuse(case, got, o):
        raise RuntimeError("Cannot satisfy group alignment\nmore")

    r = _cpu_rank(monkeypatch, refuse)
    r.args.fi_strategy = ["auto", "twoshot"]
    row, bad = r.measure(fc.Case(512, 2, "fp8_group"))
    assert bad == 0 and row["check"] == "-" and row["fi_over_tpfuse"] is None
    assert row["notes"] == ["T=2: FlashInfer auto refused: Cannot satisfy group alignment",
                            "T=2: FlashInfer's two-shot needs T > world size"]
    assert row["tpfuse_us"] == 2.0 and "fi_auto_us" not in row


def test_run_prints_one_table_per_h_and_quant_and_writes_the_files(monkeypatch, tmp_path,
                                                                    capsys):
    r = _cpu_rank(monkeypatch, _write_all)
    r.args.tokens, r.args.out = [1, 5], str(tmp_path)
    r.header = lambda: "# header"
    assert r.run() == 0
    out = capsys.readouterr().out
    assert out.count("== H=512") == 2 and "# checks: 0 shape(s) out of tolerance" in out
    text = (tmp_path / "flashinfer_compare.txt").read_text()
    assert text.startswith("# header\n\n== H=512  quant=fp8_tensor")
    rows = (tmp_path / "flashinfer_compare.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    assert [line.split(",")[2] for line in rows[1:]] == ["1", "5", "1", "5"]


def test_run_exits_three_when_a_check_fails(monkeypatch, capsys):
    def bump_norm(case, got, o):
        _write_all(case, got, o)
        if "norm" in o:
            o["norm"].view(torch.int16)[0, 0] += 2

    r = _cpu_rank(monkeypatch, bump_norm)
    r.header = lambda: "# header"
    assert r.run() == 3
    assert "# checks: 1 shape(s) out of tolerance" in capsys.readouterr().out
