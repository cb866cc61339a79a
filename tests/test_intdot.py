"""The tensor-core kernels' arithmetic (backends/intdot.py): its integer parts are the format's
weights, its block fixed point is exact where it claims to be, its row reduction equals an
independent exact statement, and it lands within the float32 bound of the float64 oracle.
(The GPU run checks the kernels against it bit for bit: tests/test_gpu.py.)"""
import os
import re
from fractions import Fraction

import numpy as np
import pytest
from test_emulation import fma_np, quantize, round_f32

from moeparity import backends
from moeparity.backends import gpu_layout as L
from moeparity.backends import intdot
from moeparity.backends.cuda import KERNEL_DIR
from moeparity.gguf_model import QTensor
from moeparity.qtypes import QTYPES
from moeparity.quant import dequant as dq

F32 = np.float32
KQ = list(intdot.GROUP)


@pytest.mark.parametrize("qtype", KQ)
def test_integer_parts_give_the_dequantised_weights(qtype, rng):
    qt = QTYPES[qtype]
    b = quantize((rng.standard_t(4, size=(6, 512)) * 0.05).astype(F32), qt)
    q, sc, cm, d, dm = intdot.int_parts(b, qtype)
    gs = intdot.GROUP[qtype]
    G = 256 // gs
    dl = (d[:, None] * sc.astype(F32)).astype(F32)               # ggml's float32 products
    if qtype in intdot.WITH_MIN:
        ml = (dm[:, None] * cm).astype(F32)
        w = np.repeat(dl, gs, 1) * q.astype(F32) - np.repeat(ml, gs, 1)
        assert q.min() >= 0 and q.max() < 16
    else:                                                          # Q6_K: the −32 bias inside q
        assert not cm.any() and not dm.any()
        w = np.repeat(dl, gs, 1) * q.astype(F32)
        assert q.min() >= -32 and q.max() < 32 and q.min() < 0 <= q.max()
    assert sc.shape[1] == G
    assert np.array_equal(w.astype(F32), dq.dequantize_blocks(b, qt).reshape(w.shape))


def test_fixed_point_is_exact_where_it_claims(rng):
    n = 1024
    x = (rng.standard_normal((5, n)) * 10.0 ** rng.integers(-30, 30, (5, 1))).astype(F32)
    x[1, 300] = 7e5                                              # an outlier in one superblock
    x[2, 256:512] = 0                                            # an all-zero superblock
    x[3, 10] = np.nan                                            # non-finite superblocks
    x[3, 600] = -np.inf
    x[4, :256] = 1e-40                                           # subnormal: E clamps at EMIN
    Xi, sig, Mx = intdot.fixed_point(x, 32)
    S = n // 256
    xs = x.reshape(5, S, 256).astype(np.float64)
    ok = np.isfinite(xs).all(axis=2)
    assert np.array_equal(ok, np.isfinite(sig))
    assert (Xi[~ok] == 0).all() and np.isnan(Mx[~ok]).all()
    assert np.abs(Xi).max() <= 2 ** intdot.XBITS
    s = sig.astype(np.float64)[..., None]
    err = np.abs(np.where(ok[..., None], xs, 0) - Xi * np.where(ok[..., None], s, 0))
    assert (err[ok] <= s.repeat(256, 2)[ok] / 2).all()             # round to nearest of σ
    big = np.abs(xs[ok]).max(axis=1)
    assert (big < 2.0 ** intdot.XBITS * s[ok][:, 0]).all()          # the max sits in the top bits…
    free = big >= 2.0 ** (intdot.EMIN - 1)                     # E not clamped
    assert (big[free] >= 2.0 ** (intdot.XBITS - 1) * s[ok][free, 0]).all()   # …of XBITS + 1
    assert (Xi[2, 1] == 0).all() and (sig[ok] >= 2.0 ** (intdot.EMIN - intdot.XBITS)).all()
    sums = Xi.reshape(5, S, 8, 32).sum(axis=3)
    assert np.array_equal(Mx[ok], (sums.astype(F32) * sig[..., None])[ok])


def reference(q, sc, cm, d, dm, Xi, sig, Mx, gs, with_min):
    """Exact integers in Python (no int64 wrap can hide), float32 steps by fma_np (not emulated.fmaf)."""
    R, S, _ = q.shape
    acc = np.zeros(R, F32)
    for s in range(S):
        big = [sum(int(sc[r, s, g]) * sum(int(a) * int(b) for a, b in zip(q[r, s, g * gs:(g + 1) * gs],
                                                                              Xi[s, g * gs:(g + 1) * gs]))
                   for g in range(256 // gs)) for r in range(R)]
        big = np.array([round_f32(Fraction(v)) for v in big], F32)
        acc = fma_np(d[:, s], big * sig[s], acc)
        if with_min:
            mm = np.zeros(R, F32)
            for g in range(256 // gs):
                mm = fma_np(cm[:, s, g], np.full(R, Mx[s, g], F32), mm)
            acc = fma_np(-dm[:, s], mm, acc)
    return acc


@pytest.mark.parametrize("qtype", KQ)
def test_row_reduction_matches_independent_reference(qtype, rng):
    qt, gs = QTYPES[qtype], intdot.GROUP[qtype]
    R, n = 3, 768
    b = quantize((rng.standard_normal((R, n)) * 0.1).astype(F32), qt)
    x = (rng.standard_normal((2, n)) * np.array([[1.0], [3e3]])).astype(F32)
    got = intdot.matvec(b.reshape(R, -1), qtype, x)
    q, sc, cm, d, dm = intdot.int_parts(b, qtype)
    Xi, sig, Mx = intdot.fixed_point(x, gs)
    S = n // 256
    parts = (q.reshape(R, S, 256), sc.reshape(R, S, -1), cm.reshape(R, S, -1), d.reshape(R, S), dm.reshape(R, S))
    for p in range(2):
        assert np.array_equal(got[p], reference(*parts, Xi[p], sig[p], Mx[p], gs, qtype in intdot.WITH_MIN))


@pytest.mark.parametrize("qtype", KQ)
def test_within_float32_bound_of_oracle_with_outliers(qtype, rng):
    """Block fixed point keeps XBITS + 1 bits against each superblock's largest |x|: activations with
    outliers (10⁴ × the rest) stay within the float32 bound of the float64 oracle."""
    n, R = 2048, 40
    T = QTensor.from_weights("t", (rng.standard_normal((3, R, n)) * 0.05).astype(F32), qtype)
    x = rng.standard_normal((6, n)).astype(F32)
    x[:, rng.integers(0, n, 12)] *= 1e4
    ids = rng.integers(0, 3, (6, 2))
    y = backends.get("emulated-cuda").moe_matvec(T, ids, x)
    yo, mag = backends.get("oracle").moe_matvec(T, ids, x, magnitude=True)
    assert np.all(np.abs(y - yo) <= mag * n * 2.0 ** -24)
    assert np.abs(y - yo).max() > 0                               # not vacuous: it does round


def test_dispatch_f32_integer_q8_1_float(rng):
    """Q4_K/Q6_K in f32 mode take intdot's arithmetic for any number of members (one token too);
    q8_1 mode and other formats keep the float kernels' arithmetic."""
    qt, n, R = QTYPES["Q4_K"], 512, 16
    T = QTensor.from_weights("t", (rng.standard_normal((2, R, n)) * 0.05).astype(F32), "Q4_K")
    x = rng.standard_normal((2, n)).astype(F32)
    em = backends.get("emulated-cuda")
    raw = np.asarray(T.expert(1)).reshape(R, -1)
    for ids in (np.array([[1], [1]]), np.array([[1], [0]])):     # two members, then one each
        assert np.array_equal(em.moe_matvec(T, ids, x)[0, 0], intdot.matvec(raw, "Q4_K", x[:1])[0])
    q = em.moe_matvec(T, np.array([[1], [0]]), x, act="q8_1")
    assert not np.array_equal(q[0, 0], intdot.matvec(raw, "Q4_K", x[:1])[0])
    assert intdot.serves("Q4_K", "f32") and intdot.serves("Q6_K", "f32")
    assert not intdot.serves("Q4_K", "q8_1") and not intdot.serves("Q5_K", "f32")
    assert qt.name in intdot.GROUP


def test_kernel_constants_match_intdot():
    """kernels/moe_mma.cuh restates intdot's constants and gpu_layout's ring geometry."""
    src = open(os.path.join(KERNEL_DIR, "moe_mma.cuh")).read()
    d = {m.group(1): m.group(2) for m in re.finditer(r"^#define (\w+) \(?(-?\d+)\)?", src, re.M)}
    assert (int(d["MMA_XBITS"]), int(d["MMA_EMIN"])) == (intdot.XBITS, intdot.EMIN)
    for name, nb in L.MMA_RING.items():
        qt = QTYPES[name]
        row = re.search(rf"struct M{name} {{\s*static constexpr int NBYTES = (\d+), GS = (\d+), NB = MMA_NB_{name}, "
                        r"ASHIFT = \d, COPY = (\d+);\s*static constexpr bool MIN = (true|false);", src)
        nbytes, gs, copy = (int(v) for v in row.groups()[:3])
        assert (nbytes, gs, int(d[f"MMA_NB_{name}"])) == (qt.nbytes, intdot.GROUP[name], nb)
        assert (row.group(4) == "true") == (name in intdot.WITH_MIN)
        assert copy == L.MMA_COPY[name] and nbytes % copy == 0     # copy units never straddle a block
    assert "__launch_bounds__(128, MINB)" in src and L.MMA_WARPS * 32 == 128
    assert all(L.mma_tile(n) == 16 * L.MMA_MT[n] for n in L.MMA_MEMBERS)   # the layout's tile: one item
    assert all(L.mma_tile(n, gu=True) == 16 for n in L.MMA_MEMBERS)        # gate+up: 16 rows of each
    assert re.search(r"return act == \"f32\" and name in GROUP", open(intdot.__file__).read())


def test_tensor_core_entry_points_exist():
    """cuda.py launches mma_tiles<tile>_<Q>, x_fixed, moe_mma<n>_<Q> and moe_mma_gu<n>_<Q> (n in
    gpu_layout.MMA_MEMBERS) by name."""
    src = open(os.path.join(KERNEL_DIR, "moe_mma.cuh")).read()
    for q in intdot.GROUP:
        for n, nk in zip(L.MMA_MEMBERS, (1, 2, 3)):                # MMAs per weight group (see Cols)
            assert f"MMA_ENTRY_({L.mma_kernel(QTYPES[q], n, False)}, M{q}, {nk}, MMA_MT_{n}, {str(n == 8).lower()})" in src
            assert f"MMA_ENTRY({L.mma_kernel(QTYPES[q], n, True)}, M{q}, {nk}, 2, true, " in src   # two tiles
            assert re.search(rf"#define MMA_MT_{n} {L.MMA_MT[n]}\n", src)      # tiles per item, as cuda.py counts them
        for n in L.MMA_MEMBERS:                                    # mma_tiles<tile>_<Q>: the weights' tiled copy
            assert f"MMA_TILES({q}, {L.mma_tile(n)})" in src
        assert f"MMA_TILES_GU({q})" in src                         # gate+up: both tensors' 16-row tiles
    assert 'void __launch_bounds__(256) x_fixed(' in src
    assert L.MMA_MEMBERS == (2, 4, 8)
    assert '#include "moe_mma.cuh"' in open(os.path.join(KERNEL_DIR, "moe_matvec.cu")).read()


def test_staged_x_layout_matches_the_kernel():
    """gpu_layout.mma_xs_bytes sizes what moe_mma.cuh's XStage stages: at most two groups of 8 member
    slots of S x_fixed records (1 KB) and 64 bytes; only the 8-member down (its own x a group, its
    shares consecutive) asks for any, and for Qwen3-30B-A3B's down (n_in 768) two blocks of it and
    their rings still fit an H100's 228 KB an SM."""
    src = open(os.path.join(KERNEL_DIR, "moe_mma.cuh")).read()
    assert "xs.ms = n_in / 256 * 64 + 4;" in src
    assert "const int cap = min(2, (int)((dsz - nwb * F::NB * SLOT) / (8 * 16 * xs.ms)));" in src
    for n_in in (256, 768, 2048):
        assert L.mma_xs_bytes(8, False, False, n_in) == 2 * 8 * 16 * (n_in // 256 * 64 + 4)
    assert L.mma_xs_bytes(8, True, False, 768) == L.mma_xs_bytes(4, False, False, 768) == 0
    assert L.mma_xs_bytes(8, False, True, 768) == 0                 # shared x: strided shares, nothing staged
    for q in intdot.GROUP:
        assert 2 * (L.mma_smem(QTYPES[q], 8) + L.mma_xs_bytes(8, False, False, 768) + 1024) <= 228 * 1024
