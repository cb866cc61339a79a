#!/usr/bin/env bash
# Device-machine diagnostics for one kernel (KERNEL, default the single-token Q4_K tensor-core one):
# SASS instruction mix and ncu sections → $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
KERNEL=${KERNEL:-moe_mma2_Q4_K}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD/lib PYTHONUNBUFFERED=1
K=lib/moeparity/backends/kernels
nvcc -arch=sm_90 --fmad=false -std=c++17 -I$K -cubin -o /tmp/k.cubin $K/moe_matvec.cu
cuobjdump -sass -fun "$KERNEL" /tmp/k.cubin > "$OUT/kernel.sass" 2>&1
grep -oE "^\s+/\*[0-9a-f]{4}\*/\s+[@!A-Z0-9_.P ]+" "$OUT/kernel.sass" | awk '{for(i=2;i<=NF;i++) if ($i !~ /^@/) {print $i; break}}' \
  | sed 's/\..*//' | sort | uniq -c | sort -rn | head -12
ncu --kernel-name "regex:$KERNEL" --launch-count 1 --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section Occupancy --metrics smsp__pcsamp_warps_issue_stalled_long_scoreboard,smsp__pcsamp_warps_issue_stalled_barrier,smsp__pcsamp_warps_issue_stalled_short_scoreboard,smsp__pcsamp_warps_issue_stalled_wait,smsp__pcsamp_warps_issue_stalled_mio_throttle,smsp__pcsamp_warps_issue_stalled_math_pipe_throttle,smsp__pcsamp_warps_issue_stalled_not_selected,smsp__pcsamp_warps_issue_stalled_selected,smsp__pcsamp_warps_issue_stalled_lg_throttle,smsp__pcsamp_warps_issue_stalled_membar,smsp__pcsamp_warps_issue_stalled_dispatch_stall,smsp__pcsamp_warps_issue_stalled_no_instructions \
  python3 benchmarks/gpu_profile.py > "$OUT/ncu.txt" 2>&1
grep -vE "^==PROF==" "$OUT/ncu.txt" | grep -E "Ipc|Issue Slots|Memory Throughput|DRAM Throughput|Warp Cycles|Achieved Occupancy|Theoretical Occupancy|Registers|pcsamp" | head -40
