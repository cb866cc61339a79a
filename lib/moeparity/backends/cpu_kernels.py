"""numba kernels for the CPU backend: fused dequantise-dot, never materialising a weight matrix.

One block decoder per qtype row (layouts as in quant/dequant.py, itself checked bit-for-bit
against gguf-py) and one driver that runs every selected (expert, token) pair: each weight block
is decoded once into a small float32 buffer and dotted with every token routed to that expert.
Accumulation is float32, block-wise like ggml (per-block partial sum, then added to the row sum).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..qtypes import QTYPES

F32 = np.float32
T_F32, T_F16, T_BF16 = QTYPES["F32"].id, QTYPES["F16"].id, QTYPES["BF16"].id
T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0 = (QTYPES[n].id for n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"))
T_Q2_K, T_Q3_K, T_Q4_K, T_Q5_K, T_Q6_K = (QTYPES[n].id for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"))
T_IQ4_NL, T_IQ4_XS, T_MXFP4 = QTYPES["IQ4_NL"].id, QTYPES["IQ4_XS"].id, QTYPES["MXFP4"].id
CHUNK = 256             # weights decoded per step; only a row's tail chunk may be shorter

KV_IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
BYTES32 = np.zeros(64, np.int64)        # bytes per 32-block by qtype id, for the rows _decode32 serves
for _n in ("Q4_1", "Q5_1", "IQ4_NL", "MXFP4"):
    BYTES32[QTYPES[_n].id] = QTYPES[_n].nbytes
KV_MX = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)


def chunk_of(qt) -> tuple[int, int]:
    """(elements, bytes) the driver decodes at a time: 256 weights (8 small blocks, or one super-block)."""
    return CHUNK, CHUNK // qt.block * qt.nbytes


@njit(inline="always", cache=True)
def _u16(r, o):
    return np.uint32(r[o]) | (np.uint32(r[o + 1]) << np.uint32(8))


@njit(inline="always", cache=True)
def _f32bits(u):
    return np.uint32(u).view(np.float32)


@njit(inline="always", cache=True)
def h2f(h):
    s = (h & np.uint32(0x8000)) << np.uint32(16)
    e = (h >> np.uint32(10)) & np.uint32(0x1F)
    m = h & np.uint32(0x3FF)
    if e == 0:
        v = np.float32(m) * np.float32(5.9604644775390625e-08)
        return -v if s else v
    if e == 31:
        return _f32bits(s | np.uint32(0x7F800000) | (m << np.uint32(13)))
    return _f32bits(s | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13)))


@njit(inline="always", cache=True)
def _scale_min_k4(r, o, j):
    if j < 4:
        return np.float32(np.int32(r[o + j]) & 63), np.float32(np.int32(r[o + j + 4]) & 63)
    sc = (np.int32(r[o + j + 4]) & 0x0F) | ((np.int32(r[o + j - 4]) >> 6) << 4)
    mn = (np.int32(r[o + j + 4]) >> 4) | ((np.int32(r[o + j]) >> 6) << 4)
    return np.float32(sc), np.float32(mn)


@njit(inline="always", cache=True)
def _decode32(qid, r, o, buf, p):
    """One 32-weight block of a Q4_1 / Q5_1 / IQ4_NL / MXFP4 row at byte o into buf[p:p+32]."""
    if qid == T_Q4_1:
        d, m = h2f(_u16(r, o)), h2f(_u16(r, o + 2))
        for j in range(16):
            q = np.int32(r[o + 4 + j])
            buf[p + j] = d * np.float32(q & 15) + m
            buf[p + j + 16] = d * np.float32(q >> 4) + m
    elif qid == T_Q5_1:
        d, m = h2f(_u16(r, o)), h2f(_u16(r, o + 2))
        qh = np.int64(_u16(r, o + 4) | (_u16(r, o + 6) << np.uint32(16)))
        for j in range(16):
            q = np.int32(r[o + 8 + j])
            buf[p + j] = d * np.float32((q & 15) | (((qh >> j) & 1) << 4)) + m
            buf[p + j + 16] = d * np.float32((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) + m
    elif qid == T_IQ4_NL:
        d = h2f(_u16(r, o))
        for j in range(16):
            q = np.int32(r[o + 2 + j])
            buf[p + j] = d * KV_IQ4[q & 15]
            buf[p + j + 16] = d * KV_IQ4[q >> 4]
    elif qid == T_MXFP4:
        e8 = np.uint32(r[o])
        d = _f32bits(np.uint32(0x00200000) << e8) if e8 < 2 else _f32bits((e8 - np.uint32(1)) << np.uint32(23))
        for j in range(16):
            q = np.int32(r[o + 1 + j])
            buf[p + j] = d * KV_MX[q & 15]
            buf[p + j + 16] = d * KV_MX[q >> 4]


# Specialised decoders for the common rows: inner loops run over slices with a run-time length,
# the shape LLVM vectorises (a constant trip count of 32 gets unrolled and stays scalar).
@njit(fastmath=True, cache=True)
def _dec_q8_0(r, o, buf, n):
    ri = r.view(np.int8)
    for b in range(n // 32):
        p = o + b * 34
        d = h2f(_u16(r, p))
        src = ri[p + 2:p + 34]
        dst = buf[b * 32:b * 32 + 32]
        for j in range(src.shape[0]):
            dst[j] = np.float32(src[j]) * d


@njit(fastmath=True, cache=True)
def _dot_q8_0(r, o, x, n):
    """One token: Σ_b d_b · Σ_j q_j x_j straight from the bytes (no decode buffer)."""
    acc = np.float32(0.0)
    ri = r.view(np.int8)
    for b in range(n // 32):
        p = o + b * 34
        src = ri[p + 2:p + 34]
        xs = x[b * 32:b * 32 + 32]
        s = np.float32(0.0)
        for j in range(src.shape[0]):
            s += np.float32(src[j]) * xs[j]
        acc += h2f(_u16(r, p)) * s
    return acc


@njit(fastmath=True, cache=True)
def _dot_q5_0(r, o, x, n):
    """One token, Q5_0: Σ_b d_b · Σ_j (q_j − 16) x_j straight from the bytes."""
    acc = np.float32(0.0)
    for b in range(n // 32):
        p = o + b * 22
        qh = np.int64(_u16(r, p + 2) | (_u16(r, p + 4) << np.uint32(16)))
        src = r[p + 6:p + 22]
        xl, xh = x[b * 32:b * 32 + 16], x[b * 32 + 16:b * 32 + 32]
        s = np.float32(0.0)
        for j in range(src.shape[0]):
            q = np.int64(src[j])
            s += np.float32(((q & 15) | (((qh >> j) & 1) << 4)) - 16) * xl[j]
            s += np.float32(((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16) * xh[j]
        acc += h2f(_u16(r, p)) * s
    return acc


@njit(fastmath=True, cache=True)
def _dot_q4_k(r, o, x, n):
    """One token, Q4_K: per 32-weight sub-block d·Σq·x − m·Σx, straight from the bytes."""
    acc = np.float32(0.0)
    for b in range(n // 256):
        p = o + b * 144
        d, dmin = h2f(_u16(r, p)), h2f(_u16(r, p + 2))
        for c in range(4):
            sc0, mn0 = _scale_min_k4(r, p + 4, 2 * c)
            sc1, mn1 = _scale_min_k4(r, p + 4, 2 * c + 1)
            src = r[p + 16 + c * 32:p + 48 + c * 32]
            xl = x[b * 256 + c * 64:b * 256 + c * 64 + 32]
            xh = x[b * 256 + c * 64 + 32:b * 256 + c * 64 + 64]
            s0 = s1 = t0 = t1 = np.float32(0.0)
            for j in range(src.shape[0]):
                q = np.int32(src[j])
                s0 += np.float32(q & 15) * xl[j]
                s1 += np.float32(q >> 4) * xh[j]
                t0 += xl[j]
                t1 += xh[j]
            acc += (d * sc0) * s0 - (dmin * mn0) * t0 + (d * sc1) * s1 - (dmin * mn1) * t1
    return acc


@njit(fastmath=True, cache=True)
def _dot_q6_k(r, o, x, n):
    """One token, Q6_K: per 16-weight group (d·sc)·Σ(q−32)·x, straight from the bytes."""
    acc = np.float32(0.0)
    for b in range(n // 256):
        p = o + b * 210
        d = h2f(_u16(r, p + 208))
        for h in range(2):
            for k in range(4):
                lo_off = p + h * 64 + (k % 2) * 32
                lo_sh = 4 * (k // 2)
                for half in range(2):
                    a = half * 16
                    ql = r[lo_off + a:lo_off + a + 16]
                    qh = r[p + 128 + h * 32 + a:p + 128 + h * 32 + a + 16]
                    e = b * 256 + h * 128 + k * 32 + a
                    xs = x[e:e + 16]
                    s = np.float32(0.0)
                    for j in range(ql.shape[0]):
                        q = ((np.int32(ql[j]) >> lo_sh) & 15) | (((np.int32(qh[j]) >> (2 * k)) & 3) << 4)
                        s += np.float32(q - 32) * xs[j]
                    acc += (d * np.float32(np.int8(r[p + 192 + h * 8 + k * 2 + half]))) * s
    return acc


@njit(fastmath=True, cache=True)
def _dec_q4_0(r, o, buf, n):
    for b in range(n // 32):
        p = o + b * 18
        d = h2f(_u16(r, p))
        src = r[p + 2:p + 18]
        lo, hi = buf[b * 32:b * 32 + 16], buf[b * 32 + 16:b * 32 + 32]
        for j in range(src.shape[0]):
            q = np.int32(src[j])
            lo[j] = d * np.float32((q & 15) - 8)
            hi[j] = d * np.float32((q >> 4) - 8)


@njit(fastmath=True, cache=True)
def _dec_q5_0(r, o, buf, n):
    for b in range(n // 32):
        p = o + b * 22
        d = h2f(_u16(r, p))
        qh = np.int64(_u16(r, p + 2) | (_u16(r, p + 4) << np.uint32(16)))
        src = r[p + 6:p + 22]
        lo, hi = buf[b * 32:b * 32 + 16], buf[b * 32 + 16:b * 32 + 32]
        for j in range(src.shape[0]):
            q = np.int64(src[j])
            lo[j] = d * np.float32(((q & 15) | (((qh >> j) & 1) << 4)) - 16)
            hi[j] = d * np.float32(((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16)


@njit(fastmath=True, cache=True)
def _dec_q4_k(r, o, buf):
    d, dmin = h2f(_u16(r, o)), h2f(_u16(r, o + 2))
    for c in range(4):
        sc0, mn0 = _scale_min_k4(r, o + 4, 2 * c)
        sc1, mn1 = _scale_min_k4(r, o + 4, 2 * c + 1)
        d0, m0, d1, m1 = d * sc0, dmin * mn0, d * sc1, dmin * mn1
        src = r[o + 16 + c * 32:o + 48 + c * 32]
        lo, hi = buf[c * 64:c * 64 + 32], buf[c * 64 + 32:c * 64 + 64]
        for j in range(src.shape[0]):
            q = np.int32(src[j])
            lo[j] = d0 * np.float32(q & 15) - m0
            hi[j] = d1 * np.float32(q >> 4) - m1


@njit(fastmath=True, cache=True)
def _dec_q6_k(r, o, buf):
    d = h2f(_u16(r, o + 208))
    for h in range(2):
        for k in range(4):
            lo_off = o + h * 64 + (k % 2) * 32
            lo_sh = 4 * (k // 2)
            for half in range(2):
                dl = d * np.float32(np.int8(r[o + 192 + h * 8 + k * 2 + half]))
                a = half * 16
                ql = r[lo_off + a:lo_off + a + 16]
                qh = r[o + 128 + h * 32 + a:o + 128 + h * 32 + a + 16]
                dst = buf[h * 128 + k * 32 + a:h * 128 + k * 32 + a + 16]
                for j in range(ql.shape[0]):
                    q = ((np.int32(ql[j]) >> lo_sh) & 15) | (((np.int32(qh[j]) >> (2 * k)) & 3) << 4)
                    dst[j] = dl * np.float32(q - 32)


@njit(cache=True)
def decode(qid, r, o, buf, n):
    """Decode the chunk of n weights (n = 256 except a row's tail) starting at byte o of row r."""
    if qid == T_Q4_K:
        _dec_q4_k(r, o, buf)
    elif qid == T_Q6_K:
        _dec_q6_k(r, o, buf)
    elif qid == T_Q8_0:
        _dec_q8_0(r, o, buf, n)
    elif qid == T_Q4_0:
        _dec_q4_0(r, o, buf, n)
    elif qid == T_Q5_0:
        _dec_q5_0(r, o, buf, n)
    elif qid == T_Q5_K:
        d, dmin = h2f(_u16(r, o)), h2f(_u16(r, o + 2))
        for c in range(4):
            sc0, mn0 = _scale_min_k4(r, o + 4, 2 * c)
            sc1, mn1 = _scale_min_k4(r, o + 4, 2 * c + 1)
            d0, m0, d1, m1 = d * sc0, dmin * mn0, d * sc1, dmin * mn1
            for l in range(32):
                q = np.int32(r[o + 48 + c * 32 + l])
                h = np.int32(r[o + 16 + l])
                buf[c * 64 + l] = d0 * np.float32((q & 15) | (((h >> (2 * c)) & 1) << 4)) - m0
                buf[c * 64 + 32 + l] = d1 * np.float32((q >> 4) | (((h >> (2 * c + 1)) & 1) << 4)) - m1
    elif qid == T_Q2_K:
        d, dmin = h2f(_u16(r, o + 80)), h2f(_u16(r, o + 82))
        for h in range(2):
            for j in range(4):
                for half in range(2):
                    sc = np.int32(r[o + h * 8 + j * 2 + half])
                    dl, ml = d * np.float32(sc & 15), dmin * np.float32(sc >> 4)
                    for l in range(half * 16, half * 16 + 16):
                        q = (np.int32(r[o + 16 + h * 32 + l]) >> (2 * j)) & 3
                        buf[h * 128 + j * 32 + l] = dl * np.float32(q) - ml
    elif qid == T_Q3_K:
        d = h2f(_u16(r, o + 108))
        for h in range(2):
            for j in range(4):
                for half in range(2):
                    k = h * 8 + j * 2 + half
                    lo = (np.int32(r[o + 96 + (k % 8)]) >> (4 * (k // 8))) & 15
                    hi = (np.int32(r[o + 104 + (k % 4)]) >> (2 * (k // 4))) & 3
                    dl = d * np.float32((lo | (hi << 4)) - 32)
                    for l in range(half * 16, half * 16 + 16):
                        q = ((np.int32(r[o + 32 + h * 32 + l]) >> (2 * j)) & 3) - \
                            ((((np.int32(r[o + l]) >> (4 * h + j)) & 1) ^ 1) << 2)
                        buf[h * 128 + j * 32 + l] = dl * np.float32(q)
    elif qid == T_IQ4_XS:
        d = h2f(_u16(r, o))
        sh = np.int32(_u16(r, o + 2))
        for ib in range(8):
            ls = ((np.int32(r[o + 4 + ib // 2]) >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
            dl = d * np.float32(ls - 32)
            for j in range(16):
                q = np.int32(r[o + 8 + ib * 16 + j])
                buf[ib * 32 + j] = dl * KV_IQ4[q & 15]
                buf[ib * 32 + j + 16] = dl * KV_IQ4[q >> 4]
    elif qid == T_F32:
        for i in range(n):
            p = o + 4 * i
            buf[i] = _f32bits(np.uint32(r[p]) | (np.uint32(r[p + 1]) << np.uint32(8))
                              | (np.uint32(r[p + 2]) << np.uint32(16)) | (np.uint32(r[p + 3]) << np.uint32(24)))
    elif qid == T_F16:
        for i in range(n):
            buf[i] = h2f(_u16(r, o + 2 * i))
    elif qid == T_BF16:
        for i in range(n):
            buf[i] = _f32bits(_u16(r, o + 2 * i) << np.uint32(16))
    else:                                   # 32-weight blocks: n // 32 of them
        nbytes = BYTES32[qid]
        for b in range(n // 32):
            _decode32(qid, r, o + b * nbytes, buf, b * 32)


ROWS_PER_JOB = 16


@njit(fastmath=True, cache=True)
def dot_members(buf, n, X, mx, m0, m1, off, acc):
    """acc[m - m0] += buf[:n] · X[mx[m], off:off+n] — a small function LLVM vectorises on its own."""
    for m in range(m0, m1):
        xs = X[mx[m], off:off + n]
        s = np.float32(0.0)
        for i in range(xs.shape[0]):
            s += buf[i] * xs[i]
        acc[m - m0] += s


@njit(parallel=True, fastmath=True, cache=True)
def moe_matvec(W, qid, chunk, chunk_bytes, n_in, gexp, gstart, mx, mo, X, out):
    """out[mo[m]] = W[gexp[g]] · X[mx[m]] for members m of group g (one group per distinct expert).

    W (E, R, row_bytes) uint8, X (*, n_in) float32, out (*, R) float32.
    """
    G = gexp.shape[0]
    R = W.shape[1]
    nrc = (R + ROWS_PER_JOB - 1) // ROWS_PER_JOB
    nch = (n_in + chunk - 1) // chunk
    for job in prange(G * nrc):
        g = job // nrc
        r0 = (job % nrc) * ROWS_PER_JOB
        r1 = min(R, r0 + ROWS_PER_JOB)
        m0, m1 = gstart[g], gstart[g + 1]
        buf = np.empty(256, np.float32)
        acc = np.empty(m1 - m0, np.float32)
        for r in range(r0, r1):
            row = W[gexp[g], r]
            acc[:] = 0.0
            if m1 - m0 == 1 and (qid == T_Q8_0 or qid == T_Q4_K or qid == T_Q6_K or qid == T_Q5_0):
                # one token: fused straight from the bytes, no decode buffer
                if qid == T_Q8_0:
                    acc[0] = _dot_q8_0(row, 0, X[mx[m0]], n_in)
                elif qid == T_Q5_0:
                    acc[0] = _dot_q5_0(row, 0, X[mx[m0]], n_in)
                elif qid == T_Q4_K:
                    acc[0] = _dot_q4_k(row, 0, X[mx[m0]], n_in)
                else:
                    acc[0] = _dot_q6_k(row, 0, X[mx[m0]], n_in)
            else:
                for c in range(nch):
                    n = min(chunk, n_in - c * chunk)
                    decode(qid, row, c * chunk_bytes, buf, n)
                    dot_members(buf, n, X, mx, m0, m1, c * chunk, acc)
            for m in range(m0, m1):
                out[mo[m], r] = acc[m - m0]
