"""Runs the C++ compiler on IR text: module text in, compiled module text and the JSON report out.

One function, `compile_module`, is the only place the pass reaches the C++ side. It goes through
the C ABI (libtpfuse.so, `tpfuse.compile_module`) when that binding is importable, and otherwise
through the `tpfuse compile` CLI of a build (TPFUSE_CLI, or build*/tpfuse in the repository).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Dict, Optional

from tpfuse._capi import FUSE_LOCAL_CODES


class CompilerError(Exception):
    """The compiler could not be run, or refused the module (its message names the problem)."""


@dataclasses.dataclass
class Compiled:
    text: str                 # the compiled module
    report: Dict[str, Any]    # `tpfuse compile --json`'s object (fusions, rejections, op counts)


def _repo_root() -> str:
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def find_cli() -> Optional[str]:
    path = os.environ.get("TPFUSE_CLI")
    if path:
        return path
    candidates = sorted(glob.glob(os.path.join(_repo_root(), "build*", "tpfuse")),
                        key=lambda p: os.path.getmtime(p), reverse=True)
    for c in candidates:
        if os.access(c, os.X_OK) and os.path.isfile(c):
            return c
    return shutil.which("tpfuse")


def _abi_compile():
    """tpfuse._capi.compile_module when the package and libtpfuse.so are there, else None."""
    try:
        from tpfuse import _capi
        _capi.load()
    except Exception:  # noqa: BLE001  no package, or no library: the CLI is the fallback
        return None
    return getattr(_capi, "compile_module", None)


# The modes the C ABI takes (one list: tpfuse._capi.FUSE_LOCAL_CODES).
FUSE_LOCAL_MODES = tuple(FUSE_LOCAL_CODES)


def compile_module(text: str, world_size: int, backend: str = "cpu",
                   fuse_local: str = "auto") -> Compiled:
    """fuse_local: "auto" or "inductor" (the compiler's rules: docs/pytorch.md, "Local chains"),
    "on" or "off"."""
    if fuse_local not in FUSE_LOCAL_MODES:
        raise ValueError(f"fuse_local must be one of {FUSE_LOCAL_MODES}, got {fuse_local!r}")
    abi = _abi_compile()
    if abi is not None:
        try:
            out_text, report_json = abi(text, world_size=world_size, backend=backend,
                                        fuse_local=fuse_local)
        except Exception as e:  # noqa: BLE001  the binding's error names the problem
            raise CompilerError(str(e)) from None
        return Compiled(out_text, json.loads(report_json))
    return _compile_with_cli(text, world_size, backend, fuse_local)


def _compile_with_cli(text: str, world_size: int, backend: str, fuse_local: str) -> Compiled:
    cli = find_cli()
    if cli is None:
        raise CompilerError("no tpfuse compiler found: build the project (build*/tpfuse) or set "
                            "TPFUSE_CLI to the tpfuse executable")
    with tempfile.TemporaryDirectory(prefix="tpfuse_") as tmp:
        src = os.path.join(tmp, "graph.tpg")
        out = os.path.join(tmp, "compiled.tpg")
        with open(src, "w") as f:
            f.write(text)
        cmd = [cli, "compile", src, "--world-size", str(world_size), "--backend", backend,
               "--fuse-local", fuse_local, "--json", "-o", out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompilerError(f"tpfuse compile exited with {proc.returncode}: "
                                f"{proc.stderr.strip() or proc.stdout.strip()}")
        with open(out) as f:
            compiled = f.read()
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise CompilerError(f"tpfuse compile printed no JSON report: {e}") from None
    return Compiled(compiled, report)
