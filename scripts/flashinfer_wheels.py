#!/usr/bin/env python3
"""Downloads the wheels bench/flashinfer_compare.py needs on the GPU machine, for its Python 3.12
on x86-64 Linux, and slims FlashInfer's to what its all-reduce fusion compiles.

    python3 scripts/flashinfer_wheels.py .whl        # then carry .whl (docs/perf/h200x2/README.md)

FlashInfer's wheel (flashinfer-python, pure Python) ships the CUDA sources of every kernel it can
JIT-compile, about 60 MB packed: with its one missing dependency (apache-tvm-ffi) that is more
than the 64 MiB a call to the GPU machine may carry. The module the comparison builds,
`trtllm_comm`, compiles three files at the top of flashinfer/data/csrc
(trtllm_allreduce.cu, trtllm_allreduce_fusion.cu, trtllm_moe_allreduce_fusion.cu) against
flashinfer/data/include, spdlog and tvm-ffi's headers; the sources in the subfolders of
flashinfer/data/csrc belong to other kernels and are left out (and their lines in RECORD).
Nothing else changes: every Python module, header and the top of csrc stay. --full keeps the
wheel as downloaded.

--aot-so FILE adds a trtllm_comm.so built beforehand (FlashInfer's JIT build of that module for
sm_90a) as flashinfer/data/aot/trtllm_comm/trtllm_comm.so, where FlashInfer loads it instead of
compiling; if it does not load there, FlashInfer says so and compiles. --build-aot builds it
here first: the slimmed wheel and its Python dependencies go to a temporary folder for this
machine's python, and FlashInfer's own JIT build runs with FLASHINFER_CUDA_ARCH_LIST=9.0a (nvcc
and ninja needed; nvcc 13.0 as on the GPU machine; minutes of CPU).

The other dependencies FlashInfer declares are on the GPU machine's image already or unused by
this path: see the README. pip is run as `python3 -m pip download --no-deps --only-binary=:all:`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

FLASHINFER = "flashinfer-python==0.7.2.post1"
TVM_FFI = "apache-tvm-ffi==0.1.15.post2"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
CSRC = "flashinfer/data/csrc/"
AOT_SO = "flashinfer/data/aot/trtllm_comm/trtllm_comm.so"


def download(spec: str, dest: str) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", dest, spec]
    for p in PLATFORMS:
        cmd[5:5] = ["--platform", p]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    name = spec.split("==")[0].replace("-", "_")
    found = [f for f in os.listdir(dest) if f.lower().startswith(name.lower())]
    if len(found) != 1:
        raise SystemExit(f"flashinfer_wheels: expected one {name} wheel in {dest}, found {found}")
    return os.path.join(dest, found[0])


def kept(path: str) -> bool:
    """Whether a wheel entry stays: everything but the files in subfolders of data/csrc."""
    return not (path.startswith(CSRC) and "/" in path[len(CSRC):])


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}\n"


def slim(src: str, dst: str, aot_so: str = "") -> int:
    """Copies the wheel without the dropped entries (plus the prebuilt module, if given);
    returns how many were dropped."""
    extra = {}
    if aot_so:
        with open(aot_so, "rb") as f:
            extra[AOT_SO] = f.read()
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED,
                                                      compresslevel=9) as zout:
        for info in zin.infolist():
            if not kept(info.filename):
                dropped += 1
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                lines = [ln for ln in lines if kept(ln.split(",", 1)[0])]
                lines[-1:-1] = [_record_line(p, d) for p, d in extra.items()]  # RECORD last
                data = "".join(lines).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        for path, data in extra.items():
            info = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o755 << 16
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return dropped


def build_aot(wheel: str, tmp: str) -> str:
    """Builds FlashInfer's trtllm_comm module for sm_90a with this machine's python; returns
    the .so."""
    site = os.path.join(tmp, "site")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", site]
    subprocess.run(pip + ["--no-deps", wheel], check=True, stdout=sys.stderr)
    subprocess.run(pip + [TVM_FFI, "requests", "tabulate", "tqdm", "click", "einops",
                          "nvidia-ml-py", "packaging", "typing-extensions"],
                   check=True, stdout=sys.stderr)
    env = dict(os.environ, PYTHONPATH=site, FLASHINFER_CUDA_ARCH_LIST="9.0a",
               FLASHINFER_WORKSPACE_BASE=os.path.join(tmp, "jit"))
    code = ("from flashinfer.jit.comm import gen_trtllm_comm_module as g\n"
            "s = g(); s.build(verbose=False); print(s.jit_library_path)")
    print("flashinfer_wheels: building trtllm_comm for sm_90a (minutes)", file=sys.stderr)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="folder for the wheels (e.g. .whl, ignored by git)")
    ap.add_argument("--full", action="store_true", help="keep FlashInfer's wheel whole")
    ap.add_argument("--aot-so", metavar="FILE", default="",
                    help="a prebuilt trtllm_comm.so to add (not with --full)")
    ap.add_argument("--build-aot", action="store_true",
                    help="build trtllm_comm.so here and add it (not with --full)")
    args = ap.parse_args()
    if args.aot_so and (args.full or not os.path.isfile(args.aot_so)):
        ap.error("--aot-so: needs an existing file, and not --full")
    if args.build_aot and (args.full or args.aot_so):
        ap.error("--build-aot: not with --full or --aot-so")
    os.makedirs(args.dest, exist_ok=True)
    download(TVM_FFI, args.dest)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(FLASHINFER, tmp)
        out = os.path.join(args.dest, os.path.basename(wheel))
        if args.full:
            os.replace(wheel, out)
        else:
            aot_so = args.aot_so
            if args.build_aot:
                n = slim(wheel, out)
                aot_so = build_aot(out, tmp)
            n = slim(wheel, out, aot_so)
            print(f"flashinfer_wheels: left out {n} files under {CSRC}*/", file=sys.stderr)
    total = 0
    for f in sorted(os.listdir(args.dest)):
        size = os.path.getsize(os.path.join(args.dest, f))
        total += size
        print(f"{size / 2**20:8.1f} MiB  {f}")
    print(f"{total / 2**20:8.1f} MiB  in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
