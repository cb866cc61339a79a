#!/usr/bin/env bash
# One device-machine call: install carried wheels, GPU tests, GPU benchmark. Results under $OUT.
# Usage (device tool): bash benchmarks/device_check.sh   [carry .whl]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD/lib
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pytest -q -x tests/test_gpu.py tests/test_contract.py -k "${PYTEST_K:-}" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
python3 benchmarks/gpu_matvec.py ${BENCH_ARGS:-} --write "$OUT/BENCHMARKS_gpu.md" 2>&1 | tee "$OUT/bench_gpu.log" | tail -30
