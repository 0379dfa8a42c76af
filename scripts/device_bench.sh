#!/usr/bin/env bash
# The prepared GPU check, for a session lent a machine (../shared/DESIGN.md, "Using the GPU machine").
# The machine has torch, transformers, imageio, matplotlib but no diffusers and no network. Here, first:
#   pip download --no-deps -d wheels diffusers==0.42.1 transformers==5.24.0 imageio-ffmpeg==0.8.1 importlib_metadata
# then run it once there:   run(command="bash scripts/device_bench.sh", carry=["wheels"], timeout_s=540)
# and try it here first:    PROFILE=tiny OUT=/tmp/device-out bash scripts/device_bench.sh
# Everything it measures lands in $OUT: machine.txt, bench*.md/json (dynamic and static-cache decode),
# train.log (distill step time and peak memory). Copy the numbers into docs/BENCHMARKS.md and docs/TRAINING.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-random-full}
OUT=${OUT:-device-out}
RUNS=${RUNS:-3}
mkdir -p "$OUT"
if ls wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps wheels/*.whl
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
} > "$OUT/machine.txt" 2>&1
step() {  # name, command...: run one measurement, keep going if it fails
  local name=$1; shift
  echo "== $name" >&2
  "$@" > "$OUT/$name.md" 2> "$OUT/$name.log" || echo "$name failed (exit $?), see $OUT/$name.log" >&2
}
step bench python3 -m foresight bench --profile "$PROFILE" --runs "$RUNS" --json "$OUT/bench.json"
step bench-static env FORESIGHT_DECODE=static python3 -m foresight bench --profile "$PROFILE" --preset default \
  --runs "$RUNS" --json "$OUT/bench-static.json"
step bench-text-mode python3 -m foresight bench --profile "$PROFILE" --preset default --mode text --runs "$RUNS" \
  --json "$OUT/bench-text-mode.json"
step train python3 -m foresight train --profile "$PROFILE" --data examples --out "$OUT/train" --steps 20 \
  --batch-size 2 --val-fraction 0.34 --val-every 10 --warmup-steps 5
cat "$OUT/machine.txt" "$OUT"/bench*.md
tail -n 2 "$OUT/train.log"
