#!/usr/bin/env bash
# The main job on the embedded default (README, step 1): installs dependencies, builds, then
# trains S0 for every DeltaNet layer of the embedded tiny Qwen3.5 checkpoint (a real Hugging
# Face save_pretrained directory, tests/fixtures/qwen35/text_f32_grouped) on its three examples,
# and measures the loss before and after with `s0 grad`.
# Usage: launch/quickstart.sh [OUT_DIR]   (default: runs/quickstart-<date>-<time>)
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install_deps.sh
S0_TARGETS=s0 launch/build.sh build
model=tests/fixtures/qwen35/text_f32_grouped
out=${1:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}
s0=build/daemon/s0
echo "== loss with S0 = 0"
$s0 grad --model $model/model --data $model/data.jsonl --out "$out/grad_before.safetensors"
echo "== s0 train (20 Adam steps, lr 1e-2)"
$s0 train --model $model/model --data $model/data.jsonl --out "$out" --n-steps 20 --lr 1e-2
echo "== loss with the trained S0"
$s0 grad --model $model/model --data $model/data.jsonl --states "$out" \
  --out "$out/grad_after.safetensors"
