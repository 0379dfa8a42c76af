#!/usr/bin/env bash
# The prepared GPU check, for a session lent a GPU machine (the device tool): the full-size
# architectures with random weights (`random-full`), the bench's variants with a timeline picture
# of each, the presets, and the test suite on CUDA.
#
# The machine has no network, transformers 5.17 and no diffusers. Here, once:
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux2010_x86_64 -d .whl diffusers==0.42.1 transformers==5.24.0 imageio-ffmpeg==0.5.1 \
#     av==18.1.0 importlib_metadata regex
# Try it here first:   PROFILE=tiny OUT=/tmp/device-out RUNS=1 WHEELS=0 bash scripts/device_bench.sh
# There, in two calls that fit the per-call limit (the first: LTX's two passes against one at every
# preset, the video graphs against eager, default and high, both modes; LTX's operation and sync counts):
#   run(command="STEPS='passes graphs ltxsyncs' bash scripts/device_bench.sh", carry=[".whl"], timeout_s=570)
#   run(command="STEPS='matrix tests' bash scripts/device_bench.sh", carry=[".whl"], timeout_s=570)
# (On 2026-11-27 five matrix variants alone took 446 s: keep the matrix short.)
#
# Steps (each writes as it goes, so a run cut short keeps what it measured):
#   passes:  every preset, fused mode, in one pass and in the authors' two (the timeline of each, the
#            peak memory, and what a step works on: `bench --passes 1,2`)
#   graphs:  default and high, fused and text mode, eager against the video graphs (GRAPHS: the
#            variants; a denoising step beside the text and alone is in the table)
#   ltxsyncs: LTX-2B's structure at narrow width: aten operations and host reads per step and per
#            preview, and a step's and a preview's launch cost (scripts/ltx_syncs.py)
#   matrix:  the default preset, fused and text mode, in the variants of MATRIX (decode:schedule:
#            text pace:preview cadence[:early][:compiled]: the defaults, DINOv2 beside the prefill, the
#            compiled video path); compiled last, as compiling changes the models for good;
#            then Qwen's processor and generate up to the first token under cProfile and torch.profiler
#            (profile.txt: where the 0.3 s before the first token goes)
#   syncs:   Qwen's device syncs before the first token, transformers' own path against the
#            pipeline's (scripts/qwen_syncs.py, seconds)
#   presets: fast and high, both modes, in VARIANT (the defaults, unless set)
#   tests:   the suite without the browser tests, on CUDA, in the tiny profile
# Output (at most 8 files come back per call): summary.md, passes.json, graphs.json, matrix.json,
# presets.json, profile.txt, traces.tar.gz and each step's log.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-random-full}
OUT=${OUT:-device-out}
RUNS=${RUNS:-3}
TOKENS=${TOKENS:-128}  # enough to span the video and then some
STEPS=${STEPS:-passes graphs ltxsyncs matrix syncs presets tests}
MATRIX=${MATRIX:-static:streams:45:2 static:streams:45:2:early static:streams:45:2:compiled}
GRAPHS=${GRAPHS:-static:streams:45:2 static:streams:45:2:graphs static:streams:45:1:graphs}
VARIANT=${VARIANT:-}
mkdir -p "$OUT/traces"
if [ "${WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
  git log -1 --format='commit %h %s' 2>/dev/null
} > "$OUT/summary.md" 2>&1
step() {  # name, command...: run one step if STEPS names it; keep going if it fails
  local name=$1; shift
  [[ " $STEPS " == *" $name "* ]] || return 0
  echo "== $name $(date -u +%T)" | tee -a "$OUT/summary.md" >&2
  local start=$SECONDS
  "$@" >> "$OUT/summary.md" 2> "$OUT/$name.log" || echo "$name failed (exit $?), see $name.log" | tee -a "$OUT/summary.md" >&2
  echo "($name took $((SECONDS - start)) s)" >> "$OUT/summary.md"
}
step passes python3 -m foresight bench --profile "$PROFILE" --preset fast --preset default --preset high --mode fused \
  --passes 1,2 --no-and-then --runs "$RUNS" --max-new-tokens "$TOKENS" --json "$OUT/passes.json" --trace "$OUT/traces"
graph_variants=(); for v in $GRAPHS; do graph_variants+=(--variant "$v"); done
step graphs python3 -m foresight bench --profile "$PROFILE" --preset default --preset high --mode fused,text \
  "${graph_variants[@]}" --runs "$RUNS" --max-new-tokens "$TOKENS" --json "$OUT/graphs.json" --trace "$OUT/traces"
step ltxsyncs env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/ltx_syncs.py
variants=(); for v in $MATRIX; do variants+=(--variant "$v"); done
step matrix python3 -m foresight bench --profile "$PROFILE" --preset default --mode fused,text "${variants[@]}" \
  --runs "$RUNS" --max-new-tokens "$TOKENS" --json "$OUT/matrix.json" --trace "$OUT/traces" \
  --profile-first-token "$OUT/profile.txt"
step syncs env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/qwen_syncs.py
preset_variant=(); [ -n "$VARIANT" ] && preset_variant=(--variant "$VARIANT")
step presets python3 -m foresight bench --profile "$PROFILE" --preset fast --preset high --mode fused,text \
  "${preset_variant[@]}" --runs "$RUNS" --max-new-tokens "$TOKENS" --json "$OUT/presets.json" --trace "$OUT/traces"
step tests python3 -m pytest -q -x -p no:cacheprovider tests --ignore=tests/test_app.py
if [ -n "$(ls "$OUT/traces")" ]; then tar -czf "$OUT/traces.tar.gz" -C "$OUT" traces; fi
rm -r "$OUT/traces"
echo "== done $(date -u +%T)" >> "$OUT/summary.md"
cat "$OUT/summary.md"
[ -f "$OUT/tests.log" ] && tail -n 5 "$OUT/tests.log"
exit 0
