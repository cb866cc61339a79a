"""A/B of tensor-core kernel builds on the device machine, in one process: a baseline kernel folder
against the working tree's kernels built under define sets. Per format and token count, the full layer
(gate+up, then the down on its act, as bench gpu runs it) of every build is compared bit for bit with
the baseline's (outputs NaN-filled first), then timed in three interleaved rounds (bench_gpu.timed):
layer, gate+up alone, down alone, as median [min-max] µs.

Before editing a kernel: `cp -r lib/moeparity/backends/kernels benchmarks/_old/` (git-ignored; carry it
to the device machine), then
  python benchmarks/gpu_ab.py - 'MMA_XPF=3' 'FOO BAR=2'
Each argument is one build: space-separated NAME or NAME=VALUE defines, '-' for none, and host
settings: PIN, each kernel at the baseline kernel's blocks per SM; gucarve=P, the gate+up kernels'
preferred shared carveout (%). Each build also gets a define of its own (AB_BUILD), so that builds with
the same defines are separate modules (in session 14 a carveout set on one build's functions held for
its twin's too). Env: REF (the build the others are bit-compared with, default baseline), OLD (the
baseline folder, default benchmarks/_old/kernels), FMTS (default Q4_K), TOKS (default "8 1")."""
import os
import sys

import numpy as np

import moeparity.backends.cuda as cuda
from moeparity.bench_gpu import FF, HIDDEN, N_EXP, _Case, _Layer, copy_bandwidth, timed
from moeparity.qtypes import QTYPES


def build(kernel_dir, defines):
    saved, cuda.KERNEL_DIR = cuda.KERNEL_DIR, kernel_dir
    try:
        return cuda.CudaBackend(defines=("-DONLY",) + tuple(f"-D{d}" for d in defines))
    finally:
        cuda.KERNEL_DIR = saved


def pin(be, base):
    """Each kernel of `be` at the blocks per SM its namesake in `base` gets (the grid and the L1 left
    over follow the register count, which a kernel change may move across a threshold)."""
    names, module, occ = {}, be.module, be.occupancy

    class Named:                                         # (RawModule's attributes are read-only)
        def __getattr__(self, a):
            return getattr(module, a)

        def get_function(self, name):
            f = module.get_function(name)
            names[id(f)] = name
            return f

    def occupancy(fn, block, smem):
        name = names.get(id(fn))
        mine = occ(fn, block, smem)
        return min(mine, base.occupancy(base.module.get_function(name), block, smem)) if name else mine

    be.module, be.occupancy = Named(), occupancy


def main(specs):
    old = os.environ.get("OLD", os.path.join(os.path.dirname(__file__), "_old", "kernels"))
    if not os.path.isdir(old):
        sys.exit(f"no baseline kernel folder at {old} (see this script's docstring)")
    bes = {"baseline": build(old, ())}
    host = {}                                            # host-side settings of a build: NAME=VALUE, lower case
    for spec in specs:
        words = spec.split()
        host[spec] = dict(w.split("=") for w in words if w.split("=")[0].islower())
        bes[spec] = build(cuda.KERNEL_DIR, [d for d in words if d not in ("-", "PIN") and d.split("=")[0] not in host[spec]]
                          + [f"AB_BUILD={len(bes)}"])
        if "PIN" in words:
            pin(bes[spec], bes["baseline"])
        if "gucarve" in host[spec]:                      # gate+up kernels' preferred shared carveout, %
            for q in ("Q4_K", "Q6_K"):
                for n in (2, 4, 8):
                    bes[spec].module.get_function(f"moe_mma_gu{n}_{q}").preferred_shared_memory_carveout = \
                        int(host[spec]["gucarve"])
    cp = bes["baseline"].cp
    print(f"copy {copy_bandwidth(cp):.0f} GB/s", flush=True)
    rng = np.random.default_rng(7)
    for q in os.environ.get("FMTS", "Q4_K").split():
        qt = QTYPES[q]
        for ntok in [int(t) for t in os.environ.get("TOKS", "8 1").split()]:
            x = rng.standard_normal((ntok, HIDDEN)).astype(np.float32)
            ids = np.tile(np.arange(N_EXP), (ntok, 1))
            layers = {}
            for name, be in bes.items():
                lay = _Layer(_Case(be, qt, N_EXP, FF, HIDDEN, seed=1, pair=True),
                             _Case(be, qt, N_EXP, HIDDEN, FF, seed=2))
                lay.plan(ids, x)
                for o in list(lay.gu.launch.outs) + list(lay.dn.launch.outs):
                    o.fill(np.nan)
                lay.ours()
                layers[name] = lay

            def bits(lay):
                return [cp.asnumpy(o).view(np.uint32) for o in list(lay.gu.launch.outs) + list(lay.dn.launch.outs)]

            ref = bits(layers[os.environ.get("REF", "baseline")])
            res = {name: {"layer": [], "gate+up": [], "down": []} for name in layers}
            for _ in range(3):
                for name, lay in layers.items():
                    res[name]["layer"].append(timed(cp, lay.ours) * 1e6)
                    res[name]["gate+up"].append(timed(cp, lay.gu.ours) * 1e6)
                    res[name]["down"].append(timed(cp, lay.dn.ours) * 1e6)
            for name, lay in layers.items():
                same = all(np.array_equal(a, b) for a, b in zip(ref, bits(lay)))
                print(f"{q} x{ntok} {name:16s} bit-equal {same}  " + "  ".join(
                    f"{k} {np.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]" for k, v in res[name].items()), flush=True)
            del layers
            cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main(sys.argv[1:])
