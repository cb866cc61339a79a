"""One full-layer gate launch (128 experts × 768 × 2048, f32), for ncu. Env: TOKENS (1), QTYPE (Q4_K),
FLOAT=1 (the float kernels even where the tensor-core ones serve), DEFINES (extra -D flags, space
separated, e.g. "MMA_MINB_1=3")."""
import os

import numpy as np

from moeparity.backends import intdot
from moeparity.backends.cuda import CudaBackend
from moeparity.bench_gpu import _Case, timed
from moeparity.qtypes import QTYPES

ntok = int(os.environ.get("TOKENS", "1"))
if os.environ.get("FLOAT"):
    intdot.serves = lambda *a: False
be = CudaBackend(defines=("-DONLY",) + tuple(f"-D{d}" for d in os.environ.get("DEFINES", "").split()))
c = _Case(be, QTYPES[os.environ.get("QTYPE", "Q4_K")], 128, 768, 2048, seed=1)
c.plan(np.tile(np.arange(128), (ntok, 1)), np.random.default_rng(0).standard_normal((ntok, 2048)).astype(np.float32))
c.ours()
be.cp.cuda.Device().synchronize()
print("µs", timed(be.cp, c.ours) * 1e6)
