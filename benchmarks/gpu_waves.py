"""The layer in waves (device machine): the experts split into k waves, each wave's gate+up and down
(moe_ffn's launches: x_fixed, gate+up, the down's x_fixed and the down, chained by PDL) on its own
CUDA stream, so that one wave's launch boundary and tails are filled by another wave's work. The
kernels are the committed ones; a row's arithmetic does not depend on the wave, so every wave's
outputs must equal the one-wave layer's for its experts bit for bit (checked first).

  python benchmarks/gpu_waves.py '64,64' '64,64 prio=up' '32,32,32,32'

Each argument: the wave sizes (experts, in order, summing to 128), then options: prio=up (later
waves' streams get higher priority), prio=down (earlier waves' higher), plain (no PDL between a
wave's gate+up and its down). Env FMTS (default "Q4_K Q6_K"), TOKS (default "8 1").
Timing: bench_gpu.timed, three interleaved rounds, median [min-max] µs."""
import os
import sys

import numpy as np

from moeparity.backends.cuda import CudaBackend, Launch
from moeparity.bench_gpu import FF, HIDDEN, N_EXP, _Case, _Layer, copy_bandwidth, timed
from moeparity.qtypes import QTYPES


class Waves:
    def __init__(self, be, gu: _Case, dn: _Case, sizes, x, ntok, opts):
        cp = be.cp
        lo, self.parts = 0, []
        pr = (0, -5)                                     # (least, greatest) stream priority on sm_90
        for w, n in enumerate(sizes):
            ids = np.tile(np.arange(lo, lo + n), (ntok, 1))
            g = Launch(be, gu.qt, gu.Ws, gu.R, gu.n_in, ids, x, in_place=True)
            g()
            d = Launch(be, dn.qt, dn.Ws, dn.R, dn.n_in, ids, g.outs[2], in_place=True)
            if "plain" not in opts:
                d.follow(g)
            prio = None
            if opts.get("prio") == "up":
                prio = max(pr[1], pr[0] - w)
            elif opts.get("prio") == "down":
                prio = max(pr[1], pr[0] - (len(sizes) - 1 - w))
            s = cp.cuda.Stream(non_blocking=False) if prio is None else cp.cuda.Stream(non_blocking=False, priority=prio)
            self.parts.append((lo, n, g, d, s))
            lo += n
        assert lo == N_EXP, sizes

    def __call__(self):
        for _, _, g, _, s in self.parts:          # every wave's gate+up first, then the downs
            with s:
                g()
        for _, _, _, d, s in self.parts:
            with s:
                d()

    def outs(self, ntok):
        """gate, up, act, down as (ntok, 128, R) arrays, assembled from the waves."""
        res = []
        for k in range(4):
            full = None
            for lo, n, g, d, _ in self.parts:
                o = (g.outs + d.outs)[k].get().reshape(ntok, n, -1)
                if full is None:
                    full = np.empty((ntok, N_EXP, o.shape[2]), o.dtype)
                full[:, lo:lo + n] = o
            res.append(full)
        return res


def main(specs):
    be = CudaBackend(defines=("-DONLY",))
    cp = be.cp
    print(f"copy {copy_bandwidth(cp):.0f} GB/s", flush=True)
    rng = np.random.default_rng(7)
    for q in os.environ.get("FMTS", "Q4_K Q6_K").split():
        qt = QTYPES[q]
        gu = _Case(be, qt, N_EXP, FF, HIDDEN, seed=1, pair=True)
        dn = _Case(be, qt, N_EXP, HIDDEN, FF, seed=2)
        for ntok in [int(t) for t in os.environ.get("TOKS", "8 1").split()]:
            x = rng.standard_normal((ntok, HIDDEN)).astype(np.float32)
            ids = np.tile(np.arange(N_EXP), (ntok, 1))
            one = _Layer(gu, dn)
            one.plan(ids, x)
            one.ours()
            cp.cuda.Device().synchronize()
            ref = [o.get().reshape(ntok, N_EXP, -1) for o in gu.launch.outs + dn.launch.outs]
            runs = {"one wave": one.ours}
            for spec in specs:
                words = spec.split()
                opts = dict(w.split("=") if "=" in w else (w, "1") for w in words[1:])
                wv = Waves(be, gu, dn, [int(v) for v in words[0].split(",")], x, ntok, opts)
                for p in wv.parts:
                    for o in p[2].outs + p[3].outs:
                        o.fill(np.nan)
                wv()
                cp.cuda.Device().synchronize()
                same = all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(ref, wv.outs(ntok)))
                print(f"{q} x{ntok} {spec}: bit-equal to one wave {same}", flush=True)
                runs[spec] = wv
            res = {k: [] for k in runs}
            for _ in range(3):
                for k, fn in runs.items():
                    res[k].append(timed(cp, fn) * 1e6)
            for k, v in res.items():
                print(f"{q} x{ntok} {k:24s} layer {np.median(v):6.1f} [{min(v):.1f}-{max(v):.1f}] µs", flush=True)
            del runs
            cp.get_default_memory_pool().free_all_blocks()
        del gu, dn
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main(sys.argv[1:])
