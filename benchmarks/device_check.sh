#!/usr/bin/env bash
# One device-machine call: install carried wheels, GPU tests, GPU benchmark. Results under $OUT.
# Usage (device tool): bash benchmarks/device_check.sh   [carry .whl]
#   QUICK=1: instead of the tests, the per-qtype GPU-vs-emulation table (gpu_debug.py), and only the
#   Q4_K/Q6_K benchmark rows — the loop while tuning a kernel.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD/lib
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -n "${QUICK:-}" ]; then
  python3 benchmarks/gpu_debug.py 2>&1 | tee "$OUT/debug.log" | tail -40
  BENCH_ARGS="--quick ${BENCH_ARGS:-}"
else
  python3 -m pytest -q -x tests/test_gpu.py tests/test_contract.py -k "${PYTEST_K:-}" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
python3 benchmarks/gpu_matvec.py ${BENCH_ARGS:-} --write "$OUT/BENCHMARKS_gpu.md" 2>&1 | tee "$OUT/bench_gpu.log" | tail -30
