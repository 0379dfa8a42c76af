#!/usr/bin/env bash
# The prepared GPU check, for a session lent a machine (../shared/DESIGN.md, "Using the GPU machine").
# The machine has torch, transformers, imageio, matplotlib but no diffusers and no network. Here, first:
#   pip download --no-deps -d wheels diffusers==0.42.1 transformers==5.24.0 imageio-ffmpeg==0.8.1 \
#       importlib_metadata pytest pluggy iniconfig
# then run it there:   run(command="STEPS='schedule train' bash scripts/device_bench.sh", carry=["wheels"], timeout_s=480)
#                      run(command="STEPS='presets tests' bash scripts/device_bench.sh", carry=["wheels"], timeout_s=420)
# (all four in one call may not fit the 600 s per-call limit) and try it here first:
#   PROFILE=tiny OUT=/tmp/device-out bash scripts/device_bench.sh
#
# Steps, most important first; each writes its files as it goes, so a run cut short keeps them:
#   1. schedule.md/json: the default preset, static vs dynamic decode x shared vs streams (the choice
#      of defaults; ~4 min on an H100 by estimate, most of it the dynamic decode and one ~50 s compile).
#      Shared-stream combinations run first, so a crash in the untried `streams` code loses nothing else.
#   2. train.log: 20 bridge-training steps at full size (step time, peak memory)
#   3. presets.md/json: fast and high with the static decode, both schedules (peak memory per preset)
#   4. tests.md: the test suite (without the browser tests) on the GPU: bf16, CUDA graphs, both
#      schedules' stream hand-over, in the tiny profile
# Copy the numbers into docs/BENCHMARKS.md and docs/TRAINING.md with the date and the card.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-random-full}
OUT=${OUT:-device-out}
RUNS=${RUNS:-3}
TOKENS=${TOKENS:-128}  # enough to span the video at 80 tok/s; the dynamic decode takes ~8 s for them
STEPS=${STEPS:-schedule train presets tests}
mkdir -p "$OUT"
if ls wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps wheels/*.whl
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
} > "$OUT/machine.txt" 2>&1
step() {  # name, command...: run one measurement if STEPS names it, keep going if it fails
  local name=$1; shift
  [[ " $STEPS " == *" $name "* ]] || return 0
  echo "== $name $(date -u +%T)" >&2
  "$@" > "$OUT/$name.md" 2> "$OUT/$name.log" || echo "$name failed (exit $?), see $OUT/$name.log" >&2
}
step schedule python3 -m foresight bench --profile "$PROFILE" --preset default --decode static,dynamic \
  --schedule shared,streams --runs "$RUNS" --max-new-tokens "$TOKENS" --json "$OUT/schedule.json"
step train python3 -m foresight train --profile "$PROFILE" --data examples --out "$OUT/train" --steps 20 \
  --batch-size 2 --val-fraction 0.34 --val-every 10 --warmup-steps 5
step presets python3 -m foresight bench --profile "$PROFILE" --preset fast --preset high --decode static \
  --schedule shared,streams --runs "$RUNS" --max-new-tokens "$TOKENS" --json "$OUT/presets.json"
step tests python3 -m pytest -q -x tests --ignore=tests/test_app.py
echo "== done $(date -u +%T)" >&2
cat "$OUT/machine.txt"
for name in $STEPS; do
  case $name in
    train) tail -n 2 "$OUT/train.log" ;;
    tests) tail -n 3 "$OUT/tests.md" ;;
    *) cat "$OUT/$name.md" ;;
  esac
done
