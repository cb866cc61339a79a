"""Kernel-tuning sweep (device machine): the single-token Q4_K/Q6_K full-layer tensors under build
variants of the single-member matvec (rows per warp, rows per tile, ring depth; blocks per SM),
timed like `bench gpu`. Prints µs and % copy. Results are bit-identical across variants only when
the tile height is unchanged (it decides lane ownership).
Usage: python benchmarks/gpu_tune.py 4,2,2,4/4,4,2,3[/NAME=VALUE…] …  (RPW,RT,NB,MINB of moe_matvec1 / of
moe_matvec1n, then extra defines such as UNROLL_U=2)
"""
import sys

import numpy as np

from moeparity.backends import gpu_layout as L
from moeparity.backends.cuda import CudaBackend
from moeparity.bench_gpu import FF, HIDDEN, N_EXP, _Case, copy_bandwidth, timed
from moeparity.qtypes import QTYPES

cases = {}
bw = None
for spec in sys.argv[1:] or ["4,2,2,3/4,4,2,2"]:
    parts = spec.split("/")
    (a, b, c, ma), (d, e, f, mb) = ([int(v) for v in half.split(",")] for half in parts[:2])
    be = CudaBackend(defines=("-DONLY", f"-DSHAPE_1={a},{b},{c}", f"-DMINB_1={ma}",
                              f"-DSHAPE_1N={d},{e},{f}", f"-DMINB_1N={mb}") + tuple(f"-D{x}" for x in parts[2:]))
    bw = bw or copy_bandwidth(be.cp)
    L.SHAPES["1"], L.SHAPES["1n"] = (a, b, c), (d, e, f)
    line = [spec]
    for q in ("Q4_K", "Q6_K"):
        tot_t = tot_b = 0
        for role, (R, n_in) in {"gate": (FF, HIDDEN), "down": (HIDDEN, FF)}.items():
            c = _Case(be, QTYPES[q], N_EXP, R, n_in, seed=1)
            c.plan(np.tile(np.arange(N_EXP), (1, 1)), np.random.default_rng(0).standard_normal((1, n_in)).astype(np.float32))
            t = timed(be.cp, c.ours)
            line.append(f"{q} {role} {t * 1e6:.0f}µs {100 * c.bytes / t / 1e9 / bw:.0f}%")
            tot_t += t * (2 if role == "gate" else 1)
            tot_b += c.bytes * (2 if role == "gate" else 1)
        line.append(f"{q} layer {tot_t * 1e6:.0f}µs {100 * tot_b / tot_t / 1e9 / bw:.0f}%")
    print(f"copy {bw:.0f} GB/s | " + " | ".join(line), flush=True)
