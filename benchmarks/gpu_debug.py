"""Per-qtype accuracy of the CUDA backend (device machine): what issue 5's must-shows ask, in numbers.

Per qtype and shape, the same weights and activations through the GPU, its emulation, the CPU backend
and the float64 oracle:
- f32 mode: the largest |GPU − oracle| as a fraction of the float32 bound n_in·2^-24·Σ|w·x| (≤ 1
  passes), the NMSE against the CPU backend (the bar: 1e-9), and whether the emulation is bit-equal;
- q8_1 mode (float weights keep f32 activations, as in llama.cpp): bit-equal to the emulation, the error relative to the oracle
  (the size llama.cpp's MMVQ shows), and the largest error as a fraction of the bound that quantising
  the activations allows (Σ|w|·0.6·amax/127 per 32-block, as tests/test_gpu.py states it).
Rows: 4 tokens × 2 slots drawn from 3 experts, and for Q4_K/Q6_K also 8 tokens through all of 8
experts (in f32 mode, the 8-member tensor-core kernels). `--write FILE`: the table as Markdown.
"""
import sys

import numpy as np

from moeparity import backends
from moeparity.gguf_model import QTensor
from moeparity.qtypes import QTYPES

U = 2.0 ** -24


def q8_1_bound(T, ids, x, mag):
    """Per output: Σ|w|·0.6·amax/127 over the activation's 32-blocks, plus the float32 bound."""
    w = np.abs(T.f32().astype(np.float64))                       # (E, R, n_in)
    amax = np.repeat(np.abs(x.reshape(x.shape[0], -1, 32)).max(axis=2), 32, axis=1) * 0.6 / 127
    b = np.stack([np.stack([w[e] @ amax[t] for e in row]) for t, row in enumerate(ids)])
    return b + T.n_in * U * mag


def rows(rng):
    for q in QTYPES:
        for n_out, n_in, ntok, E, k in [(48, 512, 4, 3, 2), (40, 96, 4, 3, 2)] + \
                ([(64, 512, 8, 8, 8)] if q in ("Q4_K", "Q6_K") else []):
            if n_in % QTYPES[q].block:
                continue
            w = (rng.standard_t(5, size=(E, n_out, n_in)) * 0.05).astype(np.float32)
            T = QTensor.from_weights("blk.0.ffn_up_exps.weight", w, q)
            x = rng.standard_normal((ntok, n_in)).astype(np.float32)
            ids = np.tile(np.arange(E), (ntok, 1)) if k == E else rng.integers(0, E, (ntok, k))
            yield q, n_in, ntok, k, T, ids, x


def main(argv):
    gpu, em, cpu, orc = (backends.get(n) for n in ("cuda", "emulated-cuda", "cpu", "oracle"))
    out = ["| qtype | n_in | tokens × slots | f32: max err / bound | f32: NMSE vs CPU | emulation bit-equal (f32, q8_1) "
           "| q8_1: ‖err‖/‖y‖ vs oracle | q8_1: max err / quantisation bound |", "|---|---|---|---|---|---|---|---|"]
    n_exact = n_rows = 0
    for q, n_in, ntok, k, T, ids, x in rows(np.random.default_rng(0)):
        y, ye, yc = gpu.moe_matvec(T, ids, x), em.moe_matvec(T, ids, x), cpu.moe_matvec(T, ids, x)
        yo, mag = orc.moe_matvec(T, ids, x, magnitude=True)
        eb = np.nanmax(np.abs(y - yo) / (mag * n_in * U + 1e-30))
        nm = np.sum((y - yc) ** 2) / np.sum(yc.astype(np.float64) ** 2)
        exact = np.array_equal(y, ye)
        line = f"{q:7s} {n_in:4d} {ntok}x{k} nan={np.isnan(y).sum():3d} exact_vs_emul={exact} " \
               f"err/bound={eb:.3f} nmse_cpu={nm:.1e}"
        cells = [q, str(n_in), f"{ntok} × {k}", f"{eb:.3f}", f"{nm:.1e}"]
        yq, yqe = gpu.moe_matvec(T, ids, x, act="q8_1"), em.moe_matvec(T, ids, x, act="q8_1")
        qexact = np.array_equal(yq, yqe)
        rel = np.linalg.norm(yq - yo) / np.linalg.norm(yo)
        qb = np.max(np.abs(yq - yo) / q8_1_bound(T, ids, x, mag))
        line += f" q8_1_exact={qexact} q8_1_rel={rel:.1e} q8_1/bound={qb:.3f}"
        cells += [f"{exact}, {qexact}", f"{rel:.1e}", f"{qb:.3f}"]
        exact = exact and qexact
        n_rows += 1
        n_exact += exact
        print(line, flush=True)
        out.append("| " + " | ".join(cells) + " |")
    print(f"rows bit-equal to the emulation in every mode: {n_exact} of {n_rows}")
    if "--write" in argv:
        with open(argv[argv.index("--write") + 1], "w") as f:
            f.write(f"GPU: {gpu.label}. {n_exact} of {n_rows} rows bit-equal to the emulation in every mode.\n\n")
            f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv)
