"""Where a tensor-core launch's time goes, warp by warp (device machine). A -DMMA_TRACE build records
%globaltimer per warp: x_fixed's start and end; moe_mma's start, pdl_wait done and first superblock
done (of its fixed share), end. Printed in µs after a stamp kernel enqueued right before the launch
(L2 evicted, GPU kept busy by a spin kernel first, as bench gpu times it), for the Q4_K/Q6_K
full-layer gate+up (one launch, as the backend runs it) and down. SLOW=1: the slowest warps and the end time by grid eighth."""
import os
import sys

import numpy as np

from moeparity.backends.cuda import CudaBackend
from moeparity.bench_gpu import FF, HIDDEN, _Case, helpers, timed
from moeparity.qtypes import QTYPES

N = 1 << 17
be = CudaBackend(defines=("-DONLY", f"-DMMA_TRACE={N}") + tuple(sys.argv[1:]))
cp = be.cp
h = helpers(cp)
stamp = cp.RawKernel(r'''extern "C" __global__ void stamp(unsigned long long* o, int k) {
    unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); o[k] = t; }''', "stamp")
bufs = {k: cp.ndarray((N,), cp.uint64, memptr=be.module.get_global(k)) for k in ("mma_trace", "xf_trace")}
st = cp.zeros(2, cp.uint64)


def q(a, ps=(0, 10, 50, 90, 100)):
    return "/".join(f"{np.percentile(a, p):.1f}" for p in ps) if len(a) else "-"


rng = np.random.default_rng(0)
for qn in ("Q4_K", "Q6_K"):
    for role, (R, n_in) in (("gate+up", (FF, HIDDEN)), ("down", (HIDDEN, FF))):
        cs = _Case(be, QTYPES[qn], 128, R, n_in, seed=1, pair=role == "gate+up")
        for ntok in (1, 8):
            ids = np.tile(np.arange(128), (ntok, 1))
            cs.plan(ids, rng.standard_normal((ntok * (128 if role == "down" else 1), n_in)).astype(np.float32))
            t = timed(cp, cs.ours)
            for run in range(2):
                for b in bufs.values():
                    b.fill(0)
                h["flush"]()
                h["spin"]((1,), (1,), (np.int64(400_000),))
                stamp((1,), (1,), (st, np.int32(0)))
                cs.ours()
                stamp((1,), (1,), (st, np.int32(1)))
                cp.cuda.Device().synchronize()
                t0 = int(st[0].get())
                m = bufs["mma_trace"].get().reshape(-1, 8).astype(np.int64)
                x = bufs["xf_trace"].get().reshape(-1, 8).astype(np.int64)
                mall = m
                m, x = m[m[:, 0] > 0], x[x[:, 1] > 0]
                sm, has2 = m[:, 7], m[:, 2] > 0          # (warps with only pool items: no slot 2)
                m, x = (m[:, :4] - t0) / 1e3, (x[:, :2] - t0) / 1e3
                per_sm = np.bincount(sm)                 # warps per SM: end times of SMs with fewer vs more
                few = per_sm[sm] < per_sm[per_sm > 0].max()
                print(f"{qn} {role} x{ntok} (timed {t * 1e6:.1f} µs) run {run}: end stamp {(int(st[1].get()) - t0) / 1e3:.1f} | "
                      f"x_fixed start {q(x[:, 0], (0, 100))} end {q(x[:, 1], (0, 50, 100))} | mma ({len(m)} warps) start "
                      f"{q(m[:, 0], (0, 50, 100))} waited {q(m[:, 1], (0, 50, 100))} first SB {q(m[has2, 2], (0, 50, 100))} "
                      f"end {q(m[:, 3])} (0/10/50/90/100 %) | on SMs with fewer warps ({few.sum()}): end "
                      f"{q(m[few, 3], (0, 50, 100))}, the others {q(m[~few, 3], (0, 50, 100))}", flush=True)
                if run == 1 and os.environ.get("SLOW"):      # the slowest warps: index, SM, its four times
                    w = np.flatnonzero(mall[:, 0] > 0)
                    for k in np.argsort(m[:, 3])[-12:]:
                        print(f"   warp {w[k]} sm {sm[k]}: " + " ".join(f"{v:.1f}" for v in m[k]))
                    dec = np.array_split(np.arange(len(m)), 8)   # end time by position in the grid
                    print("   end by grid eighth: " + " ".join(f"{np.median(m[d, 3]):.1f}" for d in dec))
        del cs
        cp.get_default_memory_pool().free_all_blocks()
