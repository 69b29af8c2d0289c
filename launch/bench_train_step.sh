#!/usr/bin/env bash
# One S0 training step on one GPU, Qwen3.5-4B shape, random bf16 weights: the CUDA engine
# (tests/bench/train_step_bench.cpp) against the s0-tuning recipe in PyTorch + transformers
# (tests/bench/torch_reference_step.py), in one invocation. Builds s0_train_step_bench, runs it,
# runs the torch script, then prints both tokens/s, their ratio and the engine's MFU; everything
# printed also goes to OUTPUT_FILE.
#
# Usage: launch/bench_train_step.sh OUTPUT_FILE [BUILD_DIR = build-bench]
# A BUILD_DIR that is configured already is only built (its configuration is kept); a new one is
# configured by launch/build.sh (warnings as errors).
# Environment: S0_BENCH_EXAMPLES (48), S0_BENCH_TORCH_EXAMPLES (same: fewer keeps the device time
# short; the torch figures are then those of that many examples, nothing is extrapolated),
# S0_BENCH_SEQ_LEN (384), S0_BENCH_PROMPT (200), S0_BENCH_STEPS (3, timed engine steps),
# S0_GPU_TOKENS (the engine's micro-batch budget), S0_JOBS (build parallelism),
# S0_BENCH_RANKS (space-separated GPU counts, default "1": each > 1 runs the engine data-parallel
# under mpirun at the same global batch, and the summary prints the scaling over one GPU),
# S0_BENCH_TORCH (1; 0 skips the PyTorch run, e.g. for a scaling-only run). The build needs
# what launch/build.sh needs (on the GPU machine, ZeroMQ from .device/: ../shared/device/README.md).
# Exit status: non-zero when the build or either benchmark failed.
set -uo pipefail
export NCCL_NVLS_ENABLE=0
export PYTHONUNBUFFERED=1
if [ $# -lt 1 ]; then
  echo "usage: $0 OUTPUT_FILE [BUILD_DIR]" >&2
  exit 2
fi
out=$(realpath -m "$1")
cd "$(dirname "$0")/.."
dir=${2:-build-bench}
examples=${S0_BENCH_EXAMPLES:-48}
torch_examples=${S0_BENCH_TORCH_EXAMPLES:-$examples}
seq_len=${S0_BENCH_SEQ_LEN:-384}
prompt=${S0_BENCH_PROMPT:-200}
steps=${S0_BENCH_STEPS:-3}
mkdir -p "$(dirname "$out")"
: >"$out"

log() { tee -a "$out"; }

echo "== build $dir (s0_train_step_bench)" | log
if [ -f "$dir/CMakeCache.txt" ]; then  # configured already (as the caller wanted): build only
  cmake --build "$dir" -j "${S0_JOBS:-$(nproc)}" --target s0_train_step_bench 2>&1 | log
  built=$?
else
  S0_TARGETS=s0_train_step_bench launch/build.sh "$dir" 2>&1 | log
  built=$?
fi
if [ "$built" -ne 0 ]; then
  echo "bench_train_step.sh: build failed" | log
  exit 1
fi

ours=0
for n in ${S0_BENCH_RANKS:-1}; do
  echo "== s0d on $n GPU(s): $dir/tests/s0_train_step_bench" | log
  launcher=()
  if [ "$n" -gt 1 ]; then
    launcher=(mpirun --allow-run-as-root -np "$n" -x NCCL_NVLS_ENABLE)
    [ -n "${S0_GPU_TOKENS:-}" ] && launcher+=(-x S0_GPU_TOKENS)
  fi
  "${launcher[@]}" "$dir/tests/s0_train_step_bench" --examples "$examples" --seq-len "$seq_len" \
    --prompt "$prompt" --steps "$steps" 2>&1 | log
  rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && ours=$rc
done

theirs=0
if [ "${S0_BENCH_TORCH:-1}" != 0 ]; then
  echo "== torch: tests/bench/torch_reference_step.py" | log
  python3 tests/bench/torch_reference_step.py --examples "$torch_examples" --seq-len "$seq_len" \
    --prompt "$prompt" 2>&1 | log
  theirs=${PIPESTATUS[0]}
fi

echo "== summary" | log
python3 - "$out" $([ "${S0_BENCH_TORCH:-1}" != 0 ] && echo torch) <<'EOF' 2>&1 | log
import json
import sys

runs, gpus = {}, {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{") and '"impl"' in line:
        d = json.loads(line)
        if d["impl"] == "s0d":
            gpus[d.get("ranks", 1)] = d
        runs[d["impl"]] = d
for n, d in sorted(gpus.items()):
    print(f"s0d on {n} GPU{'s' if n > 1 else ' '}: {d['tokens_per_s']:10.0f} tokens/s  "
          f"{d['step_s']:8.3f} s/step ({d['examples']} x {d['seq_len']})  MFU {100 * d['mfu']:.1f}% "
          f"per GPU  peak {d['device_used_bytes'] / 2**30:.1f} GiB in use (rank 0)")
    if n > 1 and 1 in gpus:
        print(f"scaling: {n} GPUs / 1 GPU = {d['tokens_per_s'] / gpus[1]['tokens_per_s']:.2f}x "
              f"tokens/s at the same global batch")
s, t = gpus.get(1, runs.get("s0d")), runs.get("torch")
if t:
    print(f"torch: {t['tokens_per_s']:10.0f} tokens/s  {t['step_s']:8.3f} s/step "
          f"({t['examples']} x {t['seq_len']})  peak {t['peak_mem_bytes'] / 2**30:.1f} GiB allocated")
if s and t:
    print(f"ratio: s0d / torch = {s['tokens_per_s'] / t['tokens_per_s']:.1f}x tokens/s")
if not s or (t is None and "torch" in sys.argv[2:]):
    print("missing result: " + ", ".join(k for k in ("s0d", "torch") if k not in runs))
EOF
echo "bench_train_step.sh: s0d exit $ours, torch exit $theirs; output in $out" | log
[ "$ours" -eq 0 ] && [ "$theirs" -eq 0 ]
