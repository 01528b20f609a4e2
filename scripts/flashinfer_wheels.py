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

The other dependencies FlashInfer declares are on the GPU machine's image already or unused by
this path: see the README. pip is run as `python3 -m pip download --no-deps --only-binary=:all:`.
"""

from __future__ import annotations

import argparse
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


def slim(src: str, dst: str) -> int:
    """Copies the wheel without the dropped entries; returns how many were dropped."""
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
                data = "".join(ln for ln in lines if kept(ln.split(",", 1)[0])).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return dropped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="folder for the wheels (e.g. .whl, ignored by git)")
    ap.add_argument("--full", action="store_true", help="keep FlashInfer's wheel whole")
    args = ap.parse_args()
    os.makedirs(args.dest, exist_ok=True)
    download(TVM_FFI, args.dest)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(FLASHINFER, tmp)
        out = os.path.join(args.dest, os.path.basename(wheel))
        if args.full:
            os.replace(wheel, out)
        else:
            n = slim(wheel, out)
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
