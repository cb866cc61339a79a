"""One Q4_K full-layer gate launch (128 experts × 768 × 2048, 1 token, f32), for ncu."""
import numpy as np

from moeparity.backends.cuda import CudaBackend
from moeparity.bench_gpu import _Case, timed
from moeparity.qtypes import QTYPES

be = CudaBackend(defines=("-DONLY",))
c = _Case(be, QTYPES["Q4_K"], 128, 768, 2048, seed=1)
c.plan(np.tile(np.arange(128), (1, 1)), np.random.default_rng(0).standard_normal((1, 2048)).astype(np.float32))
c.ours()
be.cp.cuda.Device().synchronize()
print("Q4_K µs", timed(be.cp, c.ours) * 1e6)
