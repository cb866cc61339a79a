"""Kernel-tuning sweep (device machine): the single-token Q4_K/Q6_K full-layer tensors under build
variants of the single-member matvec kernels, timed like `bench gpu`, each checked bit for bit
against emulated-cuda on 8 of the experts. Prints µs, % copy and the check.
Usage: python benchmarks/gpu_tune.py 4,2,2,2,3/4,8,2,2,3[/NAME=VALUE…][/float] …
  (RPW,RT,NB,RPL,MINB of moe_matvec1 / of moe_matvec1n, then extra defines such as UNROLL_U=2;
  `float`: the float kernels even where the tensor-core ones serve; MMA_NB_<Q>=n: the tensor-core
  kernels' ring depth; MMA_MT_<members>=n: their tiles per item; MMA_MINB_<MT>=n: their blocks per
  SM, by tiles per item)
Env TOKENS="1 8": token counts of the full-layer sweep.
"""
import os
import sys

import numpy as np

from moeparity import backends
from moeparity.backends import gpu_layout as L
from moeparity.backends import intdot
from moeparity.backends.cuda import CudaBackend
from moeparity.bench_gpu import FF, HIDDEN, N_EXP, _Case, copy_bandwidth, timed
from moeparity.gguf_model import QTensor
from moeparity.qtypes import QTYPES

emu = backends.get("emulated-cuda")
serves = intdot.serves
RING, MT = dict(L.MMA_RING), dict(L.MMA_MT)
bw = None
for spec in sys.argv[1:] or ["4,2,2,2,3/4,8,2,2,3"]:
    parts = [p for p in spec.split("/") if p != "float"]
    intdot.serves = (lambda *a: False) if "float" in spec.split("/") else serves
    (a, b, c, d, ma), (e, f, g, h, mb) = ([int(v) for v in half.split(",")] for half in parts[:2])
    be = CudaBackend(defines=("-DONLY", f"-DSHAPE_1={a},{b},{c},{d}", f"-DMINB_1={ma}",
                              f"-DSHAPE_1N={e},{f},{g},{h}", f"-DMINB_1N={mb}") + tuple(f"-D{x}" for x in parts[2:]))
    bw = bw or copy_bandwidth(be.cp)
    L.SHAPES["1"], L.SHAPES["1n"] = (a, b, c, d), (e, f, g, h)
    L.MMA_RING, L.MMA_MT = dict(RING), dict(MT)
    for p in parts[2:]:                                    # ring depths, tiles per item of the tensor-core kernels
        if p.startswith("MMA_NB_"):
            q, nb = p[len("MMA_NB_"):].split("=")
            L.MMA_RING[q] = int(nb)
        if p.startswith("MMA_MT_"):
            m, mt = p[len("MMA_MT_"):].split("=")
            L.MMA_MT[int(m)] = int(mt)
    line = [spec]
    for q in ("Q4_K", "Q6_K"):
        qt = QTYPES[q]
        for ntok in [int(t) for t in os.environ.get("TOKENS", "1 8").split()]:
            tot_t = tot_b = 0
            for role, (R, n_in) in {"gate": (FF, HIDDEN), "down": (HIDDEN, FF)}.items():
                cs = _Case(be, qt, N_EXP, R, n_in, seed=1)
                x = np.random.default_rng(0).standard_normal((ntok, n_in)).astype(np.float32)
                ids = np.tile(np.arange(8), (ntok, 1))
                cs.plan(ids, x)                                # check: 8 experts against the emulation
                cs.ours()
                raw = be.cp.asnumpy(cs.W[:8]).reshape(-1)
                T = QTensor("t", qt.id, (n_in, R, 8), 0, raw.size, raw)
                exact = np.array_equal(be.cp.asnumpy(cs.launch.outs[0]).reshape(ntok, 8, R),
                                       emu.moe_matvec(T, ids, x))
                cs.plan(np.tile(np.arange(N_EXP), (ntok, 1)), x)
                t = timed(be.cp, cs.ours)
                line.append(f"{q}×{ntok} {role} {t * 1e6:.0f}µs {100 * cs.bytes / t / 1e9 / bw:.0f}%"
                            f"{'' if exact else ' NOT-EXACT'}")
                tot_t += t * (2 if role == "gate" else 1)
                tot_b += cs.bytes * (2 if role == "gate" else 1)
            line.append(f"{q}×{ntok} layer {tot_t * 1e6:.0f}µs {100 * tot_b / tot_t / 1e9 / bw:.0f}%")
    print(f"copy {bw:.0f} GB/s | " + " | ".join(line), flush=True)
