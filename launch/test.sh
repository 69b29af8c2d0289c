#!/usr/bin/env bash
# The test command (README, step 2; .ci/run calls exactly this).
#  1. installs dependencies (idempotent);
#  2. builds build/ with warnings as errors and, where CUDA exists, the CUDA engine and GPU tests;
#  3. runs the GPU-labelled tests in build/: on a machine without a GPU each reports SKIPPED with
#     the reason, so CI shows them instead of hiding them;
#  4. builds build-asan/ (CPU only, AddressSanitizer + UndefinedBehaviorSanitizer) and runs every
#     host test there.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install_deps.sh
launch/build.sh build
launch/build.sh build-asan -DS0_CUDA=OFF -DS0_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
# GPU tests first, so that the host tests' summary is the last thing printed.
if [ -n "$(cd build && ctest -N -L gpu | grep 'Test *#')" ]; then
  (cd build && ctest --output-on-failure -L gpu)
fi
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
(cd build-asan && ctest --output-on-failure -j "$(nproc)" -L cpu)
echo "test.sh: all tests passed"
