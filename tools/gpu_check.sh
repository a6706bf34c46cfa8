#!/usr/bin/env bash
# One GPU check (worst case 7.5 minutes at the default budgets: 180 + 45 + 3 x 75 s timeouts;
# GPU_CHECK_BUDGET_S, PYTEST_TIMEOUT_S and BENCH_TIMEOUT_S shorten it): parity of the CUDA backends against the CPU model,
# the CUDA-stream queue path end to end, the gpu/trt-marked tests, and
# `hazeflow bench --device cuda` at 1920x1080 with 1, 8 and 32 streams. Results under $OUT.
#
# The device image has python3 with torch (CUDA), onnx, onnxruntime, opencv-python-headless,
# numpy, pytest, pyyaml, scikit-image; it lacks PyAV (decode/encode in bench) and OpenCV's
# contrib module (cv2.ximgproc, used by the DCP stage) and cannot download. Before the call,
# in the repo root here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl av==18.1.0            # 36 MB
# and call run with carry [".whl"] (64 MiB per call: the 69 MB opencv-contrib wheel does not fit,
# so the DCP stage and the baseline report "ximgproc" errors there unless dcp.py has a fallback).
# TensorRT wheels (~1 GB of libraries) cannot be carried either: trt tests skip with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-out/gpu_check}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
PY="${PY:-python3}"
[ -x .venv/bin/python ] && .venv/bin/python -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null && PY=.venv/bin/python
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
budget=${GPU_CHECK_BUDGET_S:-130}
GPU_CHECK_BUDGET_S=$budget timeout $((budget + 50)) "$PY" tools/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log" || status=1
gpu_tests=(tests/test_gpu.py tests/test_tensorrt.py)
[ -f tests/test_stage_precision.py ] && gpu_tests+=(tests/test_stage_precision.py)
timeout "${PYTEST_TIMEOUT_S:-45}" "$PY" -m pytest -q -rs -p no:cacheprovider "${gpu_tests[@]}" 2>&1 | tee "$OUT/pytest_gpu.log" || status=1
if "$PY" -c 'import av' 2>/dev/null; then
  # the classical stages run on the CPU at 1080p: few frames per stream keep 32 streams inside the budget
  for k in 1 8 32; do
    frames=$(( k == 32 ? 2 : (k == 8 ? 4 : 16) ))
    timeout "${BENCH_TIMEOUT_S:-75}" "$PY" -m pipeline bench --device cuda --backend torch --precision "${BENCH_PRECISION:-fp16}" \
      --resolution 1920x1080 --streams "$k" \
      --frames "$frames" --json "$OUT/bench_cuda_${k}.json" --markdown "$OUT/bench_cuda.md" 2>&1 | tee -a "$OUT/bench.log" || status=1
  done
else
  echo "bench skipped: PyAV does not import (carry .whl/av-18.1.0-*.whl, see the header)" | tee "$OUT/bench.log"
  status=1
fi
echo "gpu_check.sh: exit $status; results in $OUT"
exit $status
