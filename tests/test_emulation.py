"""emulated-cuda's arithmetic: its fma is the correctly rounded one (checked against exact rational
arithmetic), and its numba reduction equals an independent numpy statement of the kernel's order
(the GPU run checks the numba emulation against the real kernels bit for bit: tests/test_gpu.py)."""
from fractions import Fraction

import numpy as np
import pytest

from moeparity.backends import gpu_layout as L
from moeparity.backends.emulated import fmaf, group_sums, kernel_parts, kernel_rows
from moeparity.qtypes import QTYPES
from moeparity.quant import dequant as dq
from moeparity.quant import quantize as _quantize

F32 = np.float32


def quantize(w, qt):
    return np.asarray(_quantize(w, qt.name)).reshape(-1, qt.nbytes)


def round_f32(v: Fraction) -> F32:
    """Exact rational → nearest float32 (ties to even), by integer arithmetic: no double rounding."""
    if v == 0:
        return F32(0.0)
    sign, m = (-1 if v < 0 else 1), abs(v)
    e = m.numerator.bit_length() - m.denominator.bit_length()
    if Fraction(2) ** e > m:
        e -= 1
    e = max(e, -126)                                   # subnormals keep the fixed quantum 2^-149
    scaled = m / Fraction(2) ** (e - 23)
    n, rem = divmod(scaled.numerator, scaled.denominator)
    if 2 * rem > scaled.denominator or (2 * rem == scaled.denominator and n & 1):
        n += 1
    return F32(sign * float(Fraction(n) * Fraction(2) ** (e - 23)))


def test_round_f32_reference_agrees_with_numpy_on_doubles(rng):
    for v in rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000):
        assert round_f32(Fraction(float(v))) == F32(v)


def test_fmaf_is_correctly_rounded(rng):
    n = 4000
    a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(F32)
    b = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(F32)
    c = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).astype(F32)
    c[: n // 2] = (-(a[: n // 2].astype(np.float64) * b[: n // 2])).astype(F32)   # cancellation
    # near ties: c a float32 and a·b close to half an ulp of it
    c[n // 2: 3 * n // 4] = F32(1.0)
    a[n // 2: 3 * n // 4] = F32(2.0 ** -24) * (1 + rng.integers(0, 3, n // 4)).astype(F32)
    b[n // 2: 3 * n // 4] = (1 + rng.integers(-2, 3, n // 4) * 2.0 ** -23).astype(F32)
    plain_misses = 0
    for x, y, z in zip(a, b, c):
        want = round_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
        got = fmaf(x, y, z)
        assert got == want or (got == 0 and want == 0), (x, y, z, got, want)
        plain_misses += F32(F32(x * y) + z) != want
    assert plain_misses > 0, "mul-then-add agreed everywhere: the test could not tell fma from it"


def fma_np(a, b, c):
    """Vectorised round-to-odd fma (separate code from emulated.fmaf)."""
    p = a.astype(np.float64) * b
    s = p + c
    t = s - p
    err = (p - (s - t)) + (c - t)
    mant, _ = np.frexp(s)
    even = (np.ldexp(mant, 53).astype(np.int64) & 1) == 0
    bump = (err != 0) & even & np.isfinite(s)
    s = np.where(bump, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(F32)


def reference(Q, DL, ML, x, sig, cw, lpr, off, uses_min):
    """Vectorised over rows: group dot (fma chain), offset/dl/ml fmas, lane of each unit, butterfly."""
    R, n = Q.shape
    G = n // 8
    xg = np.broadcast_to(x.reshape(1, G, 8), (R, G, 8))
    qg = Q.reshape(R, G, 8)
    s = (qg[:, :, 0] * xg[:, :, 0]).astype(F32)
    for j in range(1, 8):
        s = fma_np(qg[:, :, j], xg[:, :, j], s)
    if off:
        s = fma_np(np.full_like(s, -off), np.broadcast_to(sig, s.shape), s)
    acc = np.zeros((R, lpr), F32)                      # each row's lpr lanes
    upc = cw // 32
    for u in range(n // 32):
        lane = (u % upc) % lpr
        a = acc[:, lane]
        for g in range(4 * u, 4 * u + 4):
            a = fma_np(DL[:, g], s[:, g], a)
            if uses_min:
                a = fma_np(-ML[:, g], np.full(R, sig[g], F32), a)
        acc[:, lane] = a
    lanes = np.arange(lpr)
    o = lpr // 2
    while o:
        acc = acc + acc[:, lanes ^ o]
        o //= 2
    return acc[:, 0]


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q4_1", "Q2_K", "F16"])
@pytest.mark.parametrize("n,cw,lpr", [(256, 256, 32), (768, 768, 8), (2048, 1024, 16), (2048, 2048, 32), (4096, 1024, 32)])
def test_numba_emulation_matches_reference_bit_for_bit(qtype, n, cw, lpr, rng):
    qt = QTYPES[qtype]
    R, P = 6, 2
    w = (rng.standard_t(5, size=(R, n)) * rng.uniform(0.01, 1)).astype(F32)
    q, dl, ml, off = kernel_parts(*dq.parts8(quantize(w, qt), qt), qtype)
    Q, DL, ML = q.reshape(R, n), dl.reshape(R, -1), ml.reshape(R, -1)
    X = rng.standard_normal((P, n)).astype(F32)
    sig = group_sums(X)
    uses_min = qtype in L.USES_MIN
    out = np.empty((P, R), F32)
    kernel_rows(Q, DL, ML, X, sig, np.zeros((P, 1), F32), cw, lpr, off, uses_min, False, out)
    for p in range(P):
        assert np.array_equal(out[p], reference(Q, DL, ML, X[p], sig[p], cw, lpr, off, uses_min))


@pytest.mark.parametrize("qtype", list(L.AFFINE))
def test_kernel_encoding_is_exact(qtype, rng):
    """(q' − OFF)·dl' is dl·q exactly: the affine encoding loses nothing."""
    qt = QTYPES[qtype]
    q, dl, ml = dq.parts8(quantize((rng.standard_normal((4, 512)) * 0.1).astype(F32), qt), qt)
    q2, dl2, _, off = kernel_parts(q, dl, ml, qtype)
    assert off > 0 and not np.array_equal(q2, q)
    g = lambda a: a.reshape(a.shape[0], -1, 8)
    assert np.array_equal((g(q2) - F32(off)) * dl2[:, :, None], g(q) * dl[:, :, None])


def test_order_matters_so_the_test_can_fail(rng):
    """A plain float32 dot of the dequantised weights differs from the kernel order: equality above
    is not vacuous."""
    qt = QTYPES["Q4_K"]
    w = (rng.standard_normal((16, 2048)) * 100).astype(F32)
    blocks = quantize(w, qt)
    q, dl, ml = dq.parts8(blocks, qt)
    X = rng.standard_normal((1, 2048)).astype(F32)
    out = np.empty((1, 16), F32)
    q, dl, ml, off = kernel_parts(q, dl, ml, "Q4_K")
    kernel_rows(q.reshape(16, -1), dl.reshape(16, -1), ml.reshape(16, -1), X, group_sums(X), np.zeros((1, 1), F32),
                1024, 8, off, True, False, out)
    W = dq.dequantize_blocks(blocks, qt).reshape(16, 2048)
    assert not np.array_equal(out[0], (W @ X[0]).astype(F32))
    bound = 2048 * 2.0 ** -24 * (np.abs(W.astype(np.float64)) @ np.abs(X[0]))   # DESIGN's float32 bound
    assert (np.abs(out[0] - W.astype(np.float64) @ X[0]) <= bound).all()


@pytest.mark.parametrize("qtype", [q for q in QTYPES])
def test_parts_give_the_dequantised_weights(qtype, rng):
    """dl·q − ml in float32 (what the kernels' dequant entry computes) is gguf-py's weight."""
    qt = QTYPES[qtype]
    w = (rng.standard_t(5, size=(4, 512)) * 0.1).astype(F32)
    blocks = quantize(w, qt)
    q, dl, ml = dq.parts8(blocks, qt)
    got = (dl[:, :, None] * q.reshape(q.shape[0], -1, 8) - ml[:, :, None]).reshape(-1)
    assert np.array_equal(got, dq.dequantize_blocks(blocks, qt).reshape(-1))


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_every_launch_shape_has_a_chunk_size(qtype):
    """Every qtype × kernel variant × usual row width stages within shared memory (a launch that
    cannot would be a BadArgument at run time, on the GPU and in the emulation alike)."""
    qt = QTYPES[qtype]
    for n in (96, 256, 512, 768, 1024, 1408, 2048, 2880, 4096, 7168, 14336):
        if n % qt.block == 0:
            for tcap in (1, L.MAXT):
                for nw in (1, 2):
                    cw = L.chunk_weights(qt, tcap, n, nw)
                    assert cw % qt.block == 0 and L.smem_bytes(qt, cw, tcap, n, nw) <= L.SMEM_LIMIT
