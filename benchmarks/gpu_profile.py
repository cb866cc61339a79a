"""One full-layer gate launch (128 experts × 768 × 2048, f32), for ncu. Env: TOKENS (1), QTYPE (Q4_K),
FORCE_MMA=1 (the tensor-core kernels even for one token), MMA_MT and MMA_MINB (their build)."""
import os

import numpy as np

from moeparity.backends import gpu_layout as L
from moeparity.backends import intdot
from moeparity.backends.cuda import CudaBackend
from moeparity.bench_gpu import _Case, timed
from moeparity.qtypes import QTYPES

ntok = int(os.environ.get("TOKENS", "1"))
if os.environ.get("FORCE_MMA"):
    intdot.serves = lambda n, a, t: a == "f32" and n in intdot.GROUP
L.MMA_MT = int(os.environ.get("MMA_MT", L.MMA_MT))
be = CudaBackend(defines=("-DONLY",) + tuple(f"-DMMA_MINB={v}" for v in [os.environ.get("MMA_MINB")] if v))
c = _Case(be, QTYPES[os.environ.get("QTYPE", "Q4_K")], 128, 768, 2048, seed=1)
c.plan(np.tile(np.arange(128), (ntok, 1)), np.random.default_rng(0).standard_normal((ntok, 2048)).astype(np.float32))
c.ours()
be.cp.cuda.Device().synchronize()
print("µs", timed(be.cp, c.ours) * 1e6)
