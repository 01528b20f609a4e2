#!/usr/bin/env bash
# Builds tpfuse (scripts/build.sh) and runs the whole test suite. GPU tests skip themselves,
# with the reason, on a machine without GPUs. Exits non-zero if any test fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/build.sh
ctest --test-dir build --output-on-failure -j2
