#!/usr/bin/env bash
# Configures and builds one build tree. Usage: launch/build.sh [BUILD_DIR] [extra cmake args...]
# Defaults: build/, RelWithDebInfo, CUDA when /usr/local/cuda is present, warnings as errors.
# S0_TARGETS="s0 s0d" builds only those targets (default: everything, tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
jobs=${S0_JOBS:-$(nproc)}
cmake -S . -B "$dir" -G Ninja -DS0_WERROR=ON "$@" >"$dir.configure.log" 2>&1 || {
  cat "$dir.configure.log"; exit 1; }
targets=()
for t in ${S0_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$dir" -j "$jobs" "${targets[@]}"
