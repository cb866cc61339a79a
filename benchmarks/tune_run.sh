#!/usr/bin/env bash
# Kernel-tuning loop on the device machine: GPU-vs-emulation table, then gpu_tune.py over the given
# shapes (RPW,RT,NB,MINB …), then (PROFILE=1) ncu + SASS mix. Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/lib PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
nvidia-smi --query-gpu=name --format=csv,noheader
python3 benchmarks/gpu_debug.py 2>&1 | tee "$OUT/debug.log" | grep -c "exact_vs_emul=True.*q8_1_exact=True" | sed 's/^/qtype rows exact: /'
grep -v "exact_vs_emul=True.*q8_1_exact=True" "$OUT/debug.log" | head -20
python3 benchmarks/gpu_tune.py "$@" 2>&1 | tee "$OUT/tune.log"
[ -n "${PROFILE:-}" ] && bash benchmarks/gpu_inspect.sh 2>&1 | tail -45
true
