"""One full-layer launch (128 experts, f32), for ncu. Env: TOKENS (1), QTYPE (Q4_K), ROLE (gate: 768 × 2048,
the tokens' x; gate+up: gate and up in one launch, as the backend runs them; down: 2048 × 768, one x
per (token, expert) as bench gpu feeds it), FLOAT=1 (the float kernels even where the tensor-core
ones serve), DEFINES (extra -D flags, space separated, e.g. "MMA_MINB_1=3")."""
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
down = os.environ.get("ROLE") == "down"
R, n_in = (2048, 768) if down else (768, 2048)
c = _Case(be, QTYPES[os.environ.get("QTYPE", "Q4_K")], 128, R, n_in, seed=1, pair=os.environ.get("ROLE") == "gate+up")
c.plan(np.tile(np.arange(128), (ntok, 1)),
       np.random.default_rng(0).standard_normal((ntok * (128 if down else 1), n_in)).astype(np.float32))
c.ours()
be.cp.cuda.Device().synchronize()
print("µs", timed(be.cp, c.ours) * 1e6)
