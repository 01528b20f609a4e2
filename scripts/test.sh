#!/usr/bin/env bash
# Builds tpfuse (scripts/build.sh) and runs the whole test suite: the C++ tests (ctest), then the
# Python tests (pytest) in a virtual environment with the pinned dependencies of
# python/requirements.txt (build/venv), on the package in python/ and the libtpfuse.so this build
# made. GPU tests skip themselves, with the reason, on a machine without GPUs. Exits non-zero if
# any test fails.
#
# TPFUSE_PYTHON=/path/to/python uses that interpreter instead of build/venv (it must have the
# packages of python/requirements.txt). TPFUSE_TEST_WHEEL=1 builds the wheel with pip instead and
# tests the installed package.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/build.sh
ctest --test-dir build --output-on-failure -j2

# ---- Python: the package and its tests
python="${TPFUSE_PYTHON:-}"
if [[ -z "$python" ]]; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing python3-venv"
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then sudo=(sudo); fi
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
      python3-venv python3-pip
  fi
  if [[ ! -x build/venv/bin/python ]]; then
    python3 -m venv build/venv
  fi
  python=build/venv/bin/python
  "$python" -m pip install --quiet --upgrade pip
  "$python" -m pip install --quiet -r python/requirements.txt
fi

# The tests use the package from python/ with the library this build made (build/libtpfuse.so):
# one build of the CUDA kernels, not two. TPFUSE_TEST_WHEEL=1 instead builds the wheel with pip
# (build-wheel/, the same CMake project) and tests the installed package.
if [[ "${TPFUSE_TEST_WHEEL:-0}" == "1" ]]; then
  cmake_args="${TPFUSE_CMAKE_ARGS:-}"
  if command -v ccache >/dev/null 2>&1; then
    cmake_args+=" -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"
  fi
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$python" -m pip install --quiet --force-reinstall --no-deps .
  "$python" -m pytest -q python/tests
else
  TPFUSE_LIBRARY="$PWD/build/libtpfuse.so" PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" -m pytest -q python/tests
fi
