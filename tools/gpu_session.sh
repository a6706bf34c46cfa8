#!/usr/bin/env bash
# The whole device session in one call (about 9.5 minutes in all, GPU_SESSION_S):
#   1. tools/gpu_check.sh with shortened budgets (parity, model throughput, queue path, torch.compile trial,
#      gpu tests, bench at 1080p), then tools/gpu_streams.py (`hazeflow run` itself with 1/8/32 streams at 1080p);
#      nothing else runs meanwhile, so the timings are clean;
#   2. RI-GAN (width 16) and RI-GAN light (width 8) trained side by side on the GPU for the time left,
#      each continuing from the CPU-trained weights carried in .gpu/init.
# First use (2026-11-26, H100): checks took 117 s, both trainings 4000 iterations in 368 s; the call then
# hung after training (fixed since: workers shut down with their epoch, timeout -k) and ran into its limit,
# so the archives had to be fetched with a second call while the machine was still warm.
# Results come back as $OUT/gpu.tgz, $OUT/train_rigan.tgz, $OUT/train_rigan_light.tgz and $OUT/session.log.
#
# Prepare here (in the repo root; .gpu and .whl are in .git/info/exclude):
#   .whl/av-18.1.0-*.whl                          (see tools/gpu_check.sh)
#   .gpu/shared/data/videos/*                     (copy of ../shared/data/videos)
#   .gpu/shared/data/foreground/cdnet2014-highway/input/  (every 20th frame: in000001, in000021, ...)
#   .gpu/init/rigan_last.pt, .gpu/init/rigan_light_last.pt  (last.pt of the CPU runs)
# and call run with carry [".whl", ".gpu"].
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
LIMIT=${GPU_SESSION_S:-560}
export PYTHONUNBUFFERED=1 HAZEFLOW_SHARED_DATA="$PWD/.gpu/shared/data"
FINAL_OUT="${OUT:-out/gpu_session}"
mkdir -p "$FINAL_OUT" /tmp/gs/check /tmp/gs/train
exec > >(tee "$FINAL_OUT/session.log") 2>&1
elapsed() { echo $(( $(date +%s) - T0 )); }

echo "== gpu checks ($(elapsed) s)"
OUT=/tmp/gs/check GPU_CHECK_BUDGET_S=${GPU_CHECK_BUDGET_S:-200} PYTEST_TIMEOUT_S=40 BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-45} \
  bash tools/gpu_check.sh
echo "== hazeflow run with 1/8/32 streams at 1080p ($(elapsed) s)"
ls .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH="/tmp/site:$PWD" || export PYTHONPATH="$PWD"
timeout -k 10 "${STREAMS_TIMEOUT_S:-150}" python3 tools/gpu_streams.py --device cuda --precision fp16 --size 1920x1080 \
  --streams 1 --streams 8 --streams 32 --frames 60 --json /tmp/gs/check/streams.json | tee /tmp/gs/check/streams.md
tar czf "$FINAL_OUT/gpu.tgz" -C /tmp/gs/check .

left=$(( LIMIT - $(elapsed) - 45 ))
echo "== training for ${left} s ($(elapsed) s)"
if [ "$left" -lt 60 ]; then
  echo "too little time left for training"
else
  python3 tools/gpu_train_configs.py "$left" /tmp/gs/train
  for run in rigan rigan_light; do
    init=".gpu/init/${run}_last.pt"
    timeout -k 15 $((left + 30)) python3 -m pipeline train rigan --config "/tmp/gs/train/${run}_gpu.yaml" \
      --out "/tmp/gs/train/$run" --device cuda $( [ -f "$init" ] && echo --init "$init" ) \
      > "/tmp/gs/train/$run.stdout" 2>&1 &
  done
  wait
  for run in rigan rigan_light; do tail -n 3 "/tmp/gs/train/$run/train.log" 2>/dev/null; tail -c 600 "/tmp/gs/train/$run.stdout"; done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null
fi
for run in rigan rigan_light; do
  [ -d "/tmp/gs/train/$run" ] && tar czf "$FINAL_OUT/train_$run.tgz" -C /tmp/gs/train "$run" "${run}_gpu.yaml"
done
ls -la "$FINAL_OUT"
echo "== done ($(elapsed) s)"
