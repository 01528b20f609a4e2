#!/usr/bin/env bash
# Builds tpfuse into build/ (Release, Ninja): installs the Debian packages the build needs when
# one is missing, configures and compiles. The CUDA backend is built when nvcc and NCCL are
# found, and skipped otherwise. Extra CMake arguments: TPFUSE_CMAKE_ARGS="-DX=Y ...".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# ---- packages (libbenchmark-dev is not needed: the benchmarks are the `tpfuse bench` program)
packages=(cmake ninja-build g++ libgtest-dev nlohmann-json3-dev libcli11-dev)
if command -v dpkg >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]} > 0)); then
    echo "build.sh: installing ${missing[*]}"
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then sudo=(sudo); fi
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
      "${missing[@]}"
  fi
else
  echo "build.sh: not a Debian system; make sure these are installed: ${packages[*]}" >&2
fi

# ---- configure and build
read -r -a extra_args <<<"${TPFUSE_CMAKE_ARGS:-}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${extra_args[@]}"
cmake --build build -j "$(nproc)"
echo "build.sh: built build/tpfuse"
