#!/usr/bin/env bash
# Device-machine diagnostics for the Q4_K kernel: SASS instruction mix and ncu sections → $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD/lib PYTHONUNBUFFERED=1
K=lib/moeparity/backends/kernels
nvcc -arch=sm_90 --fmad=false -std=c++17 -I$K -cubin -o /tmp/k.cubin $K/moe_matvec.cu
cuobjdump -sass -fun moe_matvec1_Q4_K /tmp/k.cubin > "$OUT/q4k1.sass" 2>&1 || cuobjdump -sass /tmp/k.cubin > "$OUT/all.sass"
grep -oE "^\s+/\*[0-9a-f]{4}\*/\s+[@!A-Z0-9_.P ]+" "$OUT/q4k1.sass" | awk '{for(i=2;i<=NF;i++) if ($i !~ /^@/) {print $i; break}}' \
  | sed 's/\..*//' | sort | uniq -c | sort -rn | head -30
ncu --kernel-name regex:moe_matvec1_Q4_K --launch-count 1 --section InstructionStats --section ComputeWorkloadAnalysis \
  --section WarpStateStats --section SourceCounters python3 benchmarks/gpu_profile.py > "$OUT/ncu.txt" 2>&1
grep -vE "^==PROF==" "$OUT/ncu.txt" | grep -E "Executed Ipc|Issue Slots|Executed Instructions|Stall|Warp Cycles|Pipe|Branch" | head -40
