"""Where a tensor's time goes (device machine): per Q4_K/Q6_K full-layer tensor (128 experts) at 1 and
8 tokens, gate (the tokens' x) and down (a different x per (token, expert), as bench gpu feeds it),
the whole launch (with and without programmatic dependent launch) and each of its steps alone
(x_fixed, the matvec), timed like bench gpu."""
import os

import numpy as np

from moeparity.backends import pdl
from moeparity.backends.cuda import CudaBackend
from moeparity.bench_gpu import FF, HIDDEN, N_EXP, _Case, copy_bandwidth, timed
from moeparity.qtypes import QTYPES

be = CudaBackend(defines=() if os.environ.get("FULL") else ("-DONLY",))     # FULL=1: every format's kernels, as bench gpu builds
cp = be.cp
bw = copy_bandwidth(cp)
print(f"copy {bw:.0f} GB/s")
rng = np.random.default_rng(0)
for q in ("Q4_K", "Q6_K"):
    for i, (role, (R, n_in)) in enumerate((("gate", (FF, HIDDEN)), ("up", (FF, HIDDEN)), ("down", (HIDDEN, FF)))):
        cs = _Case(be, QTYPES[q], N_EXP, R, n_in, seed=i)
        for ntok in (1, 8):
            ids = np.tile(np.arange(N_EXP), (ntok, 1))
            cs.plan(ids, rng.standard_normal((ntok * (N_EXP if role == "down" else 1), n_in)).astype(np.float32))
            t = timed(cp, cs.ours)
            pdl._state["ok"] = False                     # the same launch without PDL
            t_plain = timed(cp, cs.ours)
            pdl._state.pop("ok")
            parts = [f"step {i} {timed(cp, lambda: cs.launch.run([st])) * 1e6:5.1f}" for i, st in enumerate(cs.launch.steps)]
            print(f"{q} {role} ×{ntok}: launch {t * 1e6:5.1f} µs ({100 * cs.bytes / t / 1e9 / bw:.0f} %), "
                  f"without PDL {t_plain * 1e6:5.1f} | steps alone: "
                  + " | ".join(parts), flush=True)
        del cs
        cp.get_default_memory_pool().free_all_blocks()
