"""Quick per-qtype GPU vs emulation/oracle table (device machine)."""
import numpy as np

from moeparity import backends
from moeparity.gguf_model import QTensor
from moeparity.qtypes import QTYPES

gpu, em, orc = backends.get("cuda"), backends.get("emulated-cuda"), backends.get("oracle")
rng = np.random.default_rng(0)
for q in QTYPES:
    for n_out, n_in in [(48, 512), (40, 96)]:
        if n_in % QTYPES[q].block:
            continue
        w = (rng.standard_normal((3, n_out, n_in)) * 0.05).astype(np.float32)
        T = QTensor.from_weights("t", w, q)
        x = rng.standard_normal((4, n_in)).astype(np.float32)
        ids = rng.integers(0, 3, (4, 2))
        y = gpu.moe_matvec(T, ids, x)
        ye = em.moe_matvec(T, ids, x)
        yo, mag = orc.moe_matvec(T, ids, x, magnitude=True)
        line = f"{q:7s} {n_in:4d} nan={np.isnan(y).sum():4d} exact_vs_emul={np.array_equal(y, ye)} " \
               f"maxdiff={np.nanmax(np.abs(y - ye)):.2e} err/bound={np.nanmax(np.abs(y - yo) / (mag * n_in * 2**-24)):.3f}"
        if n_in % 32 == 0:
            yq, yqe = gpu.moe_matvec(T, ids, x, act="q8_1"), em.moe_matvec(T, ids, x, act="q8_1")
            line += f" q8_1_exact={np.array_equal(yq, yqe)} q8_1_rel={np.linalg.norm(yq - yo) / np.linalg.norm(yo):.1e}"
        print(line)
