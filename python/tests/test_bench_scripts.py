"""The world-size-1 bench scripts without a GPU: each exits with 2 and says what it needs, and
their --quant lists refuse a mode they do not time, naming it (bench/inductor_epilogue.py's
parse_quants)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

_BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU exit needs a machine without one")
@pytest.mark.parametrize("script", ["second_sum_local.py", "pre_norm_local.py"])
def test_without_a_gpu_it_says_so(script):
    done = subprocess.run([sys.executable, os.path.join(_BENCH, script), "--tokens", "1"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert done.returncode == 2, done.stderr
    assert "needs a CUDA GPU" in done.stderr


def test_a_quant_list_names_the_mode_it_refuses(capsys):
    spec = importlib.util.spec_from_file_location("inductor_epilogue",
                                                  os.path.join(_BENCH, "inductor_epilogue.py"))
    ie = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ie)
    ap = argparse.ArgumentParser(prog="bench")
    assert ie.parse_quants(ap, "none,fp8_token", ("none", "fp8_token")) == ["none", "fp8_token"]
    with pytest.raises(SystemExit):
        ie.parse_quants(ap, "none,fp8_group", ("none", "fp8_token"))
    assert "--quant: unknown mode 'fp8_group' (expected none, fp8_token)" in capsys.readouterr().err
