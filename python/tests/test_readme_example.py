"""The README's "From PyTorch" pass example runs as written (torchrun, 2 ranks, gloo)."""

import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("### The pass: `tpfuse.torch`"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_pass_example_runs_as_written(tmp_path):
    script = tmp_path / "tp_example.py"
    script.write_text(readme_example())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    for var in ("TPFUSE_LIBRARY", "TPFUSE_CLI"):  # the script runs in tmp_path
        if env.get(var):
            env[var] = os.path.abspath(env[var])
    # A graph served from Inductor's caches does not go through the pass again (it already holds
    # the fused op), and the report would count nothing: compile afresh.
    env["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The two ranks write to one pipe: unbuffered (PYTHONUNBUFFERED), a line's text and its
    # newline are separate writes and the ranks' lines can interleave, so find the lines by
    # their text, not by the newlines between them.
    lines = re.findall(r"rank \d+: .*?outputs equal to eager: (?:True|False)", proc.stdout)
    assert len(lines) == 2, proc.stdout
    # What the pass logged (a graph left as it was says why) goes to stderr.
    warnings = "\n".join(l for l in proc.stderr.splitlines() if "tpfuse" in l)
    for line in lines:
        assert "1 all_reduce(s), 1 fused, 0 left alone" in line, line + "\n" + warnings
        assert line.endswith("outputs equal to eager: True"), line + "\n" + warnings
