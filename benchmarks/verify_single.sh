#!/usr/bin/env bash
# Short device check of the single-token kernels (when the device budget cannot afford the full
# tests/test_gpu.py): every qtype at 1 token vs oracle/CPU/emulation, the multi-row-warp cases,
# layer forwards, the dequant kernels. Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD/lib PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
ids=()
for q in F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS MXFP4; do
  ids+=("tests/test_gpu.py::test_gpu_vs_oracle_cpu_and_emulation[1-$q]")
done
{ python3 -m pytest -q "${ids[@]}"; python3 -m pytest -q tests/test_gpu.py -k "multi_row or layer_forward or dequant or mmvq"; } 2>&1 \
  | tee "$OUT/verify.log" | grep -E "passed|failed|Error|assert" | tail -8
